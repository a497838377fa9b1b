//! Encapsulation on the underlay egress (TC, so TCP keeps its large GSO segments: the kernel
//! segments the tunnel packets after this program, as it does for its own VXLAN device).
//!
//! Packets reach this hook because the kernel routes each remote subnet out of the underlay
//! device (a route per subnet via a permanent neighbour, the layout flannel gives `flannel.1`).
//! A packet whose destination is in the routes map gets the outer headers of its route's backend,
//! then the outer MACs from a FIB lookup of the remote node's underlay address (cached for a
//! short while per remote node, `HOPS`).
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        bpf_fib_lookup,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_get_hash_recalc, bpf_redirect, bpf_redirect_neigh,
    },
    programs::TcContext,
};
use shoal_dataplane_common::{
    Backend, CachedHop, Counter, DataplaneConfig, ENCAPSULATED_MARK, HopKey, HopKind, RouteTarget,
    UDP_OVERHEAD, VXLAN_OVERHEAD,
};

use crate::{
    headers::{
        ETH_LEN, ETHERTYPE_IPV4, EthHdr, IPPROTO_UDP, IPV4_NO_OPTIONS, Ipv4Hdr, UdpHdr, VxlanHdr,
        fib_params, source_port,
    },
    maps::{cache_hop, cached_hop, config, count, route_for, workload_port},
};

/// Everything in front of the inner IPv4 packet of a VXLAN packet, and the inner header itself
/// (written back with the forwarded TTL): one store per packet.
#[repr(C)]
struct VxlanHeaders {
    outer_eth: EthHdr,
    outer_ip: Ipv4Hdr,
    udp: UdpHdr,
    vxlan: VxlanHdr,
    inner_eth: EthHdr,
    inner_ip: Ipv4Hdr,
}

/// Everything in front of the inner IPv4 packet of a flannel `udp` packet, and the inner header.
#[repr(C)]
struct UdpHeaders {
    outer_eth: EthHdr,
    outer_ip: Ipv4Hdr,
    udp: UdpHdr,
    inner_ip: Ipv4Hdr,
}

/// Where an encapsulated packet goes next on the underlay.
enum NextHop {
    /// A resolved neighbour: the outer MACs and the device.
    Resolved(CachedHop),
    /// The route's device, whose neighbour the kernel must resolve first.
    Unresolved(u32),
}

pub fn tc_egress(ctx: &TcContext) -> i32 {
    // SAFETY: reading a field of the kernel-provided __sk_buff context.
    if unsafe { (*ctx.skb.skb).mark } == ENCAPSULATED_MARK {
        // The workload program encapsulated it already (and redirected it here).
        ctx.set_mark(0);
        return TC_ACT_OK;
    }
    let Some(cfg) = config() else {
        count(Counter::PassUnconfigured, 1);
        return TC_ACT_OK;
    };
    let Some((inner, route, backend)) = bound_for_remote_subnet(ctx) else {
        return TC_ACT_OK;
    };
    // SAFETY: reading a field of the kernel-provided __sk_buff context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match encapsulate(ctx, cfg, route, backend, &inner, ifindex) {
        Ok(action) => action,
        Err(reason) => {
            count(reason, 1);
            TC_ACT_SHOT
        }
    }
}

/// Encapsulation one hop earlier, on the ingress of a device local workloads hang off (a bridge
/// port, their bridge, or a routed veth): a packet for a remote subnet is forwarded as the
/// kernel would (TTL - 1), encapsulated and sent straight out of the underlay device, without
/// this node's IP forwarding, neighbour output and qdisc (and, from a bridge port, the bridge)
/// in between. What the kernel must answer or judge (TTL expiring, too big for the tunnel, IP
/// options, anything not for a remote subnet) passes to it unchanged and takes the kernel path
/// to [`tc_egress`].
pub fn tc_workload_ingress(ctx: &TcContext) -> i32 {
    let Some(cfg) = config() else {
        return TC_ACT_OK;
    };
    if !addressed_to_host(ctx) {
        return TC_ACT_OK;
    }
    let Some((inner, route, backend)) = bound_for_remote_subnet(ctx) else {
        return TC_ACT_OK;
    };
    if inner.version_ihl != IPV4_NO_OPTIONS || inner.ttl <= 1 {
        return TC_ACT_OK;
    }
    // SAFETY: reading a field of the kernel-provided __sk_buff context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    let inner_len = ctx.len() - ETH_LEN as u32;
    if gso_size == 0 && inner_len + backend.overhead() > cfg.underlay_mtu {
        // The kernel's route MTU answers it with frag-needed (or fragments it).
        return TC_ACT_OK;
    }
    let inner = inner.forwarded();
    // Not on the underlay yet: the FIB lookup starts there, and the packet is redirected.
    match encapsulate(ctx, cfg, route, backend, &inner, cfg.underlay_ifindex) {
        Ok(action) => {
            count(Counter::EncapFromWorkloadPackets, 1);
            // Sent out of the underlay device, it meets the egress program there: this mark
            // tells it the packet is done.
            ctx.set_mark(ENCAPSULATED_MARK);
            if action == TC_ACT_OK {
                // SAFETY: plain helper call with scalar arguments.
                unsafe { bpf_redirect(cfg.underlay_ifindex, 0) as i32 }
            } else {
                action
            }
        }
        Err(reason) => {
            count(reason, 1);
            TC_ACT_SHOT
        }
    }
}

