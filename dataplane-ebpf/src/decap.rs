//! Decapsulation on the underlay ingress: the checks every overlay packet must pass
//! ([`classify`]), then the XDP and TC variants that strip the outer headers and hand the inner
//! packet to the kernel, which routes it to the workload (so any kind of workload wiring works).
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, xdp_action,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_peer, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};
use shoal_dataplane_common::{
    Backend, CachedHop, Counter, DataplaneConfig, HopKey, HopKind, LocalEndpoint, UDP_OVERHEAD,
    VXLAN_OVERHEAD,
};

use crate::{
    headers::{
        ETH_LEN, ETHERTYPE_IPV4, EthHdr, IPPROTO_UDP, IPV4_LEN, IPV4_NO_OPTIONS, Ipv4Hdr, UDP_LEN,
        UdpHdr, VXLAN_LEN, VxlanHdr, fib_params, in_subnet,
    },
    maps::{cached_hop, config, count, endpoint_for, hop_from, remember_hop, route_for},
};

/// Offsets with an option-less outer IPv4 header.
const OUTER_IP: usize = ETH_LEN;
const OUTER_UDP: usize = OUTER_IP + IPV4_LEN;
const VXLAN: usize = OUTER_UDP + UDP_LEN;
const VXLAN_INNER_ETH: usize = VXLAN + VXLAN_LEN;
const VXLAN_INNER_IP: usize = VXLAN_INNER_ETH + ETH_LEN;
const UDP_INNER_IP: usize = OUTER_UDP + UDP_LEN;

/// The Ethernet and IPv4 headers of a packet delivered directly.
#[repr(C)]
struct ForwardedHead {
    eth: EthHdr,
    ip: Ipv4Hdr,
}

/// What to do with a frame arriving on the underlay.
pub enum Verdict {
    /// Not overlay traffic: the kernel gets it untouched.
    Pass,
    /// Overlay-looking traffic the kernel should judge (counted).
    PassCounted(Counter),
    Drop(Counter),
    /// A valid overlay packet for a local workload.
    Decap(Backend),
}

/// A `T` at `offset` of the linear packet data, if it lies inside it.
#[inline(always)]
fn at<T>(start: usize, end: usize, offset: usize) -> Option<&'static T> {
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; T has alignment 1.
    Some(unsafe { &*((start + offset) as *const T) })
}

/// Judges one frame. `start..end` is the linear data (checked by the verifier), `frame_len` the
/// whole frame's length (larger than `end - start` for non-linear TC skbs).
#[inline(always)]
pub fn classify(start: usize, end: usize, frame_len: usize, cfg: &DataplaneConfig) -> Verdict {
    let Some(eth) = at::<EthHdr>(start, end, 0) else {
        return Verdict::Pass;
    };
    if eth.proto != ETHERTYPE_IPV4 {
        return Verdict::Pass;
    }
    let Some(outer) = at::<Ipv4Hdr>(start, end, OUTER_IP) else {
        return Verdict::Pass;
    };
    if outer.dst != cfg.underlay_ip || outer.proto != IPPROTO_UDP {
        return Verdict::Pass;
    }
    if outer.version_ihl != IPV4_NO_OPTIONS {
        return Verdict::PassCounted(Counter::PassIpOptions);
    }
    if outer.is_fragment() {
        return Verdict::PassCounted(Counter::PassFragment);
    }
    let Some(udp) = at::<UdpHdr>(start, end, OUTER_UDP) else {
        return Verdict::Pass;
    };
    let (backend, inner_ip_offset) = if udp.dport == cfg.vxlan_port {
        (Backend::Vxlan, VXLAN_INNER_IP)
    } else if udp.dport == cfg.udp_port {
        (Backend::Udp, UDP_INNER_IP)
    } else {
        return Verdict::Pass;
    };
    if outer.total_len() + ETH_LEN > frame_len
        || usize::from(u16::from_be_bytes(udp.len)) + OUTER_UDP > outer.total_len() + ETH_LEN
    {
        return Verdict::Drop(Counter::DropTruncated);
    }
    if backend == Backend::Vxlan {
        if let Err(reason) = check_vxlan(start, end, cfg) {
            return Verdict::Drop(reason);
        }
    }
    match check_inner(start, end, inner_ip_offset, outer, backend, cfg) {
        Ok(()) => Verdict::Decap(backend),
        Err(reason) => Verdict::Drop(reason),
    }
}

