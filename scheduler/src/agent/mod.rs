//! The agent: registers its machine with a TTL heartbeat, watches the jobs, runs those
//! scheduled to it (and the Global ones its metadata matches) through a [`UnitRuntime`], and
//! reports their state and recent output to the store.

pub mod identity;
pub mod runtime;
pub mod service;
pub mod supervisor;
pub mod systemd;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use etcd_client::{EventType, PutOptions, TxnOp, WatchOptions};
use shoal_store_client::Chain;
use tokio::sync::watch;

pub use runtime::{RuntimeError, UnitRuntime, UnitStatus};

use crate::{
    lease::{KeptLease, stopped, until_stopped},
    store::{
        JobRecord, MachineRecord, Store, StoreError, StoreResult, TargetState, UnitStateRecord,
        parse_json, to_json,
    },
    unit::{ParseError, Requirements, UnitFile, UnitName, UnitNameError, parse_rules},
};

/// Why the agent could not bring a unit to its target state.
#[derive(Debug, thiserror::Error)]
enum ConvergeError {
    #[error("unit file {hash} is not in the store")]
    MissingUnit { hash: String },
    #[error(transparent)]
    Name(#[from] UnitNameError),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Lines of output published per unit for `fleetctl journal`.
pub const JOURNAL_LINES: usize = 200;
/// How often states and output are published.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of one agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub machine: MachineRecord,
    pub ttl: Duration,
}

#[derive(Debug, Clone, Default)]
struct AgentJob {
    hash: Option<String>,
    target_state: Option<TargetState>,
    target: Option<String>,
}

/// The agent's view of the jobs and what it last told the store.
pub struct Agent {
    store: Store,
    settings: AgentSettings,
    runtime: Arc<dyn UnitRuntime>,
    jobs: BTreeMap<String, AgentJob>,
    unit_texts: HashMap<String, String>,
    rules_cache: HashMap<(String, String), Option<Requirements>>,
    reported: HashMap<String, UnitStateRecord>,
    published_output: HashMap<String, String>,
    load_errors: HashMap<String, (String, String)>,
    adopted: bool,
}

impl Agent {
    pub fn new(store: Store, settings: AgentSettings, runtime: Arc<dyn UnitRuntime>) -> Self {
        Self {
            store,
            settings,
            runtime,
            jobs: BTreeMap::new(),
            unit_texts: HashMap::new(),
            rules_cache: HashMap::new(),
            reported: HashMap::new(),
            published_output: HashMap::new(),
            load_errors: HashMap::new(),
            adopted: false,
        }
    }

    fn machine_id(&self) -> &str {
        &self.settings.machine.id
    }

