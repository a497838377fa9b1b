//! A shoal node and a node configured as flanneld's vxlan backend configures the kernel exchange
//! ICMP, TCP and UDP between their containers, in both directions, with valid checksums, and
//! answer too-big packets alike.
mod common;

use common::*;
use shoal_dataplane::{Backend, Counter, DecapHook, MacAddr, RouteTarget};
use shoal_harness::{
    Cluster,
    flannel_vxlan::{self, VxlanPeer},
};

/// Node 0 runs shoal, node 1 runs the kernel's VXLAN device as flanneld sets it up.
fn shoal_and_flannel(cluster: &Cluster, hook: DecapHook) -> NodeDataplane {
    let (shoal_node, flannel_node) = (cluster.node(0), cluster.node(1));
    let mut dataplane = NodeDataplane::attach(cluster, shoal_node, hook);
    let flannel_lease = flannel_vxlan::create_device(flannel_node).expect("flannel.1");
    let shoal_lease = VxlanPeer {
        subnet: shoal_node.container_subnet().expect("subnet"),
        underlay_ip: shoal_node.underlay_ip(),
        vtep_mac: dataplane.vtep_mac().to_string(),
    };
    flannel_vxlan::add_peer(flannel_node, &shoal_lease).expect("flannel peer");
    dataplane.set_route(
        flannel_lease.subnet,
        RouteTarget {
            underlay_ip: flannel_lease.underlay_ip,
            vtep_mac: flannel_lease.vtep_mac.parse::<MacAddr>().expect("mac"),
            backend: Backend::Vxlan,
        },
    );
    let mtu = dataplane.overlay_mtu(Backend::Vxlan);
    for node in cluster.nodes() {
        flannel_vxlan::set_workload_mtu(node, mtu).expect("workload mtu");
    }
    dataplane
}

#[test]
fn icmp_tcp_udp_flow_both_ways_between_shoal_and_flannel() {
    let cluster = two_nodes();
    let dataplane = shoal_and_flannel(&cluster, DecapHook::Xdp);
    let (shoal_c, flannel_c) = (cluster.node(0).container(0), cluster.node(1).container(0));
    let (shoal_ip, flannel_ip) = (shoal_c.ip().expect("ip"), flannel_c.ip().expect("ip"));

    assert!(
        ping(shoal_c.ns(), flannel_ip, 56, 3),
        "ICMP shoal -> flannel"
    );
    assert!(
        ping(flannel_c.ns(), shoal_ip, 56, 3),
        "ICMP flannel -> shoal"
    );
    // Full-size packets: 1450-byte IP packets in 1500-byte underlay frames.
    assert!(
        ping(shoal_c.ns(), flannel_ip, 1422, 2),
        "1450-byte ICMP shoal -> flannel"
    );
    assert!(
        ping(flannel_c.ns(), shoal_ip, 1422, 2),
        "1450-byte ICMP flannel -> shoal"
    );

    let tcp_out = tcp_transfer(shoal_c.ns(), flannel_c.ns(), flannel_ip, 2);
    let tcp_in = tcp_transfer(flannel_c.ns(), shoal_c.ns(), shoal_ip, 2);
    eprintln!(
        "TCP shoal->flannel {:.2} Gbit/s, flannel->shoal {:.2} Gbit/s",
        tcp_out.bits_per_second / 1e9,
        tcp_in.bits_per_second / 1e9
    );
    assert!(
        tcp_out.bytes > 10_000_000,
        "TCP shoal -> flannel: {tcp_out:?}"
    );
    assert!(
        tcp_in.bytes > 10_000_000,
        "TCP flannel -> shoal: {tcp_in:?}"
    );

    let udp_out = udp_transfer(shoal_c.ns(), flannel_c.ns(), flannel_ip);
    let udp_in = udp_transfer(flannel_c.ns(), shoal_c.ns(), shoal_ip);
    assert!(
        udp_out.lost_percent < 5.0,
        "UDP shoal -> flannel: {udp_out:?}"
    );
    assert!(
        udp_in.lost_percent < 5.0,
        "UDP flannel -> shoal: {udp_in:?}"
    );

    let stats = dataplane.stats();
    eprintln!("shoal counters: {stats:?}");
    assert!(stats.get(Counter::EncapVxlanPackets) > 1000);
    assert!(stats.get(Counter::DecapVxlanPackets) > 1000);
    assert_eq!(stats.drops(), 0, "{stats:?}");
}

