//! Every fault of the nemesis is injected into a running 3-member cluster and healed, and the
//! cluster serves writes afterwards: shoal kv and etcd 3.4 alike, where the fault applies.
use shoal_harness::nemesis::{Fault, Target};
use shoal_harness::{StoreCluster, StoreClusterBuilder, StoreKind};

/// Elections in half a second, so faults heal fast.
const FAST_ELECTIONS: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

fn fast(kind: StoreKind) -> StoreClusterBuilder {
    StoreCluster::builder(kind, 3).args(FAST_ELECTIONS)
}

/// Injects `fault`, checks the cluster is still there, heals it, and writes through every member.
fn inject_and_heal(cluster: &mut StoreCluster, fault: Fault) -> String {
    let injected = fault
        .inject(cluster)
        .unwrap_or_else(|err| panic!("injecting {fault}: {err}"));
    let description = injected.description().to_string();
    injected
        .heal(cluster)
        .unwrap_or_else(|err| panic!("healing {description}: {err}"));
    for i in 0..cluster.specs.len() {
        let key = format!("after/{}/{i}", fault.name());
        cluster
            .ctl_member(i, &["put", &key, "v"])
            .unwrap_or_else(|err| panic!("put through member {i} after {description}: {err}"));
    }
    description
}

fn process_faults_heal(kind: StoreKind) {
    let mut cluster = fast(kind).start();
    for fault in [
        Fault::Kill(Target::Leader),
        Fault::Kill(Target::Follower),
        Fault::Stop(Target::Leader),
        Fault::Stop(Target::Follower),
        Fault::Both(
            Box::new(Fault::Stop(Target::Follower)),
            Box::new(Fault::Kill(Target::Leader)),
        ),
    ] {
        let description = inject_and_heal(&mut cluster, fault.clone());
        // The description names the members the targets resolved to.
        assert!(description.contains(" ("), "{description}");
        println!("{}: {description} healed", kind.name());
    }
}

#[test]
fn kill_and_stop_of_leader_and_follower_heal_on_shoal_kv() {
    process_faults_heal(StoreKind::ShoalKv);
}

#[test]
fn kill_and_stop_of_leader_and_follower_heal_on_etcd() {
    process_faults_heal(StoreKind::Etcd);
}

#[test]
fn the_leader_is_the_member_the_others_follow() {
    let cluster = fast(StoreKind::ShoalKv).start();
    let leader = cluster.current_leader().expect("a leader");
    let leader_id = cluster.status(leader).expect("status").member_id;
    for i in 0..3 {
        assert_eq!(cluster.status(i).expect("status").leader, leader_id);
    }
}

/// Whether member `i` answers a linearizable read within 2 s.
fn linearizable_read(cluster: &StoreCluster, i: usize) -> bool {
    let args = ["get", "k", "--consistency=l", "--command-timeout=2s"];
    cluster.ctl_member(i, &args).is_ok()
}

fn partitioned_member_cannot_serve_linearizable_reads(kind: StoreKind) {
    let mut cluster = fast(kind).isolated().start();
    cluster.ctl(&["put", "k", "v"]).expect("put");
    let isolated = 1;
    let injected = Fault::Partition(Target::Member(isolated))
        .inject(&mut cluster)
        .expect("partition");
    // The isolated member's leadership (if it had it) ends within an election timeout.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        !linearizable_read(&cluster, isolated),
        "{}: the isolated member served a linearizable read",
        kind.name()
    );
    let majority: Vec<usize> = (0..3).filter(|&i| i != isolated).collect();
    for &i in &majority {
        shoal_harness::wait_for(
            "the majority to serve",
            std::time::Duration::from_secs(10),
            || linearizable_read(&cluster, i).then_some(()),
        );
    }
    cluster
        .ctl_member(majority[0], &["put", "k", "during"])
        .expect("the majority takes writes");
    injected.heal(&mut cluster).expect("heal");
    let got = cluster
        .ctl_member(isolated, &["get", "k", "--print-value-only"])
        .expect("read after heal");
    assert_eq!(got.trim(), "during", "the healed member caught up");
}

#[test]
fn a_partitioned_shoal_kv_member_cannot_serve_a_linearizable_read_while_the_majority_can() {
    partitioned_member_cannot_serve_linearizable_reads(StoreKind::ShoalKv);
}

#[test]
fn a_partitioned_etcd_member_cannot_serve_a_linearizable_read_while_the_majority_can() {
    partitioned_member_cannot_serve_linearizable_reads(StoreKind::Etcd);
}

