//! From one node's [`AgentConfig`] to the configuration of each component it runs. Pure
//! functions: everything the agent decides about addresses and ports is here, and tested here.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result};

use super::config::{AgentConfig, ClusterState, ComponentStore, MemberTls, Role};
use shoal_flannel::{OverlayConfig, registry::StoreOptions};
use shoal_store_client::{Credentials, StoreConfig, TlsFiles};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// What the node runs, fully resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The store member this node runs, if it is a master of the embedded store.
    pub member: Option<MemberPlan>,
    /// How the agent itself reads the store (the store's readiness): the client URLs every
    /// component uses (own member first), as the least privileged user the node has.
    pub store: StoreConfig,
    /// A key `store`'s user may read: the store probe's linearizable read.
    pub probe_key: String,
    /// How the agent reaches the store as its administrator (`root` with `pki`): only on a
    /// master that sets up the store's users or joins a running cluster (`MemberAdd`).
    pub admin: Option<StoreConfig>,
    pub overlay: Option<OverlayConfig>,
    /// flannel's network config to write if absent.
    pub network_config: Option<NetworkConfig>,
    pub fleet: Option<shoal_scheduler::config::FleetConfig>,
    /// The store users this node creates before turning on auth (the first master of a
    /// cluster with `pki`).
    pub store_users: Option<StoreUsers>,
}

/// flannel's network config, written as the overlay's user (its role covers the prefix).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// `<network prefix>/config`.
    pub key: String,
    pub json: String,
    pub store: StoreConfig,
}

