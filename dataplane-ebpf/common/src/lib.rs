//! Types shared between the eBPF programs in `dataplane-ebpf` and the userspace loader in
//! `control/dataplane`. Everything here is `#[repr(C)]`, plain old data, and has the same layout
//! on both sides; map names are constants so the two sides cannot drift apart.
//!
//! Byte order: fields documented as "network order" hold the bytes exactly as they appear on the
//! wire (so the eBPF side compares them with packet bytes without swapping).
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
/// Bytes flannel's `udp` backend adds in front of the inner IPv4 packet: outer IPv4 (20) + UDP (8).
pub const UDP_OVERHEAD: u32 = 28;
/// Source-port range of the outer UDP header (Linux's default ephemeral range, which the kernel
/// VXLAN device uses when no range is configured). The port within it comes from the flow hash.
pub const SOURCE_PORT_MIN: u16 = 32768;
pub const SOURCE_PORT_MAX: u16 = 60999;
/// TTL of outer IPv4 headers (the kernel VXLAN device's default: the IPv4 default hop limit).
pub const OUTER_TTL: u8 = 64;
/// `skb->mark` the workload program gives a packet it encapsulated and redirected to the
/// underlay device, where the egress program (which every packet sent there meets) takes it off
/// and passes the packet at once instead of examining it a second time. A packet reaching the
/// workload program carries no mark of its own (the veth from the workload's namespace scrubbed
/// it). The kernel never sets this value itself; a firewall rule giving exactly this mark to a
/// packet for a remote subnet would send it out unencapsulated.
pub const ENCAPSULATED_MARK: u32 = 0x5ba1_e11c;

/// Name of the LPM trie that maps a remote subnet (key: prefix length, then the 4 address bytes
/// in network order) to the node that leases it.
pub const ROUTES_MAP: &str = "ROUTES";
/// Name of the one-entry array holding the [`DataplaneConfig`].
pub const CONFIG_MAP: &str = "CONFIG";
/// Name of the per-CPU array of [`Counter`]s.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the hash map from a local workload's IPv4 address (network order) to the
/// [`LocalEndpoint`] that delivers to it directly.
pub const ENDPOINTS_MAP: &str = "ENDPOINTS";
/// Name of the hash map from a bridge port's ifindex to the [`WorkloadPort`] its workloads
/// route through.
pub const WORKLOAD_PORTS_MAP: &str = "WORKLOAD_PORTS";
/// Name of the LRU hash map caching FIB and neighbour lookups the programs made: a [`HopKey`]
/// to the [`CachedHop`] it gave.
pub const HOPS_MAP: &str = "HOPS";
/// Capacity of the hop cache (flows to remote nodes and to local workloads; the least recently
/// used entry makes room).
pub const MAX_HOPS: u32 = 16384;
/// How long a cached lookup answers for its key before the FIB is asked again, in nanoseconds
/// of `bpf_ktime_get_coarse_ns` (tick granularity): a changed route or neighbour (a workload
/// replaced behind the same address) is followed within this time, and a flow asks the FIB once
/// per period instead of once per packet.
pub const HOP_CACHE_NS: u64 = 20_000_000;
/// Capacity of the endpoints map (workloads on one node), and of the workload ports map.
pub const MAX_ENDPOINTS: u32 = 4096;
/// Capacity of the routes map (remote subnets).
pub const MAX_ROUTES: u32 = 16384;
/// Directory under bpffs where the dataplane pins its maps and links (one subdirectory per
/// instance).
pub const PIN_ROOT: &str = "/sys/fs/bpf/shoal";

/// Program names in the object.
pub const PROG_TC_EGRESS: &str = "shoal_tc_egress";
pub const PROG_XDP_INGRESS: &str = "shoal_xdp_ingress";
pub const PROG_TC_INGRESS: &str = "shoal_tc_ingress";
pub const PROG_TC_WORKLOAD: &str = "shoal_tc_workload";

/// How packets for a route leave this node.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// VXLAN, wire-compatible with flannel's vxlan backend.
    Vxlan = 1,
    /// flannel's `udp` backend: the inner IPv4 packet in UDP, no inner Ethernet.
    Udp = 2,
}

impl Backend {
    /// Bytes this encapsulation adds to an inner IPv4 packet.
    pub const fn overhead(self) -> u32 {
        match self {
            Self::Vxlan => VXLAN_OVERHEAD,
            Self::Udp => UDP_OVERHEAD,
        }
    }

    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Vxlan),
            2 => Some(Self::Udp),
            _ => None,
        }
    }
}

