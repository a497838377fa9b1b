//! The pinned maps shared with userspace (names and value types in `shoal_dataplane_common`).
use aya_ebpf::{
    bindings::bpf_fib_lookup,
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use shoal_dataplane_common::{
    COUNTER_COUNT, CachedHop, Counter, DataplaneConfig, HOP_CACHE_NS, HopKey, LocalEndpoint,
    MAX_ENDPOINTS, MAX_HOPS, MAX_ROUTES, RouteTarget, WorkloadPort,
};

/// Remote subnet -> the node leasing it. Key data: the IPv4 address, network order.
#[map]
static ROUTES: LpmTrie<[u8; 4], RouteTarget> = LpmTrie::pinned(MAX_ROUTES, 0);

/// Entry 0: this node's [`DataplaneConfig`].
#[map]
static CONFIG: Array<DataplaneConfig> = Array::pinned(1, 0);

/// Per-CPU [`Counter`]s.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

/// Local workload address (network order) -> how to deliver to it directly.
#[map]
static ENDPOINTS: HashMap<[u8; 4], LocalEndpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Bridge port ifindex -> what frames on it the host routes.
#[map]
static WORKLOAD_PORTS: HashMap<u32, WorkloadPort> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// FIB lookups the programs made, reused for [`HOP_CACHE_NS`]. Not pinned: a cache, which each
/// loaded object starts empty (a takeover's new programs fill their own).
#[map]
static HOPS: LruHashMap<HopKey, CachedHop> = LruHashMap::with_max_entries(MAX_HOPS, 0);

#[inline(always)]
pub fn config() -> Option<&'static DataplaneConfig> {
    CONFIG.get(0)
}

/// The route covering `addr` (longest prefix match).
#[inline(always)]
pub fn route_for(addr: [u8; 4]) -> Option<&'static RouteTarget> {
    ROUTES.get(Key::new(32, addr))
}

/// The direct-delivery entry of a local workload address, if userspace registered one.
#[inline(always)]
pub fn endpoint_for(addr: [u8; 4]) -> Option<LocalEndpoint> {
    // SAFETY: the value is copied out at once; a concurrent update replaces the entry whole.
    unsafe { ENDPOINTS.get(&addr).copied() }
}

/// The bridge port `ifindex` is, if userspace hooked it as one.
#[inline(always)]
pub fn workload_port(ifindex: u32) -> Option<WorkloadPort> {
    // SAFETY: the value is copied out at once; a concurrent update replaces the entry whole.
    unsafe { WORKLOAD_PORTS.get(&ifindex).copied() }
}

/// The answer a FIB lookup gave for `key` less than [`HOP_CACHE_NS`] ago. The lookup checked the
/// packet it was given against the egress MTU; the caller checks each later packet against
/// [`CachedHop::mtu`].
#[inline(always)]
pub fn cached_hop(key: &HopKey) -> Option<CachedHop> {
    // SAFETY: the value is copied out at once; a refresh replaces the entry whole.
    let hop = unsafe { HOPS.get(key).copied() }?;
    let age = now_ns().wrapping_sub(hop.checked_ns);
    (age < HOP_CACHE_NS).then_some(hop)
}

/// Remembers a successful FIB lookup (its `params` after the call) for `key` from now on.
#[inline(always)]
pub fn cache_hop(key: &HopKey, params: &bpf_fib_lookup) -> CachedHop {
    let hop = hop_from(params);
    remember_hop(key, &hop);
    hop
}

/// What a successful FIB lookup answered (its `params` after the call), stamped now, not yet
/// cached.
#[inline(always)]
pub fn hop_from(params: &bpf_fib_lookup) -> CachedHop {
    CachedHop {
        dmac: params.dmac,
        smac: params.smac,
        ifindex: params.ifindex,
        // SAFETY: a successful lookup with tot_len 0 leaves the egress MTU in this union.
        mtu: u32::from(unsafe { params.__bindgen_anon_1.mtu_result }),
        deliver_ifindex: 0,
        checked_ns: now_ns(),
        deliver_peer: 0,
        _pad: [0; 7],
    }
}

/// Caches `hop` for `key` until [`HOP_CACHE_NS`] after its lookup.
#[inline(always)]
pub fn remember_hop(key: &HopKey, hop: &CachedHop) {
    // A full cache evicts its least recently used entry; a failed insert only costs a lookup.
    let _ = HOPS.insert(key, hop, 0);
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn count(counter: Counter, value: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful per-CPU lookup; only this CPU writes it.
        unsafe { *slot += value };
    }
}
