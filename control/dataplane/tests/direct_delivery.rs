//! Direct delivery after TC decapsulation: workloads found in the kernel's neighbour and bridge
//! tables are registered, decapsulated packets for them skip the kernel's forwarding path and
//! bridge, and the devices they hang off (bridge ports first) get the encapsulation hook, so
//! their packets to remote subnets skip the sending node's bridge and forwarding too (with TTL
//! and checksums still right, and frames a workload addresses to another left to the bridge),
//! and a workload the kernel no longer resolves the registered way falls back to the kernel path
//! instead of being misdelivered.
mod common;

use common::*;
use std::time::Duration;

use shoal_dataplane::{Backend, Counter, DecapHook, HOP_CACHE_NS};
use shoal_harness::{Cluster, flannel_vxlan};

fn tc_nodes() -> (Cluster, Vec<NodeDataplane>) {
    let cluster = two_nodes();
    let mut dataplanes = vec![
        NodeDataplane::attach(&cluster, cluster.node(0), DecapHook::Tc),
        NodeDataplane::attach(&cluster, cluster.node(1), DecapHook::Tc),
    ];
    mesh(&cluster, &mut dataplanes, Backend::Vxlan);
    for node in cluster.nodes() {
        flannel_vxlan::set_workload_mtu(node, 1450).expect("mtu");
    }
    (cluster, dataplanes)
}

fn ifindex(cluster: &Cluster, node: usize, link: &str) -> u32 {
    cluster
        .node(node)
        .exec("cat", &[&format!("/sys/class/net/{link}/ifindex")])
        .expect("reading ifindex")
        .trim()
        .parse()
        .expect("numeric ifindex")
}

