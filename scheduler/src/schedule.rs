//! Placement: which machine a unit goes to, honouring every `[X-Fleet]` rule. Pure and
//! in-memory; the engine feeds it the cluster it watches and writes the decisions back.
//!
//! The decider is fleet's least-loaded one: machines ordered by the number of units scheduled
//! to them (ties by machine ID), the first that can run the unit wins. A unit with
//! `MachineMetadata` walks only the machines its rules match, kept in load order per rule set
//! (a `role=db disk=ssd` unit would otherwise pass over every machine of other roles).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::unit::{MetadataRule, Requirements};

/// At most this many metadata rule sets get an index; units with others scan every machine.
pub const MAX_METADATA_INDEXES: usize = 64;

/// The machines one `MachineMetadata` rule set matches, in load order, and how many units
/// use the rule set (the index goes when the last one does).
#[derive(Debug, Default, Clone)]
struct MetadataIndex {
    by_load: BTreeSet<(usize, String)>,
    units: usize,
}

/// A machine as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub id: String,
    pub metadata: BTreeMap<String, String>,
}

/// Why a machine cannot take a unit; the engine reports these for unschedulable units.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    MachineId(String),
    Metadata,
    MissingPeer(String),
    Conflict(String),
    ReplacedBy(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::MachineId(id) => write!(f, "MachineID is {id}"),
            Refusal::Metadata => write!(f, "MachineMetadata does not match"),
            Refusal::MissingPeer(peer) => write!(f, "MachineOf unit {peer} is not there"),
            Refusal::Conflict(unit) => write!(f, "conflicts with {unit}"),
            Refusal::ReplacedBy(unit) => write!(f, "{unit} replaces it there"),
        }
    }
}

/// Units placed on machines, plus every unit's rules, indexed for placement.
#[derive(Debug, Default, Clone)]
pub struct Placement {
    machines: BTreeMap<String, Machine>,
    requirements: HashMap<String, Requirements>,
    target: HashMap<String, String>,
    units_on: HashMap<String, BTreeSet<String>>,
    by_load: BTreeSet<(usize, String)>,
    by_metadata: BTreeMap<Vec<MetadataRule>, MetadataIndex>,
}

impl Placement {
    /// Adds a machine, or replaces one whose metadata changed.
    pub fn add_machine(&mut self, machine: Machine) {
        let entry = (self.load(&machine.id), machine.id.clone());
        for (rules, index) in &mut self.by_metadata {
            index.by_load.remove(&entry);
            if metadata_matches(rules, &machine) {
                index.by_load.insert(entry.clone());
            }
        }
        self.by_load.insert(entry);
        self.machines.insert(machine.id.clone(), machine);
    }

    /// Removes a machine; returns the units that were scheduled to it (now unscheduled).
    pub fn remove_machine(&mut self, id: &str) -> Vec<String> {
        if !self.machines.contains_key(id) {
            return Vec::new();
        }
        let entry = (self.load(id), id.to_string());
        self.by_load.remove(&entry);
        for index in self.by_metadata.values_mut() {
            index.by_load.remove(&entry);
        }
        self.machines.remove(id);
        let orphans: Vec<String> = self.units_on.remove(id).into_iter().flatten().collect();
        for unit in &orphans {
            self.target.remove(unit);
        }
        orphans
    }

    pub fn machine(&self, id: &str) -> Option<&Machine> {
        self.machines.get(id)
    }

    pub fn machines(&self) -> impl Iterator<Item = &Machine> {
        self.machines.values()
    }

    pub fn set_requirements(&mut self, unit: &str, requirements: Requirements) {
        self.release_index(unit);
        if !requirements.metadata.is_empty() {
            self.use_index(&requirements.metadata);
        }
        self.requirements.insert(unit.to_string(), requirements);
    }

    /// Counts a unit of rule set `rules`, building its index on first use (within the cap).
    fn use_index(&mut self, rules: &[MetadataRule]) {
        if let Some(index) = self.by_metadata.get_mut(rules) {
            index.units += 1;
            return;
        }
        if self.by_metadata.len() >= MAX_METADATA_INDEXES {
            return;
        }
        let by_load = self
            .by_load
            .iter()
            .filter(|(_, id)| {
                self.machines
                    .get(id)
                    .is_some_and(|machine| metadata_matches(rules, machine))
            })
            .cloned()
            .collect();
        self.by_metadata
            .insert(rules.to_vec(), MetadataIndex { by_load, units: 1 });
    }

