//! The pinned maps shared with userspace (names and value types in `shoal_dataplane_common`).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
};
use shoal_dataplane_common::{
    COUNTER_COUNT, Counter, DataplaneConfig, LocalEndpoint, MAX_ENDPOINTS, MAX_ROUTES, RouteTarget,
    WorkloadPort,
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

#[inline(always)]
pub fn count(counter: Counter, value: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful per-CPU lookup; only this CPU writes it.
        unsafe { *slot += value };
    }
}
