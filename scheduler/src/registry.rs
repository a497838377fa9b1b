//! What fleetctl does to the store: read jobs, submit units, change desired state.
//!
//! Submitting validates every unit before writing anything, then writes each unit's text, job
//! object and target state in one transaction guarded by the job not existing (or, with
//! replace, not having changed since it was read).

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};

use crate::{
    store::{
        JobRecord, MachineRecord, Store, StoreError, TargetState, UnitStateRecord, absent,
        parse_json, to_json,
    },
    unit::{InvalidUnit, UnitFile, UnitName},
};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Invalid(#[from] InvalidUnit),
    #[error("unit {0} does not exist in the cluster")]
    UnknownUnit(String),
    #[error("unit {name} already exists with different contents; use --replace to update it")]
    Exists { name: String },
    #[error("unit {0} changed while it was being submitted; try again")]
    Raced(String),
}

pub type RegistryResult<T> = Result<T, RegistryError>;

/// How many of a command's transactions are in flight at once: a submit of thousands of units
/// is hundreds of transactions, and one after the other they cost a round trip each.
const TXNS_IN_FLIGHT: usize = 8;

/// A job as stored: the unit it runs and what should happen to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub hash: Option<String>,
    pub target_state: Option<TargetState>,
    pub target: Option<String>,
    pub unschedulable: Option<String>,
    /// Revision of the job object, for replace guards.
    pub object_revision: i64,
}

/// A unit checked and ready to submit.
#[derive(Debug, Clone)]
pub struct ValidUnit {
    pub name: UnitName,
    pub unit: UnitFile,
}

impl ValidUnit {
    /// Parses and validates unit `name` with contents `text`; `source` names it in errors.
    pub fn new(name: &str, source: &str, text: &str) -> RegistryResult<Self> {
        let name = UnitName::parse(name).map_err(InvalidUnit::from)?;
        let unit = UnitFile::parse(source, text).map_err(InvalidUnit::from)?;
        unit.requirements(&name).map_err(|mut err| {
            err.file = source.to_string();
            InvalidUnit::from(err)
        })?;
        Ok(Self { name, unit })
    }
}

/// What happened to one submitted unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Created,
    Unchanged,
    Replaced,
}

pub struct Registry {
    store: Store,
}

impl Registry {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn jobs(&self) -> RegistryResult<BTreeMap<String, Job>> {
        let keys = self.store.keys().clone();
        let mut client = self.store.client();
        let response = self
            .store
            .call(
                "list jobs",
                client.get(keys.jobs(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut jobs: BTreeMap<String, Job> = BTreeMap::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            let Some((name, field)) = keys.parse_job_key(&key) else {
                continue;
            };
            let job = jobs.entry(name.to_string()).or_insert_with(|| Job {
                name: name.to_string(),
                ..Job::default()
            });
            match field {
                "object" => {
                    let record: JobRecord = parse_json(&key, &value)?;
                    job.hash = Some(record.unit_hash);
                    job.object_revision = kv.mod_revision();
                }
                "target-state" => job.target_state = TargetState::parse(&value),
                "target" => job.target = Some(value),
                "unschedulable" => job.unschedulable = Some(value),
                _ => {}
            }
        }
        jobs.retain(|_, job| job.hash.is_some());
        Ok(jobs)
    }

    pub async fn job(&self, name: &str) -> RegistryResult<Option<Job>> {
        Ok(self.jobs().await?.remove(name))
    }

    pub async fn unit_text(&self, hash: &str) -> RegistryResult<Option<String>> {
        Ok(self.store.get(&self.store.keys().unit(hash)).await?)
    }

    pub async fn machines(&self) -> RegistryResult<Vec<MachineRecord>> {
        Ok(self.store.machines().await?)
    }

    pub async fn states(
        &self,
    ) -> RegistryResult<BTreeMap<String, BTreeMap<String, UnitStateRecord>>> {
        Ok(self.store.unit_states().await?)
    }

    /// Submits `units` all together. Existing units with the same contents are left alone;
    /// with different contents they are an error unless `replace`.
    pub async fn submit(
        &self,
        units: &[ValidUnit],
        replace: bool,
    ) -> RegistryResult<Vec<Submitted>> {
        let existing = self.jobs().await?;
        let mut plans = Vec::with_capacity(units.len());
        for unit in units {
            let hash = unit.unit.hash();
            let outcome = match existing.get(unit.name.as_str()) {
                None => Submitted::Created,
                Some(job) if job.hash.as_deref() == Some(hash.as_str()) => Submitted::Unchanged,
                Some(_) if replace => Submitted::Replaced,
                Some(_) => {
                    return Err(RegistryError::Exists {
                        name: unit.name.to_string(),
                    });
                }
            };
            plans.push((unit, hash, outcome));
        }
        let mut seen_names = std::collections::HashSet::new();
        plans.retain(|(unit, _, _)| seen_names.insert(unit.name.to_string()));
        let chunks: Vec<_> = plans.chunks(crate::store::MAX_TXN_OPS / 3).collect();
        let mut txns = Vec::with_capacity(chunks.len());
        let mut firsts = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            if let Some(txn) = self.submit_txn(chunk, &existing) {
                txns.push(txn);
                firsts.push(chunk.first().map(|(u, _, _)| u.name.to_string()));
            }
        }
        let failed = self
            .store
            .txns_concurrently("submit units", txns, TXNS_IN_FLIGHT)
            .await?;
        if let Some(index) = failed {
            let first = firsts.get(index).cloned().flatten().unwrap_or_default();
            return Err(RegistryError::Raced(first));
        }
        Ok(plans.into_iter().map(|(_, _, outcome)| outcome).collect())
    }