/// A secure cluster's store users and roles (etcd auth): `root` for people and for setting up
/// the users, `flannel` may write only under the network prefix, `fleet` only under fleet's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUsers {
    /// The network prefix with its trailing `/`, as a prefix range.
    pub network_prefix: String,
    /// fleet's key prefix with its trailing `/`, as a prefix range.
    pub fleet_prefix: String,
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
        let store_users = store_users(config, member.as_ref());
        let needs_admin =
            member.as_ref().is_some_and(|member| member.join.is_some()) || store_users.is_some();
        let (reader, probe_key) = agent_reader(config);
        let overlay_endpoints = component_endpoints(&config.network.store, &endpoints);
        let fleet_endpoints = component_endpoints(&config.fleet.store, &endpoints);
        let reader_endpoints = match reader {
            shoal_pki::FLANNEL => overlay_endpoints.clone(),
            shoal_pki::FLEET => fleet_endpoints.clone(),
            _ => endpoints.clone(),
        };
        Ok(Self {
            overlay: config.network.enabled.then(|| {
                overlay_config(
                    config,
                    &overlay_endpoints,
                    &StoreIdentity::of(config, shoal_pki::FLANNEL),
                )
            }),
            network_config: network_config(
                config,
                StoreIdentity::of(config, shoal_pki::FLANNEL)
                    .store_config(overlay_endpoints.clone()),
            ),
            fleet: config.fleet.enabled.then(|| {
                fleet_config(
                    config,
                    &fleet_endpoints,
                    &StoreIdentity::of(config, shoal_pki::FLEET),
                )
            }),
            store_users,
            admin: needs_admin.then(|| {
                StoreIdentity::of(config, shoal_pki::ROOT).store_config(endpoints.clone())
            }),
            store: StoreIdentity::of(config, reader).store_config(reader_endpoints),
            probe_key,
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
    /// The identity of the component that is store user `user`: its own client certificate
    /// with `pki`, else its own section's `tls` and `auth` (`network.store`, `fleet.store`),
    /// else what `store.tls` and `store.auth` give every component.
    fn of(config: &AgentConfig, user: &str) -> Self {
        if let Some(pki) = &config.pki {
            let file = |name: String| Some(pki.join(name));
            return Self {
                tls: TlsFiles::given(
                    file(shoal_pki::CA_CERT.to_string()),
                    file(format!("{user}.pem")),
                    file(format!("{user}-key.pem")),
                ),
                credentials: None,
            };
        }
        let own = match user {
            shoal_pki::FLANNEL => Some(&config.network.store),
            shoal_pki::FLEET => Some(&config.fleet.store),
            _ => None,
        };
        let tls = own
            .and_then(|own| own.tls.as_ref())
            .or(config.store.tls.as_ref())
            .and_then(|tls| {
                TlsFiles::given(
                    tls.ca_file.clone(),
                    tls.cert_file.clone(),
                    tls.key_file.clone(),
                )
            });
        let auth = own
            .and_then(|own| own.auth.as_ref())
            .or(config.store.auth.as_ref());
        let credentials = auth.map(|auth| Credentials {
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
    let scheme = if config.pki.is_some() || store.server_tls.is_some() {
        "https"
    } else {
        "http"
    };
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
            let own = format!("{scheme}://{host}:{PEER_PORT}");
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
        data_dir: store
            .data_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("kv")),
        listen_client_urls: split(store.listen_client_urls.as_deref())
            .unwrap_or_else(|| vec![format!("{scheme}://{any}:{CLIENT_PORT}")]),
        advertise_client_urls: split(store.advertise_client_urls.as_deref())
            .unwrap_or_else(|| vec![format!("{scheme}://{client_host}:{CLIENT_PORT}")]),
        listen_peer_urls: split(store.listen_peer_urls.as_deref())
            .unwrap_or_else(|| vec![format!("{scheme}://{any}:{peer_port}")]),
        initial_advertise_peer_urls: split(store.initial_advertise_peer_urls.as_deref())
            .unwrap_or_else(|| vec![own_peer]),
        initial_cluster,
        initial_cluster_state: match store.initial_cluster_state {
            ClusterState::New if store.join.is_none() => shoal_kv::member::ClusterState::New,
            _ => shoal_kv::member::ClusterState::Existing,
        },
        initial_cluster_token: store.initial_cluster_token.clone(),
        heartbeat_interval: store.heartbeat_interval,
        election_timeout: store.election_timeout,
        snapshot_count: 10_000,
        client_tls: member_tls(config, shoal_pki::SERVER, store.server_tls.as_ref()),
        peer_tls: member_tls(config, shoal_pki::PEER, store.peer_tls.as_ref()),
        auth_token_ttl: shoal_kv::storage::tokens::DEFAULT_TTL,
        // Revision mode bounds the history by count whatever the write rate (fleet agents
        // rewrite their units' keys every second, so a time window would grow with the
        // cluster); 10000 revisions still let a watcher resume after a short disconnect.
        auto_compaction: shoal_kv::member::AutoCompaction::Revision {
            retention: 10_000,
            check_interval: shoal_kv::member::REVISION_CHECK_INTERVAL,
        },
        strict_reconfig_check: true,
        // etcd's defaults: a 2 GiB quota, and the member's own limits per client.
        quota: shoal_kv::storage::quota::Quota::from_flag(0),
        limits: shoal_kv::member::ClientLimits::default(),
        listen_metrics_urls: Vec::new(),
    };
    Ok(Some(MemberPlan {
        config: kv,
        join: store.join.clone(),
    }))
}

/// With `pki`, the member's certificate `name` (server or peer) from it, client certificates
/// required and checked against the cluster's CA; else the files `given` (etcd's flags).
fn member_tls(
    config: &AgentConfig,
    name: &str,
    given: Option<&MemberTls>,
) -> Option<shoal_kv::tls::TlsFiles> {
    let Some(pki) = config.pki.as_ref() else {
        return given.map(|tls| shoal_kv::tls::TlsFiles {
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            trusted_ca_file: tls.trusted_ca_file.clone(),
            client_cert_auth: tls.client_cert_auth,
        });
    };
    Some(shoal_kv::tls::TlsFiles {
        cert_file: pki.join(format!("{name}.pem")),
        key_file: pki.join(format!("{name}-key.pem")),
        trusted_ca_file: Some(pki.join(shoal_pki::CA_CERT)),
        client_cert_auth: true,
    })
}

/// The first master of a cluster with `pki` (the first of `initial_cluster`, or a lone
/// master) sets up the store's users; members that join find them in place.
fn store_users(config: &AgentConfig, member: Option<&MemberPlan>) -> Option<StoreUsers> {
    config.pki.as_ref()?;
    let member = member?;
    if member.join.is_some() || member.config.initial_cluster.first()?.0 != config.name {
        return None;
    }
    let with_slash = |prefix: &str| format!("{}/", prefix.trim_end_matches('/'));
    Some(StoreUsers {
        network_prefix: with_slash(&config.network.prefix),
        fleet_prefix: with_slash(&config.fleet.key_prefix),
    })
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

/// A component's own endpoints where it has some, else the node's.
fn component_endpoints(component: &ComponentStore, node: &[String]) -> Vec<String> {
    if component.endpoints.is_empty() {
        node.to_vec()
    } else {
        component.endpoints.clone()
    }
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
        bridge: Some(config.network.bridge.clone()).filter(|bridge| !bridge.is_empty()),
        ..OverlayConfig::default()
    };
    overlay.interface.iface = config.iface.iter().cloned().collect();
    overlay.interface.public_ip = config.public_ip;
    if let Some(pin_root) = &config.network.bpf_pin_root {
        overlay.dataplane_pin_root = pin_root.clone();
    }
    overlay
}

fn network_config(config: &AgentConfig, store: StoreConfig) -> Option<NetworkConfig> {
    let json = config.network.config.as_ref()?;
    Some(NetworkConfig {
        key: format!("{}/config", config.network.prefix.trim_end_matches('/')),
        json: json.to_string(),
        store,
    })
}

/// The store user the agent's own reads run as, and a key that user may read: the overlay's
/// user if the overlay runs, else fleet's, else `root` (a node that runs neither).
fn agent_reader(config: &AgentConfig) -> (&'static str, String) {
    let under = |prefix: &str| format!("{}/readiness-probe", prefix.trim_end_matches('/'));
    if config.network.enabled {
        (shoal_pki::FLANNEL, under(&config.network.prefix))
    } else if config.fleet.enabled {
        (shoal_pki::FLEET, under(&config.fleet.key_prefix))
    } else {
        (shoal_pki::ROOT, "/shoal/readiness-probe".to_string())
    }
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
        engine_reconcile_interval: config.fleet.engine_reconcile_interval,
        etcd_request_timeout: config.fleet.etcd_request_timeout,
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
    use std::path::Path;

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
    fn an_empty_bridge_leaves_the_gateway_to_dockers_bridge() {
        let defaults = plan("name: solo\n").overlay.expect("overlay");
        assert_eq!(defaults.bridge.as_deref(), Some("shoal0"));
        let docker_node = plan("name: solo\nnetwork:\n  bridge: \"\"\n");
        assert_eq!(docker_node.overlay.expect("overlay").bridge, None);
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
    fn with_pki_the_store_serves_tls_and_each_component_is_its_own_user() {
        let yaml = "name: node1\npublic_ip: 10.90.0.11\npki: /etc/shoal/pki\nstore:\n  initial_cluster: node1=https://10.90.0.11:2380,node2=https://10.90.0.12:2380\nnetwork:\n  config: { Network: 10.244.0.0/16 }\n";
        let second = plan(&yaml.replace("name: node1", "name: node2"));
        assert_eq!(
            second.store_users, None,
            "only the first master sets up users"
        );
        assert!(
            second.admin.is_none(),
            "nor does any other node act as root"
        );
        let plan = plan(yaml);
        let member = plan.member.expect("member").config;
        assert_eq!(member.listen_client_urls, ["https://0.0.0.0:2379"]);
        assert_eq!(member.advertise_client_urls, ["https://10.90.0.11:2379"]);
        assert_eq!(member.listen_peer_urls, ["https://0.0.0.0:2380"]);
        let client_tls = member.client_tls.expect("client TLS");
        assert_eq!(client_tls.cert_file, Path::new("/etc/shoal/pki/server.pem"));
        assert!(client_tls.client_cert_auth);
        let peer_tls = member.peer_tls.expect("peer TLS");
        assert_eq!(peer_tls.key_file, Path::new("/etc/shoal/pki/peer-key.pem"));
        let cert_of = |tls: Option<&TlsFiles>| tls.and_then(|tls| tls.cert.clone());
        assert_eq!(
            cert_of(plan.admin.as_ref().and_then(|admin| admin.tls.as_ref())),
            Some("/etc/shoal/pki/root.pem".into()),
            "the first master sets up users as root"
        );
        assert_eq!(
            cert_of(plan.store.tls.as_ref()),
            Some("/etc/shoal/pki/flannel.pem".into()),
            "its readiness reads as the overlay's user"
        );
        assert_eq!(plan.probe_key, "/coreos.com/network/readiness-probe");
        let written = plan.network_config.as_ref().map(|w| &w.store);
        assert_eq!(
            cert_of(written.and_then(|store| store.tls.as_ref())),
            Some("/etc/shoal/pki/flannel.pem".into())
        );
        let overlay = plan.overlay.expect("overlay").store;
        assert_eq!(overlay.certfile, Some("/etc/shoal/pki/flannel.pem".into()));
        assert_eq!(overlay.cafile, Some("/etc/shoal/pki/ca.pem".into()));
        let fleet = plan.fleet.expect("fleet");
        assert_eq!(fleet.etcd_certfile, Some("/etc/shoal/pki/fleet.pem".into()));
        assert_eq!(
            plan.store_users,
            Some(StoreUsers {
                network_prefix: "/coreos.com/network/".into(),
                fleet_prefix: "/_coreos.com/fleet/".into(),
            })
        );
    }

    #[test]
    fn a_secure_worker_is_never_root() {
        let plan = plan(
            "name: w1\nrole: worker\npki: /p\nnetwork:\n  enabled: false\nstore:\n  endpoints: [https://10.90.0.11:2379]\n",
        );
        assert!(plan.admin.is_none() && plan.store_users.is_none());
        let tls = plan.store.tls.expect("TLS");
        assert_eq!(tls.cert, Some("/p/fleet.pem".into()));
        assert_eq!(plan.probe_key, "/_coreos.com/fleet/readiness-probe");
    }

    #[test]
    fn a_components_own_endpoints_and_identity_win_over_the_nodes() {
        let plan = plan(
            "name: w1\nrole: worker\nstore:\n  endpoints: [http://10.0.0.1:2379]\n  auth: { username: shoal, password: pw }\nnetwork:\n  store:\n    endpoints: [http://10.0.0.9:2379]\n    auth: { username: flannel, password: f }\n",
        );
        let overlay = plan.overlay.expect("overlay").store;
        assert_eq!(overlay.endpoints, ["http://10.0.0.9:2379"]);
        assert_eq!(overlay.username.as_deref(), Some("flannel"));
        let fleet = plan.fleet.expect("fleet");
        assert_eq!(fleet.etcd_servers, ["http://10.0.0.1:2379"]);
        assert_eq!(fleet.etcd_username.as_deref(), Some("shoal"));
        assert_eq!(
            plan.store.endpoints,
            ["http://10.0.0.9:2379"],
            "the agent reads as the overlay, where the overlay reads"
        );
    }

    #[test]
    fn a_members_urls_token_and_data_dir_follow_the_yaml() {
        let plan = plan(
            "name: n1\nstore:\n  initial_cluster: n1=http://10.0.0.1:2380\n  advertise_client_urls: http://10.0.0.1:2379,http://127.0.0.1:2379\n  initial_advertise_peer_urls: http://10.0.0.1:2380\n  initial_cluster_token: t1\n  data_dir: /d\n",
        );
        let member = plan.member.expect("member").config;
        assert_eq!(
            member.advertise_client_urls,
            ["http://10.0.0.1:2379", "http://127.0.0.1:2379"]
        );
        assert_eq!(member.initial_cluster_token, "t1");
        assert_eq!(member.data_dir, Path::new("/d"));
    }

    #[test]
    fn the_network_config_goes_under_the_prefix() {
        let plan = plan("name: n1\nnetwork:\n  config: { Network: 10.244.0.0/16 }\n");
        let written = plan.network_config.expect("network config");
        assert_eq!(written.key, "/coreos.com/network/config");
        assert!(written.json.contains("10.244.0.0/16"));
    }
}
