//! A node configured exactly as flanneld's vxlan backend configures the kernel: a `flannel.1`
//! VXLAN device (VNI 1, port 8472, no learning, on the underlay device, MTU underlay - 50) holding
//! the subnet's network address as a /32, and for every peer a permanent neighbour entry (the
//! peer subnet's network address -> the peer's VtepMAC), a permanent FDB entry (VtepMAC -> the
//! peer's underlay address) and an on-link route for the peer's subnet via that address.
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::{Cluster, Error, Node, Result, cluster::UNDERLAY_IF};

/// Name of flannel's VXLAN device.
pub const FLANNEL_DEVICE: &str = "flannel.1";
pub const FLANNEL_VNI: u32 = 1;
pub const FLANNEL_PORT: u16 = 8472;

/// What a node announces in its flannel lease, and what its peers program for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanPeer {
    pub subnet: Ipv4Network,
    pub underlay_ip: Ipv4Addr,
    /// `aa:bb:cc:dd:ee:ff`.
    pub vtep_mac: String,
}

/// Creates `flannel.1` on `node` for its container subnet and returns the node's lease data.
pub fn create_device(node: &Node) -> Result<VxlanPeer> {
    let subnet = node
        .container_subnet()
        .ok_or_else(|| Error::Layout(format!("{} has no container subnet", node.name())))?;
    let ns = node.ns();
    ns.ip([
        "link",
        "add",
        FLANNEL_DEVICE,
        "type",
        "vxlan",
        "id",
        &FLANNEL_VNI.to_string(),
        "local",
        &node.underlay_ip().to_string(),
        "dev",
        UNDERLAY_IF,
        "dstport",
        &FLANNEL_PORT.to_string(),
        "nolearning",
    ])?;
    ns.ip([
        "addr",
        "add",
        &format!("{}/32", subnet.network()),
        "dev",
        FLANNEL_DEVICE,
    ])?;
    ns.ip(["link", "set", FLANNEL_DEVICE, "up"])?;
    Ok(VxlanPeer {
        subnet,
        underlay_ip: node.underlay_ip(),
        vtep_mac: link_mac(node, FLANNEL_DEVICE)?,
    })
}

/// Programs `peer` on a node that has `flannel.1`, as flanneld does when it sees the lease.
pub fn add_peer(node: &Node, peer: &VxlanPeer) -> Result<()> {
    let ns = node.ns();
    let gateway = peer.subnet.network().to_string();
    ns.ip([
        "neigh",
        "replace",
        &gateway,
        "lladdr",
        &peer.vtep_mac,
        "dev",
        FLANNEL_DEVICE,
        "nud",
        "permanent",
    ])?;
    ns.exec(
        "bridge",
        [
            "fdb",
            "replace",
            &peer.vtep_mac,
            "dev",
            FLANNEL_DEVICE,
            "dst",
            &peer.underlay_ip.to_string(),
            "self",
            "permanent",
        ],
    )?;
    ns.ip([
        "route",
        "replace",
        &peer.subnet.to_string(),
        "via",
        &gateway,
        "dev",
        FLANNEL_DEVICE,
        "onlink",
    ])
    .map(drop)
}

/// The MAC address of `link` in `node`.
pub fn link_mac(node: &Node, link: &str) -> Result<String> {
    let text = node.ns().ip(["-o", "link", "show", "dev", link])?;
    text.split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| Error::Layout(format!("{link} in {} has no MAC: {text}", node.name())))
}

/// Sets the MTU of every container of `node` (both veth ends) and of its bridge, as Docker or a
/// CNI plugin does with flannel's `FLANNEL_MTU`.
pub fn set_workload_mtu(node: &Node, mtu: u32) -> Result<()> {
    let mtu = mtu.to_string();
    for container in node.containers() {
        node.ns()
            .ip(["link", "set", container.host_side(), "mtu", &mtu])?;
        container
            .ns()
            .ip(["link", "set", UNDERLAY_IF, "mtu", &mtu])?;
    }
    if node.container_subnet().is_some() {
        node.ns().ip(["link", "set", "cbr0", "mtu", &mtu])?;
    }
    Ok(())
}

/// Makes `node`'s underlay veth behave like a physical NIC for benchmarks: no segmentation
/// offload on transmit (the stack segments before the device, so frames on the wire are at most
/// MTU-size, as a NIC's TSO makes them) and a NAPI poll with GRO on receive, as a NIC driver has.
/// A veth only hands frames to its peer's NAPI (and so to GRO) when the sending end has no TSO,
/// so the switch port facing the node loses TSO too. Without this a veth carries 64 KB GSO
/// packets end to end and merges nothing on receive.
pub fn emulate_physical_nic(cluster: &Cluster, node: &Node) -> Result<()> {
    let no_offload = [
        "tso",
        "off",
        "gso",
        "off",
        "tx-udp_tnl-segmentation",
        "off",
        "tx-udp_tnl-csum-segmentation",
        "off",
    ];
    let mut args = vec!["-K", UNDERLAY_IF];
    args.extend(no_offload);
    args.extend(["gro", "on"]);
    node.exec("ethtool", &args)?;
    let port = switch_port_of(cluster, node)?;
    let mut args = vec!["-K", port.as_str()];
    args.extend(no_offload);
    cluster.switch().exec("ethtool", &args).map(drop)
}

/// The name of the switch's end of `node`'s underlay veth (found by the pair's ifindex).
fn switch_port_of(cluster: &Cluster, node: &Node) -> Result<String> {
    let underlay = node.ns().ip(["-o", "link", "show", "dev", UNDERLAY_IF])?;
    // `2: eth0@if5: <...>`: the peer's ifindex follows "@if".
    let peer_index = underlay
        .split_whitespace()
        .nth(1)
        .and_then(|name| name.trim_end_matches(':').split("@if").nth(1))
        .ok_or_else(|| Error::Layout(format!("{UNDERLAY_IF} is not a veth pair: {underlay}")))?
        .to_string();
    let ports = cluster.switch().ip(["-o", "link", "show"])?;
    ports
        .lines()
        .find(|line| line.split(':').next().map(str::trim) == Some(peer_index.as_str()))
        .and_then(|line| line.split(':').nth(1))
        .and_then(|name| name.trim().split('@').next())
        .map(str::to_string)
        .ok_or_else(|| Error::Layout(format!("no switch port with index {peer_index}")))
}