/// Value of the routes map: where to send packets for one remote subnet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    /// Underlay IPv4 address of the remote node, network order.
    pub underlay_ip: [u8; 4],
    /// VTEP MAC of the remote node (inner destination MAC for VXLAN).
    pub vtep_mac: [u8; 6],
    /// A [`Backend`] as `u8`.
    pub backend: u8,
    pub _pad: u8,
}

/// Value of the endpoints map: how a decapsulated packet reaches a local workload without the
/// kernel's forwarding path. Used only while the kernel's own FIB lookup of the workload address
/// still ends at `via_ifindex` with `mac` as the neighbour (so a moved or deleted workload falls
/// back to the kernel path).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The host-side device the workload hangs off (a veth end, or a bridge port).
    pub port_ifindex: u32,
    /// The device the kernel routes the workload's address to (a bridge, or the veth itself).
    pub via_ifindex: u32,
    /// The workload's MAC address.
    pub mac: [u8; 6],
    /// Non-zero: `port_ifindex` is a veth whose peer is the workload's interface, so the packet
    /// can enter the workload's namespace directly (`bpf_redirect_peer`).
    pub peer: u8,
    pub _pad: u8,
}

/// Value of the workload ports map: a bridge port the workload-ingress program is attached to.
/// Only frames to `gateway_mac` (the bridge's own address, which the workloads' default route
/// resolves to) are the host's to route; anything else on the port is the bridge's to switch.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadPort {
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// What a cached FIB lookup was asked: which lookup, from where to where.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopKey {
    /// Destination address, network order.
    pub dst: [u8; 4],
    /// Source address, network order.
    pub src: [u8; 4],
    /// A [`HopKind`] as `u8`.
    pub kind: u8,
    /// IPv4 TOS of the lookup.
    pub tos: u8,
    pub _pad: [u8; 2],
}

/// The lookups the programs cache.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopKind {
    /// The underlay next hop of an encapsulated packet (output lookup from the underlay device).
    Underlay = 1,
    /// The kernel's route to a local workload after decapsulation (input lookup on the underlay
    /// device).
    Workload = 2,
}

/// A successful FIB lookup's answer and when it was made.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedHop {
    /// Next hop's MAC (the outer or the forwarded frame's destination).
    pub dmac: [u8; 6],
    /// The egress device's MAC.
    pub smac: [u8; 6],
    /// The egress device.
    pub ifindex: u32,
    /// The egress device's MTU, which a packet that is not GSO must fit into for the answer to
    /// hold (the lookup checks the skb it is given).
    pub mtu: u32,
    /// For a [`HopKind::Workload`] lookup whose answer matched the workload's
    /// [`LocalEndpoint`] when it was made: that endpoint's `port_ifindex`, so later packets of
    /// the flow are delivered without looking the endpoint up again. 0: not checked against an
    /// endpoint (or no match then).
    pub deliver_ifindex: u32,
    /// `bpf_ktime_get_coarse_ns` at the lookup.
    pub checked_ns: u64,
    /// The endpoint's `peer` flag, with `deliver_ifindex`.
    pub deliver_peer: u8,
    pub _pad: [u8; 7],
}

/// The one entry of the config map: what this node is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// This node's underlay IPv4 address (outer source, decapsulation destination), network order.
    pub underlay_ip: [u8; 4],
    /// This node's leased subnet, network order, and its mask: decapsulated packets must be
    /// addressed inside it.
    pub local_subnet: [u8; 4],
    pub local_mask: [u8; 4],
    /// Interface index of the underlay device the programs are attached to.
    pub underlay_ifindex: u32,
    /// MTU of the underlay device; encapsulated non-GSO packets must fit.
    pub underlay_mtu: u32,
    /// VXLAN network identifier (host order, 24 bits).
    pub vni: u32,
    /// VXLAN UDP port, network order.
    pub vxlan_port: [u8; 2],
    /// flannel `udp` backend port, network order.
    pub udp_port: [u8; 2],
    /// This node's VTEP MAC (inner source MAC; inner destination of received VXLAN).
    pub vtep_mac: [u8; 6],
    /// MAC of the underlay device (destination MAC of decapsulated frames, so the stack takes
    /// them as addressed to this host).
    pub underlay_mac: [u8; 6],
}

