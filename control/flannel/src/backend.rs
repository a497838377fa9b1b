//! Backends program the node for the leases of its peers. Each is small: it says what goes into
//! its own lease (`BackendData`) and adds or removes one peer at a time.
use std::{net::Ipv4Addr, path::PathBuf};

use ipnetwork::Ipv4Network;

use shoal_netlink::{Netlink, NetlinkError};

use super::{
    config::BackendConfig,
    lease::{BackendData, Lease},
};

mod ebpf;
mod host_gw;
mod vxlan;

pub use ebpf::{EbpfOverlay, EbpfSettings};
pub use host_gw::HostGw;
pub use vxlan::KernelVxlan;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("lease of {subnet} from {public_ip} has no usable vxlan BackendData (VNI, VtepMAC)")]
    BadBackendData {
        subnet: Ipv4Network,
        public_ip: Ipv4Addr,
    },
    #[error("the {0} backend needs the eBPF dataplane (--dataplane ebpf)")]
    Unsupported(&'static str),
    #[error("eBPF dataplane")]
    Dataplane(#[from] shoal_dataplane::Error),
    #[error("encoding vxlan BackendData")]
    Encode(#[from] serde_json::Error),
    #[error("{0}")]
    Device(String),
}

pub type BackendResult<T> = std::result::Result<T, BackendError>;

/// The underlay link the overlay runs over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    pub public_ip: Ipv4Addr,
    pub mtu: u32,
    /// The subnets the link is connected to (its addresses' networks): no lease may cover them.
    pub connected: Vec<Ipv4Network>,
}

/// Programs the kernel (or the dataplane) for one overlay backend.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// flannel's name for it (`BackendType`).
    fn type_name(&self) -> &'static str;
    /// Prepares devices that must exist before the lease is taken and returns this node's
    /// `BackendData`.
    async fn prepare(&mut self) -> BackendResult<Option<BackendData>>;
    /// Finishes the local setup once this node's subnet is known.
    async fn configure(&mut self, own: Ipv4Network) -> BackendResult<()>;
    /// Makes a peer's subnet reachable (idempotent: also used for changed leases).
    async fn add_peer(&mut self, lease: &Lease) -> BackendResult<()>;
    /// Makes a peer's subnet unreachable.
    async fn remove_peer(&mut self, lease: &Lease) -> BackendResult<()>;
    /// Removes state for subnets that are no longer leased (after a restart or a resync).
    async fn prune(&mut self, keep: &[Ipv4Network]) -> BackendResult<()>;
}

/// Which implementation carries encapsulated backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    /// shoal's XDP/TC programs (vxlan and udp).
    #[default]
    Ebpf,
    /// The kernel's VXLAN device, exactly as flanneld configures it (vxlan only).
    Kernel,
}

/// Local settings that shape the backend (not part of the network config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendOptions {
    pub dataplane: DataplaneKind,
    pub pin_root: PathBuf,
    pub source_from_bridge: bool,
    /// Let the eBPF dataplane hand decapsulated packets straight to registered local workloads
    /// (past the node's netfilter FORWARD chain and bridge filtering).
    pub direct_delivery: bool,
}

/// The backend for a network config.
pub fn for_config(
    config: &BackendConfig,
    options: &BackendOptions,
    netlink: Netlink,
    underlay: Underlay,
) -> BackendResult<Box<dyn Backend>> {
    let ebpf = |encapsulation, vni, port, direct_routing| EbpfSettings {
        encapsulation,
        vni,
        port,
        direct_routing,
        pin_root: options.pin_root.clone(),
        source_from_bridge: options.source_from_bridge,
        direct_delivery: options.direct_delivery,
    };
    match (config, options.dataplane) {
        (BackendConfig::HostGw, _) => Ok(Box::new(HostGw::new(netlink))),
        (BackendConfig::Vxlan(vxlan), DataplaneKind::Kernel) => {
            Ok(Box::new(KernelVxlan::new(netlink, underlay, vxlan.clone())))
        }
        (BackendConfig::Vxlan(vxlan), DataplaneKind::Ebpf) => Ok(Box::new(EbpfOverlay::new(
            netlink,
            underlay,
            ebpf(
                shoal_dataplane::Backend::Vxlan,
                vxlan.vni,
                vxlan.port,
                vxlan.direct_routing,
            ),
        ))),
        (BackendConfig::Udp { port }, DataplaneKind::Ebpf) => Ok(Box::new(EbpfOverlay::new(
            netlink,
            underlay,
            ebpf(shoal_dataplane::Backend::Udp, 0, *port, false),
        ))),
        (BackendConfig::Udp { .. }, DataplaneKind::Kernel) => Err(BackendError::Unsupported("udp")),
    }
}

/// Deletes every overlay route whose destination is not in `keep`.
pub(crate) async fn prune_routes(netlink: &Netlink, keep: &[Ipv4Network]) -> BackendResult<()> {
    for destination in netlink.overlay_route_destinations().await? {
        if !keep.contains(&destination) {
            tracing::info!(%destination, "removing the route of a subnet that is no longer leased");
            netlink.delete_route(destination).await?;
        }
    }
    Ok(())
}