    /// Runs until `shutdown` turns true; store errors are logged and retried, never fatal.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if stopped(&shutdown) {
                return;
            }
            let session = self.session(shutdown.clone());
            let outcome = tokio::select! {
                outcome = session => outcome,
                _ = until_stopped(&mut shutdown) => Ok(()),
            };
            if let Err(err) = outcome {
                tracing::warn!(machine = %self.machine_id(), "agent: {}; reconnecting", Chain(&err));
                self.reported.clear();
                self.published_output.clear();
                tokio::time::sleep(Duration::from_secs(1)).await;
                // The endpoint may be gone for good: pick again among all of them.
                match self.store.reconnected().await {
                    Ok(store) => self.store = store,
                    Err(err) => {
                        tracing::warn!(machine = %self.machine_id(), "agent: {}", Chain(&err))
                    }
                }
            }
        }
    }

    /// One registration: heartbeat lease, job watch, reconcile and report until the lease or
    /// the watch is lost.
    async fn session(&mut self, mut shutdown: watch::Receiver<bool>) -> StoreResult<()> {
        let lease = KeptLease::grant(&self.store, self.settings.ttl).await?;
        self.register(lease.id()).await?;
        let revision = self.load_jobs().await?;
        let mut client = self.store.client();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let jobs_prefix = self.store.keys().jobs();
        let mut events = self
            .store
            .call("watch jobs", client.watch(jobs_prefix, Some(options)))
            .await?;
        self.reconcile_units().await;
        self.report(lease.id()).await?;
        let mut report = tokio::time::interval(REPORT_INTERVAL);
        loop {
            tokio::select! {
                message = events.message() => {
                    let response = message
                        .map_err(|e| self.store.etcd_error("watch jobs", e))?
                        .ok_or_else(|| StoreError::Conflict("job watch closed".into()))?;
                    if response.canceled() {
                        return Err(StoreError::Conflict(format!("job watch cancelled: {}", response.cancel_reason())));
                    }
                    for event in response.events() {
                        self.apply(event);
                    }
                    self.reconcile_units().await;
                    self.report(lease.id()).await?;
                }
                _ = report.tick() => {
                    self.reconcile_units().await;
                    self.report(lease.id()).await?;
                }
                _ = lease.lost() => return Err(StoreError::Conflict("machine lease lost".into())),
                _ = until_stopped(&mut shutdown) => return Ok(()),
            }
        }
    }

    async fn register(&self, lease: i64) -> StoreResult<()> {
        let key = self.store.keys().machine(self.machine_id());
        let mut client = self.store.client();
        let options = PutOptions::new().with_lease(lease);
        self.store
            .call(
                "register machine",
                client.put(key, to_json(&self.settings.machine), Some(options)),
            )
            .await?;
        tracing::info!(machine = %self.machine_id(), "agent: registered");
        Ok(())
    }

    async fn load_jobs(&mut self) -> StoreResult<i64> {
        let (pairs, revision) = self.store.get_prefix(&self.store.keys().jobs()).await?;
        self.jobs.clear();
        for (key, value) in pairs {
            self.apply_put(&key, &value);
        }
        Ok(revision)
    }

    fn apply(&mut self, event: &etcd_client::Event) {
        let Some(kv) = event.kv() else { return };
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match event.event_type() {
            EventType::Put => self.apply_put(&key, &String::from_utf8_lossy(kv.value())),
            EventType::Delete => self.apply_delete(&key),
        }
    }

    fn apply_put(&mut self, key: &str, value: &str) {
        let Some((name, field)) = self.store.keys().parse_job_key(key) else {
            return;
        };
        let job = self.jobs.entry(name.to_string()).or_default();
        match field {
            "object" => match parse_json::<JobRecord>(key, value) {
                Ok(record) => job.hash = Some(record.unit_hash),
                Err(err) => tracing::warn!("agent: {}", Chain(&err)),
            },
            "target-state" => job.target_state = TargetState::parse(value),
            "target" => job.target = Some(value.to_string()),
            _ => {}
        }
    }

    fn apply_delete(&mut self, key: &str) {
        let Some((name, field)) = self.store.keys().parse_job_key(key) else {
            return;
        };
        match field {
            "object" => {
                self.jobs.remove(name);
            }
            "target-state" => {
                if let Some(job) = self.jobs.get_mut(name) {
                    job.target_state = None;
                }
            }
            "target" => {
                if let Some(job) = self.jobs.get_mut(name) {
                    job.target = None;
                }
            }
            _ => {}
        }
    }

    /// The units this machine should hold: name, unit hash and target state. Units the engine
    /// scheduled here come first; Global units follow where the metadata matches and they
    /// conflict (either way) with nothing already here.
    async fn desired(&mut self) -> BTreeMap<String, (String, TargetState)> {
        let mut desired = BTreeMap::new();
        let mut globals = Vec::new();
        for (name, job) in &self.jobs {
            let Some(state) = job.target_state.filter(|s| *s != TargetState::Inactive) else {
                continue;
            };
            let Some(hash) = job.hash.clone() else {
                continue;
            };
            match job.target.as_deref() {
                Some(target) if target == self.machine_id() => {
                    desired.insert(name.clone(), (hash, state));
                }
                Some(_) => {}
                None => globals.push((name.clone(), hash, state)),
            }
        }
        for (name, hash, state) in globals {
            let Some(rules) = self.rules(&name, &hash).await else {
                continue;
            };
            if !rules.global || !rules.metadata_matches(&self.settings.machine.metadata) {
                continue;
            }
            let mut conflicting = false;
            let here: Vec<(String, String)> = desired
                .iter()
                .map(|(other, (other_hash, _))| (other.clone(), other_hash.clone()))
                .collect();
            for (other, other_hash) in here {
                let other_rules = self.rules(&other, &other_hash).await.unwrap_or_default();
                conflicting |= rules.conflicts_with(&other) || other_rules.conflicts_with(&name);
            }
            if !conflicting {
                desired.insert(name, (hash, state));
            }
        }
        desired
    }

    /// The `[X-Fleet]` rules of a job, parsed once per unit version.
    async fn rules(&mut self, name: &str, hash: &str) -> Option<Requirements> {
        let key = (name.to_string(), hash.to_string());
        if let Some(cached) = self.rules_cache.get(&key) {
            return cached.clone();
        }
        let text = self.unit_text(hash).await?;
        let rules = parse_rules(name, &text).ok();
        self.rules_cache.insert(key, rules.clone());
        rules
    }

    async fn unit_text(&mut self, hash: &str) -> Option<String> {
        if let Some(text) = self.unit_texts.get(hash) {
            return Some(text.clone());
        }
        match self.store.get(&self.store.keys().unit(hash)).await {
            Ok(Some(text)) => {
                self.unit_texts.insert(hash.to_string(), text.clone());
                Some(text)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!("agent: fetching unit {hash}: {}", Chain(&err));
                None
            }
        }
    }

    /// Brings the runtime in line with the desired units.
    async fn reconcile_units(&mut self) {
        let desired = self.desired().await;
        let current: HashMap<String, UnitStatus> = self.runtime.units().await.into_iter().collect();
        for name in current.keys().filter(|name| !desired.contains_key(*name)) {
            tracing::info!(unit = %name, "agent: unloading");
            if let Err(err) = self.runtime.unload(name).await {
                tracing::warn!("agent: {}", Chain(&err));
            }
        }
        for (name, (hash, state)) in desired {
            let status = current.get(&name);
            let failed_before = self.load_errors.get(&name).is_some_and(|(h, _)| *h == hash);
            if failed_before && status.is_none() {
                continue;
            }
            if let Err(err) = self.converge(&name, &hash, state, status).await {
                let message = Chain(&err).to_string();
                tracing::warn!(unit = %name, "agent: {message}");
                self.load_errors.insert(name, (hash, message));
            }
        }
        if !self.adopted {
            self.runtime.finish_adoption().await;
            self.adopted = true;
        }
    }

    async fn converge(
        &mut self,
        name: &str,
        hash: &str,
        state: TargetState,
        status: Option<&UnitStatus>,
    ) -> Result<(), ConvergeError> {
        let mut started = status.is_some_and(|s| s.started);
        if status.is_none_or(|s| s.hash != hash) {
            let text = self
                .unit_text(hash)
                .await
                .ok_or_else(|| ConvergeError::MissingUnit {
                    hash: hash.to_string(),
                })?;
            let unit_name = UnitName::parse(name)?;
            let unit = UnitFile::parse(name, &text)?;
            if status.is_some() {
                self.runtime.unload(name).await?;
            }
            tracing::info!(unit = name, "agent: loading");
            self.runtime.load(&unit_name, &unit, hash).await?;
            self.load_errors.remove(name);
            started = self
                .runtime
                .units()
                .await
                .iter()
                .any(|(n, s)| n == name && s.started);
        }
        match state {
            TargetState::Launched if !started => {
                tracing::info!(unit = name, "agent: starting");
                Ok(self.runtime.start(name).await?)
            }
            TargetState::Loaded if started => {
                tracing::info!(unit = name, "agent: stopping");
                Ok(self.runtime.stop(name).await?)
            }
            _ => Ok(()),
        }
    }

    /// Publishes changed unit states and output; removes those of units gone from here.
    async fn report(&mut self, lease: i64) -> StoreResult<()> {
        let units = self.runtime.units().await;
        let keys = self.store.keys().clone();
        let me = self.machine_id().to_string();
        let mut ops = Vec::new();
        let mut present: HashMap<String, UnitStateRecord> = HashMap::new();
        for (name, status) in &units {
            present.insert(name.clone(), state_record(&me, status));
        }
        for (name, (hash, message)) in &self.load_errors {
            if !present.contains_key(name) && self.jobs.contains_key(name) {
                let mut record = state_record(&me, &error_status(message));
                record.unit_hash = hash.clone();
                present.insert(name.clone(), record);
            }
        }
        for (name, record) in &present {
            if self.reported.get(name) != Some(record) {
                let options = PutOptions::new().with_lease(lease);
                ops.push(TxnOp::put(
                    keys.state(name, &me),
                    to_json(record),
                    Some(options),
                ));
            }
        }
        for name in self
            .reported
            .keys()
            .filter(|name| !present.contains_key(*name))
        {
            ops.push(TxnOp::delete(keys.state(name, &me), None));
            ops.push(TxnOp::delete(keys.journal(name, &me), None));
            self.published_output.remove(name);
        }
        for (name, _) in &units {
            let output = self
                .runtime
                .journal(name, JOURNAL_LINES)
                .await
                .unwrap_or_default();
            if self.published_output.get(name) != Some(&output) {
                let options = PutOptions::new().with_lease(lease);
                ops.push(TxnOp::put(
                    keys.journal(name, &me),
                    output.clone(),
                    Some(options),
                ));
                self.published_output.insert(name.clone(), output);
            }
        }
        if !ops.is_empty() {
            self.store.batched(&[], ops).await?;
        }
        self.reported = present;
        Ok(())
    }
}

fn state_record(machine: &str, status: &UnitStatus) -> UnitStateRecord {
    UnitStateRecord {
        load_state: status.load_state.clone(),
        active_state: status.active_state.clone(),
        sub_state: status.sub_state.clone(),
        machine_id: machine.to_string(),
        unit_hash: status.hash.clone(),
        main_pid: status.main_pid,
        since: status.since,
    }
}

/// The state reported for a unit the runtime refused to load.
fn error_status(message: &str) -> UnitStatus {
    UnitStatus {
        hash: String::new(),
        load_state: "error".into(),
        active_state: "failed".into(),
        sub_state: truncate(message, 200),
        started: false,
        main_pid: None,
        since: None,
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => format!("{}...", &text[..index]),
        None => text.to_string(),
    }
}