fn network_faults_heal(kind: StoreKind) {
    let mut cluster = fast(kind).isolated().start();
    for fault in [
        Fault::Partition(Target::Leader),
        Fault::Partition(Target::Follower),
        Fault::OneWayDrop {
            from: Target::Leader,
            to: Target::Follower,
        },
        Fault::OneWayDrop {
            from: Target::Follower,
            to: Target::Leader,
        },
        Fault::Both(
            Box::new(Fault::Partition(Target::Follower)),
            Box::new(Fault::Kill(Target::Leader)),
        ),
    ] {
        let description = inject_and_heal(&mut cluster, fault);
        println!("{}: {description} healed", kind.name());
    }
}

#[test]
fn partitions_and_one_way_drops_heal_on_shoal_kv() {
    network_faults_heal(StoreKind::ShoalKv);
}

#[test]
fn partitions_and_one_way_drops_heal_on_etcd() {
    network_faults_heal(StoreKind::Etcd);
}

fn membership_faults_heal(kind: StoreKind, faults: &[Fault]) {
    let mut cluster = fast(kind).isolated().start();
    for fault in faults.iter().cloned() {
        let description = inject_and_heal(&mut cluster, fault);
        println!("{}: {description} healed", kind.name());
    }
    let members = cluster.member_list().expect("member list");
    assert_eq!(members.len(), 3, "{members:?}");
}

const WIPES: [Fault; 2] = [
    Fault::WipeAndRejoin(Target::Follower),
    Fault::WipeAndRejoin(Target::Leader),
];

#[test]
fn wipe_and_rejoin_of_follower_and_leader_heal_on_shoal_kv() {
    membership_faults_heal(StoreKind::ShoalKv, &WIPES);
}

#[test]
fn wipe_and_rejoin_of_follower_and_leader_heal_on_etcd() {
    membership_faults_heal(StoreKind::Etcd, &WIPES);
}

#[test]
fn a_member_added_and_removed_heals_on_shoal_kv() {
    membership_faults_heal(StoreKind::ShoalKv, &[Fault::MembershipChange]);
}

#[test]
fn a_member_added_and_removed_heals_on_etcd() {
    membership_faults_heal(StoreKind::Etcd, &[Fault::MembershipChange]);
}

#[test]
fn a_follower_blackholed_until_the_leader_snapshots_catches_up_on_shoal_kv() {
    let mut cluster = fast(StoreKind::ShoalKv)
        .args(["--snapshot-count", "20"])
        .isolated()
        .start();
    let entries = shoal_harness::nemesis::snapshot_entries(&cluster);
    let fault = Fault::BlackholeUntilSnapshot {
        target: Target::Follower,
        entries,
    };
    let injected = fault.inject(&mut cluster).expect("blackhole");
    let leader = cluster.current_leader().expect("leader");
    for n in 0..entries {
        cluster
            .ctl_member(leader, &["put", &format!("fill/{n}"), "v"])
            .expect("put while a follower is cut off");
    }
    injected
        .heal(&mut cluster)
        .expect("heal once the log moved on");
    let last = format!("fill/{}", entries - 1);
    for i in 0..3 {
        shoal_harness::wait_for(
            "every member to hold the writes",
            std::time::Duration::from_secs(10),
            || {
                let got = cluster
                    .ctl_member(i, &["get", &last, "--print-value-only", "--consistency=s"])
                    .ok()?;
                (got.trim() == "v").then_some(())
            },
        );
    }
}

#[test]
fn the_catalogue_holds_the_faults_that_apply_to_the_cluster() {
    let plain = fast(StoreKind::Etcd).start();
    let faults = Fault::catalogue(&plain);
    assert!(faults.contains(&Fault::Kill(Target::Leader)));
    assert!(faults.contains(&Fault::MembershipChange));
    assert!(faults.iter().all(|fault| fault.applies_to(&plain)));
    let network = Fault::Partition(Target::Follower);
    assert!(!faults.contains(&network), "no namespaces, no partitions");
    assert!(network.inject(&mut { plain }).is_err());

    let isolated = fast(StoreKind::Etcd)
        .args(["--snapshot-count", "100"])
        .isolated()
        .start();
    let faults = Fault::catalogue(&isolated);
    assert!(faults.contains(&network));
    assert!(faults.contains(&Fault::BlackholeUntilSnapshot {
        target: Target::Follower,
        entries: 100 + 5000 + 50 + 10,
    }));
    assert!(
        !faults
            .iter()
            .any(|fault| matches!(fault, Fault::Failpoint { .. } | Fault::PowerLoss(_))),
        "etcd 3.4 has no failpoints here"
    );
}
