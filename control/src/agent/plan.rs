//! From one node's [`AgentConfig`] to the configuration of each component it runs. Pure
//! functions: everything the agent decides about addresses and ports is here, and tested here.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result};

use super::config::{AgentConfig, ClusterState, Role};
use shoal_flannel::{OverlayConfig, registry::StoreOptions};
use shoal_store_client::{Credentials, StoreConfig, TlsFiles};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// What the node runs, fully resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The store member this node runs, if it is a master of the embedded store.
    pub member: Option<MemberPlan>,
    /// How the agent itself reaches the store (readiness, the network config, joining):
    /// the client URLs every component uses (own member first), TLS and credentials.
    pub store: StoreConfig,
    pub overlay: Option<OverlayConfig>,
    /// flannel's network config to write to `<prefix>/config` if absent.
    pub network_config: Option<(String, String)>,
    pub fleet: Option<shoal_scheduler::config::FleetConfig>,
}

#[derive(Debug, Clone)]
pub struct MemberPlan {
    pub config: shoal_kv::member::Config,
    /// A member's client URL to join through (`MemberAdd`), instead of a static cluster.
    pub join: Option<String>,
}

impl Plan {
    pub fn for_node(config: &AgentConfig) -> Result<Self> {
        let member = member_plan(config)?;
        let endpoints = endpoints(config, member.as_ref());
        let identity = StoreIdentity::of(config);
        Ok(Self {
            overlay: config
                .network
                .enabled
                .then(|| overlay_config(config, &endpoints, &identity)),
            network_config: network_config(config),
            fleet: config
                .fleet
                .enabled
                .then(|| fleet_config(config, &endpoints, &identity)),
            store: identity.store_config(endpoints),
            member,
        })
    }
}

/// How a component proves itself to the store: TLS files, a user, both or neither.
#[derive(Debug, Clone, Default)]
pub struct StoreIdentity {
    pub tls: Option<TlsFiles>,
    pub credentials: Option<Credentials>,
}

impl StoreIdentity {
    /// The identity `store.tls` and `store.auth` give every component.
    fn of(config: &AgentConfig) -> Self {
        let tls = config.store.tls.as_ref().and_then(|tls| {
            TlsFiles::given(
                tls.ca_file.clone(),
                tls.cert_file.clone(),
                tls.key_file.clone(),
            )
        });
        let credentials = config.store.auth.as_ref().map(|auth| Credentials {
            user: auth.username.clone(),
            password: auth.password.clone(),
        });
        Self { tls, credentials }
    }

    /// A store client config for `endpoints` with this identity.
    pub fn store_config(&self, endpoints: Vec<String>) -> StoreConfig {
        let mut store = StoreConfig::new(endpoints);
        store.tls = self.tls.clone();
        store.credentials = self.credentials.clone();
        store
    }
}

fn member_plan(config: &AgentConfig) -> Result<Option<MemberPlan>> {
    if config.role == Role::Worker || config.store.external {
        return Ok(None);
    }
    let store = &config.store;
    let host = config
        .public_ip
        .map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string());
    let (initial_cluster, own_peer) = match &store.initial_cluster {
        Some(spec) => {
            let members = super::config::parse_initial_cluster(spec).map_err(anyhow::Error::msg)?;
            let own = members
                .iter()
                .find(|(name, _)| *name == config.name)
                .map(|(_, url)| url.to_string())
                .context("store.initial_cluster does not name this node")?;
            let cluster = members
                .iter()
                .map(|(name, url)| (name.to_string(), vec![url.to_string()]))
                .collect();
            (cluster, own)
        }
        None => {
            let own = format!("http://{host}:{PEER_PORT}");
            (vec![(config.name.clone(), vec![own.clone()])], own)
        }
    };
    // A lone member without a cluster keeps clients on loopback, as `shoal kv` does.
    let clustered = store.initial_cluster.is_some() || store.join.is_some();
    let any = if clustered { "0.0.0.0" } else { "127.0.0.1" };
    let client_host = if clustered {
        host.as_str()
    } else {
        "127.0.0.1"
    };
    let peer_port = port_of(&own_peer).unwrap_or(PEER_PORT);
    let kv = shoal_kv::member::Config {
        name: config.name.clone(),
        data_dir: config.data_dir.join("kv"),
        listen_client_urls: split(store.listen_client_urls.as_deref())
            .unwrap_or_else(|| vec![format!("http://{any}:{CLIENT_PORT}")]),
        advertise_client_urls: vec![format!("http://{client_host}:{CLIENT_PORT}")],
        listen_peer_urls: split(store.listen_peer_urls.as_deref())
            .unwrap_or_else(|| vec![format!("http://{any}:{peer_port}")]),
        initial_advertise_peer_urls: vec![own_peer],
        initial_cluster,
        initial_cluster_state: match store.initial_cluster_state {
            ClusterState::New if store.join.is_none() => shoal_kv::member::ClusterState::New,
            _ => shoal_kv::member::ClusterState::Existing,
        },
        initial_cluster_token: "shoal-cluster".to_string(),
        heartbeat_interval: store.heartbeat_interval,
        election_timeout: store.election_timeout,
        snapshot_count: 10_000,
        client_tls: None,
        peer_tls: None,
        auth_token_ttl: shoal_kv::storage::tokens::DEFAULT_TTL,
        // Revision mode bounds the history by count whatever the write rate (fleet agents
        // rewrite their units' keys every second, so a time window would grow with the
        // cluster); 10000 revisions still let a watcher resume after a short disconnect.
        auto_compaction: shoal_kv::member::AutoCompaction::Revision {
            retention: 10_000,
            check_interval: shoal_kv::member::REVISION_CHECK_INTERVAL,
        },
    };
    Ok(Some(MemberPlan {
        config: kv,
        join: store.join.clone(),
    }))
}

