//! shoal kv's failpoints and simulated power loss, driven through the nemesis on a 3-member
//! cluster of the failpoints build: each fault heals and the cluster serves writes again, and the
//! control experiment of a consistency suite: with `raftlog::skip_fsync` (appends acknowledged
//! without fdatasync) a power loss of every member loses an acknowledged write, without it the
//! write survives.
use std::time::Duration;

use shoal_harness::nemesis::{self, Fault, Target, points};
use shoal_harness::{StoreCluster, StoreKind, wait_for};

/// Fast elections, and snapshots (with purges) every 20 entries so their failpoints fire.
fn failpoints_cluster() -> StoreCluster {
    StoreCluster::builder(StoreKind::ShoalKv, 3)
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--snapshot-count", "20"])
        .failpoints()
        .start()
}

/// Up to `count` puts through any member, each given a second, stopping after two failures in
/// a row (a cluster without quorum); how many were acknowledged.
fn load(cluster: &StoreCluster, prefix: &str, count: usize) -> usize {
    let mut acknowledged = 0;
    let mut failed_in_a_row = 0;
    for n in 0..count {
        let key = format!("{prefix}/{n}");
        if cluster
            .ctl(&["put", &key, "v", "--command-timeout=1s"])
            .is_ok()
        {
            acknowledged += 1;
            failed_in_a_row = 0;
        } else {
            failed_in_a_row += 1;
            if failed_in_a_row == 2 {
                break;
            }
        }
    }
    acknowledged
}

fn failpoint(target: Target, name: &str, action: &str) -> Fault {
    Fault::Failpoint {
        target,
        name: name.to_string(),
        action: action.to_string(),
    }
}

#[test]
fn failpoints_are_set_listed_and_cleared_through_the_control_api() {
    let cluster = failpoints_cluster();
    let spec = &cluster.specs[0];
    nemesis::set_failpoint(spec, points::LOG_FSYNC, "sleep(10)").expect("set");
    let listed = nemesis::list_failpoints(spec).expect("list");
    assert!(listed.contains("raftlog::fsync=sleep(10)"), "{listed}");
    nemesis::clear_failpoint(spec, points::LOG_FSYNC).expect("clear");
    let listed = nemesis::list_failpoints(spec).expect("list");
    assert!(!listed.contains("raftlog::fsync"), "{listed}");
    let refused = nemesis::set_failpoint(spec, points::LOG_FSYNC, "no such action");
    assert!(refused.is_err(), "a bad action is refused");
}

#[test]
fn a_panic_at_a_followers_log_append_crashes_it_and_heal_restarts_it() {
    let mut cluster = failpoints_cluster();
    let injected = failpoint(Target::Follower, points::LOG_APPEND, "panic")
        .inject(&mut cluster)
        .expect("inject");
    let leader = cluster.current_leader().expect("a leader");
    for n in 0..5 {
        cluster
            .ctl_member(leader, &["put", &format!("load/{n}"), "v"])
            .expect("two members still make a quorum");
    }
    // The quorum answered without it; the follower's crash follows within moments.
    let crashed = wait_for("the follower to crash", Duration::from_secs(5), || {
        let exited: Vec<usize> = (0..3)
            .filter(|&i| {
                cluster
                    .process_mut(i)
                    .is_some_and(|process| process.exited().is_some())
            })
            .collect();
        (!exited.is_empty()).then_some(exited)
    });
    assert_eq!(crashed.len(), 1, "{}", injected.description());
    assert_ne!(crashed[0], leader, "{}", injected.description());
    injected.heal(&mut cluster).expect("heal");
    for i in 0..3 {
        cluster
            .ctl_member(i, &["put", &format!("after/{i}"), "v"])
            .expect("every member takes writes after heal");
    }
}

/// Injects each fault of the catalogue that `chosen` picks into a failpoints cluster under writes,
/// heals it and writes through every member.
fn catalogue_faults_heal(chosen: impl Fn(&Fault) -> bool) {
    let mut cluster = failpoints_cluster();
    let faults: Vec<Fault> = Fault::catalogue(&cluster)
        .into_iter()
        .filter(|fault| chosen(fault))
        .collect();
    assert!(faults.len() >= 3, "{faults:?}");
    for (round, fault) in faults.into_iter().enumerate() {
        let injected = fault
            .inject(&mut cluster)
            .unwrap_or_else(|err| panic!("injecting {fault}: {err}"));
        // Writes make the points fire (a snapshot and a purge every 20 entries).
        let acknowledged = load(&cluster, &format!("round{round}"), 22);
        let description = injected.description().to_string();
        injected
            .heal(&mut cluster)
            .unwrap_or_else(|err| panic!("healing {description}: {err}"));
        for i in 0..3 {
            cluster
                .ctl_member(i, &["put", &format!("after/{round}/{i}"), "v"])
                .unwrap_or_else(|err| panic!("member {i} after {description}: {err}"));
        }
        println!("{description}: {acknowledged} of 22 writes acknowledged, healed");
    }
}

