//! `vxlan` and `udp` through shoal's eBPF dataplane (`shoal_dataplane`): the programs attach to
//! the underlay interface, and each peer is one entry in the dataplane's route map (plus the
//! on-link kernel route and neighbour the dataplane installs). The VtepMAC in this node's lease
//! is the dataplane's, so flanneld nodes (kernel `flannel.1`) and shoal nodes interoperate.
use std::{collections::HashSet, path::PathBuf};

use ipnetwork::Ipv4Network;
use shoal_dataplane::{Backend as Encapsulation, Config, Dataplane, MacAddr, RouteTarget};
use shoal_netlink::{Netlink, OverlayRoute};

use super::{Backend, BackendError, BackendResult, Underlay, prune_routes};
use crate::{
    lease::{BackendData, Lease, VxlanBackendData, format_mac},
    subnet_env::gateway_of,
};
use shoal_store_client::Chain;

/// What the eBPF backend needs besides the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfSettings {
    pub encapsulation: Encapsulation,
    pub vni: u32,
    pub port: u16,
    /// bpffs directory for the pinned maps and links.
    pub pin_root: PathBuf,
    /// Use the workload bridge's address as the source of locally originated overlay traffic.
    pub source_from_bridge: bool,
    /// vxlan's DirectRouting: plain routes to peers on the same L2 segment.
    pub direct_routing: bool,
    /// Register local workloads so decapsulated packets go straight to them.
    pub direct_delivery: bool,
}

pub struct EbpfOverlay {
    netlink: Netlink,
    underlay: Underlay,
    settings: EbpfSettings,
    vtep_mac: Option<[u8; 6]>,
    dataplane: Option<Dataplane>,
    peers: HashSet<Ipv4Network>,
    /// The periodic registration of local workloads for direct delivery.
    endpoint_sync: Option<tokio::task::AbortHandle>,
}

impl Drop for EbpfOverlay {
    fn drop(&mut self) {
        if let Some(task) = self.endpoint_sync.take() {
            task.abort();
        }
    }
}

/// How often local workloads are registered for the dataplane's direct delivery (until then, or
/// when unregistered, they are served through the kernel's forwarding path).
const ENDPOINT_SYNC: std::time::Duration = std::time::Duration::from_secs(2);

/// Registers the local workloads of `subnet` in the dataplane pinned in `pin_dir`, every
/// [`ENDPOINT_SYNC`].
async fn sync_endpoints_forever(pin_dir: PathBuf, subnet: Ipv4Network) {
    let mut tick = tokio::time::interval(ENDPOINT_SYNC);
    loop {
        tick.tick().await;
        let dir = pin_dir.clone();
        let synced = tokio::task::spawn_blocking(move || {
            shoal_dataplane::sync_pinned_endpoints(&dir, subnet)
        })
        .await;
        match synced {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!("registering local workloads: {}", Chain(&err)),
            Err(err) => tracing::warn!("registering local workloads: {}", Chain(&err)),
        }
    }
}

impl std::fmt::Debug for EbpfOverlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfOverlay")
            .field("underlay", &self.underlay)
            .field("settings", &self.settings)
            .field("dataplane", &self.dataplane)
            .finish_non_exhaustive()
    }
}

impl EbpfOverlay {
    pub fn new(netlink: Netlink, underlay: Underlay, settings: EbpfSettings) -> Self {
        Self {
            netlink,
            underlay,
            settings,
            vtep_mac: None,
            dataplane: None,
            peers: HashSet::new(),
            endpoint_sync: None,
        }
    }

    fn dataplane(&mut self) -> BackendResult<&mut Dataplane> {
        self.dataplane
            .as_mut()
            .ok_or_else(|| BackendError::Device("the eBPF dataplane is not attached yet".into()))
    }

    /// A pin directory per interface and network namespace, stable across restarts, so nodes
    /// sharing a kernel (namespaces) do not share maps.
    fn instance(&self) -> String {
        let namespace = std::fs::metadata("/proc/thread-self/ns/net")
            .map(|meta| std::os::unix::fs::MetadataExt::ino(&meta))
            .unwrap_or(0);
        format!("{}-ns{namespace}", self.underlay.name)
    }

