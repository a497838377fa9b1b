//! fleet's state in an etcd v3 store, and the typed accessors every component uses.
//!
//! Key layout under the prefix (default `/_coreos.com/fleet/`):
//!
//! | key | value | written by | lease |
//! | --- | --- | --- | --- |
//! | `machines/<id>/object` | [`MachineRecord`] JSON | agent | agent's (TTL `agent_ttl`) |
//! | `unit/<sha1>` | normalised unit file text (content-addressed) | fleetctl | - |
//! | `job/<name>/object` | [`JobRecord`] JSON: name and unit hash | fleetctl | - |
//! | `job/<name>/target-state` | `inactive`, `loaded` or `launched` | fleetctl | - |
//! | `job/<name>/target` | machine ID the unit is scheduled to | engine | - |
//! | `job/<name>/unschedulable` | why the engine cannot place the unit | engine | - |
//! | `states/<name>/<machine>` | [`UnitStateRecord`] JSON as the agent sees it | agent | agent's |
//! | `journal/<name>/<machine>` | the unit's most recent output lines | agent | agent's |
//! | `lease/engine-leader` | machine ID of the active engine | engine | engine's |
//!
//! A unit is submitted in one transaction (unit text, job object and target state together),
//! so a failed submit leaves nothing behind. Global units never get a `target`: every agent
//! whose metadata matches runs them.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use shoal_store_client::{
    StoreClient, StoreConfig, StoreError as StoreClientError, prefix_range_end,
};

/// The default key prefix, fleet's.
pub const DEFAULT_PREFIX: &str = "/_coreos.com/fleet/";
/// etcd refuses transactions with more operations than this (its `--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reaching the store failed (unreachable, timed out, refused).
    #[error(transparent)]
    Client(#[from] StoreClientError),
    #[error("corrupt record at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store transaction on {0} lost a race, state changed underneath")]
    Conflict(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a unit should be doing, as fleetctl sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    Inactive,
    Loaded,
    Launched,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Inactive => "inactive",
            TargetState::Loaded => "loaded",
            TargetState::Launched => "launched",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "inactive" => Some(TargetState::Inactive),
            "loaded" => Some(TargetState::Loaded),
            "launched" => Some(TargetState::Launched),
            _ => None,
        }
    }
}

impl std::fmt::Display for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `machines/<id>/object`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineRecord {
    pub id: String,
    #[serde(default)]
    pub public_ip: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub version: String,
}

/// `job/<name>/object`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub name: String,
    pub unit_hash: String,
}

/// `states/<name>/<machine>`: systemd's three state words plus what the agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitStateRecord {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub machine_id: String,
    pub unit_hash: String,
    /// Main process, when the runtime knows it.
    #[serde(default)]
    pub main_pid: Option<u32>,
    /// Seconds since the epoch when the unit last entered its active state.
    #[serde(default)]
    pub since: Option<u64>,
}

/// Names of fleet's keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn machines(&self) -> String {
        format!("{}machines/", self.prefix)
    }

    pub fn machine(&self, id: &str) -> String {
        format!("{}machines/{id}/object", self.prefix)
    }

    /// `unit/`: every unit text.
    pub fn units(&self) -> String {
        format!("{}unit/", self.prefix)
    }

    pub fn unit(&self, hash: &str) -> String {
        format!("{}unit/{hash}", self.prefix)
    }

    pub fn jobs(&self) -> String {
        format!("{}job/", self.prefix)
    }

    pub fn job(&self, name: &str) -> String {
        format!("{}job/{name}/", self.prefix)
    }

    pub fn job_object(&self, name: &str) -> String {
        format!("{}job/{name}/object", self.prefix)
    }

    pub fn target_state(&self, name: &str) -> String {
        format!("{}job/{name}/target-state", self.prefix)
    }

    pub fn target(&self, name: &str) -> String {
        format!("{}job/{name}/target", self.prefix)
    }

    pub fn unschedulable(&self, name: &str) -> String {
        format!("{}job/{name}/unschedulable", self.prefix)
    }

    pub fn states(&self) -> String {
        format!("{}states/", self.prefix)
    }

    pub fn unit_states(&self, name: &str) -> String {
        format!("{}states/{name}/", self.prefix)
    }

    pub fn state(&self, name: &str, machine: &str) -> String {
        format!("{}states/{name}/{machine}", self.prefix)
    }

    pub fn unit_journals(&self, name: &str) -> String {
        format!("{}journal/{name}/", self.prefix)
    }

    pub fn journal(&self, name: &str, machine: &str) -> String {
        format!("{}journal/{name}/{machine}", self.prefix)
    }

    pub fn engine_leader(&self) -> String {
        format!("{}lease/engine-leader", self.prefix)
    }

    /// Splits `job/<name>/<field>` into name and field.
    pub fn parse_job_key<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("job/")?;
        rest.rsplit_once('/')
    }

    /// Extracts the ID from `machines/<id>/object`.
    pub fn parse_machine_key<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("machines/")?;
        rest.strip_suffix("/object")
    }

    /// Splits `states/<name>/<machine>` into name and machine.
    pub fn parse_state_key<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("states/")?;
        rest.rsplit_once('/')
    }
}