#[test]
fn workloads_behind_a_bridge_are_found_and_served_directly() {
    let (cluster, mut dataplanes) = tc_nodes();
    let (a, b) = (cluster.node(0).container(0), cluster.node(1).container(0));
    let (a_ip, b_ip) = (a.ip().expect("ip"), b.ip().expect("ip"));
    // The first packets teach the nodes their containers' MACs.
    assert!(ping(a.ns(), b_ip, 56, 2), "ICMP before registration");
    for dataplane in &mut dataplanes {
        assert_eq!(dataplane.sync_endpoints(), 1);
    }
    let endpoints = dataplanes[1].endpoints();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    let endpoint = endpoints[0];
    assert_eq!(endpoint.address, b_ip);
    assert_eq!(endpoint.port_ifindex, ifindex(&cluster, 1, "vc0"));
    assert_eq!(endpoint.via_ifindex, ifindex(&cluster, 1, "cbr0"));
    assert!(endpoint.port_is_veth);
    let b_mac = flannel_vxlan::link_mac(cluster.node(1), "vc0").expect("mac");
    assert_ne!(
        endpoint.mac.to_string(),
        b_mac,
        "the container's MAC, not the host end's"
    );

    checksum_offload_off(&cluster);
    let mut capture = Capture::start(b.ns(), "eth0");
    assert!(ping(a.ns(), b_ip, 56, 3), "ICMP 0 -> 1");
    assert!(ping(b.ns(), a_ip, 1422, 2), "full-size ICMP 1 -> 0");
    // Fixed sizes: with checksum offload off every frame is MTU-size, and tshark reads them all.
    for (client, server, server_ip) in [(a, b, b_ip), (b, a, a_ip)] {
        let iperf3_server = Iperf3Server::start(server.ns());
        let tcp = iperf3(client.ns(), server_ip, iperf3_server.port, &["-n", "4M"]);
        // The server's count may stop before the last segments; the client's is all 4 MiB.
        let sent = tcp.json["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
        assert!(
            sent >= 4 << 20 && tcp.bytes > 1 << 20,
            "TCP to {server_ip}: {tcp:?}"
        );
    }
    let udp = udp_transfer(a.ns(), b.ns(), b_ip);
    assert!(udp.lost_percent < 5.0, "UDP 0 -> 1: {udp:?}");
    capture.stop();

    for dataplane in &dataplanes {
        let stats = dataplane.stats();
        assert!(stats.get(Counter::DeliverDirectPackets) > 100, "{stats:?}");
        // The sending side: encapsulated on the ingress of the container's bridge port.
        assert!(
            stats.get(Counter::EncapFromWorkloadPackets) > 100,
            "{stats:?}"
        );
        assert_eq!(stats.drops(), 0, "{stats:?}");
    }
    // Two routers on the way (node 0's workload hook and node 1's direct delivery each forward):
    // TTL 64 - 2, as on the kernel path; the rewritten IPv4 header's checksum verified by tshark.
    let echo_requests = format!("icmp.type == 8 && ip.dst == {b_ip}");
    assert_eq!(
        capture.count(&format!("{echo_requests} && ip.ttl == 62")),
        3
    );
    let bad = capture.count(
        "ip.checksum.status == \"Bad\" || tcp.checksum.status == \"Bad\" \
         || udp.checksum.status == \"Bad\" || icmp.checksum.status == \"Bad\"",
    );
    assert_eq!(
        bad, 0,
        "frames with a bad checksum in the receiving container"
    );
    let verified = capture.count(&format!(
        "ip.dst == {b_ip} && ip.checksum.status == \"Good\" && tcp.checksum.status == \"Good\""
    ));
    assert!(verified > 100, "only {verified} verified TCP frames");
}

#[test]
fn bridge_ports_encapsulate_what_the_host_routes_and_leave_the_rest_to_the_bridge() {
    let cluster = Cluster::builder()
        .nodes(2)
        .containers_per_node(2)
        .build()
        .expect("building the cluster");
    let mut dataplanes = vec![
        NodeDataplane::attach(&cluster, cluster.node(0), DecapHook::Tc),
        NodeDataplane::attach(&cluster, cluster.node(1), DecapHook::Tc),
    ];
    mesh(&cluster, &mut dataplanes, Backend::Vxlan);
    let (a, c) = (cluster.node(0).container(0), cluster.node(0).container(1));
    let b = cluster.node(1).container(0);
    let (b_ip, c_ip) = (b.ip().expect("ip"), c.ip().expect("ip"));
    assert!(ping(a.ns(), b_ip, 56, 1), "ICMP before registration");
    assert!(ping(a.ns(), c_ip, 56, 1), "ICMP on the bridge");
    assert!(ping(c.ns(), b_ip, 56, 1), "ICMP before registration");
    assert_eq!(dataplanes[0].sync_endpoints(), 2);

    // Routed traffic leaves from the port: the bridge never passes it up to the host.
    let encapsulated = dataplanes[0].count(Counter::EncapFromWorkloadPackets);
    let mut bridge = Capture::start(cluster.node(0).ns(), "cbr0");
    assert!(
        ping(a.ns(), b_ip, 56, 5),
        "ICMP 0 -> 1 through the port hook"
    );
    bridge.stop();
    assert!(dataplanes[0].count(Counter::EncapFromWorkloadPackets) >= encapsulated + 5);
    let echo_requests = format!("icmp.type == 8 && ip.dst == {b_ip}");
    assert_eq!(
        bridge.count(&echo_requests),
        0,
        "cbr0 passed echo requests up"
    );

    // A frame for a remote subnet addressed to another workload's MAC (that workload is the
    // route's next hop) is the bridge's to switch, not the host's to encapsulate.
    a.exec(
        "ip",
        &[
            "route",
            "add",
            &format!("{b_ip}/32"),
            "via",
            &c_ip.to_string(),
        ],
    )
    .expect("route via the neighbour");
    let encapsulated = dataplanes[0].count(Counter::EncapFromWorkloadPackets);
    let mut capture = Capture::start(c.ns(), "eth0");
    ping(a.ns(), b_ip, 56, 3); // c does not forward: no answer
    capture.stop();
    assert_eq!(
        capture.count(&echo_requests),
        3,
        "the echo requests reach the next hop the workload chose"
    );
    assert_eq!(
        dataplanes[0].count(Counter::EncapFromWorkloadPackets),
        encapsulated,
        "a switched frame was encapsulated"
    );
}

#[test]
fn program_runs_show_what_each_packet_of_a_workload_flow_costs() {
    let (cluster, mut dataplanes) = tc_nodes();
    let (a, b) = (cluster.node(0).container(0), cluster.node(1).container(0));
    let b_ip = b.ip().expect("ip");
    assert!(ping(a.ns(), b_ip, 56, 2), "ICMP before registration");
    for dataplane in &mut dataplanes {
        assert_eq!(dataplane.sync_endpoints(), 1);
    }
    let _stats = shoal_dataplane::enable_program_stats().expect("BPF run statistics");
    let programs = ["shoal_tc_workload", "shoal_tc_egress", "shoal_tc_ingress"];
    let before: Vec<_> = programs
        .iter()
        .map(|program| dataplanes[0].program_runs(program))
        .collect();
    let encapsulated = dataplanes[0].count(Counter::EncapFromWorkloadPackets);
    assert!(ping(a.ns(), b_ip, 56, 5), "ICMP 0 -> 1");
    let encapsulated = dataplanes[0].count(Counter::EncapFromWorkloadPackets) - encapsulated;
    let runs: Vec<_> = programs
        .iter()
        .zip(&before)
        .map(|(program, before)| dataplanes[0].program_runs(program).since(before))
        .collect();
    assert!(encapsulated >= 5, "{encapsulated} encapsulated on the port");
    let (workload, egress, ingress) = (&runs[0], &runs[1], &runs[2]);
    // Every request went through the port's program, and then past the underlay's egress
    // program (which only takes off the workload program's mark); every reply came in through
    // the ingress program.
    assert!(workload.runs >= encapsulated, "{workload:?}");
    assert!(egress.runs >= encapsulated, "{egress:?}");
    assert!(ingress.runs >= 5, "{ingress:?}");
    for program in &runs {
        assert!(
            program.run_time > Duration::ZERO && program.ns_per_run() > 0.0,
            "{program:?}"
        );
    }
}

#[test]
fn a_workload_with_a_new_mac_falls_back_to_the_kernel_path() {
    let (cluster, mut dataplanes) = tc_nodes();
    let (a, b) = (cluster.node(0).container(0), cluster.node(1).container(0));
    let b_ip = b.ip().expect("ip");
    assert!(ping(a.ns(), b_ip, 56, 2));
    dataplanes[1].sync_endpoints();
    let direct = dataplanes[1].count(Counter::DeliverDirectPackets);
    assert!(ping(a.ns(), b_ip, 56, 2));
    assert!(dataplanes[1].count(Counter::DeliverDirectPackets) >= direct + 2);

    // The address now belongs to another interface (a replaced container): the registered
    // entry no longer matches the kernel's neighbour, so the kernel path delivers.
    b.exec(
        "ip",
        &["link", "set", "eth0", "address", "02:00:00:00:be:ef"],
    )
    .expect("new MAC");
    cluster
        .node(1)
        .exec("ip", &["neigh", "flush", "dev", "cbr0"])
        .expect("neighbour flush");
    // The programs reuse a FIB answer for HOP_CACHE_NS; after that they see the change.
    std::thread::sleep(Duration::from_nanos(HOP_CACHE_NS) * 2);
    let direct = dataplanes[1].count(Counter::DeliverDirectPackets);
    assert!(ping(a.ns(), b_ip, 56, 3), "the kernel path still delivers");
    assert_eq!(
        dataplanes[1].count(Counter::DeliverDirectPackets),
        direct,
        "a stale endpoint was used"
    );

    // A new sync registers the new MAC, and direct delivery resumes.
    dataplanes[1].sync_endpoints();
    assert_eq!(
        dataplanes[1].endpoints()[0].mac.to_string(),
        "02:00:00:00:be:ef"
    );
    assert!(ping(a.ns(), b_ip, 56, 2));
    assert!(dataplanes[1].count(Counter::DeliverDirectPackets) >= direct + 2);
}

#[test]
fn a_workload_taken_out_of_the_endpoints_map_is_left_to_the_kernel_after_the_hop_cache_period() {
    let (cluster, mut dataplanes) = tc_nodes();
    let (a, b) = (cluster.node(0).container(0), cluster.node(1).container(0));
    let b_ip = b.ip().expect("ip");
    assert!(ping(a.ns(), b_ip, 56, 2));
    assert_eq!(dataplanes[1].sync_endpoints(), 1);
    let direct = dataplanes[1].count(Counter::DeliverDirectPackets);
    assert!(ping(a.ns(), b_ip, 56, 2));
    assert!(
        dataplanes[1].count(Counter::DeliverDirectPackets) >= direct + 2,
        "served directly while registered"
    );

    // The kernel's FIB and neighbour still end at the workload: only the registration goes,
    // and the cached answer that carried it expires.
    dataplanes[1].remove_endpoint(b_ip);
    std::thread::sleep(Duration::from_nanos(HOP_CACHE_NS) * 2);
    let direct = dataplanes[1].count(Counter::DeliverDirectPackets);
    assert!(ping(a.ns(), b_ip, 56, 3), "the kernel path delivers");
    assert_eq!(
        dataplanes[1].count(Counter::DeliverDirectPackets),
        direct,
        "a workload no longer registered was served directly"
    );
}

#[test]
fn sync_forgets_workloads_that_are_gone() {
    let (cluster, mut dataplanes) = tc_nodes();
    let (a, b) = (cluster.node(0).container(0), cluster.node(1).container(0));
    assert!(ping(a.ns(), b.ip().expect("ip"), 56, 1));
    assert_eq!(
        dataplanes[1].sync_pinned_endpoints(),
        1,
        "through the pinned map"
    );
    assert_eq!(dataplanes[1].endpoints().len(), 1);
    cluster
        .node(1)
        .exec("ip", &["neigh", "flush", "dev", "cbr0"])
        .expect("neighbour flush");
    assert_eq!(dataplanes[1].sync_endpoints(), 0);
    assert!(dataplanes[1].endpoints().is_empty());
}

#[test]
fn xdp_decapsulation_turns_gro_on_behind_it() {
    let cluster = two_nodes();
    let gro = |cluster: &Cluster| {
        cluster
            .node(0)
            .exec("ethtool", &["-k", "eth0"])
            .expect("ethtool -k")
            .lines()
            .any(|line| line.trim() == "generic-receive-offload: on")
    };
    assert!(!gro(&cluster), "veth starts without GRO");
    let _dataplane = NodeDataplane::attach(&cluster, cluster.node(0), DecapHook::Xdp);
    assert!(gro(&cluster), "GRO merges the decapsulated frames again");
}