#[inline(always)]
fn check_vxlan(start: usize, end: usize, cfg: &DataplaneConfig) -> Result<(), Counter> {
    let vxlan = at::<VxlanHdr>(start, end, VXLAN).ok_or(Counter::DropTruncated)?;
    if !vxlan.is_valid() {
        return Err(Counter::DropBadVxlanHeader);
    }
    if vxlan.vni() != cfg.vni {
        return Err(Counter::DropWrongVni);
    }
    let inner_eth = at::<EthHdr>(start, end, VXLAN_INNER_ETH).ok_or(Counter::DropTruncated)?;
    if inner_eth.proto != ETHERTYPE_IPV4 {
        return Err(Counter::DropInnerNotIpv4);
    }
    if inner_eth.dst != cfg.vtep_mac {
        return Err(Counter::DropWrongInnerMac);
    }
    Ok(())
}

/// The inner IPv4 header must be sound, addressed to this node's subnet, and come from a subnet
/// leased by the node that sent the outer packet, over the same backend (anti-spoofing).
#[inline(always)]
fn check_inner(
    start: usize,
    end: usize,
    offset: usize,
    outer: &Ipv4Hdr,
    backend: Backend,
    cfg: &DataplaneConfig,
) -> Result<(), Counter> {
    let inner = at::<Ipv4Hdr>(start, end, offset).ok_or(Counter::DropTruncated)?;
    if inner.version_ihl >> 4 != 4 || inner.version_ihl & 0x0f < 5 {
        return Err(Counter::DropInnerNotIpv4);
    }
    if inner.total_len() + offset > outer.total_len() + ETH_LEN {
        return Err(Counter::DropTruncated);
    }
    if !in_subnet(inner.dst, cfg.local_subnet, cfg.local_mask) {
        return Err(Counter::DropInnerNotLocal);
    }
    let route = route_for(inner.src).ok_or(Counter::DropNoLease)?;
    if route.underlay_ip != outer.src || route.backend != backend as u8 {
        return Err(Counter::DropNoLease);
    }
    Ok(())
}

#[inline(always)]
fn decap_counters(backend: Backend) -> (Counter, Counter) {
    match backend {
        Backend::Vxlan => (Counter::DecapVxlanPackets, Counter::DecapVxlanBytes),
        Backend::Udp => (Counter::DecapUdpPackets, Counter::DecapUdpBytes),
    }
}

/// XDP on the underlay: strip the outer headers in place and pass the inner frame to the stack.
#[inline(always)]
pub fn xdp_ingress(ctx: &XdpContext) -> u32 {
    let Some(cfg) = config() else {
        count(Counter::PassUnconfigured, 1);
        return xdp_action::XDP_PASS;
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    let frame_len = end - start;
    match classify(start, end, frame_len, cfg) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::PassCounted(counter) => {
            count(counter, 1);
            xdp_action::XDP_PASS
        }
        Verdict::Drop(counter) => {
            count(counter, 1);
            xdp_action::XDP_DROP
        }
        Verdict::Decap(backend) => match xdp_strip(ctx, backend, cfg) {
            Ok(inner_len) => {
                let (packets, bytes) = decap_counters(backend);
                count(packets, 1);
                count(bytes, inner_len as u64);
                xdp_action::XDP_PASS
            }
            Err(counter) => {
                count(counter, 1);
                xdp_action::XDP_DROP
            }
        },
    }
}

