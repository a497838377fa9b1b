//! The engine: one per cluster is active, elected through a store lease. It keeps an in-memory
//! model of machines and jobs, fed by one watch on fleet's prefix, and reconciles desired state
//! against it whenever something changes (debounced) and every `reconcile_interval` as a
//! safety net. It never re-reads the tree while it leads; a new leader reads it once.
//!
//! Reconciling: a job that is `loaded`/`launched`, valid and not Global must be scheduled to a
//! live machine able to run it; anything else must not be scheduled. Decisions come from
//! [`Placement`]; writes are guarded by the engine's lease still holding the leader key, so a
//! deposed engine cannot write.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use shoal_store_client::Chain;
use tokio::sync::watch;

use crate::{
    lease::{KeptLease, stopped, until_stopped},
    schedule::{Machine, Placement},
    store::{
        JobRecord, MachineRecord, Store, StoreError, StoreResult, TargetState, absent, parse_json,
    },
    unit::{InvalidUnit, Requirements, parse_rules},
};

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

/// What the engine knows about one job.
#[derive(Debug, Clone, Default)]
struct JobView {
    hash: Option<String>,
    target_state: Option<TargetState>,
    /// `target` as last seen in (or written to) the store.
    stored_target: Option<String>,
    stored_reason: Option<String>,
    /// Parsed rules; `Err` when the unit text is missing or invalid.
    rules: Option<Result<Requirements, InvalidUnit>>,
}

impl JobView {
    fn wants_placement(&self) -> bool {
        let active = matches!(
            self.target_state,
            Some(TargetState::Loaded | TargetState::Launched)
        );
        active && matches!(&self.rules, Some(Ok(rules)) if !rules.global)
    }
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
    engine.reconcile().await?;
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
                engine.reconcile().await?;
            }
            _ = interval.tick() => engine.reconcile().await?,
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

/// The leader's model and its reconciler.
pub struct Engine {
    store: Store,
    lease: i64,
    jobs: BTreeMap<String, JobView>,
    units: HashMap<String, String>,
    placement: Placement,
}

impl Engine {
    pub fn new(store: Store, lease: i64) -> Self {
        Self {
            store,
            lease,
            jobs: BTreeMap::new(),
            units: HashMap::new(),
            placement: Placement::default(),
        }
    }