    /// The transaction that submits `chunk`, guarded as its outcomes require; `None` when
    /// nothing in it changes.
    fn submit_txn(
        &self,
        chunk: &[(&ValidUnit, String, Submitted)],
        existing: &BTreeMap<String, Job>,
    ) -> Option<Txn> {
        let keys = self.store.keys();
        let mut guards = Vec::new();
        let mut ops = Vec::new();
        let mut texts_written = std::collections::HashSet::new();
        for (unit, hash, outcome) in chunk {
            let name = unit.name.as_str();
            let object = to_json(&JobRecord {
                name: name.to_string(),
                unit_hash: hash.clone(),
            });
            match outcome {
                Submitted::Unchanged => continue,
                Submitted::Created => {
                    guards.push(absent(&keys.job_object(name)));
                    ops.push(TxnOp::put(
                        keys.target_state(name),
                        TargetState::Inactive.as_str(),
                        None,
                    ));
                }
                Submitted::Replaced => {
                    let revision = existing.get(name).map_or(0, |job| job.object_revision);
                    guards.push(Compare::mod_revision(
                        keys.job_object(name),
                        CompareOp::Equal,
                        revision,
                    ));
                }
            }
            if texts_written.insert(hash.clone()) {
                ops.push(TxnOp::put(keys.unit(hash), unit.unit.serialize(), None));
            }
            ops.push(TxnOp::put(keys.job_object(name), object, None));
        }
        (!ops.is_empty()).then(|| Txn::new().when(guards).and_then(ops))
    }

    /// Sets the desired state of existing units (all or none are changed).
    pub async fn set_target_state(
        &self,
        names: &[String],
        state: TargetState,
    ) -> RegistryResult<()> {
        let keys = self.store.keys().clone();
        let chunks: Vec<&[String]> = names.chunks(crate::store::MAX_TXN_OPS).collect();
        let txns = chunks
            .iter()
            .map(|chunk| {
                let guards: Vec<Compare> = chunk
                    .iter()
                    .map(|name| {
                        Compare::create_revision(keys.job_object(name), CompareOp::Greater, 0)
                    })
                    .collect();
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|name| TxnOp::put(keys.target_state(name), state.as_str(), None))
                    .collect();
                Txn::new().when(guards).and_then(ops)
            })
            .collect();
        let failed = self
            .store
            .txns_concurrently("set target state", txns, TXNS_IN_FLIGHT)
            .await?;
        if let Some(index) = failed {
            let jobs = self.jobs().await?;
            let chunk = chunks.get(index).copied().unwrap_or_default();
            let missing = chunk.iter().find(|name| !jobs.contains_key(*name));
            return Err(RegistryError::UnknownUnit(
                missing.cloned().unwrap_or_default(),
            ));
        }
        Ok(())
    }

    /// Removes a unit from the cluster; its agents stop it.
    pub async fn destroy(&self, name: &str) -> RegistryResult<bool> {
        let mut client = self.store.client();
        let options = DeleteOptions::new().with_prefix();
        let response = self
            .store
            .call(
                "destroy unit",
                client.delete(self.store.keys().job(name), Some(options)),
            )
            .await?;
        Ok(response.deleted() > 0)
    }
}
