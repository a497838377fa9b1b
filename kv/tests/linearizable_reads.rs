//! Linearizable reads right after the leader restarts: a leader killed and back before the
//! followers' election timeout resumes its term at once (its vote is committed), with the commit
//! index it rebuilt from its snapshot. Reads, through it or through a follower, must still see
//! every write acknowledged before the crash.
mod common;

use std::time::{Duration, Instant};

use common::{Clients, connect};
use etcd_client::Client;
use shoal_harness::{StoreCluster, StoreKind};

/// Restarts of the leader; each one is a chance to serve a stale read.
const RESTARTS: usize = 8;
/// Writes per restart: past the snapshot interval, so the restarted leader's snapshot (its
/// applied index after the restart) lags the acknowledged writes.
const WRITES: usize = 70;

/// The value of `key` in a linearizable read from `client`, retried while the member has no
/// leader (the restarted member may lose its term to an election meanwhile).
async fn read_value(client: &mut Client, key: &str) -> (String, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get(key, None).await {
            Ok(response) => {
                let value = response
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .unwrap_or_default();
                let revision = response.header().map(|h| h.revision()).unwrap_or_default();
                return (value, revision);
            }
            Err(err) => {
                assert!(Instant::now() < deadline, "no read within 10 s: {err}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Heartbeats of a second: openraft confirms a read with one heartbeat round that waits up to a
/// heartbeat interval, long enough to hold a read while the only live follower is stopped.
const SLOW_HEARTBEATS: [&str; 4] = [
    "--heartbeat-interval",
    "1000",
    "--election-timeout",
    "10000",
];

/// Waits until member `i` serves again (a serializable read needs no leader).
async fn wait_serving(endpoint: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut client = connect(&[endpoint.to_string()]).await;
        let serializable = etcd_client::GetOptions::new().with_serializable();
        if client.get("any", Some(serializable)).await.is_ok() {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} not serving within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The leader restarts while both followers are stopped (its vote is committed, so it leads its
/// term again at once, its commit index rebuilt from its snapshot); a read reaches it; one
/// follower continues, answering the read's heartbeat. The read must see the last write
/// acknowledged before the crash, through the leader and through that follower.
#[tokio::test(flavor = "multi_thread")]
async fn reads_after_the_leader_restarts_see_every_acknowledged_write() {
    let builder = StoreCluster::builder(StoreKind::ShoalKv, 3)
        .args(SLOW_HEARTBEATS)
        .args(["--snapshot-count", "50"]);
    let mut cluster = tokio::task::spawn_blocking(move || builder.start())
        .await
        .expect("starting the cluster");
    let mut stale = Vec::new();
    for restart in 0..RESTARTS {
        let leader = cluster.leader().await;
        let stopped = (leader + 1) % 3;
        let follower = (leader + 2) % 3;
        // As the robustness suite's stop-follower+kill-leader: the leader and one follower form
        // the quorum, the other follower lags.
        cluster.pause(stopped);
        let mut client = cluster.client(leader).await;
        let key = format!("restart/{restart}");
        let mut acked = (String::new(), 0);
        for n in 0..WRITES {
            let value = format!("v{n}");
            let put = client
                .put(key.clone(), value.clone(), None)
                .await
                .expect("put");
            acked = (
                value,
                put.header().map(|h| h.revision()).unwrap_or_default(),
            );
        }
        cluster.kill(leader);
        cluster.pause(follower);
        cluster.spawn(leader);
        let mut restarted = wait_serving(&cluster.specs[leader].endpoint()).await;
        let mut through_follower = cluster.client(follower).await;
        let read_key = key.clone();
        let leader_read = tokio::spawn(async move { read_value(&mut restarted, &read_key).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.resume(follower);
        let from_leader = leader_read.await.expect("the read task");
        let from_follower = read_value(&mut through_follower, &key).await;
        for (member, (value, revision)) in [
            ("restarted leader", from_leader),
            ("follower", from_follower),
        ] {
            println!(
                "restart {restart}: {member} read {value} at revision {revision}; acknowledged {} at {}",
                acked.0, acked.1
            );
            if value != acked.0 || revision < acked.1 {
                stale.push(format!(
                    "restart {restart}: the {member} read {value} at revision {revision} after {} was acknowledged at revision {}",
                    acked.0, acked.1
                ));
            }
        }
        cluster.resume(stopped);
        cluster.wait_ready();
    }
    assert!(
        stale.is_empty(),
        "stale linearizable reads:\n{}",
        stale.join("\n")
    );
}