/// Whether a frame entering a workload device is the host's to route: on a bridge port (in the
/// workload ports map) only a frame to the bridge's own MAC is, the rest the bridge switches;
/// whatever reaches a bridge's or a routed veth's own ingress is the host's.
#[inline(always)]
fn addressed_to_host(ctx: &TcContext) -> bool {
    // SAFETY: reading a field of the kernel-provided __sk_buff context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(port) = workload_port(ifindex) else {
        return true;
    };
    headers(ctx).is_some_and(|(eth, _)| eth.dst == port.gateway_mac)
}

/// The Ethernet and IPv4 headers at the start of the frame, read in place (the sender's stack
/// leaves them in the linear data; a frame where it did not is pulled once).
#[inline(always)]
fn headers(ctx: &TcContext) -> Option<(&EthHdr, &Ipv4Hdr)> {
    const LEN: usize = ETH_LEN + core::mem::size_of::<Ipv4Hdr>();
    if ctx.data() + LEN > ctx.data_end() {
        ctx.pull_data(LEN as u32).ok()?;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + LEN > end {
        return None;
    }
    // SAFETY: LEN bytes checked against data_end just above; both types have alignment 1.
    unsafe {
        Some((
            &*(start as *const EthHdr),
            &*((start + ETH_LEN) as *const Ipv4Hdr),
        ))
    }
}

/// The IPv4 header of a frame addressed to a remote subnet in the routes map, with its route
/// and backend; `None` for anything else (which the kernel gets untouched).
#[inline(always)]
fn bound_for_remote_subnet(ctx: &TcContext) -> Option<(Ipv4Hdr, &'static RouteTarget, Backend)> {
    let (eth, inner) = headers(ctx)?;
    if eth.proto != ETHERTYPE_IPV4 {
        return None;
    }
    // A copy: the packet data it points into moves with the encapsulation.
    let inner = *inner;
    let route = route_for(inner.dst)?;
    let backend = Backend::from_u8(route.backend)?;
    Some((inner, route, backend))
}

#[inline(always)]
fn encapsulate(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    route: &RouteTarget,
    backend: Backend,
    inner: &Ipv4Hdr,
    ifindex: u32,
) -> Result<i32, Counter> {
    let skb = ctx.skb.skb;
    // SAFETY: reading fields of the kernel-provided __sk_buff context.
    let (gso_size, gso_segs) = unsafe { ((*skb).gso_size, (*skb).gso_segs) };
    let inner_len = ctx.len() - ETH_LEN as u32;
    let overhead = backend.overhead();
    if gso_size == 0 && inner_len + overhead > cfg.underlay_mtu {
        // The route MTU keeps forwarded traffic below this; what still arrives cannot be sent.
        return Err(Counter::DropTooBig);
    }
    let next = next_hop(ctx, cfg, route, ifindex, inner_len + overhead, gso_size)?;
    let (dmac, smac) = match &next {
        NextHop::Resolved(hop) => (hop.dmac, hop.smac),
        // Placeholders the kernel overwrites once it resolved the neighbour.
        NextHop::Unresolved(_) => (cfg.underlay_mac, cfg.underlay_mac),
    };
    let outer_eth = EthHdr {
        dst: dmac,
        src: smac,
        proto: ETHERTYPE_IPV4,
    };
    // SAFETY: the helper only reads the skb.
    let sport = source_port(unsafe { bpf_get_hash_recalc(skb) });
    match backend {
        Backend::Vxlan => push_vxlan(ctx, cfg, route, outer_eth, inner, inner_len, sport)?,
        Backend::Udp => push_udp(ctx, cfg, route, outer_eth, inner, inner_len, sport)?,
    }
    // SAFETY: plain helper calls with scalar arguments; a null nexthop with length 0 is
    // bpf_redirect_neigh's documented "look it up" form.
    let action = match next {
        NextHop::Resolved(hop) if hop.ifindex == ifindex => TC_ACT_OK,
        NextHop::Resolved(hop) => unsafe { bpf_redirect(hop.ifindex, 0) as i32 },
        // The kernel routes the outer packet itself and resolves the neighbour (queueing the
        // packet meanwhile). Without a nexthop argument it also replaces the skb's route with
        // the underlay one, so a queued packet leaves with the underlay neighbour's MAC.
        NextHop::Unresolved(device) => unsafe {
            bpf_redirect_neigh(device, core::ptr::null_mut(), 0, 0) as i32
        },
    };
    let (packets, bytes) = match backend {
        Backend::Vxlan => (Counter::EncapVxlanPackets, Counter::EncapVxlanBytes),
        Backend::Udp => (Counter::EncapUdpPackets, Counter::EncapUdpBytes),
    };
    count(packets, u64::from(if gso_segs > 1 { gso_segs } else { 1 }));
    count(bytes, u64::from(inner_len));
    Ok(action)
}

#[inline(always)]
fn push_vxlan(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    route: &RouteTarget,
    outer_eth: EthHdr,
    inner: &Ipv4Hdr,
    inner_len: u32,
    sport: u16,
) -> Result<(), Counter> {
    let flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH
        | BPF_F_ADJ_ROOM_FIXED_GSO;
    let flags = u64::from(flags) | ((ETH_LEN as u64) << 56);
    ctx.adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| Counter::DropAdjustFailed)?;
    // Outer payload: UDP + VXLAN + inner Ethernet + inner IPv4.
    let udp_payload = 8 + ETH_LEN as u32 + inner_len;
    let headers = VxlanHeaders {
        outer_eth,
        outer_ip: Ipv4Hdr::outer_udp(
            cfg.underlay_ip,
            route.underlay_ip,
            8 + udp_payload,
            inner.tos,
        ),
        udp: UdpHdr::new(sport, cfg.vxlan_port, udp_payload),
        vxlan: VxlanHdr::new(cfg.vni),
        inner_eth: EthHdr {
            dst: route.vtep_mac,
            src: cfg.vtep_mac,
            proto: ETHERTYPE_IPV4,
        },
        inner_ip: *inner,
    };
    ctx.store(0, &headers, 0)
        .map_err(|_| Counter::DropAdjustFailed)
}

