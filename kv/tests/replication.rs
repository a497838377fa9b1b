//! Replicas agree with each other: snapshots taken every few entries while writes go on, members
//! killed and restarted from them, and a follower far behind on large values catching up.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Clients, connect};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use shoal_harness::{StoreCluster, StoreKind};

/// Writers overwriting a few keys (puts, and txns whose branch depends on the value), round-robin
/// across members, until stopped; errors (a member down, an election) are expected.
struct Overwrites {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Overwrites {
    async fn start(endpoints: Vec<String>, writers: usize) -> Overwrites {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let mut clients = Vec::new();
            for endpoint in &endpoints {
                clients.push(connect(std::slice::from_ref(endpoint)).await);
            }
            let (stop, done) = (stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let members = clients.len();
                    let client = &mut clients[(writer + n) % members];
                    let key = format!("k{}", n % 4);
                    let write = async {
                        if n.is_multiple_of(2) {
                            client.put(key, n.to_string(), None).await.map(|_| ())
                        } else {
                            let txn = Txn::new()
                                .when([Compare::version(key.clone(), CompareOp::Greater, 3)])
                                .and_then([TxnOp::put("txn-then", n.to_string(), None)])
                                .or_else([TxnOp::put("txn-else", n.to_string(), None)]);
                            client.txn(txn).await.map(|_| ())
                        }
                    };
                    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), write).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            }));
        }
        Overwrites { stop, done, tasks }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        self.done.load(Ordering::Relaxed)
    }
}

/// Waits until every member reports the same revision, then checks they hash the keyspace
/// alike at it: `(revision, hash)`.
async fn assert_replicas_agree(cluster: &StoreCluster) -> (i64, u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut revisions = Vec::new();
        for i in 0..cluster.specs.len() {
            let mut client = cluster.client(i).await;
            let status = client.status().await.expect("status");
            revisions.push(status.header().expect("header").revision());
        }
        if revisions.iter().all(|r| *r == revisions[0]) {
            let revision = revisions[0];
            let mut hashes = Vec::new();
            for i in 0..cluster.specs.len() {
                let mut client = cluster.client(i).await;
                hashes.push(client.hash_kv(revision).await.expect("hash kv").hash());
            }
            assert!(
                hashes.iter().all(|h| *h == hashes[0]),
                "members hash the keyspace differently at revision {revision}: {hashes:?}"
            );
            return (revision, hashes[0]);
        }
        assert!(
            Instant::now() < deadline,
            "members stayed at different revisions: {revisions:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A snapshot every 10 entries while writers keep the state machine applying; members killed
/// (a follower, then the leader) and restarted from their snapshots and logs. A snapshot holding
/// entries past its last log ID would have a restarted member apply them again: its revision
/// would run ahead of the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_restarted_from_frequent_snapshots_agree_on_revision_and_hash() {
    let mut cluster = common::start_with(StoreKind::ShoalKv, 3, &["--snapshot-count", "10"]).await;
    let load = Overwrites::start(cluster.endpoints(), 6).await;
    for round in 0..3usize {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let leader = cluster.leader().await;
        let victim = if round.is_multiple_of(2) {
            (leader + 1) % 3
        } else {
            leader
        };
        cluster.kill(victim);
        tokio::time::sleep(Duration::from_millis(600)).await;
        cluster.restart(victim);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = load.stop().await;
    let (revision, hash) = assert_replicas_agree(&cluster).await;
    println!("{writes} writes acknowledged; every member at revision {revision}, hash {hash}");
    assert!(writes > 0, "no write was acknowledged");
    // Each member restarted once more, with nothing new to apply, must come back the same.
    for i in 0..3 {
        cluster.kill(i);
        cluster.restart(i);
    }
    let mut client = connect(&cluster.endpoints()).await;
    client.put("after-restarts", "1", None).await.expect("put");
    let (after, _) = assert_replicas_agree(&cluster).await;
    assert_eq!(after, revision + 1, "only the one put moved the revision");
}

/// A follower down while the leader takes more than one peer frame (64 MiB) of log entries: the
/// leader must send what it missed in several appends (a snapshot is far away, so it cannot send
/// one instead), not the same too-large request again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_more_than_a_frame_behind_catches_up_by_smaller_appends() {
    const VALUES: usize = 72;
    let mut cluster =
        common::start_with(StoreKind::ShoalKv, 3, &["--snapshot-count", "100000"]).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    let mut client = cluster.client(leader).await;
    let value = vec![b'x'; 1024 * 1024];
    for n in 0..VALUES {
        client
            .put(format!("big/{n}"), value.clone(), None)
            .await
            .expect("put of 1 MiB");
    }
    let last_key = format!("big/{}", VALUES - 1);
    let written_at = Instant::now();
    cluster.spawn(follower);
    let deadline = Instant::now() + Duration::from_secs(30);
    let serializable = etcd_client::GetOptions::new().with_serializable();
    loop {
        // The member may not listen yet: a refused connection is a try that did not see it.
        let caught_up =
            match etcd_client::Client::connect([cluster.specs[follower].endpoint()], None).await {
                Ok(mut behind) => behind
                    .get(last_key.as_str(), Some(serializable.clone()))
                    .await
                    .is_ok_and(|got| {
                        got.kvs().first().map(|kv| kv.value().len()) == Some(value.len())
                    }),
                Err(_) => false,
            };
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not catch up on {VALUES} MiB of entries within 30 s; the leader's log:\n{}",
            cluster.log(leader)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "the follower caught up on {VALUES} MiB {:?} after its restart",
        written_at.elapsed()
    );
    assert_replicas_agree(&cluster).await;
}

/// A follower wiped and started again at once (its log now empty, where the leader had seen it
/// match): the leader must send it everything again, not stop (openraft panics on a follower's
/// log going back unless told it may).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_wiped_and_restarted_at_once_leaves_the_leader_running() {
    let mut cluster = common::start(StoreKind::ShoalKv, 3).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.client(leader).await;
    for n in 0..20 {
        client.put(format!("k{n}"), "v", None).await.expect("put");
    }
    cluster.kill(follower);
    std::fs::remove_dir_all(&cluster.specs[follower].data_dir).expect("wiping the data dir");
    cluster.state = "existing";
    cluster.restart(follower);
    client
        .put("after-wipe", "1", None)
        .await
        .expect("the leader still writes");
    let (revision, _) = assert_replicas_agree(&cluster).await;
    for i in 0..3 {
        assert!(
            cluster.exit_status(i).is_none(),
            "member {i} stopped:\n{}",
            cluster.log(i)
        );
    }
    assert_eq!(revision, 22, "20 puts and one after the wipe");
}
