//! Membership as etcd 3.4 runs it, each test run against shoal kv and against a real etcd with
//! the same expectations: changes sent to a follower, the strict reconfiguration check, learners
//! promoted only once in sync, member update, and MoveLeader.
mod common;

use common::Clients;
use etcd_client::{Client, MemberAddOptions};
use shoal_harness::{StoreCluster, StoreKind};

const KINDS: [StoreKind; 2] = [StoreKind::ShoalKv, StoreKind::Etcd];

/// A peer URL on a free port, of a member that is never started.
fn unused_peer_url() -> String {
    format!("http://127.0.0.1:{}", shoal_harness::free_port())
}

/// etcd takes a membership change only once every voter has been connected for its health
/// interval (5 s); so does shoal.
async fn wait_until_connected_for_the_health_interval() {
    tokio::time::sleep(std::time::Duration::from_millis(5500)).await;
}

fn refusal<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>) -> String {
    match result {
        Ok(answer) => panic!("accepted: {answer:?}"),
        Err(error) => error.to_string(),
    }
}

async fn member_ids(client: &mut Client) -> Vec<(u64, Vec<String>, bool)> {
    let listed = client.member_list().await.expect("member list");
    listed
        .members()
        .iter()
        .map(|m| (m.id(), m.peer_urls().to_vec(), m.is_learner()))
        .collect()
}

async fn id_of(cluster: &StoreCluster, i: usize) -> u64 {
    let mut client = cluster.client(i).await;
    let status = client.status().await.expect("status");
    status.header().expect("header").member_id()
}

/// A learner added, refused promotion while it is not in sync (it never started), its peer URL
/// updated and removed, every request sent to a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_sent_to_a_follower_reach_the_leader() {
    for kind in KINDS {
        let cluster = common::start(kind, 3).await;
        let follower = (cluster.leader().await + 1) % 3;
        let mut client = cluster.client(follower).await;
        let name = kind.name();
        wait_until_connected_for_the_health_interval().await;

        let added = client
            .member_add(
                [unused_peer_url()],
                Some(MemberAddOptions::new().with_is_learner()),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: member add through a follower: {e}"));
        let learner = added.member().expect("the added member").id();
        assert!(
            member_ids(&mut client)
                .await
                .iter()
                .any(|(id, _, is_learner)| *id == learner && *is_learner),
            "{name}: the follower lists the learner"
        );

        let refused = refusal(client.member_promote(learner).await);
        assert!(
            refused.contains(
                "etcdserver: can only promote a learner member which is in sync with leader"
            ),
            "{name}: {refused}"
        );

        let moved = unused_peer_url();
        client
            .member_update(learner, [moved.clone()])
            .await
            .unwrap_or_else(|e| panic!("{name}: member update through a follower: {e}"));
        assert!(
            member_ids(&mut client)
                .await
                .iter()
                .any(|(id, urls, _)| *id == learner && *urls == [moved.clone()]),
            "{name}: the follower lists the new peer URL"
        );
        let refused = refusal(client.member_update(12345, [unused_peer_url()]).await);
        assert!(
            refused.contains("etcdserver: member not found"),
            "{name}: {refused}"
        );

        client
            .member_remove(learner)
            .await
            .unwrap_or_else(|e| panic!("{name}: member remove through a follower: {e}"));
        assert_eq!(member_ids(&mut client).await.len(), 3, "{name}");
        client
            .put("after-changes", "1", None)
            .await
            .unwrap_or_else(|e| panic!("{name}: the cluster still writes: {e}"));
    }
}

/// etcd's `--strict-reconfig-check` (on by default): a voter that never started counts against
/// the quorum. With one added and not started, adding another finds a voter not connected
/// ("unhealthy cluster"); after a started member is removed, removing another would leave fewer
/// started members than a quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reconfiguration_check_refuses_as_etcd_does() {
    for kind in KINDS {
        let cluster = common::start(kind, 3).await;
        let leader = cluster.leader().await;
        let (b, c) = (
            id_of(&cluster, (leader + 1) % 3).await,
            id_of(&cluster, (leader + 2) % 3).await,
        );
        let mut client = cluster.client(leader).await;
        let name = kind.name();
        wait_until_connected_for_the_health_interval().await;

        client
            .member_add([unused_peer_url()], None)
            .await
            .unwrap_or_else(|e| panic!("{name}: a fourth voter, never started: {e}"));
        let refused = refusal(client.member_add([unused_peer_url()], None).await);
        assert!(
            refused.contains("etcdserver: unhealthy cluster"),
            "{name}: {refused}"
        );

        client
            .member_remove(b)
            .await
            .unwrap_or_else(|e| panic!("{name}: removing a started follower: {e}"));
        let refused = refusal(client.member_remove(c).await);
        assert!(
            refused
                .contains("etcdserver: re-configuration failed due to not enough started members"),
            "{name}: {refused}"
        );
        assert_eq!(member_ids(&mut client).await.len(), 3, "{name}");
    }
}

/// MoveLeader: refused by a follower ("not leader") and for a member that is not a voter,
/// done by `etcdctl move-leader`, which finds the leader among its endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_hands_leadership_to_a_voter_as_etcd_does() {
    for kind in KINDS {
        let cluster = common::start(kind, 3).await;
        let leader = cluster.leader().await;
        let follower = (leader + 1) % 3;
        let (leader_id, target) = (
            id_of(&cluster, leader).await,
            id_of(&cluster, follower).await,
        );
        let name = kind.name();

        let mut at_follower = cluster.client(follower).await;
        let refused = refusal(at_follower.move_leader(target).await);
        assert!(
            refused.contains("etcdserver: not leader"),
            "{name}: {refused}"
        );
        let mut at_leader = cluster.client(leader).await;
        let refused = refusal(at_leader.move_leader(12345).await);
        assert!(
            refused.contains("etcdserver: bad leader transferee"),
            "{name}: {refused}"
        );

        let out = cluster
            .ctl(&["move-leader", &format!("{target:x}")])
            .unwrap_or_else(|e| panic!("{name}: etcdctl move-leader: {e:#}"));
        assert_eq!(
            out.trim(),
            format!("Leadership transferred from {leader_id:x} to {target:x}"),
            "{name}"
        );
        assert_eq!(cluster.leader().await, follower, "{name}: the target leads");
        at_follower
            .put("after-move", "1", None)
            .await
            .unwrap_or_else(|e| panic!("{name}: the new leader writes: {e}"));
    }
}

/// `--strict-reconfig-check=false`: etcd makes the same changes without its checks (and without
/// waiting for the health interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_strict_check_voters_that_never_started_are_added() {
    for kind in KINDS {
        let cluster = common::start_with(kind, 3, &["--strict-reconfig-check=false"]).await;
        let mut client = cluster.client(cluster.leader().await).await;
        let name = kind.name();
        for _ in 0..2 {
            client
                .member_add([unused_peer_url()], None)
                .await
                .unwrap_or_else(|e| panic!("{name}: a voter never started: {e}"));
        }
        assert_eq!(member_ids(&mut client).await.len(), 5, "{name}");
    }
}
