//! The overlay on one node, end to end: wait for the network config, pick the underlay, take a
//! lease, set up the backend, the workload bridge, subnet.env and masquerading, then follow the
//! peers' leases until shutdown. This is what `shoal flannel` and the agent run.
use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use serde::Deserialize;

use super::{
    acquire::{self, LEASE_TTL, OwnLease},
    backend::{self, Backend, BackendOptions, DataplaneKind, Underlay},
    config::NetworkConfig,
    docker_opts::{self, DockerOptsFormat},
    healthz, iface,
    iface::IfaceSelection,
    ipmasq,
    lease::LeaseAttrs,
    registry::{Registry, RegistryError, StoreOptions},
    subnet_env::{self, SubnetEnv},
    sync::{LeaseScope, LeaseSync},
};
use shoal_netlink::Netlink;
use shoal_store_client::Chain;

/// Default bpffs directory of the eBPF dataplane's pins.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/shoal";

/// Default name of the bridge workloads attach to.
pub const DEFAULT_BRIDGE: &str = "shoal0";

/// Everything the overlay needs; deserializable so the agent can embed it in its config file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct OverlayConfig {
    pub store: StoreOptions,
    /// Underlay interface selection (`iface`, `iface_regex`, `public_ip`).
    pub interface: IfaceSelection,
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    /// Renew the lease this many minutes before it expires (flanneld's unit).
    pub subnet_lease_renew_margin: u64,
    /// Lifetime of the lease in seconds (flannel: 24 h).
    pub subnet_lease_ttl_secs: u64,
    /// Health endpoint (`GET /healthz`), if any.
    pub healthz: Option<SocketAddr>,
    /// Bridge for workloads, holding the subnet's first address; `None` leaves bridging to
    /// others (Docker, CNI).
    pub bridge: Option<String>,
    /// What carries `vxlan` and `udp`: the eBPF dataplane or the kernel's VXLAN device.
    pub dataplane: DataplaneKind,
    /// bpffs directory where the eBPF dataplane pins its maps and links.
    pub dataplane_pin_root: PathBuf,
    /// eBPF dataplane: deliver decapsulated packets straight to local workloads, past the
    /// node's netfilter FORWARD chain (off: every packet takes the kernel's forwarding path).
    pub direct_delivery: bool,
}

impl OverlayConfig {
    pub fn renew_margin(&self) -> Duration {
        Duration::from_secs(self.subnet_lease_renew_margin.saturating_mul(60))
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.subnet_lease_ttl_secs)
    }
}

impl Default for OverlayConfig {
    fn default() -> Self {
        Self {
            store: StoreOptions::default(),
            interface: IfaceSelection::default(),
            subnet_file: PathBuf::from("/run/flannel/subnet.env"),
            ip_masq: false,
            subnet_lease_renew_margin: 60,
            subnet_lease_ttl_secs: LEASE_TTL.as_secs(),
            healthz: None,
            bridge: Some(DEFAULT_BRIDGE.to_string()),
            dataplane: DataplaneKind::default(),
            dataplane_pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            direct_delivery: true,
        }
    }
}

/// How often to look for the network config while it is missing.
const CONFIG_POLL: Duration = Duration::from_secs(1);

/// A running overlay node.
pub struct Overlay;

impl Overlay {
    /// Runs until `shutdown` completes (Ok) or the node loses its lease (Err). Routes and the
    /// lease are left in place on shutdown, so a restart does not interrupt traffic.
    pub async fn run(
        config: OverlayConfig,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        tokio::select! {
            result = Self::run_until_lost(&config) => result,
            () = &mut shutdown => {
                tracing::info!("overlay shutting down; routes and lease stay in place");
                Ok(())
            }
        }
    }

    async fn run_until_lost(config: &OverlayConfig) -> Result<()> {
        let healthz = match config.healthz {
            Some(address) => Some(
                healthz::bind(address)
                    .await
                    .with_context(|| format!("binding healthz on {address}"))?,
            ),
            None => None,
        };
        let mut registry = connect(&config.store).await?;
        let network = wait_for_config(&mut registry).await?;
        let netlink = Netlink::open().context("opening rtnetlink")?;
        let underlay = iface::select(&netlink, &config.interface)
            .await
            .context("choosing the underlay interface")?;
        tracing::info!(iface = %underlay.name, public_ip = %underlay.public_ip, mtu = underlay.mtu, "underlay chosen");
        let options = BackendOptions {
            dataplane: config.dataplane,
            pin_root: config.dataplane_pin_root.clone(),
            source_from_bridge: config.bridge.is_some(),
            direct_delivery: config.direct_delivery,
        };
        let mut backend = backend::for_config(
            &network.backend,
            &options,
            netlink.clone(),
            underlay.clone(),
        )
        .with_context(|| format!("setting up the {} backend", network.backend.type_name()))?;
        let own = take_lease(&mut registry, config, &network, &underlay, backend.as_mut()).await?;
        configure_node(
            config,
            &network,
            &underlay,
            &netlink,
            own.subnet,
            backend.as_mut(),
        )
        .await?;
        if let Some(listener) = healthz {
            tokio::spawn(healthz::serve(listener));
        }
        let renewal = acquire::keep_renewed(registry.clone(), own.clone(), config.renew_margin());
        let snapshot = own.snapshot.clone();
        let scope = LeaseScope {
            network: network.network,
            underlay: underlay.connected.clone(),
        };
        let mut sync = LeaseSync::new(registry, own.subnet, scope);
        let ended = tokio::select! {
            lost = renewal => anyhow::Error::new(lost),
            end = sync.run_from(Some(snapshot), &mut backend) => anyhow::Error::new(end),
        };
        Err(ended.context("overlay stopped"))
    }
}

