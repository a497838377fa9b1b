//! The agent's cloud-config-style YAML: one file describes one node. Every error names the
//! field it is about, e.g. ``store.initial_cluster: must name this node (`node1`)``. A file
//! whose first line is `#cloud-config` is CoreOS's format instead ([`NodeConfig::load`] hands
//! it to [`super::cloud_config`], which maps it onto this one).
//!
//! ```yaml
//! #shoal-config
//! name: node1
//! role: master                     # master: runs a store member; worker: uses the masters
//! metadata: { compute: web, rack: rack1 }
//! public_ip: 10.90.0.11            # underlay address (default: the address of `iface`)
//! iface: eth0
//! pki: /etc/shoal/pki              # this node's certificates (`shoal pki cluster`): TLS and auth
//! store:
//!   initial_cluster: node1=http://10.90.0.11:2380,node2=http://10.90.0.12:2380,node3=http://10.90.0.13:2380
//!   heartbeat_interval: 100ms      # etcd's --heartbeat-interval / --election-timeout
//!   election_timeout: 1s
//!   # Without pki, to reach an external store that checks clients:
//!   # tls: { ca_file: /etc/etcd/ca.pem, cert_file: /etc/etcd/client.pem, key_file: /etc/etcd/client-key.pem }
//!   # auth: { username: shoal, password: secret }
//! network:
//!   config: { Network: 10.244.0.0/16, Backend: { Type: vxlan } }
//! fleet:
//!   agent_ttl: 30s
//! ```
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// What a config error says: the field (a dotted path) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// A cloud-config's key, at its line when it can be found.
    #[error("{path}:{}{key}: {message}", line.map(|line| format!("{line}: ")).unwrap_or_default())]
    CloudConfig {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

/// A node's config file: the agent's own YAML or a CoreOS cloud-config.
#[derive(Debug, Clone)]
pub enum NodeConfig {
    Agent(Box<AgentConfig>),
    CloudConfig(Box<super::cloud_config::CloudConfigNode>),
}

impl NodeConfig {
    /// Reads a config file: a cloud-config if its first line is `#cloud-config`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if super::cloud_config::is_cloud_config(&text) {
            return super::cloud_config::parse(&text)
                .map(|node| Self::CloudConfig(Box::new(node)))
                .map_err(|invalid| ConfigError::CloudConfig {
                    path: path.to_path_buf(),
                    line: invalid.line,
                    key: invalid.key,
                    message: invalid.message,
                });
        }
        AgentConfig::parse(&text)
            .map(|config| Self::Agent(Box::new(config)))
            .map_err(|(field, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                field,
                message,
            })
    }

    /// The agent's config (a cloud-config's mapped onto it).
    pub fn agent(&self) -> &AgentConfig {
        match self {
            Self::Agent(config) => config,
            Self::CloudConfig(node) => &node.agent,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs a member of the store (3 or 5 masters per cluster).
    #[default]
    Master,
    /// Uses the masters' store as a client.
    Worker,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The node's name: the store member name and the default machine name.
    pub name: String,
    #[serde(default)]
    pub role: Role,
    /// fleet machine metadata (`MachineMetadata=` matches these).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Underlay address of the node; default: the first IPv4 address of `iface`.
    pub public_ip: Option<Ipv4Addr>,
    /// fleet machine ID; default: /etc/machine-id, else one generated and kept in `data_dir`.
    /// Give one when several nodes share a root filesystem (network-namespace clusters).
    pub machine_id: Option<String>,
    /// Underlay interface; default: the interface of the default route.
    pub iface: Option<String>,
    /// Where the store, IPAM and fleet keep their state.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// This node's certificate directory (`shoal pki cluster`'s `DIR/NODE`). With it the
    /// cluster is secure: masters serve the store over TLS on client and peer ports with
    /// client certificates required, each component connects as its own store user (flannel
    /// as `flannel`, fleet as `fleet`, the agent as `root`), and the first master turns on
    /// the store's auth with those users.
    pub pki: Option<PathBuf>,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub fleet: FleetSettings,
    #[serde(default)]
    pub health: HealthConfig,
}

/// The store: a member of the embedded store (masters) or a client of one (workers, or an
/// external etcd cluster when `external` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Masters: the static initial cluster, `name=peer-url,...` (etcd's `--initial-cluster`).
    pub initial_cluster: Option<String>,
    /// Masters: `new` for a first boot, `existing` to join a running cluster.
    #[serde(default)]
    pub initial_cluster_state: ClusterState,
    /// Masters: join through any existing member's client URL instead of a static cluster.
    pub join: Option<String>,
    /// Masters: client URLs to listen on (default `http://0.0.0.0:2379`).
    pub listen_client_urls: Option<String>,
    /// Masters: peer URLs to listen on (default `http://0.0.0.0:2380`).
    pub listen_peer_urls: Option<String>,
    /// Masters: client URLs this member tells the others and clients about (default: the
    /// node's address on port 2379).
    pub advertise_client_urls: Option<String>,
    /// Masters: peer URLs this member announces (default: its URL in `initial_cluster`).
    pub initial_advertise_peer_urls: Option<String>,
    /// Masters: etcd's `--initial-cluster-token`, the same on every member of a cluster.
    #[serde(default = "default_cluster_token")]
    pub initial_cluster_token: String,
    /// Masters: the member's data directory (default `<data_dir>/kv`).
    pub data_dir: Option<PathBuf>,
    /// Masters without `pki`: the member's certificate for its client URLs (etcd's
    /// `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`).
    pub server_tls: Option<MemberTls>,
    /// Masters without `pki`: the member's certificate for its peer URLs (etcd's `--peer-*`).
    pub peer_tls: Option<MemberTls>,
    /// Client URLs of the store, used by every component (workers: required; masters: default
    /// the masters of `initial_cluster` on port 2379).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Use an external etcd cluster at `endpoints` instead of running a member.
    #[serde(default)]
    pub external: bool,
    /// Masters: the Raft heartbeat interval (etcd's `--heartbeat-interval`).
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Masters: the Raft election timeout (etcd's `--election-timeout`), at least five
    /// heartbeats. Raise both on slow or emulated machines.
    #[serde(default = "default_election_timeout", with = "humantime_serde")]
    pub election_timeout: Duration,
    /// TLS for every store connection the agent makes (flannel, fleet, readiness, join).
    pub tls: Option<StoreTls>,
    /// A store user for every store connection the agent makes (etcd auth).
    pub auth: Option<StoreAuth>,
}

/// PEM files for the store's TLS: the CA that signs its certificate, and the client's own
/// certificate and key when the store checks clients (`--client-cert-auth`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A member's own certificate for one of its listeners, as etcd's TLS flags give it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA that signs the certificates clients (or peers) present.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a certificate signed by `trusted_ca_file` from every client (or peer).
    #[serde(default)]
    pub client_cert_auth: bool,
}

