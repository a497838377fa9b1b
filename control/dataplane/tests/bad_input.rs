//! Crafted packets (pnet) sent from a peer node's underlay to a shoal node: each malformed or
//! spoofed overlay packet is dropped and counted by reason, or passed to the kernel, and never
//! reaches the workload; the well-formed control packet does.
mod common;

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use common::*;
use pnet::{
    datalink::{self, Channel},
    packet::{
        ipv4::{self, MutableIpv4Packet},
        udp::{self, MutableUdpPacket},
    },
};
use shoal_dataplane::{Backend, Counter, DecapHook, MacAddr};
use shoal_harness::{NsWorker, flannel_vxlan};

/// Everything a crafted frame is made of; each case changes a few fields of the valid one.
#[derive(Clone)]
struct Frame {
    dst_mac: MacAddr,
    src_mac: MacAddr,
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    outer_ihl: u8,
    outer_frag: u16,
    outer_len_extra: u16,
    dport: u16,
    /// VXLAN header; `None` builds flannel's udp format (no VXLAN, no inner Ethernet).
    vxlan_flags: Option<u8>,
    vni: u32,
    inner_dst_mac: MacAddr,
    inner_ethertype: u16,
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
    inner_ihl: u8,
    inner_frag: u16,
    inner_len_override: Option<u16>,
    inner_port: u16,
    payload: Vec<u8>,
    truncate_to: Option<usize>,
}

fn ipv4_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ihl: u8,
    frag: u16,
    payload: &[u8],
    len_override: Option<u16>,
) -> Vec<u8> {
    let header_len = usize::from(ihl) * 4;
    let mut buf = vec![0u8; header_len + payload.len()];
    // Options: NOPs.
    for byte in &mut buf[20..header_len] {
        *byte = 1;
    }
    buf[header_len..].copy_from_slice(payload);
    let mut ip = MutableIpv4Packet::new(&mut buf).expect("buffer fits");
    ip.set_version(4);
    ip.set_header_length(ihl);
    ip.set_total_length(len_override.unwrap_or((header_len + payload.len()) as u16));
    ip.set_identification(0x1234);
    ip.set_flags((frag >> 13) as u8);
    ip.set_fragment_offset(frag & 0x1fff);
    ip.set_ttl(64);
    ip.set_next_level_protocol(pnet::packet::ip::IpNextHeaderProtocols::Udp);
    ip.set_source(src);
    ip.set_destination(dst);
    let checksum = ipv4::checksum(&ip.to_immutable());
    ip.set_checksum(checksum);
    buf
}

fn udp_datagram(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
    checksum: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + payload.len()];
    buf[8..].copy_from_slice(payload);
    let mut datagram = MutableUdpPacket::new(&mut buf).expect("buffer fits");
    datagram.set_source(45678);
    datagram.set_destination(dport);
    datagram.set_length((8 + payload.len()) as u16);
    if checksum {
        let sum = udp::ipv4_checksum(&datagram.to_immutable(), &src, &dst);
        datagram.set_checksum(sum);
    }
    buf
}

fn ethernet(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst.0);
    frame.extend_from_slice(&src.0);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        let inner_udp = udp_datagram(
            self.inner_src,
            self.inner_dst,
            self.inner_port,
            &self.payload,
            true,
        );
        let inner_ip = ipv4_packet(
            self.inner_src,
            self.inner_dst,
            self.inner_ihl,
            self.inner_frag,
            &inner_udp,
            self.inner_len_override,
        );
        let tunnel_payload = match self.vxlan_flags {
            Some(flags) => {
                let vni = self.vni.to_be_bytes();
                let mut vxlan = vec![flags, 0, 0, 0, vni[1], vni[2], vni[3], 0];
                vxlan.extend(ethernet(
                    self.inner_dst_mac,
                    self.src_mac,
                    self.inner_ethertype,
                    &inner_ip,
                ));
                vxlan
            }
            None => inner_ip,
        };
        let outer_udp = udp_datagram(
            self.outer_src,
            self.outer_dst,
            self.dport,
            &tunnel_payload,
            false,
        );
        let mut outer_ip = ipv4_packet(
            self.outer_src,
            self.outer_dst,
            self.outer_ihl,
            self.outer_frag,
            &outer_udp,
            None,
        );
        if self.outer_len_extra > 0 {
            let mut ip = MutableIpv4Packet::new(&mut outer_ip).expect("fits");
            let len = ip.get_total_length() + self.outer_len_extra;
            ip.set_total_length(len);
            ip.set_checksum(0);
            let checksum = ipv4::checksum(&ip.to_immutable());
            ip.set_checksum(checksum);
        }
        let mut frame = ethernet(self.dst_mac, self.src_mac, 0x0800, &outer_ip);
        if let Some(len) = self.truncate_to {
            frame.truncate(len);
        }
        frame
    }
}