    /// Removes a subnet's dataplane route if it has one (the dataplane treats removing an
    /// absent map entry as an error).
    fn remove_dataplane_route(&mut self, subnet: Ipv4Network) -> BackendResult<()> {
        let dataplane = self.dataplane()?;
        tokio::task::block_in_place(|| -> Result<(), shoal_dataplane::Error> {
            let present = dataplane
                .routes()?
                .iter()
                .any(|(routed, _)| *routed == subnet);
            if present {
                dataplane.remove_route(subnet)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn target(&self, lease: &Lease) -> BackendResult<RouteTarget> {
        let bad = || BackendError::BadBackendData {
            subnet: lease.subnet,
            public_ip: lease.attrs.public_ip,
        };
        let vtep_mac = match self.settings.encapsulation {
            Encapsulation::Vxlan => lease
                .vxlan_data()
                .and_then(|data| data.mac_bytes())
                .ok_or_else(bad)?,
            // flannel's udp format has no inner Ethernet header, so no VTEP MAC.
            Encapsulation::Udp => [0; 6],
        };
        Ok(RouteTarget {
            underlay_ip: lease.attrs.public_ip,
            vtep_mac: MacAddr(vtep_mac),
            backend: self.settings.encapsulation,
        })
    }
}

#[async_trait::async_trait]
impl Backend for EbpfOverlay {
    fn type_name(&self) -> &'static str {
        match self.settings.encapsulation {
            Encapsulation::Vxlan => "vxlan",
            Encapsulation::Udp => "udp",
        }
    }

    async fn prepare(&mut self) -> BackendResult<Option<BackendData>> {
        let link = self
            .netlink
            .link_by_index(self.underlay.index)
            .await?
            .ok_or_else(|| BackendError::Device(format!("{} disappeared", self.underlay.name)))?;
        let mac = link
            .mac
            .ok_or_else(|| BackendError::Device(format!("{} has no MAC address", link.name)))?;
        self.vtep_mac = Some(mac);
        match self.settings.encapsulation {
            Encapsulation::Vxlan => {
                let data = VxlanBackendData {
                    vni: self.settings.vni,
                    vtep_mac: format_mac(mac),
                };
                Ok(Some(BackendData::encode(&data)?))
            }
            Encapsulation::Udp => Ok(None),
        }
    }

    async fn configure(&mut self, own: Ipv4Network) -> BackendResult<()> {
        let mut config = Config::new(&self.underlay.name, self.underlay.public_ip, own);
        config.pin_root = self.settings.pin_root.clone();
        config.instance = self.instance();
        config.vni = self.settings.vni;
        match self.settings.encapsulation {
            Encapsulation::Vxlan => config.vxlan_port = self.settings.port,
            Encapsulation::Udp => config.udp_port = self.settings.port,
        }
        config.vtep_mac = self.vtep_mac.map(MacAddr);
        if self.settings.source_from_bridge {
            config.route_source = Some(gateway_of(own).ip());
        }
        let dataplane = tokio::task::block_in_place(|| Dataplane::load_or_attach(config))?;
        tracing::info!(attach_mode = ?dataplane.attach_mode(), vtep_mac = %dataplane.vtep_mac(), "eBPF dataplane attached");
        if let Some(previous) = self.endpoint_sync.take() {
            previous.abort();
        }
        if self.settings.direct_delivery {
            let sync = tokio::spawn(sync_endpoints_forever(dataplane.config().pin_dir(), own));
            self.endpoint_sync = Some(sync.abort_handle());
        }
        self.dataplane = Some(dataplane);
        Ok(())
    }

    async fn add_peer(&mut self, lease: &Lease) -> BackendResult<()> {
        let subnet = lease.subnet;
        let public_ip = lease.attrs.public_ip;
        let on_link = self.netlink.is_on_link(public_ip).await?;
        if self.settings.direct_routing && on_link {
            // DirectRouting: a peer on this L2 segment is routed without encapsulation.
            self.remove_dataplane_route(subnet)?;
            let route = OverlayRoute {
                destination: subnet,
                gateway: public_ip,
                device: None,
            };
            self.netlink.replace_route(&route).await?;
            self.peers.insert(subnet);
            return Ok(());
        }
        let target = self.target(lease)?;
        let dataplane = self.dataplane()?;
        tokio::task::block_in_place(|| dataplane.set_route(subnet, target))?;
        self.peers.insert(subnet);
        if on_link {
            self.netlink
                .ensure_managed_neighbour(self.underlay.index, public_ip)
                .await?;
        }
        Ok(())
    }

    async fn remove_peer(&mut self, lease: &Lease) -> BackendResult<()> {
        let subnet = lease.subnet;
        self.remove_dataplane_route(subnet)?;
        // A DirectRouting route, if this peer had one.
        self.netlink.delete_route(subnet).await?;
        self.peers.remove(&subnet);
        Ok(())
    }

    async fn prune(&mut self, keep: &[Ipv4Network]) -> BackendResult<()> {
        let dataplane = self.dataplane()?;
        let stale: Vec<Ipv4Network> = tokio::task::block_in_place(|| dataplane.routes())?
            .into_iter()
            .map(|(subnet, _)| subnet)
            .filter(|subnet| !keep.contains(subnet))
            .collect();
        for subnet in stale {
            tracing::info!(%subnet, "removing the dataplane route of a subnet that is no longer leased");
            tokio::task::block_in_place(|| dataplane.remove_route(subnet))?;
        }
        prune_routes(&self.netlink, keep).await
    }
}