/// A store user and its password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for StoreAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

/// The overlay network (flannel).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Store prefix of the network (flannel's `--etcd-prefix`).
    #[serde(default = "default_network_prefix")]
    pub prefix: String,
    /// flannel's network config JSON, written to `<prefix>/config` on first start if absent.
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default = "default_subnet_file")]
    pub subnet_file: PathBuf,
    /// bpffs directory where the eBPF dataplane pins its maps and links (default
    /// /sys/fs/bpf/shoal). The pins keep the dataplane working while the agent restarts, so
    /// it must be a bpffs that outlives the agent's mount namespace.
    pub bpf_pin_root: Option<PathBuf>,
    /// eBPF dataplane: deliver decapsulated packets straight to local workloads, past the
    /// node's netfilter FORWARD chain (`false` keeps every packet on the kernel's path).
    #[serde(default = "enabled")]
    pub direct_delivery: bool,
    /// The overlay's own way to the store, where it differs from `store` (flannel's
    /// `--etcd-endpoints`, `--etcd-cafile`, ..., `--etcd-username`).
    #[serde(default)]
    pub store: ComponentStore,
    /// The bridge `shoal run` attaches workloads to, holding the subnet's gateway address;
    /// empty for none, on a node where Docker's `docker0` (configured from subnet.env) or a
    /// CNI bridge holds that address instead.
    #[serde(default = "default_bridge")]
    pub bridge: String,
}

/// A component's store endpoints and identity, each overriding the node's `store` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentStore {
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub tls: Option<StoreTls>,
    pub auth: Option<StoreAuth>,
}

