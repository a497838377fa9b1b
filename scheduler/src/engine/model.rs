//! The engine's model of the cluster and its reconciler, without I/O: what the watch says about
//! machines and jobs goes in, the target and `unschedulable` writes that bring the schedule in
//! line with desired state come out.
//!
//! A reconcile looks only at what changed since the last one: jobs whose keys changed, the
//! units on machines whose metadata or units changed, the jobs left unplaced last time, and
//! whatever those checks unschedule. A full reconcile (the engine's periodic safety net) looks
//! at everything; both make the same decisions from the same state, because a placement can
//! only become invalid on a machine something changed on.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    schedule::{Machine, Placement},
    store::TargetState,
    unit::{InvalidUnit, Requirements},
};

/// What the engine knows about one job.
#[derive(Debug, Clone, Default)]
struct JobView {
    target_state: Option<TargetState>,
    /// `target` as last seen in (or written to) the store.
    stored_target: Option<String>,
    stored_reason: Option<String>,
    /// Parsed rules; `Err` when the unit text is missing or invalid.
    rules: Option<Result<Requirements, InvalidUnit>>,
}

impl JobView {
    fn is_active(&self) -> bool {
        matches!(
            self.target_state,
            Some(TargetState::Loaded | TargetState::Launched)
        )
    }

    fn wants_placement(&self) -> bool {
        self.is_active() && matches!(&self.rules, Some(Ok(rules)) if !rules.global)
    }
}

/// One key the reconciler wants written: a job's `target` or its `unschedulable` reason,
/// `None` to delete it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Write {
    Target {
        job: String,
        machine: Option<String>,
    },
    Reason {
        job: String,
        reason: Option<String>,
    },
}

/// Machines, jobs and placements as the watch reported them, plus what changed since the
/// last reconcile.
#[derive(Debug, Default)]
pub struct Model {
    jobs: BTreeMap<String, JobView>,
    placement: Placement,
    /// Jobs whose keys changed since the last reconcile.
    dirty_jobs: BTreeSet<String>,
    /// Machines that joined, changed metadata, or gained or lost a unit outside a reconcile.
    dirty_machines: BTreeSet<String>,
    /// Wanted jobs the last reconcile could not place: every reconcile tries them again.
    unplaced: BTreeSet<String>,
}

impl Model {
    pub fn machines(&self) -> usize {
        self.placement.machines().count()
    }

    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Where `job` is placed now (decided, or read from the store).
    pub fn target(&self, job: &str) -> Option<&str> {
        self.placement.target(job)
    }

    /// A machine joined, or changed its metadata; returns whether reconciling may be needed.
    pub fn put_machine(&mut self, machine: Machine) -> bool {
        if self.placement.machine(&machine.id) == Some(&machine) {
            return false;
        }
        self.dirty_machines.insert(machine.id.clone());
        self.placement.add_machine(machine);
        true
    }

    /// A machine left: its units need a new home.
    pub fn remove_machine(&mut self, id: &str) -> bool {
        let orphans = self.placement.remove_machine(id);
        tracing::info!(machine = id, units = orphans.len(), "engine: machine left");
        self.dirty_jobs.extend(orphans);
        true
    }

    /// A job object was written: its unit's rules (`Err` when the unit cannot be used).
    pub fn put_job(&mut self, name: &str, rules: Result<Requirements, InvalidUnit>) -> bool {
        self.touch(name);
        self.placement
            .set_requirements(name, rules.clone().unwrap_or_default());
        self.job(name).rules = Some(rules);
        true
    }

    /// A job was destroyed.
    pub fn remove_job(&mut self, name: &str) -> bool {
        if !self.jobs.contains_key(name) {
            return false;
        }
        self.touch(name);
        self.placement.forget(name);
        self.jobs.remove(name);
        true
    }

    pub fn set_target_state(&mut self, name: &str, state: Option<TargetState>) -> bool {
        let unchanged = match self.jobs.get(name) {
            Some(job) => job.target_state == state,
            None => state.is_none(),
        };
        if unchanged {
            return false;
        }
        self.touch(name);
        self.job(name).target_state = state;
        true
    }

    /// The store's `target` of `name` changed (`None`: deleted). Our own writes coming back
    /// change nothing.
    pub fn set_stored_target(&mut self, name: &str, machine: Option<&str>) -> bool {
        let echo = match self.jobs.get(name) {
            Some(job) => {
                job.stored_target.as_deref() == machine && self.placement.target(name) == machine
            }
            None => machine.is_none(),
        };
        if echo {
            return false;
        }
        self.touch(name);
        match machine {
            Some(machine) => self.placement.assign(name, machine),
            None => {
                self.placement.unassign(name);
            }
        }
        self.touch(name);
        self.job(name).stored_target = machine.map(str::to_string);
        true
    }

    /// The store's `unschedulable` of `name` changed (`None`: deleted).
    pub fn set_stored_reason(&mut self, name: &str, reason: Option<&str>) -> bool {
        let unchanged = match self.jobs.get(name) {
            Some(job) => job.stored_reason.as_deref() == reason,
            None => reason.is_none(),
        };
        if unchanged {
            return false;
        }
        self.touch(name);
        self.job(name).stored_reason = reason.map(str::to_string);
        true
    }

    fn job(&mut self, name: &str) -> &mut JobView {
        self.jobs.entry(name.to_string()).or_default()
    }

