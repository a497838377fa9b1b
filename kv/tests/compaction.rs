//! Auto-compaction keeps a member bounded: endless overwrites of a few keys against one
//! `shoal kv` member in revision mode, its VmRSS sampled as the writes go, must stay flat.
//!
//! The test runs a short form by default. The long form (a million overwrites against the release
//! binary) is the same test with two variables, after `cargo build --release -p shoal-kv`:
//! `SHOAL_KV_OVERWRITES=1000000 SHOAL_KV_PROGRAM=$PWD/target/release/shoal-kv
//! cargo nextest run -p shoal-kv --test compaction --no-capture`.
mod common;

use std::path::PathBuf;
use std::time::Instant;

use etcd_client::GetOptions;
use futures::StreamExt;
use shoal_harness::{StoreCluster, StoreKind};

const KEYS: usize = 8;
const IN_FLIGHT: usize = 64;
/// RSS is measured against the figure after this many overwrites (the warmed-up member), or
/// after half of them in the short form.
const BASELINE: usize = 100_000;

fn overwrites() -> usize {
    std::env::var("SHOAL_KV_OVERWRITES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40_000)
}

/// The member's resident set size in KiB, from `/proc/<pid>/status`.
fn vm_rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `RssAnon:`).
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

fn start_member() -> StoreCluster {
    let builder = StoreCluster::builder(StoreKind::ShoalKv, 1).args([
        "--auto-compaction-mode=revision",
        "--auto-compaction-retention=1000",
        "--auto-compaction-check-interval=200ms",
        // The Raft log is held in memory from one snapshot to the next (as in etcd), and writes are
        // batched into entries: snapshots often, so the log is not what the curve shows.
        "--snapshot-count=500",
    ]);
    match std::env::var_os("SHOAL_KV_PROGRAM") {
        Some(program) => builder.program(PathBuf::from(program), Vec::<String>::new()),
        None => builder,
    }
    .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_under_endless_overwrites() {
    let total = overwrites().max(2 * 1000);
    let baseline_at = BASELINE.min(total / 2);
    let sample_every = (total / 20).max(1000);
    let cluster = tokio::task::spawn_blocking(start_member)
        .await
        .expect("a member");
    let pid = cluster.process(0).expect("the member runs").pid();
    let client = common::connect(&cluster.endpoints()).await;
    let value = vec![b'v'; 100];

    let started = Instant::now();
    let mut curve = vec![(0, vm_rss_kib(pid))];
    let mut baseline = None;
    let mut done = 0;
    while done < total {
        let batch = sample_every.min(total - done);
        futures::stream::iter(done..done + batch)
            .map(|n| {
                let mut client = client.clone();
                let value = value.clone();
                async move {
                    client
                        .put(format!("overwritten/{}", n % KEYS), value, None)
                        .await
                        .expect("put")
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .for_each(|_| async {})
            .await;
        done += batch;
        let rss = vm_rss_kib(pid);
        println!(
            "overwrites {done:>8}  VmRSS {rss:>7} KiB  (RssAnon {:>7} KiB, {:.1} s)",
            status_kib(pid, "RssAnon:"),
            started.elapsed().as_secs_f64()
        );
        curve.push((done, rss));
        if baseline.is_none() && done >= baseline_at {
            baseline = Some(rss);
        }
    }

    // The auto-compactor did run: the early revisions are gone.
    let mut client = client.clone();
    let old = client
        .get("overwritten/0", Some(GetOptions::new().with_revision(2)))
        .await;
    let message = format!("{:?}", old.expect_err("revision 2 is compacted"));
    assert!(
        message.contains("required revision has been compacted"),
        "{message}"
    );

    let baseline = baseline.expect("a baseline sample");
    let last = curve.last().expect("samples").1;
    // Flat: within a quarter (and at least 16 MiB, allocator noise) of the warmed-up figure.
    let bound = baseline + (baseline / 4).max(16 * 1024);
    assert!(
        last <= bound,
        "VmRSS grew from {baseline} KiB after {baseline_at} overwrites to {last} KiB after {total}: {curve:?}"
    );
}
