use std::collections::BTreeMap;

use super::*;
use crate::unit::{UnitFile, UnitName};

fn rules(name: &str, x_fleet: &str) -> Result<Requirements, InvalidUnit> {
    let text = format!("[Service]\nExecStart=/bin/true\n[X-Fleet]\n{x_fleet}\n");
    let unit = UnitFile::parse(name, &text).expect("unit");
    Ok(unit
        .requirements(&UnitName::parse(name).expect("name"))
        .expect("rules"))
}

fn machine(index: usize) -> Machine {
    let role = ["web", "db", "cache"][index % 3];
    Machine {
        id: format!("{index:08x}{:024x}", 0),
        metadata: BTreeMap::from([("role".to_string(), role.to_string())]),
    }
}

/// A small deterministic generator, so a failing sequence can be replayed.
struct Steps(u64);

impl Steps {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The unit kinds of the sequences: free, metadata, spread by Conflicts, sidecars by
/// MachineOf, replacing ones.
fn unit(index: usize) -> (String, String) {
    match index % 5 {
        0 => (format!("free-{index}.service"), String::new()),
        1 => (
            format!("web@{index}.service"),
            "MachineMetadata=role=web".into(),
        ),
        2 => (
            format!("spread@{index}.service"),
            "Conflicts=spread@*.service".into(),
        ),
        // Its peer is the free unit before it (maybe absent, maybe inactive).
        3 => (
            format!("side-{index}.service"),
            format!("MachineOf=free-{}.service", index - 3),
        ),
        _ => (
            format!("new-{index}.service"),
            "Replaces=free-*.service".into(),
        ),
    }
}

/// Applies one change drawn from `steps` to `model`.
fn change(model: &mut Model, steps: &mut Steps) {
    match steps.below(10) {
        0 | 1 => {
            model.put_machine(machine(steps.below(12)));
        }
        2 => {
            model.remove_machine(&machine(steps.below(12)).id);
        }
        3..=5 => {
            let (name, x_fleet) = unit(steps.below(40));
            model.put_job(&name, rules(&name, &x_fleet));
            model.set_target_state(&name, Some(TargetState::Launched));
        }
        6 => {
            let (name, _) = unit(steps.below(40));
            let state = [TargetState::Inactive, TargetState::Loaded][steps.below(2)];
            model.set_target_state(&name, Some(state));
        }
        7 => {
            let (name, _) = unit(steps.below(40));
            model.remove_job(&name);
        }
        _ => {
            // Another writer (a deposed engine, an operator) sets a target.
            let (name, _) = unit(steps.below(40));
            model.set_stored_target(&name, Some(&machine(steps.below(12)).id));
        }
    }
}

fn targets(model: &Model) -> BTreeMap<String, Option<String>> {
    model
        .jobs
        .keys()
        .map(|name| (name.clone(), model.target(name).map(str::to_string)))
        .collect()
}

#[test]
fn incremental_reconcile_places_exactly_what_a_full_one_would() {
    for seed in 1..=20u64 {
        let mut incremental = Model::default();
        let mut full = Model::default();
        let (mut a, mut b) = (Steps(seed * 7919), Steps(seed * 7919));
        for step in 0..120 {
            for _ in 0..1 + step % 4 {
                change(&mut incremental, &mut a);
                change(&mut full, &mut b);
            }
            let mut from_changes = incremental.reconcile(false);
            let mut from_everything = full.reconcile(true);
            from_changes.sort();
            from_everything.sort();
            assert_eq!(from_changes, from_everything, "seed {seed}, step {step}");
            incremental.written(from_changes);
            full.written(from_everything);
            assert_eq!(
                targets(&incremental),
                targets(&full),
                "seed {seed}, step {step}"
            );
        }
        // Once what changed is reconciled, nothing is left for the periodic full check.
        while incremental.is_dirty() {
            let writes = incremental.reconcile(false);
            incremental.written(writes);
        }
        assert_eq!(incremental.reconcile(true), Vec::new(), "seed {seed}");
    }
}

#[test]
fn a_reconcile_after_nothing_changed_writes_nothing_and_our_own_writes_are_not_changes() {
    let mut model = Model::default();
    for index in 0..3 {
        model.put_machine(machine(index));
    }
    for index in 0..10 {
        let name = format!("u{index}.service");
        model.put_job(&name, rules(&name, ""));
        model.set_target_state(&name, Some(TargetState::Launched));
    }
    let writes = model.reconcile(false);
    assert_eq!(writes.len(), 10, "one target per unit: {writes:?}");
    model.written(writes.clone());
    for write in &writes {
        let Write::Target {
            job,
            machine: Some(machine),
        } = write
        else {
            panic!("unexpected write {write:?}");
        };
        assert!(!model.set_stored_target(job, Some(machine)), "{job}");
    }
    assert!(model.dirty_jobs.is_empty() && model.dirty_machines.is_empty());
    assert_eq!(model.reconcile(false), Vec::new());
    assert_eq!(model.reconcile(true), Vec::new());
}

#[test]
fn a_lost_machines_units_move_and_a_sidecar_follows_its_peer() {
    let mut model = Model::default();
    model.put_machine(machine(0));
    model.put_machine(machine(1));
    model.put_job("app.service", rules("app.service", ""));
    model.put_job(
        "side.service",
        rules("side.service", "MachineOf=app.service"),
    );
    for name in ["app.service", "side.service"] {
        model.set_target_state(name, Some(TargetState::Launched));
    }
    let writes = model.reconcile(false);
    model.written(writes);
    let first = model.target("app.service").expect("placed").to_string();
    assert_eq!(model.target("side.service"), Some(first.as_str()));
    model.remove_machine(&first);
    let writes = model.reconcile(false);
    let other = machine(if first == machine(0).id { 1 } else { 0 }).id;
    assert_eq!(model.target("app.service"), Some(other.as_str()));
    assert_eq!(model.target("side.service"), Some(other.as_str()));
    assert_eq!(writes.len(), 2, "{writes:?}");
}

#[test]
fn an_unplaceable_unit_is_placed_once_a_machine_it_fits_joins() {
    let mut model = Model::default();
    model.put_machine(machine(0)); // web
    model.put_job("db.service", rules("db.service", "MachineMetadata=role=db"));
    model.set_target_state("db.service", Some(TargetState::Launched));
    let writes = model.reconcile(false);
    assert!(
        matches!(writes.as_slice(), [Write::Reason { reason: Some(reason), .. }] if reason.contains("MachineMetadata")),
        "{writes:?}"
    );
    model.written(writes);
    model.put_machine(machine(1)); // db
    let mut writes = model.reconcile(false);
    writes.sort();
    assert_eq!(
        writes,
        vec![
            Write::Target {
                job: "db.service".into(),
                machine: Some(machine(1).id)
            },
            Write::Reason {
                job: "db.service".into(),
                reason: None
            },
        ]
    );
}