    /// Reads machines, units and jobs once; returns the revision to watch from.
    pub async fn load(&mut self) -> StoreResult<i64> {
        let (pairs, revision) = self.store.get_prefix(self.store.keys().prefix()).await?;
        let keys = self.store.keys().clone();
        for (key, value) in &pairs {
            if let Some(hash) = key.strip_prefix(&format!("{}unit/", keys.prefix())) {
                self.units.insert(hash.to_string(), value.clone());
            }
        }
        for (key, value) in pairs {
            self.apply_put(&key, &value).await?;
        }
        tracing::info!(
            jobs = self.jobs.len(),
            machines = self.placement.machines().count(),
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
            self.placement.add_machine(Machine {
                id: id.to_string(),
                metadata: record.metadata,
            });
            return Ok(true);
        }
        if let Some(hash) = key.strip_prefix(&format!("{}unit/", keys.prefix())) {
            self.units.insert(hash.to_string(), value.to_string());
            return Ok(false);
        }
        let Some((name, field)) = keys.parse_job_key(key) else {
            return Ok(false);
        };
        let name = name.to_string();
        match field {
            "object" => {
                let record: JobRecord = match parse_json(key, value) {
                    Ok(record) => record,
                    Err(err) => {
                        tracing::warn!("engine: ignoring {}", Chain(&err));
                        return Ok(false);
                    }
                };
                let rules = self.rules_for(&name, &record.unit_hash).await?;
                self.placement
                    .set_requirements(&name, rules.clone().unwrap_or_default());
                let job = self.jobs.entry(name).or_default();
                job.hash = Some(record.unit_hash);
                job.rules = Some(rules);
            }
            "target-state" => {
                self.jobs.entry(name).or_default().target_state = TargetState::parse(value)
            }
            "target" => {
                self.placement.assign(&name, value);
                self.jobs.entry(name).or_default().stored_target = Some(value.to_string());
            }
            "unschedulable" => {
                self.jobs.entry(name).or_default().stored_reason = Some(value.to_string())
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn apply_delete(&mut self, key: &str) -> bool {
        let keys = self.store.keys();
        if let Some(id) = keys.parse_machine_key(key) {
            let orphans = self.placement.remove_machine(id);
            tracing::info!(machine = id, units = orphans.len(), "engine: machine left");
            return true;
        }
        let Some((name, field)) = keys.parse_job_key(key) else {
            return false;
        };
        let Some(job) = self.jobs.get_mut(name) else {
            return false;
        };
        match field {
            "object" => {
                self.placement.forget(name);
                self.jobs.remove(name);
            }
            "target-state" => job.target_state = None,
            "target" => {
                job.stored_target = None;
                self.placement.unassign(name);
            }
            "unschedulable" => job.stored_reason = None,
            _ => return false,
        }
        true
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

    /// Brings the schedule in line with desired state and writes the differences.
    pub async fn reconcile(&mut self) -> StoreResult<()> {
        self.unschedule_invalid();
        let mut reasons = self.schedule_pending();
        reasons.extend(self.invalid_jobs());
        let ops = self.diff_ops(&reasons);
        if ops.is_empty() {
            return Ok(());
        }
        let count = ops.len();
        let guard = [Compare::lease(
            self.store.keys().engine_leader(),
            CompareOp::Equal,
            self.lease,
        )];
        if !self.store.batched(&guard, ops).await? {
            return Err(StoreError::Conflict("engine leadership lost".into()));
        }
        self.record_written(&reasons);
        tracing::debug!(writes = count, "engine: reconciled");
        Ok(())
    }

    /// Drops placements that are no longer wanted or no longer allowed.
    fn unschedule_invalid(&mut self) {
        for (name, job) in &self.jobs {
            let Some(machine_id) = self.placement.target(name).map(str::to_string) else {
                continue;
            };
            let keep = job.wants_placement()
                && self
                    .placement
                    .machine(&machine_id)
                    .is_some_and(|machine| self.placement.able_to_run(name, machine).is_ok());
            if !keep {
                self.placement.unassign(name);
            }
        }
    }

    /// Places every wanted, unplaced job; returns the reasons of those that cannot be placed.
    fn schedule_pending(&mut self) -> BTreeMap<String, String> {
        let mut pending: Vec<String> = self
            .jobs
            .iter()
            .filter(|(name, job)| job.wants_placement() && self.placement.target(name).is_none())
            .map(|(name, _)| name.clone())
            .collect();
        let mut reasons = BTreeMap::new();
        loop {
            let mut progressed = false;
            let mut displaced_all = Vec::new();
            reasons.clear();
            for name in std::mem::take(&mut pending) {
                match self.placement.schedule(&name) {
                    Ok((_, displaced)) => {
                        progressed = true;
                        displaced_all.extend(displaced);
                    }
                    Err(reason) => {
                        reasons.insert(name.clone(), reason.to_string());
                        pending.push(name);
                    }
                }
            }
            pending.extend(displaced_all);
            if pending.is_empty() || !progressed {
                return reasons;
            }
        }
    }

    /// Desired jobs whose unit cannot be used at all, with why.
    fn invalid_jobs(&self) -> Vec<(String, String)> {
        self.jobs
            .iter()
            .filter(|(_, job)| {
                matches!(
                    job.target_state,
                    Some(TargetState::Loaded | TargetState::Launched)
                )
            })
            .filter_map(|(name, job)| match &job.rules {
                Some(Err(reason)) => Some((name.clone(), format!("invalid unit: {reason}"))),
                _ => None,
            })
            .collect()
    }

    fn diff_ops(&self, reasons: &BTreeMap<String, String>) -> Vec<TxnOp> {
        let keys = self.store.keys();
        let mut ops = Vec::new();
        for (name, job) in &self.jobs {
            let target = self.placement.target(name);
            if job.stored_target.as_deref() != target {
                ops.push(match target {
                    Some(machine) => TxnOp::put(keys.target(name), machine, None),
                    None => TxnOp::delete(keys.target(name), None),
                });
            }
            let reason = reasons.get(name);
            if job.stored_reason.as_ref() != reason {
                ops.push(match reason {
                    Some(reason) => TxnOp::put(keys.unschedulable(name), reason.as_str(), None),
                    None => TxnOp::delete(keys.unschedulable(name), None),
                });
            }
        }
        ops
    }

    fn record_written(&mut self, reasons: &BTreeMap<String, String>) {
        for (name, job) in self.jobs.iter_mut() {
            job.stored_target = self.placement.target(name).map(str::to_string);
            job.stored_reason = reasons.get(name).cloned();
        }
    }
}