    /// Stops counting `unit` towards its rule set's index; the last unit's going drops it.
    fn release_index(&mut self, unit: &str) {
        let Some(rules) = self.requirements.get(unit).map(|r| &r.metadata) else {
            return;
        };
        if let Some(index) = self.by_metadata.get_mut(rules) {
            index.units = index.units.saturating_sub(1);
            if index.units == 0 {
                self.by_metadata.remove(rules);
            }
        }
    }

    /// Moves `machine` from `load` to `new_load` in the load orders it is in.
    fn reload(&mut self, machine: &str, load: usize, new_load: usize) {
        if !self.machines.contains_key(machine) {
            return;
        }
        let old = (load, machine.to_string());
        let new = (new_load, machine.to_string());
        self.by_load.remove(&old);
        self.by_load.insert(new.clone());
        for index in self.by_metadata.values_mut() {
            if index.by_load.remove(&old) {
                index.by_load.insert(new.clone());
            }
        }
    }

    pub fn requirements(&self, unit: &str) -> Option<&Requirements> {
        self.requirements.get(unit)
    }

    /// Forgets a unit entirely (destroyed); returns the machine it was on.
    pub fn forget(&mut self, unit: &str) -> Option<String> {
        self.release_index(unit);
        self.requirements.remove(unit);
        self.unassign(unit)
    }

    pub fn target(&self, unit: &str) -> Option<&str> {
        self.target.get(unit).map(String::as_str)
    }

    pub fn units_on(&self, machine: &str) -> impl Iterator<Item = &String> {
        self.units_on.get(machine).into_iter().flatten()
    }

    pub fn load(&self, machine: &str) -> usize {
        self.units_on.get(machine).map_or(0, BTreeSet::len)
    }

    /// Records that `unit` runs on `machine` (a decision, or one read back from the store).
    pub fn assign(&mut self, unit: &str, machine: &str) {
        if self.target(unit) == Some(machine) {
            return;
        }
        self.unassign(unit);
        let load = self.load(machine);
        self.reload(machine, load, load + 1);
        self.units_on
            .entry(machine.to_string())
            .or_default()
            .insert(unit.to_string());
        self.target.insert(unit.to_string(), machine.to_string());
    }

    /// Unschedules `unit`; returns the machine it was on.
    pub fn unassign(&mut self, unit: &str) -> Option<String> {
        let machine = self.target.remove(unit)?;
        let load = self.load(&machine);
        if let Some(units) = self.units_on.get_mut(&machine) {
            units.remove(unit);
        }
        self.reload(&machine, load, load.saturating_sub(1));
        Some(machine)
    }

    /// Can `machine` run `unit` given what is on it now? The unit itself is ignored among the
    /// machine's units, so this also checks a unit already placed there.
    pub fn able_to_run(&self, unit: &str, machine: &Machine) -> Result<(), Refusal> {
        let empty = Requirements::default();
        let rules = self.requirements.get(unit).unwrap_or(&empty);
        if !rules.machine_id_matches(&machine.id) {
            let wanted = rules.machine_id.clone().unwrap_or_default();
            return Err(Refusal::MachineId(wanted));
        }
        if !rules.metadata_matches(&machine.metadata) {
            return Err(Refusal::Metadata);
        }
        let here = self.units_on.get(&machine.id);
        let is_here = |peer: &String| here.is_some_and(|units| units.contains(peer));
        if let Some(peer) = rules.machine_of.iter().find(|peer| !is_here(peer)) {
            return Err(Refusal::MissingPeer(peer.clone()));
        }
        for other in here.into_iter().flatten().filter(|other| *other != unit) {
            let other_rules = self.requirements.get(other).unwrap_or(&empty);
            if other_rules.replaces_unit(unit) {
                return Err(Refusal::ReplacedBy(other.clone()));
            }
            if rules.replaces_unit(other) {
                continue;
            }
            if rules.conflicts_with(other) || other_rules.conflicts_with(unit) {
                return Err(Refusal::Conflict(other.clone()));
            }
        }
        Ok(())
    }