/// Per-CPU counters, indices into the counters map. Packet/byte pairs count what the dataplane
/// did; `Drop*` count packets dropped and `Pass*` packets handed to the kernel unmodified, by
/// reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    EncapVxlanPackets = 0,
    EncapVxlanBytes,
    EncapUdpPackets,
    EncapUdpBytes,
    DecapVxlanPackets,
    DecapVxlanBytes,
    DecapUdpPackets,
    DecapUdpBytes,
    /// The outer or inner headers are shorter than they claim or than the format needs.
    DropTruncated,
    /// VXLAN header without the I flag, or with reserved bits where the VNI belongs.
    DropBadVxlanHeader,
    /// VXLAN with a VNI other than the configured one.
    DropWrongVni,
    /// The outer source address holds no lease for the inner source (anti-spoofing).
    DropNoLease,
    /// The inner frame is not IPv4 (ARP, IPv6, ...) or its IPv4 header is invalid.
    DropInnerNotIpv4,
    /// The inner destination is outside this node's subnet.
    DropInnerNotLocal,
    /// The inner destination MAC is not this node's VTEP MAC.
    DropWrongInnerMac,
    /// An encapsulated packet would exceed the underlay MTU.
    DropTooBig,
    /// The kernel refused to grow, shrink or rewrite the packet.
    DropAdjustFailed,
    /// No usable underlay route to the remote node.
    DropNoUnderlayRoute,
    /// Addressed to the overlay port but fragmented: left to the kernel.
    PassFragment,
    /// Addressed to this node, with outer IPv4 options: left to the kernel.
    PassIpOptions,
    /// The program ran without a config entry (not yet configured): everything passed.
    PassUnconfigured,
    /// Decapsulated packets handed straight to a local workload's device (see [`LocalEndpoint`]).
    DeliverDirectPackets,
    /// Packets encapsulated on the ingress of a local workload's device, skipping this node's
    /// forwarding path (also counted in `Encap*`).
    EncapFromWorkloadPackets,
}

/// Number of entries in the counters map.
pub const COUNTER_COUNT: u32 = Counter::EncapFromWorkloadPackets as u32 + 1;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Self::EncapVxlanPackets,
        Self::EncapVxlanBytes,
        Self::EncapUdpPackets,
        Self::EncapUdpBytes,
        Self::DecapVxlanPackets,
        Self::DecapVxlanBytes,
        Self::DecapUdpPackets,
        Self::DecapUdpBytes,
        Self::DropTruncated,
        Self::DropBadVxlanHeader,
        Self::DropWrongVni,
        Self::DropNoLease,
        Self::DropInnerNotIpv4,
        Self::DropInnerNotLocal,
        Self::DropWrongInnerMac,
        Self::DropTooBig,
        Self::DropAdjustFailed,
        Self::DropNoUnderlayRoute,
        Self::PassFragment,
        Self::PassIpOptions,
        Self::PassUnconfigured,
        Self::DeliverDirectPackets,
        Self::EncapFromWorkloadPackets,
    ];

    /// Stable snake-case name (for JSON, logs and metrics).
    pub const fn name(self) -> &'static str {
        match self {
            Self::EncapVxlanPackets => "encap_vxlan_packets",
            Self::EncapVxlanBytes => "encap_vxlan_bytes",
            Self::EncapUdpPackets => "encap_udp_packets",
            Self::EncapUdpBytes => "encap_udp_bytes",
            Self::DecapVxlanPackets => "decap_vxlan_packets",
            Self::DecapVxlanBytes => "decap_vxlan_bytes",
            Self::DecapUdpPackets => "decap_udp_packets",
            Self::DecapUdpBytes => "decap_udp_bytes",
            Self::DropTruncated => "drop_truncated",
            Self::DropBadVxlanHeader => "drop_bad_vxlan_header",
            Self::DropWrongVni => "drop_wrong_vni",
            Self::DropNoLease => "drop_no_lease",
            Self::DropInnerNotIpv4 => "drop_inner_not_ipv4",
            Self::DropInnerNotLocal => "drop_inner_not_local",
            Self::DropWrongInnerMac => "drop_wrong_inner_mac",
            Self::DropTooBig => "drop_too_big",
            Self::DropAdjustFailed => "drop_adjust_failed",
            Self::DropNoUnderlayRoute => "drop_no_underlay_route",
            Self::PassFragment => "pass_fragment",
            Self::PassIpOptions => "pass_ip_options",
            Self::PassUnconfigured => "pass_unconfigured",
            Self::DeliverDirectPackets => "deliver_direct_packets",
            Self::EncapFromWorkloadPackets => "encap_from_workload_packets",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // Each is a repr(C) struct of byte arrays and u32s laid out without implicit padding
    // (RouteTarget, LocalEndpoint and WorkloadPort have an explicit `_pad`).
    // SAFETY: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::RouteTarget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DataplaneConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocalEndpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WorkloadPort {}
    // SAFETY: as above (HopKey and CachedHop have an explicit `_pad`, and CachedHop's u64 sits
    // at offset 24).
    unsafe impl aya::Pod for super::HopKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CachedHop {}
}