/// Removes the outer headers and leaves an Ethernet frame addressed to the underlay device, so
/// the stack takes it as its own and routes the inner packet. Returns the new frame length.
#[inline(always)]
fn xdp_strip(ctx: &XdpContext, backend: Backend, cfg: &DataplaneConfig) -> Result<usize, Counter> {
    let start = ctx.data();
    let outer_eth = *at::<EthHdr>(start, ctx.data_end(), 0).ok_or(Counter::DropTruncated)?;
    let strip = match backend {
        Backend::Vxlan => VXLAN_OVERHEAD,
        Backend::Udp => UDP_OVERHEAD,
    };
    // SAFETY: the helper only moves data; the context pointer comes from the kernel.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip as i32) } != 0 {
        return Err(Counter::DropAdjustFailed);
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_LEN > end {
        return Err(Counter::DropTruncated);
    }
    let eth = start as *mut EthHdr;
    // SAFETY: 14 bytes checked above; EthHdr has alignment 1.
    unsafe {
        (*eth).dst = cfg.underlay_mac;
        if backend == Backend::Udp {
            // flannel's udp format has no inner Ethernet: build one in the bytes that held the
            // end of the outer IPv4 header and the UDP header.
            (*eth).src = outer_eth.src;
            (*eth).proto = ETHERTYPE_IPV4;
        }
    }
    Ok(end - start)
}

/// TC variant of the ingress path: the kernel shrinks the skb, keeping its GSO state, so a
/// 64 KB GSO packet of a veth underlay is decapsulated once. The inner packet then goes straight
/// to a registered local workload ([`deliver_direct`]) or to the kernel, which forwards it.
#[inline(always)]
pub fn tc_ingress(ctx: &TcContext) -> i32 {
    let Some(cfg) = config() else {
        count(Counter::PassUnconfigured, 1);
        return TC_ACT_OK;
    };
    let frame_len = ctx.len() as usize;
    let needed = VXLAN_INNER_IP + IPV4_LEN;
    let pull = if frame_len < needed {
        frame_len
    } else {
        needed
    };
    if ctx.data() + pull > ctx.data_end() {
        // A failed pull just leaves less linear data; classify() then passes or drops.
        let _ = ctx.pull_data(pull as u32);
    }
    match classify(ctx.data(), ctx.data_end(), frame_len, cfg) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::PassCounted(counter) => {
            count(counter, 1);
            TC_ACT_OK
        }
        Verdict::Drop(counter) => {
            count(counter, 1);
            TC_ACT_SHOT
        }
        Verdict::Decap(backend) => {
            let strip = match backend {
                Backend::Vxlan => VXLAN_OVERHEAD,
                Backend::Udp => UDP_OVERHEAD,
            };
            let flags = u64::from(BPF_F_ADJ_ROOM_DECAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO);
            if ctx
                .adjust_room(-(strip as i32), BPF_ADJ_ROOM_MAC, flags)
                .is_err()
            {
                count(Counter::DropAdjustFailed, 1);
                return TC_ACT_SHOT;
            }
            let (packets, bytes) = decap_counters(backend);
            count(packets, 1);
            count(bytes, u64::from(ctx.len()));
            deliver_direct(ctx, cfg).unwrap_or(TC_ACT_OK)
        }
    }
}

