//! Local workloads for direct delivery: the endpoints and workload-ports maps, and keeping them
//! equal to the workloads the kernel knows.
use std::{net::Ipv4Addr, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use ipnetwork::Ipv4Network;
use shoal_dataplane_common::{ENDPOINTS_MAP, LocalEndpoint, WORKLOAD_PORTS_MAP, WorkloadPort};

use crate::{
    Error, MacAddr, Result,
    dataplane::take_map,
    discover::{FoundEndpoint, discover_endpoints},
    error::map_error,
    workload_hooks::hook_workload_devices,
};

/// Makes the endpoints map of the dataplane pinned in `pin_dir` hold the local workloads of
/// `subnet` the kernel knows now (see [`Dataplane::sync_endpoints`]), without loading or
/// attaching anything: for a periodic task beside the handle's owner, such as the agent's.
/// Returns how many are registered.
///
/// [`Dataplane::sync_endpoints`]: crate::Dataplane::sync_endpoints
pub fn sync_pinned_endpoints(pin_dir: &Path, subnet: Ipv4Network) -> Result<usize> {
    let mut maps = WorkloadMaps::from_pins(pin_dir)?;
    maps.reconcile(subnet, pin_dir)
}

/// The maps that describe local workloads: where to deliver to them, and which of the devices
/// they hang off are bridge ports.
pub(crate) struct WorkloadMaps {
    pub(crate) endpoints: BpfHashMap<MapData, [u8; 4], LocalEndpoint>,
    ports: BpfHashMap<MapData, u32, WorkloadPort>,
    /// Where the maps live, for errors.
    place: String,
}

impl WorkloadMaps {
    fn from_pins(pin_dir: &Path) -> Result<Self> {
        let place = pin_dir.display().to_string();
        let open = |name: &'static str| {
            MapData::from_pin(pin_dir.join(name))
                .map(aya::maps::Map::HashMap)
                .map_err(|source| map_error(name, &place, source))
        };
        let endpoints = BpfHashMap::try_from(open(ENDPOINTS_MAP)?)
            .map_err(|source| map_error(ENDPOINTS_MAP, &place, source))?;
        let ports = BpfHashMap::try_from(open(WORKLOAD_PORTS_MAP)?)
            .map_err(|source| map_error(WORKLOAD_PORTS_MAP, &place, source))?;
        Ok(Self {
            endpoints,
            ports,
            place,
        })
    }

    pub(crate) fn from_object(ebpf: &mut Ebpf, interface: &str) -> Result<Self> {
        let endpoints = BpfHashMap::try_from(take_map(ebpf, ENDPOINTS_MAP, interface)?)
            .map_err(|source| map_error(ENDPOINTS_MAP, interface, source))?;
        let ports = BpfHashMap::try_from(take_map(ebpf, WORKLOAD_PORTS_MAP, interface)?)
            .map_err(|source| map_error(WORKLOAD_PORTS_MAP, interface, source))?;
        Ok(Self {
            endpoints,
            ports,
            place: interface.to_string(),
        })
    }

    /// Replaces the registered endpoints with the workloads of `subnet` found in the kernel's
    /// tables, and hooks the devices they hang off (see [`hook_workload_devices`]): the bridge
    /// ports, registered with their bridge's MAC before they are hooked and forgotten only once
    /// unhooked, and the bridges and routed veths themselves.
    pub(crate) fn reconcile(&mut self, subnet: Ipv4Network, pin_dir: &Path) -> Result<usize> {
        let found = discover_endpoints(subnet)?;
        let endpoints: Vec<Endpoint> = found.iter().copied().map(Endpoint::from).collect();
        self.set_endpoints(&endpoints)?;
        let mut ports: Vec<(u32, WorkloadPort)> = found
            .iter()
            .filter_map(|endpoint| {
                let gateway_mac = endpoint.gateway_mac?.0;
                let port = WorkloadPort {
                    gateway_mac,
                    _pad: [0; 2],
                };
                Some((endpoint.port_ifindex, port))
            })
            .collect();
        ports.sort_unstable_by_key(|(ifindex, _)| *ifindex);
        ports.dedup_by_key(|(ifindex, _)| *ifindex);
        for (ifindex, port) in &ports {
            self.ports
                .insert(ifindex, port, 0)
                .map_err(|source| self.error(WORKLOAD_PORTS_MAP, source))?;
        }
        let mut devices: Vec<u32> = endpoints
            .iter()
            .map(|endpoint| endpoint.via_ifindex)
            .chain(ports.iter().map(|(ifindex, _)| *ifindex))
            .collect();
        devices.sort_unstable();
        devices.dedup();
        hook_workload_devices(pin_dir, &devices)?;
        let kept: Vec<u32> = ports.iter().map(|(ifindex, _)| *ifindex).collect();
        remove_keys_except(&mut self.ports, &kept)
            .map_err(|source| self.error(WORKLOAD_PORTS_MAP, source))?;
        Ok(endpoints.len())
    }

    fn set_endpoints(&mut self, endpoints: &[Endpoint]) -> Result<()> {
        let kept: Vec<[u8; 4]> = endpoints
            .iter()
            .map(|endpoint| endpoint.address.octets())
            .collect();
        remove_keys_except(&mut self.endpoints, &kept)
            .map_err(|source| self.error(ENDPOINTS_MAP, source))?;
        for endpoint in endpoints {
            self.endpoints
                .insert(endpoint.address.octets(), endpoint.to_raw(), 0)
                .map_err(|source| self.error(ENDPOINTS_MAP, source))?;
        }
        Ok(())
    }

    fn error(&self, map: &'static str, source: aya::maps::MapError) -> Error {
        map_error(map, &self.place, source)
    }
}

