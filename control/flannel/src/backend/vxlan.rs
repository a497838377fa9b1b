//! `vxlan` through the kernel's VXLAN device, configured exactly as flanneld's vxlan backend
//! does: a `flannel.<VNI>` device, and per peer an onlink route via the peer subnet's network
//! address, a permanent neighbour entry and an FDB entry carrying the peer's VtepMAC.
//! `DirectRouting` peers on the same L2 segment get a plain route instead.
use std::collections::HashMap;

use ipnetwork::Ipv4Network;
use shoal_netlink::{Netlink, OverlayRoute, VxlanDevice};

use super::{Backend, BackendError, BackendResult, Underlay, prune_routes};
use crate::{
    config::VxlanConfig,
    lease::{BackendData, Lease, VxlanBackendData, format_mac},
};

#[derive(Debug)]
pub struct KernelVxlan {
    netlink: Netlink,
    underlay: Underlay,
    config: VxlanConfig,
    device: Option<u32>,
    /// What was programmed per peer subnet, to undo it exactly.
    peers: HashMap<Ipv4Network, Programmed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Programmed {
    Direct,
    Tunnel {
        mac: [u8; 6],
        public_ip: std::net::Ipv4Addr,
    },
}

impl KernelVxlan {
    pub fn new(netlink: Netlink, underlay: Underlay, config: VxlanConfig) -> Self {
        Self {
            netlink,
            underlay,
            config,
            device: None,
            peers: HashMap::new(),
        }
    }

    fn device_name(&self) -> String {
        format!("flannel.{}", self.config.vni)
    }

    fn device(&self) -> BackendResult<u32> {
        self.device
            .ok_or_else(|| BackendError::Device(format!("{} was not prepared", self.device_name())))
    }

    async fn undo(&mut self, subnet: Ipv4Network, programmed: Programmed) -> BackendResult<()> {
        self.netlink.delete_route(subnet).await?;
        if let Programmed::Tunnel { mac, public_ip } = programmed {
            let device = self.device()?;
            self.netlink
                .delete_neighbour(device, subnet.network())
                .await?;
            self.netlink.delete_fdb(device, mac, public_ip).await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Backend for KernelVxlan {
    fn type_name(&self) -> &'static str {
        "vxlan"
    }

    async fn prepare(&mut self) -> BackendResult<Option<BackendData>> {
        let spec = VxlanDevice {
            name: self.device_name(),
            vni: self.config.vni,
            port: self.config.port,
            local: self.underlay.public_ip,
            underlay_index: self.underlay.index,
            mtu: self.config.mtu.unwrap_or(
                self.underlay
                    .mtu
                    .saturating_sub(crate::config::VXLAN_OVERHEAD),
            ),
        };
        let link = self.netlink.ensure_vxlan(&spec).await?;
        self.device = Some(link.index);
        let mac = link
            .mac
            .ok_or_else(|| BackendError::Device(format!("{} has no MAC address", link.name)))?;
        let data = VxlanBackendData {
            vni: self.config.vni,
            vtep_mac: format_mac(mac),
        };
        Ok(Some(BackendData::encode(&data)?))
    }

    async fn configure(&mut self, own: Ipv4Network) -> BackendResult<()> {
        let device = self.device()?;
        // flannel gives the device the subnet's network address as a /32.
        let address = Ipv4Network::new(own.network(), 32)
            .map_err(|err| BackendError::Device(format!("address for {own}: {err}")))?;
        self.netlink.ensure_address(device, address).await?;
        Ok(())
    }

    async fn add_peer(&mut self, lease: &Lease) -> BackendResult<()> {
        let direct =
            self.config.direct_routing && self.netlink.is_on_link(lease.attrs.public_ip).await?;
        let programmed = if direct {
            let route = OverlayRoute {
                destination: lease.subnet,
                gateway: lease.attrs.public_ip,
                device: None,
            };
            self.netlink.replace_route(&route).await?;
            Programmed::Direct
        } else {
            let data: VxlanBackendData =
                lease.vxlan_data().ok_or(BackendError::BadBackendData {
                    subnet: lease.subnet,
                    public_ip: lease.attrs.public_ip,
                })?;
            let mac = data.mac_bytes().ok_or(BackendError::BadBackendData {
                subnet: lease.subnet,
                public_ip: lease.attrs.public_ip,
            })?;
            let device = self.device()?;
            let gateway = lease.subnet.network();
            self.netlink.replace_neighbour(device, gateway, mac).await?;
            self.netlink
                .replace_fdb(device, mac, lease.attrs.public_ip)
                .await?;
            let route = OverlayRoute {
                destination: lease.subnet,
                gateway,
                device: Some(device),
            };
            self.netlink.replace_route(&route).await?;
            Programmed::Tunnel {
                mac,
                public_ip: lease.attrs.public_ip,
            }
        };
        let previous = self.peers.insert(lease.subnet, programmed);
        if let Some(Programmed::Tunnel { mac, public_ip }) = previous
            && previous != Some(programmed)
        {
            // The peer moved (new VtepMAC or address): drop the stale FDB entry.
            self.netlink
                .delete_fdb(self.device()?, mac, public_ip)
                .await?;
        }
        Ok(())
    }

    async fn remove_peer(&mut self, lease: &Lease) -> BackendResult<()> {
        match self.peers.remove(&lease.subnet) {
            Some(programmed) => self.undo(lease.subnet, programmed).await,
            None => Ok(self.netlink.delete_route(lease.subnet).await?),
        }
    }

    async fn prune(&mut self, keep: &[Ipv4Network]) -> BackendResult<()> {
        prune_routes(&self.netlink, keep).await
    }
}