#[inline(always)]
fn push_udp(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    route: &RouteTarget,
    outer_eth: EthHdr,
    inner: &Ipv4Hdr,
    inner_len: u32,
    sport: u16,
) -> Result<(), Counter> {
    let flags =
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_FIXED_GSO;
    ctx.adjust_room(UDP_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, u64::from(flags))
        .map_err(|_| Counter::DropAdjustFailed)?;
    let headers = UdpHeaders {
        outer_eth,
        outer_ip: Ipv4Hdr::outer_udp(cfg.underlay_ip, route.underlay_ip, 8 + inner_len, inner.tos),
        udp: UdpHdr::new(sport, cfg.udp_port, inner_len),
        inner_ip: *inner,
    };
    ctx.store(0, &headers, 0)
        .map_err(|_| Counter::DropAdjustFailed)
}

/// The underlay next hop towards the route's node: the kernel's FIB and neighbour tables,
/// looked up from `ifindex` (or the hop cache, where the same lookup answered less than
/// `HOP_CACHE_NS` ago). `outer_len` is the IPv4 length the packet will have; one that is not
/// GSO must fit the hop's MTU.
#[inline(always)]
fn next_hop(
    ctx: &TcContext,
    cfg: &DataplaneConfig,
    route: &RouteTarget,
    ifindex: u32,
    outer_len: u32,
    gso_size: u32,
) -> Result<NextHop, Counter> {
    let key = HopKey {
        dst: route.underlay_ip,
        src: cfg.underlay_ip,
        kind: HopKind::Underlay as u8,
        tos: 0,
        _pad: [0; 2],
    };
    let hop = match cached_hop(&key) {
        Some(hop) => hop,
        None => {
            let mut slot = core::mem::MaybeUninit::uninit();
            let params = fib_params(
                &mut slot,
                ifindex,
                IPPROTO_UDP,
                0,
                cfg.underlay_ip,
                route.underlay_ip,
            );
            // SAFETY: params lives on this stack frame for the duration of the call.
            let rc = unsafe {
                fib_lookup(
                    ctx.skb.skb as *mut _,
                    params,
                    core::mem::size_of::<bpf_fib_lookup>() as i32,
                    BPF_FIB_LOOKUP_OUTPUT,
                )
            };
            if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
                return Ok(NextHop::Unresolved(params.ifindex));
            }
            if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
                return Err(Counter::DropNoUnderlayRoute);
            }
            cache_hop(&key, params)
        }
    };
    if gso_size == 0 && outer_len > hop.mtu {
        return Err(Counter::DropTooBig);
    }
    Ok(NextHop::Resolved(hop))
}