/// What must happen to a case's packets.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// Decapsulated and delivered to the workload's socket.
    Delivered,
    /// Decapsulated; the workload's kernel holds it (an incomplete fragment), the socket sees
    /// nothing.
    DecapsulatedOnly,
    /// Dropped by the dataplane, counted under this reason.
    Dropped(Counter),
    /// Left to the kernel (counted under this reason, if any); the workload sees nothing.
    Passed(Option<Counter>),
}

#[test]
fn crafted_bad_packets_are_dropped_or_passed_and_never_delivered() {
    let cluster = two_nodes();
    // A real switch forwards malformed IPv4 too; the bridge would check it with br_netfilter.
    cluster
        .switch()
        .sysctl("net.bridge.bridge-nf-call-iptables", "0")
        .expect("plain L2 switch");
    let (victim, sender) = (cluster.node(0), cluster.node(1));
    let mut dataplanes = vec![
        NodeDataplane::attach(&cluster, victim, DecapHook::Xdp),
        NodeDataplane::attach(&cluster, sender, DecapHook::Xdp),
    ];
    mesh(&cluster, &mut dataplanes, Backend::Vxlan);
    let victim_dp = &dataplanes[0];

    let container = victim.container(0);
    let listener_worker = NsWorker::spawn(container.ns()).expect("container worker");
    let port = test_port();
    let socket = listener_worker
        .run(move || UdpSocket::bind(("0.0.0.0", port)))
        .expect("binding the listener");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let sender_worker = NsWorker::spawn(sender.ns()).expect("sender worker");

    let mac = |node: &shoal_harness::Node| -> MacAddr {
        flannel_vxlan::link_mac(node, "eth0")
            .expect("mac")
            .parse()
            .expect("valid mac")
    };
    let sender_subnet = sender.container_subnet().expect("subnet");
    let valid = Frame {
        dst_mac: mac(victim),
        src_mac: mac(sender),
        outer_src: sender.underlay_ip(),
        outer_dst: victim.underlay_ip(),
        outer_ihl: 5,
        outer_frag: 0,
        outer_len_extra: 0,
        dport: 8472,
        vxlan_flags: Some(0x08),
        vni: 1,
        inner_dst_mac: victim_dp.vtep_mac(),
        inner_ethertype: 0x0800,
        inner_src: Ipv4Addr::from(u32::from(sender_subnet.network()) + 7),
        inner_dst: container.ip().expect("ip"),
        inner_ihl: 5,
        inner_frag: 0,
        inner_len_override: None,
        inner_port: port,
        payload: Vec::new(),
        truncate_to: None,
    };
    let with = |change: &dyn Fn(&mut Frame)| {
        let mut frame = valid.clone();
        change(&mut frame);
        frame
    };
    let cases: Vec<(&str, Frame, Outcome)> = vec![
        ("valid VXLAN (control)", valid.clone(), Outcome::Delivered),
        (
            "inner IPv4 options",
            with(&|f| f.inner_ihl = 7),
            Outcome::Delivered,
        ),
        (
            "inner fragment (first of two)",
            with(&|f| f.inner_frag = 0x2000),
            Outcome::DecapsulatedOnly,
        ),
        (
            "truncated outer (IPv4 length beyond the frame)",
            with(&|f| f.outer_len_extra = 40),
            Outcome::Dropped(Counter::DropTruncated),
        ),
        (
            "truncated inner IPv4 header",
            with(&|f| f.truncate_to = Some(14 + 20 + 8 + 8 + 14 + 12)),
            Outcome::Dropped(Counter::DropTruncated),
        ),
        (
            "truncated VXLAN header",
            with(&|f| f.truncate_to = Some(14 + 20 + 8 + 4)),
            Outcome::Dropped(Counter::DropTruncated),
        ),
        (
            "inner length beyond the packet (oversized claim)",
            with(&|f| f.inner_len_override = Some(2000)),
            Outcome::Dropped(Counter::DropTruncated),
        ),
        (
            "wrong VNI",
            with(&|f| f.vni = 2),
            Outcome::Dropped(Counter::DropWrongVni),
        ),
        (
            "VXLAN I flag clear",
            with(&|f| f.vxlan_flags = Some(0x00)),
            Outcome::Dropped(Counter::DropBadVxlanHeader),
        ),
        (
            "VXLAN reserved flags set",
            with(&|f| f.vxlan_flags = Some(0x0c)),
            Outcome::Dropped(Counter::DropBadVxlanHeader),
        ),
        (
            "wrong UDP port (4789)",
            with(&|f| f.dport = 4789),
            Outcome::Passed(None),
        ),
        (
            "outer IPv4 options",
            with(&|f| f.outer_ihl = 6),
            Outcome::Passed(Some(Counter::PassIpOptions)),
        ),
        (
            "outer fragment",
            with(&|f| f.outer_frag = 0x2000),
            Outcome::Passed(Some(Counter::PassFragment)),
        ),
        (
            "inner IPv6 ethertype",
            with(&|f| f.inner_ethertype = 0x86dd),
            Outcome::Dropped(Counter::DropInnerNotIpv4),
        ),
        (
            "inner ARP ethertype",
            with(&|f| f.inner_ethertype = 0x0806),
            Outcome::Dropped(Counter::DropInnerNotIpv4),
        ),
        (
            "outer source holds no lease (spoofed underlay IP)",
            with(&|f| f.outer_src = Ipv4Addr::new(10, 99, 0, 77)),
            Outcome::Dropped(Counter::DropNoLease),
        ),
        (
            "inner source outside the sender's lease",
            with(&|f| f.inner_src = Ipv4Addr::new(10, 244, 9, 5)),
            Outcome::Dropped(Counter::DropNoLease),
        ),
        (
            "inner destination outside this node's subnet",
            with(&|f| f.inner_dst = Ipv4Addr::new(10, 244, 9, 9)),
            Outcome::Dropped(Counter::DropInnerNotLocal),
        ),
        (
            "inner destination MAC not this VTEP",
            with(&|f| f.inner_dst_mac = MacAddr([2, 0, 0, 0, 0, 9])),
            Outcome::Dropped(Counter::DropWrongInnerMac),
        ),
        (
            "flannel udp format for a VXLAN lease",
            with(&|f| {
                f.vxlan_flags = None;
                f.dport = 8285;
            }),
            Outcome::Dropped(Counter::DropNoLease),
        ),
        (
            "flannel udp format, truncated inner header",
            with(&|f| {
                f.vxlan_flags = None;
                f.dport = 8285;
                f.truncate_to = Some(14 + 20 + 8 + 10);
            }),
            Outcome::Dropped(Counter::DropTruncated),
        ),
    ];

    let mut failures = Vec::new();
    for (index, (name, mut frame, outcome)) in cases.into_iter().enumerate() {
        let tag = format!("case-{index}");
        frame.payload = tag.clone().into_bytes();
        let before = victim_dp.stats();
        let bytes = frame.bytes();
        sender_worker.run(move || send_frame(&bytes, 3));
        let received = drain(&socket);
        let after = victim_dp.stats();
        let delta = |counter: Counter| after.get(counter) - before.get(counter);
        let delivered = received.iter().any(|payload| payload == tag.as_bytes());
        let decapsulated = delta(Counter::DecapVxlanPackets) + delta(Counter::DecapUdpPackets);
        let ok = match outcome {
            Outcome::Delivered => delivered && decapsulated == 3,
            Outcome::DecapsulatedOnly => !delivered && decapsulated == 3,
            Outcome::Dropped(reason) => !delivered && decapsulated == 0 && delta(reason) == 3,
            Outcome::Passed(reason) => {
                !delivered && decapsulated == 0 && reason.is_none_or(|reason| delta(reason) == 3)
            }
        };
        eprintln!(
            "{:<52} {:<40} delivered={delivered} {}",
            name,
            format!("{outcome:?}"),
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            failures.push(format!(
                "{name}: expected {outcome:?}, counters after {after:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Sends `frame` `times` times from the current namespace's `eth0`.
fn send_frame(frame: &[u8], times: usize) {
    let interface = datalink::interfaces()
        .into_iter()
        .find(|interface| interface.name == "eth0")
        .expect("eth0 in the sender");
    let Ok(Channel::Ethernet(mut tx, _rx)) = datalink::channel(&interface, Default::default())
    else {
        panic!("opening a packet socket on eth0");
    };
    for _ in 0..times {
        tx.send_to(frame, None)
            .expect("a send slot")
            .expect("sending the frame");
    }
}

/// Every datagram the listener got until it stayed quiet for its timeout.
fn drain(socket: &UdpSocket) -> Vec<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(len) = socket.recv(&mut buf) {
        received.push(buf[..len].to_vec());
    }
    received
}