/// Connects to the store, retrying (and logging) until it answers; a store that refuses the
/// user and password is an error at once (retrying cannot fix them).
async fn connect(store: &StoreOptions) -> Result<Registry> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match Registry::connect(store).await {
            Ok(registry) => return Ok(registry),
            Err(RegistryError::Connect(err)) if err.is_authentication_failure() => {
                return Err(anyhow::Error::new(err).context(format!(
                    "the store refused the credentials of user {:?}",
                    store.username.as_deref().unwrap_or_default()
                )));
            }
            Err(err) => tracing::warn!(
                "store not reachable yet: {}; retrying in {backoff:?}",
                Chain(&err)
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Waits until `<prefix>/config` exists. A missing config is logged and waited for; an invalid
/// one is an error that says what is wrong.
async fn wait_for_config(registry: &mut Registry) -> Result<NetworkConfig> {
    let key = registry.config_key();
    let mut logged = false;
    loop {
        match registry.network_config().await {
            Ok(Some(text)) => {
                let config = NetworkConfig::parse(&text)
                    .with_context(|| format!("invalid network config at {key}"))?;
                tracing::info!(network = %config.network, backend = config.backend.type_name(), "network config loaded");
                return Ok(config);
            }
            Ok(None) if !logged => {
                tracing::info!(
                    "waiting for the network config at {key} (write it with etcdctl put {key} '{{\"Network\": \"10.5.0.0/16\"}}')"
                );
                logged = true;
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!("reading {key}: {}; retrying", Chain(&err));
                registry.fail_over().await;
            }
        }
        tokio::time::sleep(CONFIG_POLL).await;
    }
}

async fn take_lease(
    registry: &mut Registry,
    config: &OverlayConfig,
    network: &NetworkConfig,
    underlay: &Underlay,
    backend: &mut dyn Backend,
) -> Result<OwnLease> {
    let backend_data = backend.prepare().await.context("preparing the backend")?;
    let attrs = LeaseAttrs {
        public_ip: underlay.public_ip,
        public_ipv6: None,
        backend_type: backend.type_name().into(),
        backend_data,
        backend_v6_data: None,
    };
    let previous = subnet_env::previous_subnet(&config.subnet_file);
    let own = acquire::acquire(registry, network, &attrs, previous, config.lease_ttl())
        .await
        .context("acquiring a subnet lease")?;
    tracing::info!(subnet = %own.subnet, key = %registry.lease_key(own.subnet), "lease held");
    Ok(own)
}

async fn configure_node(
    config: &OverlayConfig,
    network: &NetworkConfig,
    underlay: &Underlay,
    netlink: &Netlink,
    own: Ipv4Network,
    backend: &mut dyn Backend,
) -> Result<()> {
    backend
        .configure(own)
        .await
        .context("configuring the backend")?;
    enable_forwarding()?;
    let env = SubnetEnv {
        network: network.network,
        subnet: own,
        mtu: network.backend.overlay_mtu(underlay.mtu),
        ip_masq: config.ip_masq,
    };
    if let Some(bridge) = &config.bridge {
        netlink
            .ensure_bridge(bridge, env.gateway(), env.mtu)
            .await
            .with_context(|| format!("setting up workload bridge {bridge}"))?;
    }
    if config.ip_masq {
        ipmasq::install(network.network, own).context("installing masquerade rules")?;
    }
    // Docker's options first: whoever sees subnet.env finds them too.
    let docker_file = docker_opts::path_beside(&config.subnet_file);
    // Without a bridge of ours, Docker's holds the gateway and shares it with CNI containers.
    let format = DockerOptsFormat {
        fixed_cidr: config.bridge.is_none(),
        ..DockerOptsFormat::default()
    };
    docker_opts::write(&docker_file, &env, &format)?;
    tracing::info!(path = %docker_file.display(), "Docker's options written");
    env.write(&config.subnet_file)?;
    tracing::info!(path = %config.subnet_file.display(), "subnet file written");
    Ok(())
}

/// Turns on IPv4 forwarding in this network namespace.
fn enable_forwarding() -> Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    std::fs::write(path, "1").with_context(|| format!("enabling forwarding ({path})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_deserializes_with_defaults() {
        let config: OverlayConfig = serde_json::from_str(
            r#"{"store": {"endpoints": ["http://10.0.0.1:2379"]},
                "interface": {"iface": ["eth1"]}, "ip_masq": true, "bridge": null,
                "dataplane": "kernel"}"#,
        )
        .expect("valid config");
        assert_eq!(config.store.endpoints, ["http://10.0.0.1:2379"]);
        assert_eq!(config.store.prefix, "/coreos.com/network");
        assert_eq!(config.interface.iface, ["eth1"]);
        assert!(config.ip_masq);
        assert_eq!(config.bridge, None);
        assert_eq!(config.dataplane, DataplaneKind::Kernel);
        assert_eq!(config.renew_margin(), Duration::from_secs(3600));
        assert_eq!(config.lease_ttl(), LEASE_TTL);
        let unknown = serde_json::from_str::<OverlayConfig>(r#"{"ipmasq": true}"#);
        assert!(unknown.is_err());
    }
}