    /// The least-loaded machine able to run `unit`, or why there is none.
    pub fn decide(&self, unit: &str) -> Result<String, Unschedulable> {
        if let Some(machine) = self.first_able(unit) {
            return Ok(machine.id.clone());
        }
        if self.machines.is_empty() {
            return Err(Unschedulable::NoMachines);
        }
        // Why not: counted only now, a refusal per machine is an allocation per machine.
        let mut refusals: BTreeMap<Refusal, usize> = BTreeMap::new();
        for machine in self.machines.values() {
            if let Err(refusal) = self.able_to_run(unit, machine) {
                *refusals.entry(refusal).or_default() += 1;
            }
        }
        Err(Unschedulable::NoEligibleMachine {
            machines: self.machines.len(),
            refusals,
        })
    }

    /// The least-loaded machine able to run `unit`. A unit with `MachineOf` can only go where
    /// its first peer is, so that machine is the only one asked (at 5,000 machines, asking
    /// them all in load order is what placing a sidecar cost); one with `MachineMetadata`
    /// asks only the machines its rules match, in the same order.
    fn first_able(&self, unit: &str) -> Option<&Machine> {
        let rules = self.requirements.get(unit);
        if let Some(peer) = rules.and_then(|rules| rules.machine_of.first()) {
            let machine = self.machines.get(self.target.get(peer)?)?;
            return self.able_to_run(unit, machine).is_ok().then_some(machine);
        }
        let order = rules
            .and_then(|rules| self.by_metadata.get(&rules.metadata))
            .map_or(&self.by_load, |index| &index.by_load);
        order
            .iter()
            .filter_map(|(_, id)| self.machines.get(id))
            .find(|machine| self.able_to_run(unit, machine).is_ok())
    }

    /// [`Self::first_able`] without the metadata indexes: every machine in load order.
    #[cfg(test)]
    fn first_able_by_scan(&self, unit: &str) -> Option<&Machine> {
        if let Some(peer) = self
            .requirements
            .get(unit)
            .and_then(|rules| rules.machine_of.first())
        {
            let machine = self.machines.get(self.target.get(peer)?)?;
            return self.able_to_run(unit, machine).is_ok().then_some(machine);
        }
        self.by_load
            .iter()
            .filter_map(|(_, id)| self.machines.get(id))
            .find(|machine| self.able_to_run(unit, machine).is_ok())
    }

    /// Places `unit` on the least-loaded able machine; units it replaces there are unscheduled
    /// and returned so the caller can place them elsewhere.
    pub fn schedule(&mut self, unit: &str) -> Result<(String, Vec<String>), Unschedulable> {
        let machine = self.decide(unit)?;
        let rules = self.requirements.get(unit).cloned().unwrap_or_default();
        let displaced: Vec<String> = self
            .units_on(&machine)
            .filter(|other| *other != unit && rules.replaces_unit(other))
            .cloned()
            .collect();
        for other in &displaced {
            self.unassign(other);
        }
        self.assign(unit, &machine);
        Ok((machine, displaced))
    }
}

/// Why no machine can take a unit: what the engine writes to its `unschedulable` key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unschedulable {
    #[error("no machines in the cluster")]
    NoMachines,
    /// How many machines refused, for each reason.
    #[error(
        "no eligible machine among {machines}: {}",
        describe_refusals(refusals)
    )]
    NoEligibleMachine {
        machines: usize,
        refusals: BTreeMap<Refusal, usize>,
    },
}

/// Does `machine` satisfy the `MachineMetadata` rules `rules`?
fn metadata_matches(rules: &[MetadataRule], machine: &Machine) -> bool {
    Requirements::metadata_rules_match(rules, &machine.metadata)
}

fn describe_refusals(refusals: &BTreeMap<Refusal, usize>) -> String {
    let reasons: Vec<String> = refusals
        .iter()
        .map(|(refusal, count)| format!("{count} {refusal}"))
        .collect();
    reasons.join("; ")
}

#[cfg(test)]
mod tests;