fn names_point(fault: &Fault, prefix: &str) -> bool {
    matches!(fault, Fault::Failpoint { name, .. } if name.starts_with(prefix))
}

#[test]
fn the_catalogues_log_append_and_fsync_failpoints_heal() {
    catalogue_faults_heal(|fault| {
        names_point(fault, "raftlog::") && !names_point(fault, points::LOG_PURGE)
    });
}

#[test]
fn the_catalogues_snapshot_and_purge_failpoints_heal() {
    catalogue_faults_heal(|fault| {
        names_point(fault, "snapshot::") || names_point(fault, points::LOG_PURGE)
    });
}

#[test]
fn the_catalogues_power_losses_heal() {
    catalogue_faults_heal(|fault| matches!(fault, Fault::PowerLoss(_)));
}

/// Puts `acked`, cuts the power of every member, restarts them, and returns whether the
/// acknowledged put is still there.
fn acknowledged_write_survives_power_loss_of_all(skip_fsync: bool) -> bool {
    let mut cluster = failpoints_cluster();
    cluster.ctl(&["put", "before", "v"]).expect("put");
    if skip_fsync {
        for spec in &cluster.specs {
            nemesis::set_failpoint(spec, points::LOG_SKIP_FSYNC, "return").expect("skip_fsync");
        }
    }
    cluster
        .ctl(&["put", "acked", "v"])
        .expect("an acknowledged put");
    let injected = Fault::PowerLoss(Target::All)
        .inject(&mut cluster)
        .expect("power loss");
    injected.heal(&mut cluster).expect("restart");
    let read = |key: &str| {
        wait_for(
            &format!("a linearizable read of {key}"),
            Duration::from_secs(20),
            || cluster.ctl(&["get", key, "--print-value-only"]).ok(),
        )
    };
    assert_eq!(read("before").trim(), "v", "a write from before survives");
    read("acked").trim() == "v"
}

#[test]
fn an_acknowledged_write_survives_a_power_loss_of_every_member() {
    assert!(acknowledged_write_survives_power_loss_of_all(false));
}

#[test]
fn with_skip_fsync_a_power_loss_of_every_member_loses_an_acknowledged_write() {
    assert!(
        !acknowledged_write_survives_power_loss_of_all(true),
        "the broken build must lose the write"
    );
}

#[test]
fn a_follower_blackholed_until_the_leader_snapshots_is_sent_a_snapshot() {
    let mut cluster = StoreCluster::builder(StoreKind::ShoalKv, 3)
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--snapshot-count", "20"])
        .isolated()
        .failpoints()
        .start();
    let leader = cluster.current_leader().expect("a leader");
    let follower = (leader + 1) % 3;
    // The follower crashes when it installs a snapshot: proof that it was sent one.
    nemesis::set_failpoint(&cluster.specs[follower], points::SNAPSHOT_INSTALL, "panic")
        .expect("failpoint");
    let entries = nemesis::snapshot_entries(&cluster);
    let injected = Fault::BlackholeUntilSnapshot {
        target: Target::Member(follower),
        entries,
    }
    .inject(&mut cluster)
    .expect("blackhole");
    for n in 0..entries {
        cluster
            .ctl_member(leader, &["put", &format!("fill/{n}"), "v"])
            .expect("put while the follower is cut off");
    }
    // Healing may already find the follower crashed by the install.
    if let Err(err) = injected.heal(&mut cluster) {
        assert!(err.to_string().contains("exited"), "{err}");
    }
    wait_for(
        "the follower to install a snapshot",
        Duration::from_secs(10),
        || {
            let process = cluster.process_mut(follower)?;
            process.exited().map(drop)
        },
    );
    cluster.kill(follower);
    cluster.spawn(follower);
    cluster.wait_member_ready(follower);
    let last = format!("fill/{}", entries - 1);
    wait_for(
        "the follower to hold the writes",
        Duration::from_secs(10),
        || {
            let args = ["get", &last, "--print-value-only", "--consistency=s"];
            let got = cluster.ctl_member(follower, &args).ok()?;
            (got.trim() == "v").then_some(())
        },
    );
}
