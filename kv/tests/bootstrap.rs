//! Three members of a new cluster started at the same moment, many times over, in one process
//! (debug build, so openraft's debug assertions are on): no Raft task panics and exactly one
//! leader emerges that every member follows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use shoal_kv::member::{Config, Member, RunningMember};

use shoal_harness::free_port;

const ROUNDS: usize = 20;

fn member_configs(dirs: &[tempfile::TempDir]) -> Vec<Config> {
    let ports: Vec<(u16, u16)> = dirs.iter().map(|_| (free_port(), free_port())).collect();
    let initial_cluster: Vec<(String, Vec<String>)> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| (format!("m{i}"), vec![format!("http://127.0.0.1:{peer}")]))
        .collect();
    dirs.iter()
        .zip(&ports)
        .enumerate()
        .map(|(i, (dir, (client, peer)))| {
            let mut config =
                Config::local(&format!("m{i}"), dir.path().to_path_buf(), *client, *peer);
            config.initial_cluster = initial_cluster.clone();
            config.heartbeat_interval = Duration::from_millis(50);
            config.election_timeout = Duration::from_millis(300);
            config
        })
        .collect()
}

/// Counts panics on any thread (openraft's Raft task panics without failing the test thread);
/// one hook for the whole test binary.
fn panic_count() -> usize {
    static PANICS: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    let panics = PANICS.get_or_init(|| {
        let panics = Arc::new(AtomicUsize::new(0));
        let counter = panics.clone();
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            counter.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }));
        panics
    });
    panics.load(Ordering::SeqCst)
}

/// Starts members concurrently; `None` when a free port was taken meanwhile (start again).
async fn start_all(configs: Vec<Config>) -> Option<Vec<RunningMember>> {
    let starts: Vec<_> = configs
        .into_iter()
        .map(|c| tokio::spawn(Member::start(c)))
        .collect();
    let mut members = Vec::new();
    let mut port_taken = false;
    for start in starts {
        match start.await.expect("start task") {
            Ok(member) => members.push(member),
            Err(e) if e.to_string().contains("Address already in use") => port_taken = true,
            Err(e) => panic!("member start: {e}"),
        }
    }
    if port_taken {
        for member in members {
            member.shutdown().await;
        }
        return None;
    }
    Some(members)
}

/// The leader every member agrees on, once they all do.
async fn agreed_leader(members: &[RunningMember], within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let leaders: Vec<Option<u64>> = members
            .iter()
            .map(|m| m.member.raft.metrics().borrow().current_leader)
            .collect();
        if let Some(first) = leaders[0]
            && leaders.iter().all(|l| *l == Some(first))
        {
            return Some(first);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Fresh temp dirs and ports for `count` members of one new cluster, started at once.
async fn start_cluster(
    count: usize,
    alias_of_first: bool,
) -> (Vec<tempfile::TempDir>, Vec<RunningMember>) {
    loop {
        let dirs: Vec<tempfile::TempDir> = (0..count)
            .map(|_| tempfile::tempdir().expect("temp dir"))
            .collect();
        let mut configs = member_configs(&dirs);
        if alias_of_first {
            // Another name for the first member's peer URL: a third voter that is the first.
            let alias = configs[0].initial_advertise_peer_urls[0].replace("127.0.0.1", "localhost");
            for config in &mut configs {
                config
                    .initial_cluster
                    .push(("alias".to_string(), vec![alias.clone()]));
            }
        }
        if let Some(members) = start_all(configs).await {
            return (dirs, members);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_started_at_once_elect_one_leader_without_panic() {
    for round in 0..ROUNDS {
        let (_dirs, members) = start_cluster(3, false).await;
        let leader = agreed_leader(&members, Duration::from_secs(20)).await;
        let leaders = members.iter().filter(|m| m.member.is_leader()).count();
        for member in members {
            member.shutdown().await;
        }
        assert_eq!(panic_count(), 0, "a task panicked in round {round}");
        assert!(
            leader.is_some(),
            "round {round}: the members agreed on no leader"
        );
        assert_eq!(
            leaders, 1,
            "round {round}: {leaders} members consider themselves leader"
        );
    }
}

/// A peer URL of one member that reaches another (`localhost` and `127.0.0.1` on the same
/// port): the member must not count its own vote twice nor take its own AppendEntries, which
/// trips openraft's `self.leader.is_none()` assertion.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_url_reaching_the_member_itself_does_not_make_it_leader_alone() {
    let (_dirs, members) = start_cluster(1, true).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alone_leader = members[0].member.is_leader();
    for member in members {
        member.shutdown().await;
    }
    assert_eq!(panic_count(), 0, "a task panicked");
    assert!(
        !alone_leader,
        "one member of two became leader with its own vote counted twice"
    );
}
