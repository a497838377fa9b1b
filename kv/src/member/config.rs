//! A member's configuration (the `shoal kv` flags, resolved), the member and cluster IDs derived
//! from it, and the Raft settings it implies.
use std::path::PathBuf;
use std::time::Duration;

use openraft::SnapshotPolicy;

use super::compactor::AutoCompaction;
use crate::error::StoreError;
use crate::storage::quota::Quota;
use crate::tls::TlsFiles;
use crate::types::{MemberNode, Members};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// A member's configuration (the `shoal kv` flags, resolved).
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// `name -> peer URLs`, in `--initial-cluster` order.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// Applied entries between snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// The client listeners' TLS (`--cert-file`, `--key-file`, `--trusted-ca-file`,
    /// `--client-cert-auth`), for their `https://` URLs.
    pub client_tls: Option<TlsFiles>,
    /// The peer listeners' and the peer dialer's TLS (the `--peer-` flags), for `https://`
    /// peer URLs.
    pub peer_tls: Option<TlsFiles>,
    /// How long a simple auth token lives unused (etcd's `--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// What the leader's auto-compactor keeps (`--auto-compaction-mode`/`-retention`).
    pub auto_compaction: AutoCompaction,
    /// etcd's `--strict-reconfig-check`: membership changes that could cost the quorum are
    /// refused ([`crate::member::MembershipChange`]).
    pub strict_reconfig_check: bool,
    /// The backend quota (`--quota-backend-bytes`).
    pub quota: Quota,
    /// Limits on what one client may hold open.
    pub limits: ClientLimits,
    /// Where `/metrics`, `/health` and `/version` are served besides the client URLs
    /// (`--listen-metrics-urls`).
    pub listen_metrics_urls: Vec<String>,
}

/// Limits on what one client may hold open; refusals name the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// HTTP/2 streams at once per connection (etcd's `--max-concurrent-streams`).
    pub max_concurrent_streams: u32,
    /// Watchers on one Watch stream (`--max-watchers-per-stream`).
    pub max_watchers_per_stream: usize,
    /// Connections at once from one IP address (`--max-connections-per-client`).
    pub max_connections_per_client: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_concurrent_streams: u32::MAX,
            max_watchers_per_stream: 10_000,
            max_connections_per_client: 1_000,
        }
    }
}

impl Config {
    /// A single member on the given ports of 127.0.0.1 (tests, benchmarks).
    pub fn local(name: &str, data_dir: PathBuf, client_port: u16, peer_port: u16) -> Self {
        let peer = format!("http://127.0.0.1:{peer_port}");
        let client = format!("http://127.0.0.1:{client_port}");
        Config {
            name: name.to_string(),
            data_dir,
            listen_client_urls: vec![client.clone()],
            advertise_client_urls: vec![client],
            listen_peer_urls: vec![peer.clone()],
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: vec![(name.to_string(), vec![peer])],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".to_string(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            client_tls: None,
            peer_tls: None,
            auth_token_ttl: crate::storage::tokens::DEFAULT_TTL,
            auto_compaction: AutoCompaction::Off,
            strict_reconfig_check: true,
            quota: Quota::from_flag(0),
            limits: ClientLimits::default(),
            listen_metrics_urls: Vec::new(),
        }
    }
}

/// A stable 64-bit FNV-1a hash (member and cluster IDs must agree across members and restarts).
fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0u8]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A member's ID from its peer URLs and the cluster token, as etcd derives it (not the same
/// hash function, the same inputs).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let joined = urls.join(",");
    fnv64(&[joined.as_bytes(), token.as_bytes()]) & 0x7fff_ffff_ffff_ffff
}

/// The members and ID of the cluster `config` forms with `--initial-cluster-state new`.
pub fn new_cluster(config: &Config) -> (Members, u64) {
    let members = initial_members(config);
    let id = cluster_id(&members, &config.initial_cluster_token);
    (members, id)
}

pub(super) fn cluster_id(members: &Members, token: &str) -> u64 {
    let ids: Vec<[u8; 8]> = members.keys().map(|id| id.to_le_bytes()).collect();
    let mut parts: Vec<&[u8]> = ids.iter().map(|b| b.as_slice()).collect();
    parts.push(token.as_bytes());
    fnv64(&parts)
}

/// The members `--initial-cluster` names, by ID.
pub(super) fn initial_members(config: &Config) -> Members {
    config
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            let node = MemberNode {
                name: name.clone(),
                peer_urls: urls.clone(),
            };
            (member_id(urls, &config.initial_cluster_token), node)
        })
        .collect()
}

pub(super) fn raft_config(config: &Config) -> Result<openraft::Config, StoreError> {
    let election = config.election_timeout.as_millis() as u64;
    openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        max_in_snapshot_log_to_keep: config.snapshot_count.min(1000),
        max_payload_entries: crate::peer::MAX_APPEND_ENTRIES,
        install_snapshot_timeout: 5000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StoreError::Config(format!("raft settings: {e}")))
}
