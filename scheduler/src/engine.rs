//! The engine: one per cluster is active, elected through a store lease. It keeps an in-memory
//! model of machines and jobs, fed by one watch on fleet's prefix, and reconciles desired state
//! against it whenever something changes (debounced) and every `reconcile_interval` as a
//! safety net. It never re-reads the tree while it leads; a new leader reads it once.
//!
//! Reconciling: a job that is `loaded`/`launched`, valid and not Global must be scheduled to a
//! live machine able to run it; anything else must not be scheduled. Decisions come from
//! [`Model`] (what changed since the last reconcile; everything every `reconcile_interval`);
//! writes go a few transactions at a time, each guarded by the engine's lease still holding the
//! leader key, so a deposed engine cannot write.

mod model;

use std::{collections::HashMap, time::Duration};

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use shoal_store_client::Chain;
use tokio::sync::watch;

pub use model::{Model, Write};

use crate::{
    lease::{KeptLease, stopped, until_stopped},
    schedule::Machine,
    store::{
        JobRecord, MachineRecord, Store, StoreError, StoreResult, TargetState, absent, parse_json,
    },
    unit::{InvalidUnit, Requirements, parse_rules},
};

/// How many of the engine's write transactions are in flight at once.
const WRITES_IN_FLIGHT: usize = 8;

/// Settings of the engine candidate.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Who we are, written into the leader key.
    pub machine_id: String,
    /// Leadership lease TTL: how long a dead engine blocks failover.
    pub lease_ttl: Duration,
    /// Full in-memory reconcile period (besides event-driven ones).
    pub reconcile_interval: Duration,
}

/// Runs the engine candidate until `shutdown` turns true: campaign, lead, step down, repeat.
pub async fn run_engine(
    mut store: Store,
    settings: EngineSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if stopped(&shutdown) {
            return;
        }
        let outcome = tokio::select! {
            result = campaign_and_lead(&store, &settings, shutdown.clone()) => result,
            _ = until_stopped(&mut shutdown) => return,
        };
        if let Err(err) = outcome {
            tracing::warn!("engine: {}; retrying", Chain(&err));
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The endpoint may be gone for good: pick again among all of them.
            match store.reconnected().await {
                Ok(fresh) => store = fresh,
                Err(err) => tracing::warn!("engine: {}", Chain(&err)),
            }
        }
    }
}

async fn campaign_and_lead(
    store: &Store,
    settings: &EngineSettings,
    shutdown: watch::Receiver<bool>,
) -> StoreResult<()> {
    let lease = KeptLease::grant(store, settings.lease_ttl).await?;
    let leader_key = store.keys().engine_leader();
    loop {
        let claim = Txn::new().when([absent(&leader_key)]).and_then([TxnOp::put(
            leader_key.clone(),
            settings.machine_id.clone(),
            Some(PutOptions::new().with_lease(lease.id())),
        )]);
        if store.txn("claim engine leadership", claim).await? {
            break;
        }
        wait_for_vacancy(store, &leader_key, &lease).await?;
        if lease.is_lost() {
            return Err(StoreError::Conflict(
                "engine lease lost while campaigning".into(),
            ));
        }
    }
    tracing::info!(machine = %settings.machine_id, "engine: became the leader");
    let result = lead(store, settings, &lease, shutdown).await;
    lease.revoke().await;
    tracing::info!(machine = %settings.machine_id, "engine: stepped down");
    result
}

/// Waits until the leader key is deleted (or a while passes, to re-check).
async fn wait_for_vacancy(store: &Store, leader_key: &str, lease: &KeptLease) -> StoreResult<()> {
    let mut client = store.client();
    let mut events = store
        .call("watch engine leader", client.watch(leader_key, None))
        .await?;
    if store.get(leader_key).await?.is_none() {
        return Ok(());
    }
    loop {
        tokio::select! {
            message = events.message() => {
                let Some(response) = message.map_err(|e| store.etcd_error("watch engine leader", e))? else { return Ok(()) };
                if response.events().iter().any(|e| e.event_type() == EventType::Delete) {
                    return Ok(());
                }
            }
            _ = lease.lost() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(10)) => return Ok(()),
        }
    }
}

