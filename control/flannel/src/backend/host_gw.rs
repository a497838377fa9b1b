//! `host-gw`: a plain route per peer subnet via the peer's public IP. Peers must share an L2
//! segment; no encapsulation.
use super::{Backend, BackendResult, prune_routes};
use ipnetwork::Ipv4Network;
use shoal_netlink::{Netlink, OverlayRoute};

use crate::lease::{BackendData, Lease};

#[derive(Debug)]
pub struct HostGw {
    netlink: Netlink,
}

impl HostGw {
    pub fn new(netlink: Netlink) -> Self {
        Self { netlink }
    }
}

#[async_trait::async_trait]
impl Backend for HostGw {
    fn type_name(&self) -> &'static str {
        "host-gw"
    }

    async fn prepare(&mut self) -> BackendResult<Option<BackendData>> {
        Ok(None)
    }

    async fn configure(&mut self, _own: Ipv4Network) -> BackendResult<()> {
        Ok(())
    }

    async fn add_peer(&mut self, lease: &Lease) -> BackendResult<()> {
        let route = OverlayRoute {
            destination: lease.subnet,
            gateway: lease.attrs.public_ip,
            device: None,
        };
        Ok(self.netlink.replace_route(&route).await?)
    }

    async fn remove_peer(&mut self, lease: &Lease) -> BackendResult<()> {
        Ok(self.netlink.delete_route(lease.subnet).await?)
    }

    async fn prune(&mut self, keep: &[Ipv4Network]) -> BackendResult<()> {
        prune_routes(&self.netlink, keep).await
    }
}