/// fleet's agent and engine candidate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSettings {
    #[serde(default = "enabled")]
    pub enabled: bool,
    #[serde(default = "default_fleet_prefix")]
    pub key_prefix: String,
    /// How long a machine may miss heartbeats before its units are rescheduled.
    #[serde(default = "default_agent_ttl", with = "humantime_serde")]
    pub agent_ttl: Duration,
    /// Whether this node stands for election as the engine.
    #[serde(default = "enabled")]
    pub engine: bool,
    /// How often the engine reconciles even without a change (fleet's
    /// `engine_reconcile_interval`).
    #[serde(default = "default_reconcile_interval", with = "humantime_serde")]
    pub engine_reconcile_interval: Duration,
    /// fleet's `etcd_request_timeout`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub etcd_request_timeout: Duration,
    /// fleet's own way to the store, where it differs from `store` (fleet's `etcd_servers`,
    /// `etcd_cafile`, ..., `etcd_username`).
    #[serde(default)]
    pub store: ComponentStore,
}

/// The health, readiness and metrics endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_health_listen")]
    pub listen: SocketAddr,
}

fn enabled() -> bool {
    true
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/shoal")
}
fn default_network_prefix() -> String {
    "/coreos.com/network".into()
}
fn default_subnet_file() -> PathBuf {
    PathBuf::from("/run/flannel/subnet.env")
}
fn default_bridge() -> String {
    shoal_flannel::overlay::DEFAULT_BRIDGE.into()
}
fn default_fleet_prefix() -> String {
    "/_coreos.com/fleet/".into()
}
fn default_agent_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_reconcile_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_cluster_token() -> String {
    "shoal-cluster".into()
}
fn default_heartbeat_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_election_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_health_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            initial_cluster: None,
            initial_cluster_state: ClusterState::default(),
            join: None,
            listen_client_urls: None,
            listen_peer_urls: None,
            advertise_client_urls: None,
            initial_advertise_peer_urls: None,
            initial_cluster_token: default_cluster_token(),
            data_dir: None,
            server_tls: None,
            peer_tls: None,
            endpoints: Vec::new(),
            external: false,
            heartbeat_interval: default_heartbeat_interval(),
            election_timeout: default_election_timeout(),
            tls: None,
            auth: None,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefix: default_network_prefix(),
            config: None,
            ip_masq: false,
            subnet_file: default_subnet_file(),
            bpf_pin_root: None,
            direct_delivery: true,
            store: ComponentStore::default(),
            bridge: default_bridge(),
        }
    }
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            key_prefix: default_fleet_prefix(),
            agent_ttl: default_agent_ttl(),
            engine: true,
            engine_reconcile_interval: default_reconcile_interval(),
            etcd_request_timeout: default_request_timeout(),
            store: ComponentStore::default(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            listen: default_health_listen(),
        }
    }
}

