use std::collections::BTreeMap;

use super::*;
use crate::unit::{UnitFile, UnitName};

const A: &str = "aaaaaaaa000000000000000000000000";
const B: &str = "bbbbbbbb000000000000000000000000";
const C: &str = "cccccccc000000000000000000000000";

fn machine(id: &str, meta: &[(&str, &str)]) -> Machine {
    Machine {
        id: id.to_string(),
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn placement(machines: &[Machine]) -> Placement {
    let mut placement = Placement::default();
    for m in machines {
        placement.add_machine(m.clone());
    }
    placement
}

fn add_unit(placement: &mut Placement, name: &str, x_fleet: &str) {
    let text = format!("[Service]\nExecStart=/bin/true\n[X-Fleet]\n{x_fleet}\n");
    let unit = UnitFile::parse(name, &text).expect("unit");
    let rules = unit
        .requirements(&UnitName::parse(name).expect("name"))
        .expect("rules");
    placement.set_requirements(name, rules);
}

fn three() -> Placement {
    placement(&[machine(A, &[]), machine(B, &[]), machine(C, &[])])
}

#[test]
fn least_loaded_machine_wins_ties_by_id() {
    let mut p = three();
    for (unit, expected) in [
        ("u1.service", A),
        ("u2.service", B),
        ("u3.service", C),
        ("u4.service", A),
    ] {
        add_unit(&mut p, unit, "");
        assert_eq!(p.schedule(unit).unwrap().0, expected, "{unit}");
    }
    assert_eq!(p.load(A), 2);
    p.unassign("u1.service");
    p.assign("extra.service", A);
    add_unit(&mut p, "u5.service", "");
    assert_eq!(p.decide("u5.service").unwrap(), B);
}

#[test]
fn no_machines_is_unschedulable_with_reason() {
    let mut p = Placement::default();
    add_unit(&mut p, "a.service", "");
    assert_eq!(
        p.decide("a.service").unwrap_err().to_string(),
        "no machines in the cluster"
    );
}

#[test]
fn machine_id_pins_full_and_short() {
    let mut p = three();
    add_unit(&mut p, "pinned.service", &format!("MachineID={C}"));
    assert_eq!(p.decide("pinned.service").unwrap(), C);
    add_unit(&mut p, "short.service", "MachineID=bbbbbbbb");
    assert_eq!(p.decide("short.service").unwrap(), B);
    add_unit(&mut p, "gone.service", "MachineID=dddddddd");
    let reason = p.decide("gone.service").unwrap_err().to_string();
    assert!(reason.contains("3 MachineID is dddddddd"), "{reason}");
}

#[test]
fn metadata_placement_web_and_db() {
    let mut p = placement(&[
        machine(A, &[("rack", "rack1"), ("compute", "web")]),
        machine(B, &[("rack", "rack2"), ("compute", "web")]),
        machine(C, &[("rack", "rack3"), ("compute", "db")]),
    ]);
    for i in 0..4 {
        let unit = format!("web@{i}.service");
        add_unit(&mut p, &unit, "MachineMetadata=compute=web");
        let (m, _) = p.schedule(&unit).unwrap();
        assert!(m == A || m == B, "{unit} went to {m}");
    }
    assert_eq!((p.load(A), p.load(B)), (2, 2));
    add_unit(&mut p, "db.service", "MachineMetadata=compute=db");
    assert_eq!(p.schedule("db.service").unwrap().0, C);
    add_unit(&mut p, "gpu.service", "MachineMetadata=compute=gpu");
    let reason = p.decide("gpu.service").unwrap_err().to_string();
    assert!(
        reason.contains("3 MachineMetadata does not match"),
        "{reason}"
    );
    add_unit(
        &mut p,
        "notdb.service",
        "MachineMetadata=compute!=db rack!=rack1",
    );
    assert_eq!(p.decide("notdb.service").unwrap(), B);
}

#[test]
fn machine_of_follows_peers() {
    let mut p = three();
    add_unit(&mut p, "db.service", "");
    add_unit(&mut p, "filler.service", "");
    p.schedule("filler.service").unwrap();
    let (db_machine, _) = p.schedule("db.service").unwrap();
    add_unit(&mut p, "backup.service", "MachineOf=db.service");
    assert_eq!(p.decide("backup.service").unwrap(), db_machine);
    add_unit(&mut p, "orphan.service", "MachineOf=missing.service");
    let reason = p.decide("orphan.service").unwrap_err().to_string();
    assert!(
        reason.contains("MachineOf unit missing.service is not there"),
        "{reason}"
    );
}

#[test]
fn conflicts_keep_units_apart_in_both_directions() {
    let mut p = three();
    for i in 0..3 {
        let unit = format!("web@{i}.service");
        add_unit(&mut p, &unit, "Conflicts=web@*.service");
        p.schedule(&unit).unwrap();
    }
    assert_eq!((p.load(A), p.load(B), p.load(C)), (1, 1, 1));
    add_unit(&mut p, "web@3.service", "Conflicts=web@*.service");
    let reason = p.decide("web@3.service").unwrap_err().to_string();
    assert!(
        reason.contains("1 conflicts with web@0.service"),
        "{reason}"
    );
    // A unit without Conflicts is still kept off machines whose units conflict with it.
    let mut p = placement(&[machine(A, &[]), machine(B, &[])]);
    add_unit(&mut p, "lonely.service", "Conflicts=noisy.service");
    p.schedule("lonely.service").unwrap();
    add_unit(&mut p, "noisy.service", "");
    add_unit(&mut p, "filler.service", "");
    p.assign("filler.service", B);
    p.assign("filler2.service", B);
    assert_eq!(p.decide("noisy.service").unwrap(), B);
}

#[test]
fn replaces_displaces_the_replaced_unit() {
    let mut p = placement(&[machine(A, &[]), machine(B, &[])]);
    add_unit(&mut p, "old.service", "");
    p.assign("old.service", A);
    add_unit(&mut p, "other.service", "");
    p.assign("other.service", B);
    p.assign("other2.service", B);
    add_unit(&mut p, "new.service", "Replaces=old.service");
    let (m, displaced) = p.schedule("new.service").unwrap();
    assert_eq!(
        (m.as_str(), displaced),
        (A, vec!["old.service".to_string()])
    );
    assert_eq!(p.target("old.service"), None);
    // The replaced unit may not go back where its replacement runs.
    p.unassign("other2.service");
    p.unassign("other.service");
    let machine_a = p.machine(A).unwrap().clone();
    assert_eq!(
        p.able_to_run("old.service", &machine_a).unwrap_err(),
        Refusal::ReplacedBy("new.service".into())
    );
    assert_eq!(p.decide("old.service").unwrap(), B);
}

#[test]
fn removing_a_machine_orphans_its_units() {
    let mut p = three();
    for i in 0..6 {
        let unit = format!("u{i}.service");
        add_unit(&mut p, &unit, "");
        p.schedule(&unit).unwrap();
    }
    let mut orphans = p.remove_machine(B);
    orphans.sort();
    assert_eq!(orphans, ["u1.service", "u4.service"]);
    for unit in &orphans {
        let (m, _) = p.schedule(unit).unwrap();
        assert_ne!(m, B);
    }
    assert_eq!(p.load(A) + p.load(C), 6);
    assert!(p.machine(B).is_none());
}

#[test]
fn able_to_run_ignores_the_unit_itself() {
    let mut p = three();
    add_unit(&mut p, "web@1.service", "Conflicts=web@*.service");
    let (m, _) = p.schedule("web@1.service").unwrap();
    let machine = p.machine(&m).unwrap().clone();
    assert!(p.able_to_run("web@1.service", &machine).is_ok());
}

#[test]
fn the_metadata_index_picks_the_machine_a_scan_of_every_machine_picks() {
    let roles = ["web", "db", "cache"];
    let mut p = Placement::default();
    for index in 0..30 {
        let id = format!("{index:08x}{:024x}", 0);
        let role = roles[index % 3];
        let disk = if index % 2 == 0 { "ssd" } else { "hdd" };
        p.add_machine(machine(&id, &[("role", role), ("disk", disk)]));
    }
    let kinds = [
        "MachineMetadata=role=db\nMachineMetadata=disk=ssd",
        "MachineMetadata=role=web",
        "MachineMetadata=role!=db disk=ssd",
        "",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for index in 0..600 {
        let unit = format!("u{index}.service");
        add_unit(&mut p, &unit, kinds[index % kinds.len()]);
        let scanned = p.first_able_by_scan(&unit).map(|m| m.id.clone());
        let indexed = p.first_able(&unit).map(|m| m.id.clone());
        assert_eq!(indexed, scanned, "{unit}");
        if index % 7 == 0 {
            // Loads change behind the index's back: units leave, machines change metadata.
            p.unassign(&format!("u{}.service", next(index + 1)));
            let changed = next(30);
            let id = format!("{changed:08x}{:024x}", 0);
            let role = roles[next(3)];
            p.add_machine(machine(&id, &[("role", role), ("disk", "ssd")]));
        }
        if index % 50 == 49 {
            let gone = format!("{:08x}{:024x}", next(30), 0);
            p.remove_machine(&gone);
            p.add_machine(machine(&gone, &[("role", "db"), ("disk", "ssd")]));
        }
        let _ = p.schedule(&unit);
    }
    assert!(
        p.by_metadata.len() <= kinds.len(),
        "one index per rule set in use"
    );
}

#[test]
fn a_metadata_index_goes_with_the_last_unit_that_uses_it() {
    let mut p = placement(&[machine(A, &[("role", "db")]), machine(B, &[])]);
    add_unit(&mut p, "a.service", "MachineMetadata=role=db");
    add_unit(&mut p, "b.service", "MachineMetadata=role=db");
    assert_eq!(p.by_metadata.len(), 1);
    assert_eq!(p.schedule("a.service").unwrap().0, A);
    p.forget("a.service");
    assert_eq!(p.by_metadata.len(), 1);
    add_unit(&mut p, "b.service", "");
    assert!(p.by_metadata.is_empty());
}
