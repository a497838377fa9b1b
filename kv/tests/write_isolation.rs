//! Writes never wait behind watch delivery: a member's Raft core (Raft, its log, the peer
//! server, applying, the write batcher) runs on threads of its own, apart from the client
//! runtime where watch streams are served, so a write commits while the leader's client runtime
//! is entirely busy, as a fan-out to thousands of watchers keeps it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use shoal_harness::free_port;
use shoal_kv::member::{Config, Member, RunningMember};
use tokio::runtime::Runtime;

/// How long the leader's client runtime is kept busy: far longer than a write takes, even in a
/// debug build on a loaded machine.
const BUSY: Duration = Duration::from_secs(3);
const CLIENT_WORKERS: usize = 2;

/// A member with the runtime its client servers run on (as `shoal kv` runs on its process's).
struct Running {
    runtime: Runtime,
    member: Option<RunningMember>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            self.runtime.block_on(member.shutdown());
        }
    }
}

fn start_cluster(dirs: &[tempfile::TempDir]) -> Vec<Running> {
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
            let name = format!("m{i}");
            let mut config = Config::local(&name, dir.path().to_path_buf(), *client, *peer);
            config.initial_cluster = initial_cluster.clone();
            let runtime = shoal_kv::runtime::multi_thread(Some(CLIENT_WORKERS))
                .build()
                .expect("a client runtime");
            let member = runtime
                .block_on(Member::start(config))
                .expect("member starts");
            Running {
                runtime,
                member: Some(member),
            }
        })
        .collect()
}

fn leader(members: &[Running]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leading = members.iter().position(|running| {
            running
                .member
                .as_ref()
                .is_some_and(|running| running.member.is_leader())
        });
        if let Some(leader) = leading {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Occupies every worker of `runtime` for [`BUSY`]; returns once they all are, with a flag
/// raised when they are free again.
fn keep_busy(runtime: &Runtime) -> Arc<AtomicBool> {
    let all_busy = Arc::new(Barrier::new(CLIENT_WORKERS + 1));
    let freed = Arc::new(AtomicBool::new(false));
    for _ in 0..CLIENT_WORKERS {
        let (all_busy, freed) = (all_busy.clone(), freed.clone());
        runtime.spawn(async move {
            all_busy.wait();
            std::thread::sleep(BUSY);
            freed.store(true, Ordering::SeqCst);
        });
    }
    all_busy.wait();
    freed
}

#[test]
fn a_write_commits_while_the_leaders_client_runtime_is_busy() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let members = start_cluster(&dirs);
    let leader = leader(&members);
    let follower = (leader + 1) % members.len();
    let endpoint = format!(
        "http://{}",
        members[follower].member.as_ref().unwrap().client_addrs[0]
    );
    let client_runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = client_runtime
        .block_on(etcd_client::Client::connect([endpoint], None))
        .expect("connecting to the follower");
    let idle = Instant::now();
    client_runtime
        .block_on(client.put("isolated", "idle", None))
        .expect("a put while nothing is busy");
    let idle = idle.elapsed();

    let freed = keep_busy(&members[leader].runtime);
    let busy = Instant::now();
    client_runtime
        .block_on(client.put("isolated", "busy", None))
        .expect("a put while the leader's client runtime is busy");
    let busy = busy.elapsed();
    assert!(
        !freed.load(Ordering::SeqCst),
        "the put waited {busy:?} (idle: {idle:?}) until the leader's client runtime was free"
    );
    let value = client_runtime
        .block_on(client.get("isolated", None))
        .expect("reading the put back");
    assert_eq!(value.kvs()[0].value(), b"busy");
}
