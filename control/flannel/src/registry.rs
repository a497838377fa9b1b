//! The store as flannel uses it, through the etcd v3 API only: the network config, the lease
//! list with its revision, create-if-absent and update of a lease, keep-alive and the watch.
//! It reaches the store through `shoal-store-client` (TLS, credentials, failover).
use std::{path::PathBuf, time::Duration};

use ipnetwork::Ipv4Network;
use serde::Deserialize;
use shoal_store_client::{
    Credentials, EtcdError, StoreClient, StoreConfig, StoreError, TlsFiles,
    etcd_client::{self, Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp},
};

use super::{
    lease::{Lease, LeaseAttrs, parse_subnet_key_bytes, subnet_key},
    watch::{self, LeaseWatcher, WatchError, WatchStream, WatchTarget},
};
use shoal_store_client::Chain;

/// How to reach the store: flanneld's `--etcd-*` flags.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Bounds connecting, and the keep-alive ping's wait for an answer.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle connection is pinged.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

impl StoreOptions {
    /// The store client's config: TLS when a CA or a certificate and key are given, auth when
    /// a user is.
    pub fn store_config(&self) -> StoreConfig {
        let mut config = StoreConfig::new(self.endpoints.iter().cloned())
            .with_timeout(STORE_TIMEOUT)
            .with_keep_alive(Some(KEEP_ALIVE));
        config.tls = TlsFiles::given(
            self.cafile.clone(),
            self.certfile.clone(),
            self.keyfile.clone(),
        );
        // flanneld sends a user without a password as one with an empty password.
        if let Some(user) = &self.username {
            config = config.with_credentials(Credentials {
                user: user.clone(),
                password: self.password.clone().unwrap_or_default(),
            });
        }
        config
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/coreos.com/network".into(),
            certfile: None,
            keyfile: None,
            cafile: None,
            username: None,
            password: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Connecting (or failing over) found no member that answers.
    #[error(transparent)]
    Connect(#[from] StoreError),
    #[error("{action}")]
    Etcd {
        action: String,
        #[source]
        source: EtcdError,
    },
    #[error("serializing lease attributes")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Watch(#[from] WatchError),
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

fn etcd(action: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> RegistryError {
    let action = action.into();
    move |source| RegistryError::Etcd {
        action,
        source: EtcdError(source),
    }
}

/// One change seen by the lease watch.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    Put(Lease),
    Deleted(Ipv4Network),
}

/// flannel's view of the store, under one prefix.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    /// The connection the client came from, to fail over from; `None` for a shared client.
    store: Option<StoreClient>,
    /// The lease watch's stream, to the client's member.
    watcher: LeaseWatcher,
    prefix: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Registry {
    /// Connects to the first of the endpoints that answers (see [`StoreClient::connect`]).
    pub async fn connect(options: &StoreOptions) -> Result<Self> {
        let store = StoreClient::connect(&options.store_config()).await?;
        Self::from_store(store, &options.prefix).await
    }

    async fn from_store(store: StoreClient, prefix: &str) -> Result<Self> {
        let config = store.config();
        let watcher = LeaseWatcher::connect(&WatchTarget {
            url: store.endpoint().url(),
            tls: config.tls.as_ref(),
            credentials: config.credentials.as_ref(),
            timeout: config.timeout,
            keep_alive: config.keep_alive,
        })
        .await?;
        Ok(Self {
            client: store.client(),
            store: Some(store),
            watcher,
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    /// A registry on an existing client of the plain-HTTP, auth-less member at `endpoint`
    /// (`host:port` or a URL; simulated nodes in benchmarks); it has no other member to fail
    /// over to.
    pub async fn from_client(client: Client, endpoint: &str, prefix: &str) -> Result<Self> {
        let watcher = LeaseWatcher::connect(&WatchTarget {
            url: endpoint,
            tls: None,
            credentials: None,
            timeout: STORE_TIMEOUT,
            keep_alive: Some(KEEP_ALIVE),
        })
        .await?;
        Ok(Self {
            client,
            store: None,
            watcher,
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    /// Refuses lease watch responses larger than `bytes` (see [`watch::MAX_WATCH_MESSAGE`]).
    pub fn with_max_watch_message(mut self, bytes: usize) -> Self {
        self.watcher = self.watcher.with_max_message(bytes);
        self
    }

    /// What a session that broke (a failed watch, list or renewal) should use next: a fresh
    /// connection to the first endpoint that answers, since the member it used may be gone
    /// while others still serve. A registry on a shared client stays on it.
    pub async fn reconnected(&self) -> Result<Self> {
        match &self.store {
            Some(store) => Self::from_store(store.reconnected().await?, &self.prefix).await,
            None => Ok(self.clone()),
        }
    }

    /// Replaces this registry with [`Registry::reconnected`]'s, or keeps it (logging why)
    /// when no member answers: the caller retries anyway.
    pub async fn fail_over(&mut self) {
        if self.store.is_none() {
            return;
        }
        match self.reconnected().await {
            Ok(registry) => *self = registry,
            Err(err) => tracing::warn!("reconnecting to the store: {}", Chain(&err)),
        }
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn lease_key(&self, subnet: Ipv4Network) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(subnet))
    }

    /// The raw network config, `None` while nobody has written it.
    pub async fn network_config(&mut self) -> Result<Option<String>> {
        let key = self.config_key();
        let response = self
            .client
            .get(key.clone(), None)
            .await
            .map_err(etcd(format!("reading {key}")))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Every lease and reservation, and the store revision they were read at. Keys that are
    /// not flannel leases are skipped with a warning.
    ///
    /// The read is serializable (any member answers from its own state, without a round to the
    /// leader): the list is consistent at the revision it reports, the create-if-absent
    /// transaction arbitrates races, and the watch resumes from that revision, so a member that
    /// lags only delays, never loses, an update.
    pub async fn list(&mut self) -> Result<(Vec<Lease>, i64)> {
        let prefix = self.subnets_prefix();
        let options = GetOptions::new().with_prefix().with_serializable();
        let response = self
            .client
            .get(prefix.clone(), Some(options))
            .await
            .map_err(etcd(format!("listing {prefix}")))?;
        let revision = response.header().map_or(0, |header| header.revision());
        let leases = response
            .kvs()
            .iter()
            .filter_map(|kv| decode_lease(kv.key(), kv.value(), kv.lease()))
            .collect();
        Ok((leases, revision))
    }

    /// Writes a new lease key under etcd lease `lease_id` only if the key does not exist
    /// (flannel's create-if-absent transaction). `false` when another node won the race; the
    /// etcd lease is then still unused, and the caller may try another subnet with it.
    pub async fn create(
        &mut self,
        subnet: Ipv4Network,
        attrs: &LeaseAttrs,
        lease_id: i64,
    ) -> Result<bool> {
        let key = self.lease_key(subnet);
        let value = serde_json::to_string(attrs)?;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let response = self
            .client
            .txn(txn)
            .await
            .map_err(etcd(format!("creating {key}")))?;
        Ok(response.succeeded())
    }

    /// Rewrites a lease this node owns: under etcd lease `lease_id`, or without one (a
    /// reservation stays a reservation) when it is 0.
    pub async fn update(
        &mut self,
        subnet: Ipv4Network,
        attrs: &LeaseAttrs,
        lease_id: i64,
    ) -> Result<()> {
        let key = self.lease_key(subnet);
        let value = serde_json::to_string(attrs)?;
        let options = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
        self.client
            .put(key.clone(), value, options)
            .await
            .map_err(etcd(format!("updating {key}")))?;
        Ok(())
    }

    pub async fn delete(&mut self, subnet: Ipv4Network) -> Result<()> {
        let key = self.lease_key(subnet);
        self.client
            .delete(key.clone(), None)
            .await
            .map_err(etcd(format!("deleting {key}")))?;
        Ok(())
    }

    /// Renews an etcd lease once; returns its new TTL in seconds (0 when it no longer exists).
    pub async fn keep_alive(&mut self, lease_id: i64) -> Result<i64> {
        let action = || format!("renewing etcd lease {lease_id:x}");
        let (mut keeper, mut stream) = self
            .client
            .lease_keep_alive(lease_id)
            .await
            .map_err(etcd(action()))?;
        keeper.keep_alive().await.map_err(etcd(action()))?;
        let response = stream.message().await.map_err(etcd(action()))?;
        Ok(response.map_or(0, |response| response.ttl()))
    }

    /// Watches every lease from `start_revision` on, on the registry's own watch stream.
    pub async fn watch(&mut self, start_revision: i64) -> Result<WatchStream> {
        let prefix = self.subnets_prefix();
        let range_end = shoal_store_client::prefix_range_end(prefix.as_bytes());
        Ok(self
            .watcher
            .watch(&self.client, &prefix, range_end, start_revision)
            .await?)
    }

    /// Decodes the events of one watch response, one at a time as they are applied.
    pub fn decode_events(events: &[watch::Event]) -> impl Iterator<Item = LeaseEvent> + '_ {
        events.iter().filter_map(|event| {
            let kv = event.kv.as_ref()?;
            match event.event_type() {
                watch::EventType::Delete => {
                    parse_subnet_key_bytes(&kv.key).map(LeaseEvent::Deleted)
                }
                watch::EventType::Put => {
                    decode_lease(&kv.key, &kv.value, kv.lease).map(LeaseEvent::Put)
                }
            }
        })
    }

    /// Grants an etcd lease of `ttl`; returns its id.
    pub async fn grant(&mut self, ttl: Duration) -> Result<i64> {
        let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        let response = self
            .client
            .lease_grant(seconds, None)
            .await
            .map_err(etcd(format!("granting an etcd lease of {seconds} s")))?;
        Ok(response.id())
    }

    /// Revokes an etcd lease this node no longer needs (best effort: logged, never fails; an
    /// unused lease expires anyway).
    pub async fn revoke(&mut self, lease_id: i64) {
        if let Err(err) = self.client.lease_revoke(lease_id).await {
            tracing::warn!("revoking unused etcd lease {lease_id:x}: {}", Chain(&err));
        }
    }
}

/// A lease from a key and value, or `None` (logged) for keys that are not flannel leases.
fn decode_lease(key: &[u8], value: &[u8], etcd_lease: i64) -> Option<Lease> {
    let Some(subnet) = parse_subnet_key_bytes(key) else {
        let key = String::from_utf8_lossy(key);
        tracing::warn!(%key, "ignoring a key that is not a subnet lease");
        return None;
    };
    // One UTF-8 check of the whole value instead of one per string as `from_slice` makes: the
    // same values are accepted (JSON's own syntax is ASCII).
    let parsed = std::str::from_utf8(value)
        .map_err(<serde_json::Error as serde::de::Error>::custom)
        .and_then(serde_json::from_str::<LeaseAttrs>);
    match parsed {
        Ok(attrs) => Some(Lease {
            subnet,
            attrs,
            etcd_lease,
        }),
        Err(err) => {
            let key = String::from_utf8_lossy(key);
            tracing::warn!(%key, "ignoring a lease with a bad value: {}", Chain(&err));
            None
        }
    }
}
