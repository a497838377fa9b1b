//! The suite's short form: a few short rounds with a kill -9 of the leader, a SIGSTOP of a follower and a follower cut off,
//! against shoal kv and against etcd 3.4 (the control), every check required to pass; and the
//! control experiment, shoal kv acknowledging writes it never synced under a power loss of every
//! member, which the suite must fail. Reports go to `target/robustness/`; `cargo xtask
//! robustness` is the long form.
use std::time::Duration;

use shoal_harness::StoreKind;
use shoal_robustness::report::RunReport;
use shoal_robustness::runner::{self, RunConfig};

const FAULTS: [&str; 3] = ["kill-leader", "stop-follower", "partition-follower"];

async fn short_run(store: StoreKind, name: &str) -> RunReport {
    let config = RunConfig::new(store, FAULTS.len(), Duration::from_secs(4), &FAULTS);
    let report = runner::run(&config).await.expect("a valid run");
    let dir = shoal_harness::binaries::target_dir().join("robustness");
    let (json, _) = report.write(&dir, name).expect("writing the report");
    println!("{}\nreport: {}", report.table(), json.display());
    report
}

fn assert_passed_with_traffic(report: &RunReport) {
    assert!(report.passed(), "{}", report.table());
    let totals = report.totals();
    for kind in [
        "get",
        "put",
        "txn",
        "delete",
        "lease-grant",
        "lease-revoke",
        "put-with-lease",
    ] {
        let ok = totals.get(kind).map_or(0, |c| c.ok);
        assert!(ok > 0, "no {kind} succeeded:\n{}", report.table());
    }
    let watched: usize = report.rounds.iter().map(|r| r.watch.checked).sum();
    assert!(watched > 0, "no watch event was checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shoal_kv_passes_every_check_under_kill_stop_and_partition() {
    let report = short_run(StoreKind::ShoalKv, "test-shoal").await;
    assert_passed_with_traffic(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_passes_every_check_under_kill_stop_and_partition() {
    let report = short_run(StoreKind::Etcd, "test-etcd").await;
    assert_passed_with_traffic(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shoal_kv_acknowledging_unsynced_writes_fails_the_suite() {
    let config = RunConfig::broken(2, Duration::from_secs(3));
    let report = runner::run(&config).await.expect("a valid run");
    let dir = shoal_harness::binaries::target_dir().join("robustness");
    report
        .write(&dir, "test-broken")
        .expect("writing the report");
    println!("{}", report.table());
    assert!(
        report.violated(),
        "the suite missed lost writes:\n{}",
        report.table()
    );
    // What gave it away: acknowledged writes the linearization or the watches cannot place.
    let caught = report.rounds.iter().any(|round| {
        round.linearizability.verdict == shoal_robustness::linearizability::Verdict::NotLinearizable
            || !round.watch.passed()
    });
    assert!(caught, "{}", report.table());
}