/// Hands a decapsulated packet (Ethernet + inner IPv4 from offset 0) straight to the local
/// workload's device, doing what the kernel's forwarding would (TTL, MACs) without its forwarding
/// path or the bridge. Only for workloads userspace registered, and only while the kernel's FIB
/// lookup of the address still ends at the registered device and neighbour MAC; anything else
/// (`None`) is left to the kernel, which also answers expiring TTLs and too-big packets.
///
/// On kernels before `BPF_F_ADJ_ROOM_DECAP_L4_UDP` the decapsulated GSO packet keeps
/// `skb->encapsulation`, and a bridge (whose `hw_enc_features` lack TSO and checksumming) would
/// then segment it in software; a veth keeps it whole.
#[inline(always)]
fn deliver_direct(ctx: &TcContext, cfg: &DataplaneConfig) -> Option<i32> {
    // In place: the classified headers were linear, and the decapsulation kept them so.
    let inner = *at::<Ipv4Hdr>(ctx.data(), ctx.data_end(), ETH_LEN)?;
    if inner.ttl <= 1 {
        return None;
    }
    let hop = direct_hop(ctx, cfg, &inner)?;
    // The frame as the kernel would forward it, in one store: the next hop's MACs, the
    // inner header with TTL - 1.
    let head = ForwardedHead {
        eth: EthHdr {
            dst: hop.dmac,
            src: hop.smac,
            proto: ETHERTYPE_IPV4,
        },
        ip: inner.forwarded(),
    };
    ctx.store(0, &head, 0).ok()?;
    count(Counter::DeliverDirectPackets, 1);
    // SAFETY: plain helper calls with scalar arguments.
    let action = unsafe {
        if hop.deliver_peer != 0 {
            bpf_redirect_peer(hop.deliver_ifindex, 0)
        } else {
            bpf_redirect(hop.deliver_ifindex, 0)
        }
    };
    Some(action as i32)
}

/// The kernel's own next hop for the decapsulated `inner` packet (its FIB and neighbour lookup
/// from the underlay device), when it ends at the registered endpoint of the destination, with
/// that endpoint's device in `deliver_ifindex`; `None` where the kernel has no resolved answer or
/// it ends elsewhere.
///
/// A flow's packets take one hop cache lookup: the cached answer carries the endpoint it was
/// checked against, so the endpoints map and the FIB are asked once per `HOP_CACHE_NS` (an
/// endpoint userspace removes or changes is followed within that time, as a route or neighbour
/// change is). A registration takes effect at once: an answer cached without a match is checked
/// against the endpoints map again.
#[inline(always)]
fn direct_hop(ctx: &TcContext, cfg: &DataplaneConfig, inner: &Ipv4Hdr) -> Option<CachedHop> {
    let key = HopKey {
        dst: inner.dst,
        src: inner.src,
        kind: HopKind::Workload as u8,
        tos: inner.tos,
        _pad: [0; 2],
    };
    if let Some(hop) = cached_hop(&key) {
        // SAFETY: reading a field of the kernel-provided __sk_buff context.
        let gso_size = unsafe { (*ctx.skb.skb).gso_size };
        // What the lookup checked (the kernel's is_skb_forwardable): a frame that is not GSO
        // fits the MTU plus an Ethernet header and one VLAN tag.
        if gso_size == 0 && ctx.len() > hop.mtu + 18 {
            return None;
        }
        if hop.deliver_ifindex != 0 {
            return Some(hop);
        }
        return matching_endpoint(hop, endpoint_for(inner.dst)?);
    }
    // Only registered workloads are worth a FIB lookup.
    let endpoint = endpoint_for(inner.dst)?;
    let mut slot = core::mem::MaybeUninit::uninit();
    let params = fib_params(
        &mut slot,
        cfg.underlay_ifindex,
        inner.proto,
        inner.tos,
        inner.src,
        inner.dst,
    );
    // SAFETY: params lives on this stack frame for the duration of the call. tot_len 0: the
    // kernel checks the skb itself against the egress MTU (GSO-aware).
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return None;
    }
    let answer = hop_from(params);
    let verified = matching_endpoint(answer, endpoint);
    remember_hop(&key, verified.as_ref().unwrap_or(&answer));
    verified
}

/// `hop` with `endpoint`'s device to deliver to, if the kernel's answer ends at that endpoint.
#[inline(always)]
fn matching_endpoint(hop: CachedHop, endpoint: LocalEndpoint) -> Option<CachedHop> {
    if hop.ifindex != endpoint.via_ifindex || hop.dmac != endpoint.mac {
        return None;
    }
    Some(CachedHop {
        deliver_ifindex: endpoint.port_ifindex,
        deliver_peer: endpoint.peer,
        ..hop
    })
}