/// A connected store client with fleet's key names and a per-request timeout.
#[derive(Clone)]
pub struct Store {
    client: StoreClient,
    keys: Keys,
}

impl Store {
    /// Connects to the first of `endpoints` that answers within `timeout` (see
    /// [`StoreClient::connect`]), with fleet's keys under `prefix`.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        timeout: Duration,
    ) -> StoreResult<Self> {
        let config = StoreConfig::new(endpoints.iter().cloned()).with_timeout(timeout);
        Self::connect_with(&config, prefix).await
    }

    /// Connects with a full store config (TLS, credentials, keep-alive).
    pub async fn connect_with(config: &StoreConfig, prefix: &str) -> StoreResult<Self> {
        let client = StoreClient::connect(config).await?;
        Ok(Self::new(client, prefix))
    }

    /// fleet's view of an already connected client.
    pub fn new(client: StoreClient, prefix: &str) -> Self {
        Self {
            client,
            keys: Keys::new(prefix),
        }
    }

    /// A fresh connection to the first of the original endpoints that answers: what a session
    /// that failed should use next, since the endpoint it used may be gone (a powered-off
    /// master) while others still serve.
    pub async fn reconnected(&self) -> StoreResult<Self> {
        Ok(Self {
            client: self.client.reconnected().await?,
            keys: self.keys.clone(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The raw client, for watches and leases.
    pub fn client(&self) -> Client {
        self.client.client()
    }

    pub fn timeout(&self) -> Duration {
        self.client.timeout()
    }

    /// Runs one store call under the request timeout, naming the operation in errors.
    pub async fn call<T, F>(&self, operation: &str, future: F) -> StoreResult<T>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        Ok(self.client.call(operation, future).await?)
    }

    /// An error of a watch or lease stream on this store, naming `operation`.
    pub fn etcd_error(&self, operation: &str, source: etcd_client::Error) -> StoreError {
        self.client.error(operation, source).into()
    }

    pub async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        let mut client = self.client.client();
        let response = self
            .call(&format!("get {key}"), client.get(key, None))
            .await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        Ok(Some(value_text(key, kv.value())?))
    }

    /// Every key/value under `prefix`, and the store revision they were read at.
    pub async fn get_prefix(&self, prefix: &str) -> StoreResult<(Vec<(String, String)>, i64)> {
        self.read_prefix(prefix, None).await
    }

    /// Every key/value under `prefix` as it was at `revision` (several prefixes read as one
    /// snapshot).
    pub async fn get_prefix_at(
        &self,
        prefix: &str,
        revision: i64,
    ) -> StoreResult<Vec<(String, String)>> {
        Ok(self.read_prefix(prefix, Some(revision)).await?.0)
    }

    /// Reads `prefix` in pages of [`PAGE_KEYS`], every page at the revision of the first (or
    /// at `revision`): a single response for 50,000 jobs is larger than gRPC's 4 MiB.
    async fn read_prefix(
        &self,
        prefix: &str,
        revision: Option<i64>,
    ) -> StoreResult<(Vec<(String, String)>, i64)> {
        let end = prefix_range_end(prefix.as_bytes());
        let mut start = prefix.as_bytes().to_vec();
        let mut revision = revision;
        let mut pairs = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE_KEYS);
            if let Some(revision) = revision {
                options = options.with_revision(revision);
            }
            let mut client = self.client.client();
            let response = self
                .call(
                    &format!("get {prefix}*"),
                    client.get(start.clone(), Some(options)),
                )
                .await?;
            let read_at = *revision.get_or_insert(response.header().map_or(0, |h| h.revision()));
            for kv in response.kvs() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let value = value_text(&key, kv.value())?;
                pairs.push((key, value));
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((pairs, read_at)),
            }
        }
    }

    /// Runs `txn`; returns whether its compares held.
    pub async fn txn(&self, operation: &str, txn: Txn) -> StoreResult<bool> {
        let mut client = self.client.client();
        let response = self.call(operation, client.txn(txn)).await?;
        Ok(response.succeeded())
    }

    /// Runs `ops` in transactions of at most [`MAX_TXN_OPS`], each guarded by `guard`.
    /// Returns false as soon as a guard fails (nothing further is written).
    pub async fn batched(&self, guard: &[Compare], ops: Vec<TxnOp>) -> StoreResult<bool> {
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let chunk: Vec<TxnOp> = ops.by_ref().take(MAX_TXN_OPS).collect();
            let txn = Txn::new().when(guard.to_vec()).and_then(chunk);
            if !self.txn("batched write", txn).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`Self::batched`] with up to `in_flight` transactions at once: every transaction
    /// still carries `guard`, so once one fails the others that follow fail too. Returns false
    /// if any guard failed; the transactions that were in flight when it did may have applied.
    pub async fn batched_concurrently(
        &self,
        guard: &[Compare],
        ops: Vec<TxnOp>,
        in_flight: usize,
    ) -> StoreResult<bool> {
        let txns: Vec<Txn> = ops
            .chunks(MAX_TXN_OPS)
            .map(|chunk| Txn::new().when(guard.to_vec()).and_then(chunk.to_vec()))
            .collect();
        self.txns_concurrently("batched write", txns, in_flight)
            .await
            .map(|failed| failed.is_none())
    }

    /// Runs `txns`, up to `in_flight` at once, stopping at the first error or failed compare;
    /// returns the index of a transaction whose compares failed, if one did.
    pub async fn txns_concurrently(
        &self,
        operation: &str,
        txns: Vec<Txn>,
        in_flight: usize,
    ) -> StoreResult<Option<usize>> {
        let mut running = tokio::task::JoinSet::new();
        let mut txns = txns.into_iter().enumerate();
        loop {
            while running.len() < in_flight.max(1) {
                let Some((index, txn)) = txns.next() else {
                    break;
                };
                let store = self.clone();
                let operation = operation.to_string();
                running.spawn(async move { (index, store.txn(&operation, txn).await) });
            }
            let Some(done) = running.join_next().await else {
                return Ok(None);
            };
            let (index, succeeded) = done.map_err(|err| {
                StoreError::Conflict(format!("{operation}: transaction task failed: {err}"))
            })?;
            if !succeeded? {
                return Ok(Some(index));
            }
        }
    }

    pub async fn machines(&self) -> StoreResult<Vec<MachineRecord>> {
        let (pairs, _) = self.get_prefix(&self.keys.machines()).await?;
        pairs
            .iter()
            .filter(|(key, _)| self.keys.parse_machine_key(key).is_some())
            .map(|(key, value)| parse_json(key, value))
            .collect()
    }

    /// Every unit state reported, by unit then machine.
    pub async fn unit_states(
        &self,
    ) -> StoreResult<BTreeMap<String, BTreeMap<String, UnitStateRecord>>> {
        let (pairs, _) = self.get_prefix(&self.keys.states()).await?;
        let mut states: BTreeMap<String, BTreeMap<String, UnitStateRecord>> = BTreeMap::new();
        for (key, value) in pairs {
            let Some((name, machine)) = self.keys.parse_state_key(&key) else {
                continue;
            };
            let record: UnitStateRecord = parse_json(&key, &value)?;
            states
                .entry(name.to_string())
                .or_default()
                .insert(machine.to_string(), record);
        }
        Ok(states)
    }
}

/// Keys per read of a prefix: at fleet's record sizes a page is well under a megabyte.
const PAGE_KEYS: i64 = 2_000;

/// Compare that holds while `key` does not exist.
pub fn absent(key: &str) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

pub fn parse_json<T: serde::de::DeserializeOwned>(key: &str, value: &str) -> StoreResult<T> {
    serde_json::from_str(value).map_err(|err| StoreError::Corrupt {
        key: key.to_string(),
        reason: err.to_string(),
    })
}

pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("fleet records always serialise")
}

fn value_text(key: &str, value: &[u8]) -> StoreResult<String> {
    String::from_utf8(value.to_vec()).map_err(|_| StoreError::Corrupt {
        key: key.to_string(),
        reason: "value is not UTF-8".into(),
    })
}