/// Client URLs: explicit ones win; a master's components use its own member only (any member
/// serves every request, and a master whose member is down is down as a whole; a client that
/// balances over all masters would also send requests to a member that is down).
fn endpoints(config: &AgentConfig, member: Option<&MemberPlan>) -> Vec<String> {
    if !config.store.endpoints.is_empty() {
        return config.store.endpoints.clone();
    }
    member.map_or_else(Vec::new, |member| {
        member.config.advertise_client_urls.clone()
    })
}

fn overlay_config(
    config: &AgentConfig,
    endpoints: &[String],
    identity: &StoreIdentity,
) -> OverlayConfig {
    let tls = identity.tls.clone().unwrap_or_default();
    let mut overlay = OverlayConfig {
        store: StoreOptions {
            endpoints: endpoints.to_vec(),
            prefix: config.network.prefix.clone(),
            cafile: tls.ca,
            certfile: tls.cert,
            keyfile: tls.key,
            username: identity.credentials.as_ref().map(|c| c.user.clone()),
            password: identity.credentials.as_ref().map(|c| c.password.clone()),
        },
        subnet_file: config.network.subnet_file.clone(),
        ip_masq: config.network.ip_masq,
        direct_delivery: config.network.direct_delivery,
        ..OverlayConfig::default()
    };
    overlay.interface.iface = config.iface.iter().cloned().collect();
    overlay.interface.public_ip = config.public_ip;
    if let Some(pin_root) = &config.network.bpf_pin_root {
        overlay.dataplane_pin_root = pin_root.clone();
    }
    overlay
}

fn network_config(config: &AgentConfig) -> Option<(String, String)> {
    let json = config.network.config.as_ref()?;
    let key = format!("{}/config", config.network.prefix.trim_end_matches('/'));
    Some((key, json.to_string()))
}

fn fleet_config(
    config: &AgentConfig,
    endpoints: &[String],
    identity: &StoreIdentity,
) -> shoal_scheduler::config::FleetConfig {
    let tls = identity.tls.clone().unwrap_or_default();
    shoal_scheduler::config::FleetConfig {
        etcd_cafile: tls.ca,
        etcd_certfile: tls.cert,
        etcd_keyfile: tls.key,
        etcd_username: identity.credentials.as_ref().map(|c| c.user.clone()),
        etcd_password: identity.credentials.as_ref().map(|c| c.password.clone()),
        etcd_servers: endpoints.to_vec(),
        etcd_key_prefix: config.fleet.key_prefix.clone(),
        metadata: config.metadata.clone(),
        public_ip: config.public_ip.map(|ip: Ipv4Addr| ip.to_string()),
        agent_ttl: config.fleet.agent_ttl,
        machine_id: config.machine_id.clone(),
        data_dir: config.data_dir.join("fleet"),
        disable_engine: !config.fleet.engine,
        ..shoal_scheduler::config::FleetConfig::default()
    }
}

fn split(urls: Option<&str>) -> Option<Vec<String>> {
    let urls: Vec<String> = urls?
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect();
    (!urls.is_empty()).then_some(urls)
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    rest.split('/').next()?.rsplit_once(':')?.1.parse().ok()
}

