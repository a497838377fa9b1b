//! `shoal flannel`: flanneld's flags (and their `FLANNELD_*` environment twins), turned into an
//! [`OverlayConfig`] and run until SIGINT or SIGTERM.
use std::{net::Ipv4Addr, path::PathBuf};

use clap::Args;

use crate::{
    DEFAULT_BRIDGE, DEFAULT_PIN_ROOT, DataplaneKind, Overlay, OverlayConfig, iface, registry,
};

/// flanneld's flags; each also reads its `FLANNELD_*` environment twin.
#[derive(Debug, Args)]
pub struct FlannelArgs {
    /// Comma-separated etcd endpoints.
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: String,
    /// etcd prefix of the network's config and leases.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,
    /// TLS client certificate for etcd.
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// TLS client key for etcd.
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// TLS CA bundle for etcd.
    #[arg(long, env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// etcd user name.
    #[arg(long, env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password (of --etcd-username).
    #[arg(long, env = "FLANNELD_ETCD_PASSWORD", requires = "etcd_username")]
    pub etcd_password: Option<String>,
    /// Interface (name or IPv4 address) for inter-host traffic; repeatable, first match wins.
    #[arg(long, env = "FLANNELD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Regular expression matching the interface name or address; repeatable.
    #[arg(long, env = "FLANNELD_IFACE_REGEX", value_delimiter = ',')]
    pub iface_regex: Vec<String>,
    /// IP address other nodes use to reach this one (defaults to the interface's address).
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// Where to write the node's network settings for Docker or CNI.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Masquerade traffic leaving the overlay network.
    #[arg(long, env = "FLANNELD_IP_MASQ")]
    pub ip_masq: bool,
    /// Renew the lease this many minutes before it expires.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60)]
    pub subnet_lease_renew_margin: u64,
    /// Address of the health endpoint (loopback unless set: flanneld's 0.0.0.0 would serve
    /// every network the node is on).
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "127.0.0.1")]
    pub healthz_ip: Ipv4Addr,
    /// Port of the health endpoint (`GET /healthz`); 0 disables it.
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Workload bridge that `shoal run` attaches containers to; empty for none (Docker/CNI).
    #[arg(long, env = "SHOAL_FLANNEL_BRIDGE", default_value = DEFAULT_BRIDGE)]
    pub bridge: String,
    /// What carries vxlan and udp: shoal's eBPF dataplane, or the kernel VXLAN device as
    /// flanneld configures it.
    #[arg(long, env = "SHOAL_FLANNEL_DATAPLANE", value_enum, default_value_t = DataplaneKind::Ebpf)]
    pub dataplane: DataplaneKind,
    /// bpffs directory for the eBPF dataplane's pinned maps and links.
    #[arg(long, env = "SHOAL_FLANNEL_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pub dataplane_pin_root: PathBuf,
    /// Hand decapsulated packets to the kernel's forwarding path only, never straight to a
    /// local workload (keeps the node's netfilter FORWARD rules and bridge filtering in the
    /// path, at some cost in throughput).
    #[arg(long, env = "SHOAL_FLANNEL_NO_DIRECT_DELIVERY")]
    pub no_direct_delivery: bool,
    /// Lifetime of the subnet lease in seconds (flannel uses 24 h).
    #[arg(long, env = "SHOAL_FLANNEL_LEASE_TTL", default_value_t = 24 * 3600, hide = true)]
    pub subnet_lease_ttl: u64,
}

impl FlannelArgs {
    pub fn to_config(&self) -> OverlayConfig {
        OverlayConfig {
            store: registry::StoreOptions {
                endpoints: self
                    .etcd_endpoints
                    .split(',')
                    .map(str::trim)
                    .filter(|endpoint| !endpoint.is_empty())
                    .map(String::from)
                    .collect(),
                prefix: self.etcd_prefix.clone(),
                certfile: self.etcd_certfile.clone(),
                keyfile: self.etcd_keyfile.clone(),
                cafile: self.etcd_cafile.clone(),
                username: self.etcd_username.clone(),
                password: self.etcd_password.clone(),
            },
            interface: iface::IfaceSelection {
                iface: self.iface.clone(),
                iface_regex: self.iface_regex.clone(),
                public_ip: self.public_ip,
            },
            subnet_file: self.subnet_file.clone(),
            ip_masq: self.ip_masq,
            subnet_lease_renew_margin: self.subnet_lease_renew_margin,
            subnet_lease_ttl_secs: self.subnet_lease_ttl,
            healthz: (self.healthz_port != 0)
                .then(|| std::net::SocketAddr::from((self.healthz_ip, self.healthz_port))),
            bridge: Some(self.bridge.clone()).filter(|bridge| !bridge.is_empty()),
            dataplane: self.dataplane,
            dataplane_pin_root: self.dataplane_pin_root.clone(),
            direct_delivery: !self.no_direct_delivery,
        }
    }
}

pub async fn run(args: FlannelArgs) -> anyhow::Result<()> {
    Overlay::run(args.to_config(), shutdown_signal()).await
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