    /// Marks `name` and the machine it is on as changed.
    fn touch(&mut self, name: &str) {
        if !self.dirty_jobs.contains(name) {
            self.dirty_jobs.insert(name.to_string());
        }
        if let Some(machine) = self.placement.target(name)
            && !self.dirty_machines.contains(machine)
        {
            self.dirty_machines.insert(machine.to_string());
        }
    }

    /// Whether something changed since the last reconcile (a reconcile that displaced units
    /// leaves their machine to check again).
    pub fn is_dirty(&self) -> bool {
        !self.dirty_jobs.is_empty() || !self.dirty_machines.is_empty()
    }

    /// Brings the schedule in line with desired state: `full` looks at every job, otherwise
    /// only at what changed since the last reconcile. Returns the writes that make the store
    /// agree; [`Self::written`] records them once they are in the store.
    pub fn reconcile(&mut self, full: bool) -> Vec<Write> {
        let dirty_jobs = std::mem::take(&mut self.dirty_jobs);
        let dirty_machines = std::mem::take(&mut self.dirty_machines);
        let unplaced = std::mem::take(&mut self.unplaced);
        let recheck: BTreeSet<String> = if full {
            self.jobs
                .keys()
                .filter(|name| self.placement.target(name).is_some())
                .cloned()
                .collect()
        } else {
            let on_machines = dirty_machines
                .iter()
                .flat_map(|machine| self.placement.units_on(machine))
                .cloned();
            dirty_jobs.iter().cloned().chain(on_machines).collect()
        };
        let mut touched = self.unschedule_invalid(recheck);
        if full {
            touched.extend(self.jobs.keys().cloned());
        } else {
            touched.extend(dirty_jobs);
            touched.extend(unplaced);
        }
        let pending: Vec<String> = touched
            .iter()
            .filter(|name| {
                self.jobs.get(*name).is_some_and(JobView::wants_placement)
                    && self.placement.target(name).is_none()
            })
            .cloned()
            .collect();
        let (mut reasons, placed) = self.schedule_pending(pending);
        touched.extend(placed);
        self.unplaced = reasons.keys().cloned().collect();
        for name in &touched {
            if let Some(reason) = self.jobs.get(name).and_then(invalid_reason) {
                reasons.insert(name.clone(), reason);
            }
        }
        self.diff(&touched, &reasons)
    }

    /// Unschedules the placements among `candidates` that are no longer wanted or allowed, and
    /// then those that depended on them; returns every job it unscheduled.
    fn unschedule_invalid(&mut self, mut candidates: BTreeSet<String>) -> BTreeSet<String> {
        let mut unscheduled = BTreeSet::new();
        while let Some(name) = candidates.pop_first() {
            let Some(machine_id) = self.placement.target(&name) else {
                continue;
            };
            let keep = self.jobs.get(&name).is_some_and(JobView::wants_placement)
                && self
                    .placement
                    .machine(machine_id)
                    .is_some_and(|machine| self.placement.able_to_run(&name, machine).is_ok());
            if keep {
                continue;
            }
            if let Some(machine) = self.placement.unassign(&name) {
                // Its machine's other units may have needed it there (MachineOf).
                candidates.extend(self.placement.units_on(&machine).cloned());
            }
            unscheduled.insert(name);
        }
        unscheduled
    }

    /// Places `pending` jobs in order (and any they displace); returns the reasons of those
    /// that cannot be placed, and every job placed or displaced.
    fn schedule_pending(
        &mut self,
        mut pending: Vec<String>,
    ) -> (BTreeMap<String, String>, Vec<String>) {
        let mut reasons = BTreeMap::new();
        let mut moved = Vec::new();
        loop {
            let mut progressed = false;
            let mut displaced_all = Vec::new();
            reasons.clear();
            for name in std::mem::take(&mut pending) {
                match self.placement.schedule(&name) {
                    Ok((machine, displaced)) => {
                        progressed = true;
                        if !displaced.is_empty() {
                            // A displaced unit may be another's MachineOf peer there: the
                            // machine is checked again next time.
                            self.dirty_machines.insert(machine);
                        }
                        moved.push(name);
                        moved.extend(displaced.iter().cloned());
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
                return (reasons, moved);
            }
        }
    }

    /// The writes that make the store's `target` and `unschedulable` of `jobs` match.
    fn diff(&self, jobs: &BTreeSet<String>, reasons: &BTreeMap<String, String>) -> Vec<Write> {
        let mut writes = Vec::new();
        for (name, job) in jobs
            .iter()
            .filter_map(|name| Some((name, self.jobs.get(name)?)))
        {
            let target = self.placement.target(name);
            if job.stored_target.as_deref() != target {
                writes.push(Write::Target {
                    job: name.clone(),
                    machine: target.map(str::to_string),
                });
            }
            let reason = reasons.get(name);
            if job.stored_reason.as_ref() != reason {
                writes.push(Write::Reason {
                    job: name.clone(),
                    reason: reason.cloned(),
                });
            }
        }
        writes
    }

    /// Records that `writes` are in the store, so their watch events are known as ours.
    pub fn written(&mut self, writes: Vec<Write>) {
        for write in writes {
            match write {
                Write::Target { job, machine } => {
                    if let Some(view) = self.jobs.get_mut(&job) {
                        view.stored_target = machine;
                    }
                }
                Write::Reason { job, reason } => {
                    if let Some(view) = self.jobs.get_mut(&job) {
                        view.stored_reason = reason;
                    }
                }
            }
        }
    }
}

/// Why a desired job's unit cannot be used at all.
fn invalid_reason(job: &JobView) -> Option<String> {
    match &job.rules {
        Some(Err(reason)) if job.is_active() => Some(format!("invalid unit: {reason}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