#[test]
fn checksums_on_the_wire_are_valid_in_both_directions() {
    let cluster = two_nodes();
    let dataplane = shoal_and_flannel(&cluster, DecapHook::Xdp);
    checksum_offload_off(&cluster);
    let (shoal_c, flannel_c) = (cluster.node(0).container(0), cluster.node(1).container(0));
    let (shoal_ip, flannel_ip) = (shoal_c.ip().expect("ip"), flannel_c.ip().expect("ip"));
    let mut capture = Capture::start(cluster.switch(), "br0");
    assert!(ping(shoal_c.ns(), flannel_ip, 56, 2));
    assert!(ping(flannel_c.ns(), shoal_ip, 56, 2));
    for (client, server, server_ip) in [
        (shoal_c, flannel_c, flannel_ip),
        (flannel_c, shoal_c, shoal_ip),
    ] {
        let tcp = Iperf3Server::start(server.ns());
        iperf3(client.ns(), server_ip, tcp.port, &["-n", "4M"]);
        let udp = Iperf3Server::start(server.ns());
        iperf3(
            client.ns(),
            server_ip,
            udp.port,
            &["-u", "-n", "1M", "-l", "1000"],
        );
    }
    capture.stop();

    let shoal_underlay = cluster.node(0).underlay_ip();
    let from_shoal = format!("vxlan && ip.src == {shoal_underlay}");
    let encapsulated = capture.count(&from_shoal);
    let inner_tcp = capture.count(&format!("{from_shoal} && tcp"));
    let inner_udp = capture.count(&format!("{from_shoal} && count(udp.srcport) == 2"));
    let inner_icmp = capture.count(&format!("{from_shoal} && icmp"));
    let bad_filter = "ip.checksum.status == \"Bad\" || udp.checksum.status == \"Bad\" \
         || tcp.checksum.status == \"Bad\" || icmp.checksum.status == \"Bad\"";
    let bad = capture.count(bad_filter);
    let bad_sample: String = capture
        .fields(
            bad_filter,
            &[
                "frame.len",
                "ip.src",
                "ip.dst",
                "ip.checksum.status",
                "udp.checksum.status",
                "tcp.checksum.status",
                "tcp.len",
            ],
        )
        .lines()
        .take(5)
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("bad checksum sample:\n{bad_sample}");
    let flannel_encapsulated = capture.count(&format!("vxlan && !(ip.src == {shoal_underlay})"));
    eprintln!(
        "shoal sent {encapsulated} VXLAN frames (tcp {inner_tcp}, udp {inner_udp}, icmp \
         {inner_icmp}); flannel sent {flannel_encapsulated}; bad checksums: {bad}; {:?}",
        dataplane.stats()
    );
    assert!(inner_tcp > 100 && inner_udp > 100 && inner_icmp >= 2);
    assert!(
        capture.count("vxlan && count(udp.srcport) == 2") > 2 * 100,
        "UDP both ways"
    );
    assert!(flannel_encapsulated > 100);
    assert_eq!(bad, 0, "frames with a bad outer or inner checksum");
    // The checksums were verified, not skipped: outer IPv4 and inner TCP/UDP of shoal's frames.
    let verified = capture.count(&format!(
        "{from_shoal} && ip.checksum.status == \"Good\" && (tcp.checksum.status == \"Good\" \
         || count(udp.checksum.status) == 2)"
    ));
    assert!(
        verified > 100,
        "only {verified} frames had verified checksums"
    );
}

#[test]
fn too_big_packets_get_the_same_answer_as_from_kernel_vxlan() {
    let cluster = two_nodes();
    let _dataplane = shoal_and_flannel(&cluster, DecapHook::Xdp);
    // Workloads that ignore the overlay MTU (1500 instead of 1450) send full-size DF packets.
    for node in cluster.nodes() {
        flannel_vxlan::set_workload_mtu(node, 1500).expect("mtu");
    }
    let (shoal_c, flannel_c) = (cluster.node(0).container(0), cluster.node(1).container(0));
    let answer = |from: &shoal_harness::Container, to: String| {
        let output = from
            .output(
                "ping",
                &[
                    "-c", "2", "-i", "0.3", "-W", "1", "-s", "1472", "-M", "do", &to,
                ],
            )
            .expect("ping");
        String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr)
    };
    let via_shoal = answer(shoal_c, flannel_c.ip().expect("ip").to_string());
    let via_kernel = answer(flannel_c, shoal_c.ip().expect("ip").to_string());
    eprintln!("shoal:\n{via_shoal}\nkernel vxlan:\n{via_kernel}");
    for (path, text) in [("shoal", &via_shoal), ("kernel vxlan", &via_kernel)] {
        assert!(
            text.contains("mtu = 1450") || text.contains("mtu=1450"),
            "{path} did not answer with the tunnel MTU: {text}"
        );
    }
}