impl AgentConfig {
    /// Reads, parses and validates a config file (a cloud-config is mapped onto the agent's).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        NodeConfig::load(path).map(|node| node.agent().clone())
    }

    /// Parses and validates YAML text; an error is `(field, message)`.
    pub fn parse(text: &str) -> Result<Self, (String, String)> {
        Self::checked(serde_path_to_error::deserialize(
            serde_yaml::Deserializer::from_str(text),
        ))
    }

    /// Deserialises and validates a config already parsed as YAML (what a cloud-config maps
    /// to); an error is `(field, message)`.
    pub fn from_value(value: serde_yaml::Value) -> Result<Self, (String, String)> {
        Self::checked(serde_path_to_error::deserialize(value))
    }

    fn checked<E: std::fmt::Display>(
        parsed: Result<Self, serde_path_to_error::Error<E>>,
    ) -> Result<Self, (String, String)> {
        let config = parsed.map_err(|err| {
            let field = err.path().to_string();
            let field = if field == "." {
                "(top level)".to_string()
            } else {
                field
            };
            (field, err.into_inner().to_string())
        })?;
        config
            .validate()
            .map_err(|(field, message)| (field.to_string(), message))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if !is_dns_label(&self.name) {
            return Err((
                "name",
                format!(
                    "`{}` is not a valid node name (letters, digits and `-`, at most 63)",
                    self.name
                ),
            ));
        }
        if let Some(key) = self
            .metadata
            .keys()
            .find(|key| key.is_empty() || key.contains(['=', ',']))
        {
            return Err((
                "metadata",
                format!("key `{key}` must be non-empty without `=` or `,`"),
            ));
        }
        self.validate_store()?;
        let network_named = |config: &serde_json::Value| {
            config
                .get("Network")
                .and_then(|network| network.as_str())
                .is_some()
        };
        if self
            .network
            .config
            .as_ref()
            .is_some_and(|config| !network_named(config))
        {
            return Err((
                "network.config",
                "flannel's network config needs a `Network` string such as 10.244.0.0/16".into(),
            ));
        }
        if self.fleet.agent_ttl < Duration::from_secs(1) {
            return Err(("fleet.agent_ttl", "must be at least 1s".into()));
        }
        if self.fleet.engine_reconcile_interval.is_zero() {
            return Err((
                "fleet.engine_reconcile_interval",
                "must be more than 0".into(),
            ));
        }
        if self.fleet.etcd_request_timeout.is_zero() {
            return Err(("fleet.etcd_request_timeout", "must be more than 0".into()));
        }
        Ok(())
    }

    fn validate_store(&self) -> Result<(), (&'static str, String)> {
        let store = &self.store;
        if store.heartbeat_interval.is_zero() {
            return Err(("store.heartbeat_interval", "must be more than 0".into()));
        }
        if store.election_timeout < store.heartbeat_interval * 5 {
            return Err((
                "store.election_timeout",
                format!(
                    "must be at least 5 times store.heartbeat_interval ({:?}), as etcd requires",
                    store.heartbeat_interval
                ),
            ));
        }
        validate_store_identity(&STORE_IDENTITY, store.tls.as_ref(), store.auth.as_ref())?;
        validate_store_identity(
            &NETWORK_IDENTITY,
            self.network.store.tls.as_ref(),
            self.network.store.auth.as_ref(),
        )?;
        validate_store_identity(
            &FLEET_IDENTITY,
            self.fleet.store.tls.as_ref(),
            self.fleet.store.auth.as_ref(),
        )?;
        if self.pki.is_some() {
            validate_secure_store(store)?;
            let own_identity =
                |component: &ComponentStore| component.tls.is_some() || component.auth.is_some();
            if own_identity(&self.network.store) || own_identity(&self.fleet.store) {
                return Err((
                    "pki",
                    "gives every component its own certificate: leave out network.store's and \
                     fleet.store's tls and auth"
                        .into(),
                ));
            }
        }
        if store.external || self.role == Role::Worker {
            if store.endpoints.is_empty() {
                return Err((
                    "store.endpoints",
                    "a worker (or an external store) needs the store's client URLs".into(),
                ));
            }
            return Ok(());
        }
        if store.tls.is_some() && store.server_tls.is_none() && store.endpoints.is_empty() {
            return Err((
                "store.tls",
                "this master's own member serves plain HTTP: give store.endpoints (https://) \
                 of the store these files are for, or store.server_tls"
                    .into(),
            ));
        }
        match (&store.initial_cluster, &store.join) {
            (Some(_), Some(_)) => Err((
                "store.join",
                "give either store.initial_cluster or store.join, not both".into(),
            )),
            (None, None) => Ok(()), // a single-member store of its own
            (None, Some(_)) => Ok(()),
            (Some(cluster), None) => {
                let members =
                    parse_initial_cluster(cluster).map_err(|msg| ("store.initial_cluster", msg))?;
                if !members.iter().any(|(name, _)| *name == self.name) {
                    return Err((
                        "store.initial_cluster",
                        format!("must name this node (`{}`)", self.name),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The field names of one section's `tls` and `auth`, for errors.
struct IdentityFields {
    tls: &'static str,
    cert_file: &'static str,
    key_file: &'static str,
    username: &'static str,
}

const STORE_IDENTITY: IdentityFields = IdentityFields {
    tls: "store.tls",
    cert_file: "store.tls.cert_file",
    key_file: "store.tls.key_file",
    username: "store.auth.username",
};
const NETWORK_IDENTITY: IdentityFields = IdentityFields {
    tls: "network.store.tls",
    cert_file: "network.store.tls.cert_file",
    key_file: "network.store.tls.key_file",
    username: "network.store.auth.username",
};
const FLEET_IDENTITY: IdentityFields = IdentityFields {
    tls: "fleet.store.tls",
    cert_file: "fleet.store.tls.cert_file",
    key_file: "fleet.store.tls.key_file",
    username: "fleet.store.auth.username",
};

/// `tls` and `auth` (of `store`, `network.store` or `fleet.store`) must each say something
/// whole.
fn validate_store_identity(
    fields: &IdentityFields,
    tls: Option<&StoreTls>,
    auth: Option<&StoreAuth>,
) -> Result<(), (&'static str, String)> {
    if let Some(tls) = tls {
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => return Err((fields.cert_file, "needs key_file".into())),
            (None, Some(_)) => return Err((fields.key_file, "needs cert_file".into())),
            (None, None) if tls.ca_file.is_none() => {
                return Err((
                    fields.tls,
                    "give ca_file, or cert_file and key_file, or both".into(),
                ));
            }
            _ => {}
        }
    }
    if auth.is_some_and(|auth| auth.username.is_empty()) {
        return Err((fields.username, "must not be empty".into()));
    }
    Ok(())
}

/// With `pki` every component has its own certificate and every URL is `https://`.
fn validate_secure_store(store: &StoreConfig) -> Result<(), (&'static str, String)> {
    if store.server_tls.is_some() || store.peer_tls.is_some() {
        return Err((
            "pki",
            "holds the member's certificates: leave out store.server_tls and store.peer_tls".into(),
        ));
    }
    if store.tls.is_some() || store.auth.is_some() {
        return Err((
            "pki",
            "gives every component its own certificate: leave out store.tls and store.auth".into(),
        ));
    }
    let plain = |url: &str| url.trim().starts_with("http://");
    if let Some(cluster) = &store.initial_cluster
        && let Ok(members) = parse_initial_cluster(cluster)
        && let Some((name, url)) = members.iter().find(|(_, url)| plain(url))
    {
        return Err((
            "store.initial_cluster",
            format!("with pki the peer URL of `{name}` must be https://, not `{url}`"),
        ));
    }
    if let Some(url) = store
        .join
        .iter()
        .chain(&store.endpoints)
        .find(|url| plain(url))
    {
        return Err((
            "store",
            format!("with pki every client URL must be https://, not `{url}`"),
        ));
    }
    Ok(())
}

/// Splits etcd's `name=url,name=url` into pairs.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<(&str, &str)>, String> {
    text.split(',')
        .map(|member| {
            let (name, url) = member
                .split_once('=')
                .ok_or_else(|| format!("`{member}` is not `name=peer-url`"))?;
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(format!(
                    "peer URL `{url}` of `{name}` must start with http:// or https://"
                ));
            }
            Ok((name.trim(), url.trim()))
        })
        .collect()
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> (String, String) {
        AgentConfig::parse(text).expect_err("config is invalid")
    }

    #[test]
    fn a_minimal_config_gets_the_embedded_defaults() {
        let config = AgentConfig::parse("name: node1\n").expect("valid");
        assert_eq!(config.role, Role::Master);
        assert!(config.store.initial_cluster.is_none());
        assert_eq!(config.network.prefix, "/coreos.com/network");
        assert_eq!(config.fleet.agent_ttl, Duration::from_secs(30));
        assert_eq!(config.health.listen.port(), 9901);
    }

    #[test]
    fn the_example_files_are_valid() {
        for example in ["master.yaml", "worker.yaml", "single.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/agent")
                .join(example);
            AgentConfig::load(&path).unwrap_or_else(|err| panic!("{example}: {err}"));
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            error_of("name: n1\nfleet:\n  agent_ttl: soon\n").0,
            "fleet.agent_ttl"
        );
        assert_eq!(error_of("name: n1\nrole: boss\n").0, "role");
        let (field, message) = error_of("name: n1\nstore:\n  initial_clustr: x\n");
        assert_eq!(field, "store.initial_clustr");
        assert!(message.contains("expected one of"), "{message}");
        assert_eq!(error_of("name: n1\npublic_ip: 10.0.0.300\n").0, "public_ip");
        assert_eq!(error_of("name: 'bad name'\n").0, "name");
    }

    #[test]
    fn the_initial_cluster_must_name_this_node() {
        let (field, message) =
            error_of("name: n1\nstore:\n  initial_cluster: n2=http://10.0.0.2:2380\n");
        assert_eq!(field, "store.initial_cluster");
        assert!(message.contains("`n1`"), "{message}");
        let (field, _) = error_of("name: n1\nstore:\n  initial_cluster: n1\n");
        assert_eq!(field, "store.initial_cluster");
    }

    #[test]
    fn raft_timing_is_settable_and_checked_as_etcd_checks_it() {
        let config = AgentConfig::parse("name: n1\n").expect("valid");
        assert_eq!(config.store.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(config.store.election_timeout, Duration::from_secs(1));
        let config = AgentConfig::parse(
            "name: n1\nstore:\n  heartbeat_interval: 250ms\n  election_timeout: 2500ms\n",
        )
        .expect("valid");
        assert_eq!(config.store.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(config.store.election_timeout, Duration::from_millis(2500));
        let (field, message) = error_of("name: n1\nstore:\n  election_timeout: 300ms\n");
        assert_eq!(field, "store.election_timeout");
        assert!(message.contains("5 times"), "{message}");
        let (field, _) = error_of("name: n1\nstore:\n  heartbeat_interval: 0s\n");
        assert_eq!(field, "store.heartbeat_interval");
    }

    #[test]
    fn a_worker_needs_endpoints() {
        assert_eq!(error_of("name: w1\nrole: worker\n").0, "store.endpoints");
    }

    #[test]
    fn store_tls_and_auth_must_be_whole() {
        let config = AgentConfig::parse(
            "name: w1\nrole: worker\nstore:\n  endpoints: [https://10.0.0.1:2379]\n  tls: { ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem }\n  auth: { username: flannel, password: pw }\n",
        )
        .expect("valid");
        let tls = config.store.tls.expect("tls");
        assert_eq!(tls.key_file.as_deref(), Some(Path::new("/k.pem")));
        assert!(!format!("{:?}", config.store.auth).contains("pw"));
        assert_eq!(
            error_of("name: n1\nstore:\n  tls: { cert_file: /c.pem }\n").0,
            "store.tls.cert_file"
        );
        assert_eq!(error_of("name: n1\nstore:\n  tls: {}\n").0, "store.tls");
        assert_eq!(
            error_of("name: n1\nstore:\n  auth: { username: '', password: x }\n").0,
            "store.auth.username"
        );
        assert_eq!(
            error_of("name: n1\nstore:\n  auth: { username: root }\n").0,
            "store.auth"
        );
    }

    #[test]
    fn with_pki_every_url_is_https_and_identities_come_from_it() {
        let config = AgentConfig::parse(
            "name: n1\npki: /etc/shoal/pki\nstore:\n  initial_cluster: n1=https://10.0.0.1:2380\n",
        )
        .expect("valid");
        assert_eq!(config.pki.as_deref(), Some(Path::new("/etc/shoal/pki")));
        let (field, message) =
            error_of("name: n1\npki: /p\nstore:\n  initial_cluster: n1=http://10.0.0.1:2380\n");
        assert_eq!(field, "store.initial_cluster");
        assert!(message.contains("https://"), "{message}");
        let worker =
            "name: w1\nrole: worker\npki: /p\nstore:\n  endpoints: [http://10.0.0.1:2379]\n";
        assert_eq!(error_of(worker).0, "store");
        let both = "name: n1\npki: /p\nstore:\n  auth: { username: a, password: b }\n";
        assert_eq!(error_of(both).0, "pki");
    }

    #[test]
    fn components_may_have_their_own_store_access_checked_like_the_nodes() {
        let config = AgentConfig::parse(
            "name: w1\nrole: worker\nstore:\n  endpoints: [http://10.0.0.1:2379]\nfleet:\n  store:\n    endpoints: [https://10.0.0.2:2379]\n    tls: { ca_file: /ca.pem }\n",
        )
        .expect("valid");
        assert_eq!(config.fleet.store.endpoints, ["https://10.0.0.2:2379"]);
        assert_eq!(
            error_of("name: n1\nnetwork:\n  store:\n    tls: { key_file: /k.pem }\n").0,
            "network.store.tls.key_file"
        );
        assert_eq!(
            error_of("name: n1\nfleet:\n  store:\n    auth: { username: '', password: x }\n").0,
            "fleet.store.auth.username"
        );
        let with_pki = "name: n1\npki: /p\nfleet:\n  store:\n    tls: { ca_file: /ca.pem }\n";
        assert_eq!(error_of(with_pki).0, "pki");
        let member_tls =
            "name: n1\npki: /p\nstore:\n  server_tls: { cert_file: /c, key_file: /k }\n";
        assert_eq!(error_of(member_tls).0, "pki");
    }

    #[test]
    fn the_network_config_needs_a_network() {
        let (field, _) = error_of("name: n1\nnetwork:\n  config: { SubnetLen: 24 }\n");
        assert_eq!(field, "network.config");
    }
}
