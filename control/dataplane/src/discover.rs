//! The local workloads the kernel's tables show, however they were wired: resolved neighbour
//! entries, with their bridge port from the bridge's forwarding database.
use std::{
    collections::{HashMap, hash_map::Entry},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use shoal_netlink::{LinkInfo, Neighbour, Netlink};

use crate::{MacAddr, Result, error::netlink_error};

/// A local workload found in the kernel's tables (see [`discover_endpoints`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FoundEndpoint {
    pub address: Ipv4Addr,
    pub mac: MacAddr,
    /// The device the kernel routes the address to (its neighbour entry's device).
    pub via_ifindex: u32,
    /// The device frames for it leave on: the bridge port holding its MAC, or `via` itself.
    pub port_ifindex: u32,
    pub port_is_veth: bool,
    /// The bridge's own MAC, which the workload's default route resolves to, when `via` is a
    /// bridge (`port_ifindex` then is one of its ports).
    pub gateway_mac: Option<MacAddr>,
}

/// Workloads in `subnet` as the kernel knows them, however they were wired: each resolved
/// neighbour entry in the subnet, on a bridge (the port from the bridge's forwarding database)
/// or directly on a device (a routed veth, as CNI's ptp plugin makes).
pub(crate) fn discover_endpoints(subnet: Ipv4Network) -> Result<Vec<FoundEndpoint>> {
    shoal_netlink::block_on(|netlink| async move { discover(&netlink, subnet).await })
        .map_err(netlink_error(&format!("workloads of {subnet}")))
}

async fn discover(
    netlink: &Netlink,
    subnet: Ipv4Network,
) -> shoal_netlink::Result<Vec<FoundEndpoint>> {
    let links = netlink.links().await?;
    let by_index: HashMap<u32, &LinkInfo> = links.iter().map(|link| (link.index, link)).collect();
    let mut bridge_ports: HashMap<u32, HashMap<MacAddr, u32>> = HashMap::new();
    let mut found = Vec::new();
    for neighbour in netlink.ipv4_neighbours().await? {
        let Some((address, mac)) = usable_neighbour(&neighbour, subnet) else {
            continue;
        };
        let Some(via) = by_index.get(&neighbour.index) else {
            continue;
        };
        let on_bridge = via.is_bridge();
        let port_index = if on_bridge {
            let ports = match bridge_ports.entry(via.index) {
                Entry::Occupied(ports) => ports.into_mut(),
                Entry::Vacant(slot) => slot.insert(bridge_fdb(netlink, via.index).await?),
            };
            match ports.get(&mac) {
                Some(port) => *port,
                None => continue,
            }
        } else {
            via.index
        };
        let Some(port) = by_index.get(&port_index) else {
            continue;
        };
        found.push(FoundEndpoint {
            address,
            mac,
            via_ifindex: via.index,
            port_ifindex: port.index,
            port_is_veth: port.is_veth(),
            gateway_mac: if on_bridge {
                via.mac.map(MacAddr)
            } else {
                None
            },
        });
    }
    Ok(found)
}

/// Address and MAC of a neighbour entry in `subnet` that resolves to a MAC.
fn usable_neighbour(neighbour: &Neighbour, subnet: Ipv4Network) -> Option<(Ipv4Addr, MacAddr)> {
    let address = neighbour.address;
    if !subnet.contains(address) || address == subnet.network() || address == subnet.broadcast() {
        return None;
    }
    if !neighbour.is_usable() {
        return None;
    }
    Some((address, MacAddr(neighbour.mac?)))
}

/// MAC -> port of the addresses `bridge` learned or was given on its ports (a port's own `self`
/// entries left out).
async fn bridge_fdb(
    netlink: &Netlink,
    bridge: u32,
) -> shoal_netlink::Result<HashMap<MacAddr, u32>> {
    Ok(netlink
        .bridge_fdb(bridge)
        .await?
        .into_iter()
        .map(|entry| (MacAddr(entry.mac), entry.port))
        .collect())
}