/// The data directory's place for the agent's own state.
pub fn agent_state_dir(config: &AgentConfig) -> PathBuf {
    config.data_dir.join("agent")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> Plan {
        let config = AgentConfig::parse(yaml).expect("valid config");
        Plan::for_node(&config).expect("plan")
    }

    #[test]
    fn a_lone_master_keeps_its_store_on_loopback() {
        let plan = plan("name: solo\n");
        let member = plan.member.expect("a master runs a member");
        assert_eq!(member.config.listen_client_urls, ["http://127.0.0.1:2379"]);
        assert_eq!(plan.store.endpoints, ["http://127.0.0.1:2379"]);
        assert!(plan.overlay.is_some() && plan.fleet.is_some());
    }

    #[test]
    fn raft_timing_and_direct_delivery_follow_the_yaml() {
        let defaults = plan("name: solo\n");
        let member = defaults.member.expect("member");
        assert_eq!(member.config.heartbeat_interval.as_millis(), 100);
        assert_eq!(member.config.election_timeout.as_millis(), 1000);
        assert!(defaults.overlay.expect("overlay").direct_delivery);
        let tuned = plan(
            "name: solo\nstore:\n  heartbeat_interval: 250ms\n  election_timeout: 2500ms\nnetwork:\n  direct_delivery: false\n",
        );
        let member = tuned.member.expect("member");
        assert_eq!(member.config.heartbeat_interval.as_millis(), 250);
        assert_eq!(member.config.election_timeout.as_millis(), 2500);
        assert!(!tuned.overlay.expect("overlay").direct_delivery);
    }

    #[test]
    fn a_master_of_three_uses_its_own_member() {
        let plan = plan(
            "name: node2\npublic_ip: 10.90.0.12\nstore:\n  initial_cluster: node1=http://10.90.0.11:2380,node2=http://10.90.0.12:2380,node3=http://10.90.0.13:2380\n",
        );
        assert_eq!(plan.store.endpoints, ["http://10.90.0.12:2379"]);
        let member = plan.member.expect("member");
        assert_eq!(member.config.listen_client_urls, ["http://0.0.0.0:2379"]);
        assert_eq!(
            member.config.initial_advertise_peer_urls,
            ["http://10.90.0.12:2380"]
        );
        assert_eq!(member.config.initial_cluster.len(), 3);
        let fleet = plan.fleet.expect("fleet");
        assert_eq!(fleet.etcd_servers, plan.store.endpoints);
    }

    #[test]
    fn a_worker_runs_no_member_and_uses_the_given_endpoints() {
        let plan = plan(
            "name: w1\nrole: worker\nstore:\n  endpoints: [http://10.90.0.11:2379]\nfleet:\n  engine: false\n",
        );
        assert!(plan.member.is_none());
        assert_eq!(plan.store.endpoints, ["http://10.90.0.11:2379"]);
        assert!(plan.fleet.expect("fleet").disable_engine);
    }

    #[test]
    fn store_tls_and_auth_reach_every_store_connection() {
        let plan = plan(
            "name: w1\nrole: worker\nstore:\n  endpoints: [10.90.0.11:2379]\n  tls: { ca_file: /p/ca.pem, cert_file: /p/c.pem, key_file: /p/k.pem }\n  auth: { username: shoal, password: pw }\n",
        );
        let tls = TlsFiles {
            ca: Some("/p/ca.pem".into()),
            cert: Some("/p/c.pem".into()),
            key: Some("/p/k.pem".into()),
        };
        assert_eq!(plan.store.tls.as_ref(), Some(&tls));
        assert_eq!(
            plan.store.credentials.as_ref().map(|c| &*c.user),
            Some("shoal")
        );
        let overlay = plan.overlay.expect("overlay").store.store_config();
        assert_eq!(overlay.tls.as_ref(), Some(&tls));
        assert_eq!(overlay.credentials, plan.store.credentials);
        let fleet = plan.fleet.expect("fleet").store_config();
        assert_eq!(fleet.tls.as_ref(), Some(&tls));
        assert_eq!(fleet.credentials, plan.store.credentials);
        assert_eq!(
            plan.store.parsed_endpoints().expect("valid")[0].url(),
            "https://10.90.0.11:2379"
        );
    }

    #[test]
    fn the_network_config_goes_under_the_prefix() {
        let plan = plan("name: n1\nnetwork:\n  config: { Network: 10.244.0.0/16 }\n");
        let (key, json) = plan.network_config.expect("network config");
        assert_eq!(key, "/coreos.com/network/config");
        assert!(json.contains("10.244.0.0/16"));
    }
}
