//! shoal to shoal: both backends, both decapsulation hooks, route changes, detach.
mod common;

use common::*;
use shoal_dataplane::{Backend, Counter, DecapHook};

fn exchange_traffic(cluster: &shoal_harness::Cluster) {
    let (a, b) = (cluster.node(0).container(0), cluster.node(1).container(0));
    let (a_ip, b_ip) = (a.ip().expect("ip"), b.ip().expect("ip"));
    assert!(ping(a.ns(), b_ip, 56, 2), "ICMP 0 -> 1");
    assert!(ping(b.ns(), a_ip, 1422, 2), "full-size ICMP 1 -> 0");
    let tcp = tcp_transfer(a.ns(), b.ns(), b_ip, 1);
    assert!(tcp.bytes > 10_000_000, "TCP 0 -> 1: {tcp:?}");
    let tcp = tcp_transfer(b.ns(), a.ns(), a_ip, 1);
    assert!(tcp.bytes > 10_000_000, "TCP 1 -> 0: {tcp:?}");
    let udp = udp_transfer(a.ns(), b.ns(), b_ip);
    assert!(udp.lost_percent < 5.0, "UDP 0 -> 1: {udp:?}");
}

fn two_shoal_nodes(
    hook: DecapHook,
    backend: Backend,
) -> (shoal_harness::Cluster, Vec<NodeDataplane>) {
    let cluster = two_nodes();
    let mut dataplanes = vec![
        NodeDataplane::attach(&cluster, cluster.node(0), hook),
        NodeDataplane::attach(&cluster, cluster.node(1), hook),
    ];
    mesh(&cluster, &mut dataplanes, backend);
    let mtu = dataplanes[0].overlay_mtu(backend);
    for node in cluster.nodes() {
        shoal_harness::flannel_vxlan::set_workload_mtu(node, mtu).expect("mtu");
    }
    (cluster, dataplanes)
}

#[test]
fn flannel_udp_backend_carries_icmp_tcp_and_udp() {
    let (cluster, dataplanes) = two_shoal_nodes(DecapHook::Xdp, Backend::Udp);
    assert_eq!(dataplanes[0].overlay_mtu(Backend::Udp), 1472);
    exchange_traffic(&cluster);
    for dataplane in &dataplanes {
        let stats = dataplane.stats();
        assert!(stats.get(Counter::EncapUdpPackets) > 1000, "{stats:?}");
        assert!(stats.get(Counter::DecapUdpPackets) > 1000, "{stats:?}");
        assert_eq!(stats.get(Counter::EncapVxlanPackets), 0, "{stats:?}");
        assert_eq!(stats.drops(), 0, "{stats:?}");
    }
}

#[test]
fn vxlan_with_tc_decapsulation_carries_icmp_tcp_and_udp() {
    let (cluster, dataplanes) = two_shoal_nodes(DecapHook::Tc, Backend::Vxlan);
    exchange_traffic(&cluster);
    for dataplane in &dataplanes {
        let stats = dataplane.stats();
        assert!(stats.get(Counter::DecapVxlanPackets) > 100, "{stats:?}");
        assert_eq!(stats.drops(), 0, "{stats:?}");
    }
}

#[test]
fn udp_backend_with_tc_decapsulation_carries_tcp() {
    let (cluster, dataplanes) = two_shoal_nodes(DecapHook::Tc, Backend::Udp);
    exchange_traffic(&cluster);
    assert!(dataplanes[1].count(Counter::DecapUdpPackets) > 100);
}

#[test]
fn routes_are_replaced_and_removed_and_underlay_traffic_is_untouched() {
    let (cluster, mut dataplanes) = two_shoal_nodes(DecapHook::Xdp, Backend::Vxlan);
    let (a, b) = (cluster.node(0).container(0), cluster.node(1).container(0));
    let b_ip = b.ip().expect("ip");
    let b_subnet = cluster.node(1).container_subnet().expect("subnet");
    assert!(ping(a.ns(), b_ip, 56, 1));
    // Plain underlay traffic (and the ARP before it) passes both programs untouched.
    let underlay_b = cluster.node(1).underlay_ip();
    assert!(ping(cluster.node(0).ns(), underlay_b, 56, 2));

    // Switch the route to the udp backend on both sides: traffic follows.
    let before = dataplanes[0].count(Counter::EncapUdpPackets);
    mesh(&cluster, &mut dataplanes, Backend::Udp);
    assert!(ping(a.ns(), b_ip, 56, 2));
    assert!(dataplanes[0].count(Counter::EncapUdpPackets) >= before + 2);

    dataplanes[0].remove_route(b_subnet);
    let routes = cluster.node(0).exec("ip", &["route"]).expect("ip route");
    assert!(!routes.contains(&b_subnet.to_string()), "{routes}");
    assert!(!ping(a.ns(), b_ip, 56, 1), "no route, no traffic");
}

#[test]
fn detach_removes_programs_kernel_routes_and_pins() {
    let (cluster, mut dataplanes) = two_shoal_nodes(DecapHook::Xdp, Backend::Vxlan);
    let pin_dir = dataplanes[0].config.pin_dir();
    assert!(pin_dir.join("ROUTES").exists());
    let link = cluster
        .node(0)
        .exec("ip", &["link", "show", "eth0"])
        .expect("ip link");
    assert!(link.contains("xdp"), "{link}");
    drop(dataplanes.remove(0));
    assert!(!pin_dir.exists(), "pins left in {}", pin_dir.display());
    // The kernel frees an unpinned link from a work queue: the XDP program goes shortly after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let link = loop {
        let link = cluster
            .node(0)
            .exec("ip", &["link", "show", "eth0"])
            .expect("ip link");
        if !link.contains("xdp") || std::time::Instant::now() > deadline {
            break link;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!link.contains("xdp"), "{link}");
    let routes = cluster.node(0).exec("ip", &["route"]).expect("ip route");
    assert!(!routes.contains("10.244.2.0"), "{routes}");
    let tc = cluster
        .node(0)
        .exec("tc", &["filter", "show", "dev", "eth0", "egress"]);
    assert!(tc.map(|text| !text.contains("shoal")).unwrap_or(true));
}