/// Removes every key of `map` not in `kept`.
fn remove_keys_except<K: aya::Pod + PartialEq, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    kept: &[K],
) -> Result<(), aya::maps::MapError> {
    let registered: Vec<K> = map.keys().collect::<Result<_, _>>()?;
    for key in registered.iter().filter(|key| !kept.contains(key)) {
        remove_key(map, key)?;
    }
    Ok(())
}

/// Removes `key` from `map`; a key already gone is not an error.
pub(crate) fn remove_key<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    key: &K,
) -> Result<(), aya::maps::MapError> {
    match map.remove(key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(source),
    }
}

/// A local workload the TC decapsulation delivers to directly, past the kernel's forwarding path
/// and bridge (used only while the kernel's FIB still resolves `address` to `via_ifindex` and
/// `mac`; anything else goes the kernel's way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub mac: MacAddr,
    /// The device the kernel routes `address` to (a bridge, or a routed veth).
    pub via_ifindex: u32,
    /// The device frames for it leave on (the bridge port, or `via_ifindex`).
    pub port_ifindex: u32,
    /// `port_ifindex` is a veth: the packet enters the workload's namespace directly.
    pub port_is_veth: bool,
}

impl Endpoint {
    pub(crate) fn to_raw(self) -> LocalEndpoint {
        LocalEndpoint {
            port_ifindex: self.port_ifindex,
            via_ifindex: self.via_ifindex,
            mac: self.mac.0,
            peer: u8::from(self.port_is_veth),
            _pad: 0,
        }
    }

    pub(crate) fn from_raw(address: [u8; 4], raw: LocalEndpoint) -> Self {
        Self {
            address: Ipv4Addr::from(address),
            mac: MacAddr(raw.mac),
            via_ifindex: raw.via_ifindex,
            port_ifindex: raw.port_ifindex,
            port_is_veth: raw.peer != 0,
        }
    }
}

impl From<FoundEndpoint> for Endpoint {
    fn from(found: FoundEndpoint) -> Self {
        Self {
            address: found.address,
            mac: found.mac,
            via_ifindex: found.via_ifindex,
            port_ifindex: found.port_ifindex,
            port_is_veth: found.port_is_veth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_survive_the_map_encoding() {
        let endpoint = Endpoint {
            address: Ipv4Addr::new(10, 244, 1, 2),
            mac: MacAddr([2, 0, 0, 0, 0, 7]),
            via_ifindex: 3,
            port_ifindex: 9,
            port_is_veth: true,
        };
        assert_eq!(
            Endpoint::from_raw(endpoint.address.octets(), endpoint.to_raw()),
            endpoint
        );
    }
}
