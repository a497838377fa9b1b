//! One overlay route: its entry in the routes map, and the kernel route and neighbour that steer
//! the subnet's traffic to the underlay device.
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::Key;
use ipnetwork::Ipv4Network;
use shoal_dataplane_common::{Backend, RouteTarget as RawTarget};
use shoal_netlink::Route;

use crate::{MacAddr, Result, error::netlink_error};

/// Where packets for one remote subnet go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    /// Underlay address of the node leasing the subnet.
    pub underlay_ip: Ipv4Addr,
    /// That node's VTEP MAC (flannel's `VtepMAC`).
    pub vtep_mac: MacAddr,
    pub backend: Backend,
}

impl RouteTarget {
    pub(crate) fn to_raw(self) -> RawTarget {
        RawTarget {
            underlay_ip: self.underlay_ip.octets(),
            vtep_mac: self.vtep_mac.0,
            backend: self.backend as u8,
            _pad: 0,
        }
    }

    pub(crate) fn from_raw(raw: RawTarget) -> Option<Self> {
        Some(Self {
            underlay_ip: Ipv4Addr::from(raw.underlay_ip),
            vtep_mac: MacAddr(raw.vtep_mac),
            backend: Backend::from_u8(raw.backend)?,
        })
    }
}

pub(crate) fn route_key(subnet: Ipv4Network) -> Key<[u8; 4]> {
    Key::new(u32::from(subnet.prefix()), subnet.network().octets())
}

/// The kernel side of one overlay route, laid out as flanneld lays out `flannel.1`: the subnet
/// is routed on-link via its network address, whose neighbour entry is permanent. The route MTU
/// makes the kernel answer too-big packets exactly as it does for a VXLAN device of that MTU.
pub(crate) struct KernelRoute<'a> {
    /// The underlay device, by name (for errors) and index.
    pub interface: &'a str,
    pub index: u32,
    pub subnet: Ipv4Network,
    pub neighbour_mac: MacAddr,
    pub mtu: u32,
    pub source: Option<Ipv4Addr>,
}

impl KernelRoute<'_> {
    fn gateway(&self) -> Ipv4Addr {
        self.subnet.network()
    }

    pub(crate) fn install(&self) -> Result<()> {
        let (index, gateway, mac) = (self.index, self.gateway(), self.neighbour_mac.0);
        let route = Route {
            destination: self.subnet,
            gateway,
            device: index,
            mtu: Some(self.mtu),
            source: self.source,
        };
        shoal_netlink::block_on(|netlink| async move {
            netlink.replace_neighbour(index, gateway, mac).await?;
            netlink.replace_gateway_route(&route).await
        })
        .map_err(netlink_error(self.interface))
    }

    /// Removes the route and neighbour; entries already gone are not an error.
    pub(crate) fn remove(&self) -> Result<()> {
        let (index, gateway, subnet) = (self.index, self.gateway(), self.subnet);
        shoal_netlink::block_on(|netlink| async move {
            netlink.delete_routes_via(subnet, index).await?;
            netlink.delete_neighbour(index, gateway).await
        })
        .map_err(netlink_error(self.interface))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_targets_survive_the_map_encoding() {
        let target = RouteTarget {
            underlay_ip: Ipv4Addr::new(10, 99, 0, 2),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            backend: Backend::Udp,
        };
        assert_eq!(RouteTarget::from_raw(target.to_raw()), Some(target));
    }
}
