//! Types shared between the eBPF programs in `dataplane-ebpf` and the userspace loader in
//! `control/dataplane`. Everything here is `#[repr(C)]`, plain old data, and has the same layout
//! on both sides; map names are constants so the two sides cannot drift apart.
#![no_std]

/// Default VXLAN UDP destination port, as flannel's vxlan backend uses (Linux's legacy port).
pub const VXLAN_DEFAULT_PORT: u16 = 8472;
/// Default UDP port of flannel's `udp` backend.
pub const FLANNEL_UDP_DEFAULT_PORT: u16 = 8285;
/// Default VXLAN network identifier, as flannel's vxlan backend uses.
pub const VXLAN_DEFAULT_VNI: u32 = 1;
/// Bytes VXLAN adds in front of an inner Ethernet frame: outer IPv4 (20) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Name of the LPM trie that maps a remote subnet to the node that leases it.
pub const ROUTES_MAP: &str = "ROUTES";
/// Directory under bpffs where the dataplane pins its maps and links.
pub const PIN_ROOT: &str = "/sys/fs/bpf/shoal";

/// How packets for a route leave this node.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// VXLAN, wire-compatible with flannel's vxlan backend.
    Vxlan = 1,
    /// flannel's `udp` backend: the inner IPv4 packet in UDP, no inner Ethernet.
    Udp = 2,
}

/// Value of the routes map: where to send packets for one remote subnet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    /// Underlay IPv4 address of the remote node, network byte order.
    pub underlay_ip: u32,
    /// VTEP MAC of the remote node (inner destination MAC for VXLAN).
    pub vtep_mac: [u8; 6],
    /// A [`Backend`] as `u8`.
    pub backend: u8,
    pub _pad: u8,
}

#[cfg(feature = "user")]
// SAFETY: RouteTarget is repr(C), has no padding holes beyond the explicit `_pad`, and every bit
// pattern is valid.
unsafe impl aya::Pod for RouteTarget {}
