//! The clsact fallback for kernels without TCX (before 6.6), forced on this kernel: the TC
//! programs run as cls_bpf filters, carry traffic, are replaced in place by a restarted process
//! (never duplicated), and `detach` deletes them.
mod common;

use common::*;
use shoal_dataplane::{Backend, Counter, DecapHook, TcAttach};
use shoal_harness::{Cluster, flannel_vxlan};

fn filters(cluster: &Cluster, direction: &str) -> String {
    cluster
        .node(0)
        .exec("tc", &["filter", "show", "dev", "eth0", direction])
        .unwrap_or_default()
}

/// How many filters in `listing` run `program`.
fn count(listing: &str, program: &str) -> usize {
    listing
        .lines()
        .filter(|line| line.contains(program))
        .count()
}

#[test]
fn clsact_filters_carry_traffic_survive_a_restart_and_go_on_detach() {
    let cluster = two_nodes();
    let mut dataplanes = vec![
        NodeDataplane::attach_with(&cluster, cluster.node(0), DecapHook::Tc, TcAttach::Clsact),
        NodeDataplane::attach(&cluster, cluster.node(1), DecapHook::Tc),
    ];
    mesh(&cluster, &mut dataplanes, Backend::Vxlan);
    for node in cluster.nodes() {
        flannel_vxlan::set_workload_mtu(node, 1450).expect("mtu");
    }
    let (a, b) = (cluster.node(0).container(0), cluster.node(1).container(0));
    let (a_ip, b_ip) = (a.ip().expect("ip"), b.ip().expect("ip"));
    assert!(ping(a.ns(), b_ip, 56, 2), "ICMP through the clsact filters");
    let egress = filters(&cluster, "egress");
    let ingress = filters(&cluster, "ingress");
    assert_eq!(count(&egress, "shoal_tc_egress"), 1, "{egress}");
    assert_eq!(count(&ingress, "shoal_tc_ingress"), 1, "{ingress}");
    let encapsulated = dataplanes[0].count(Counter::EncapVxlanPackets);
    let decapsulated = dataplanes[0].count(Counter::DecapVxlanPackets);
    assert!(encapsulated >= 2 && decapsulated >= 2);

    // A restarted process replaces the filters in place, without a gap or a duplicate.
    dataplanes[0].forget();
    dataplanes[0].reattach();
    let egress = filters(&cluster, "egress");
    let ingress = filters(&cluster, "ingress");
    assert_eq!(count(&egress, "shoal_tc_egress"), 1, "{egress}");
    assert_eq!(count(&ingress, "shoal_tc_ingress"), 1, "{ingress}");
    let tcp = tcp_transfer(b.ns(), a.ns(), a_ip, 1);
    assert!(tcp.bytes > 1_000_000, "TCP after the restart: {tcp:?}");
    assert!(dataplanes[0].count(Counter::DecapVxlanPackets) > decapsulated);

    drop(dataplanes.remove(0));
    assert!(!filters(&cluster, "egress").contains("shoal"));
    assert!(!filters(&cluster, "ingress").contains("shoal"));
    assert!(!ping(a.ns(), b_ip, 56, 1), "no dataplane, no overlay");
}