async fn lead(
    store: &Store,
    settings: &EngineSettings,
    lease: &KeptLease,
    mut shutdown: watch::Receiver<bool>,
) -> StoreResult<()> {
    let mut engine = Engine::new(store.clone(), lease.id());
    let revision = engine.load().await?;
    let mut client = store.client();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut events = store
        .call(
            "watch fleet prefix",
            client.watch(store.keys().prefix(), Some(options)),
        )
        .await?;
    engine.reconcile(true).await?;
    let mut interval = tokio::time::interval(settings.reconcile_interval);
    let debounce = Duration::from_millis(50);
    let mut dirty_since: Option<tokio::time::Instant> = None;
    loop {
        let due = dirty_since.map(|since| since + debounce);
        tokio::select! {
            message = events.message() => {
                let response = message
                    .map_err(|e| store.etcd_error("watch fleet prefix", e))?
                    .ok_or_else(|| StoreError::Conflict("watch closed".into()))?;
                if response.canceled() {
                    return Err(StoreError::Conflict(format!("watch cancelled: {}", response.cancel_reason())));
                }
                for event in response.events() {
                    if engine.apply(event).await? {
                        dirty_since.get_or_insert_with(tokio::time::Instant::now);
                    }
                }
            }
            _ = sleep_until_opt(due) => {
                dirty_since = None;
                engine.reconcile(false).await?;
                if engine.model.is_dirty() {
                    dirty_since = Some(tokio::time::Instant::now());
                }
            }
            _ = interval.tick() => engine.reconcile(true).await?,
            _ = lease.lost() => return Err(StoreError::Conflict("engine lease lost".into())),
            _ = until_stopped(&mut shutdown) => return Ok(()),
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The leader's model, fed from the store, and the writes of its decisions.
pub struct Engine {
    store: Store,
    lease: i64,
    units: HashMap<String, String>,
    model: Model,
}

impl Engine {
    pub fn new(store: Store, lease: i64) -> Self {
        Self {
            store,
            lease,
            units: HashMap::new(),
            model: Model::default(),
        }
    }

    /// Reads unit texts, jobs and machines once, at one revision; returns the revision to
    /// watch from. Agents' states and journals, most of the tree at scale, are not read: at
    /// 50,000 units the whole prefix is a response too large to arrive within the timeout.
    pub async fn load(&mut self) -> StoreResult<i64> {
        let keys = self.store.keys().clone();
        let (units, revision) = self.store.get_prefix(&keys.units()).await?;
        for (key, value) in units {
            if let Some(hash) = key.strip_prefix(&keys.units()) {
                self.units.insert(hash.to_string(), value);
            }
        }
        for prefix in [keys.jobs(), keys.machines()] {
            let pairs = self.store.get_prefix_at(&prefix, revision).await?;
            for (key, value) in pairs {
                self.apply_put(&key, &value).await?;
            }
        }
        tracing::info!(
            jobs = self.model.jobs(),
            machines = self.model.machines(),
            revision,
            "engine: loaded state"
        );
        Ok(revision)
    }

    /// Applies one watch event; returns whether reconciling may be needed.
    async fn apply(&mut self, event: &etcd_client::Event) -> StoreResult<bool> {
        let Some(kv) = event.kv() else {
            return Ok(false);
        };
        // Agents' reports (states, journals) are most of the events and none of our business:
        // skipped before anything is copied.
        let Some(rest) = kv.key().strip_prefix(self.store.keys().prefix().as_bytes()) else {
            return Ok(false);
        };
        if !(rest.starts_with(b"job/")
            || rest.starts_with(b"machines/")
            || rest.starts_with(b"unit/"))
        {
            return Ok(false);
        }
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match event.event_type() {
            EventType::Put => {
                let value = String::from_utf8_lossy(kv.value()).into_owned();
                self.apply_put(&key, &value).await
            }
            EventType::Delete => Ok(self.apply_delete(&key)),
        }
    }

    async fn apply_put(&mut self, key: &str, value: &str) -> StoreResult<bool> {
        let keys = self.store.keys().clone();
        if let Some(id) = keys.parse_machine_key(key) {
            let record: MachineRecord = match parse_json(key, value) {
                Ok(record) => record,
                Err(err) => {
                    tracing::warn!("engine: ignoring {}", Chain(&err));
                    return Ok(false);
                }
            };
            return Ok(self.model.put_machine(Machine {
                id: id.to_string(),
                metadata: record.metadata,
            }));
        }
        if let Some(hash) = key.strip_prefix(&format!("{}unit/", keys.prefix())) {
            self.units.insert(hash.to_string(), value.to_string());
            return Ok(false);
        }
        let Some((name, field)) = keys.parse_job_key(key) else {
            return Ok(false);
        };
        Ok(match field {
            "object" => {
                let record: JobRecord = match parse_json(key, value) {
                    Ok(record) => record,
                    Err(err) => {
                        tracing::warn!("engine: ignoring {}", Chain(&err));
                        return Ok(false);
                    }
                };
                let rules = self.rules_for(name, &record.unit_hash).await?;
                self.model.put_job(name, rules)
            }
            "target-state" => self.model.set_target_state(name, TargetState::parse(value)),
            "target" => self.model.set_stored_target(name, Some(value)),
            "unschedulable" => self.model.set_stored_reason(name, Some(value)),
            _ => false,
        })
    }

    fn apply_delete(&mut self, key: &str) -> bool {
        let keys = self.store.keys();
        if let Some(id) = keys.parse_machine_key(key) {
            return self.model.remove_machine(id);
        }
        let Some((name, field)) = keys.parse_job_key(key) else {
            return false;
        };
        match field {
            "object" => self.model.remove_job(name),
            "target-state" => self.model.set_target_state(name, None),
            "target" => self.model.set_stored_target(name, None),
            "unschedulable" => self.model.set_stored_reason(name, None),
            _ => false,
        }
    }

    async fn rules_for(
        &mut self,
        name: &str,
        hash: &str,
    ) -> StoreResult<Result<Requirements, InvalidUnit>> {
        if !self.units.contains_key(hash)
            && let Some(text) = self.store.get(&self.store.keys().unit(hash)).await?
        {
            self.units.insert(hash.to_string(), text);
        }
        let Some(text) = self.units.get(hash) else {
            return Ok(Err(InvalidUnit::Missing {
                hash: hash.to_string(),
            }));
        };
        Ok(parse_rules(name, text))
    }

    /// Brings the schedule in line with desired state and writes the differences: `full`
    /// looks at every job, otherwise at what changed since the last reconcile.
    pub async fn reconcile(&mut self, full: bool) -> StoreResult<()> {
        let writes = self.model.reconcile(full);
        if writes.is_empty() {
            return Ok(());
        }
        let keys = self.store.keys();
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|write| match write {
                Write::Target {
                    job,
                    machine: Some(machine),
                } => TxnOp::put(keys.target(job), machine.as_str(), None),
                Write::Target { job, machine: None } => TxnOp::delete(keys.target(job), None),
                Write::Reason {
                    job,
                    reason: Some(reason),
                } => TxnOp::put(keys.unschedulable(job), reason.as_str(), None),
                Write::Reason { job, reason: None } => TxnOp::delete(keys.unschedulable(job), None),
            })
            .collect();
        let guard = [Compare::lease(
            self.store.keys().engine_leader(),
            CompareOp::Equal,
            self.lease,
        )];
        if !self
            .store
            .batched_concurrently(&guard, ops, WRITES_IN_FLIGHT)
            .await?
        {
            return Err(StoreError::Conflict("engine leadership lost".into()));
        }
        tracing::debug!(writes = writes.len(), full, "engine: reconciled");
        self.model.written(writes);
        Ok(())
    }
}
