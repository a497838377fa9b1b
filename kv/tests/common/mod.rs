//! What kv's integration tests add to the harness's store cluster: fast elections, an
//! `etcd-client` per member, the leader as the members report it, and the files of a data dir.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use shoal_harness::store::StoreClusterBuilder;
use shoal_harness::{StoreCluster, StoreKind};

/// Elections in half a second, so kill -9 tests do not wait for etcd's defaults.
const FAST_ELECTIONS: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

/// `size` members of `kind` with fast elections, ready.
pub async fn start(kind: StoreKind, size: usize) -> StoreCluster {
    start_with(kind, size, &[]).await
}

/// The same with `extra_args` after the standard flags.
pub async fn start_with(kind: StoreKind, size: usize, extra_args: &[&str]) -> StoreCluster {
    let builder = StoreCluster::builder(kind, size)
        .args(FAST_ELECTIONS)
        .args(extra_args.iter().copied());
    start_built(builder).await
}

/// `size` members of `kind` with fast elections and TLS on every port (client certificates
/// required), ready.
pub async fn start_tls(kind: StoreKind, size: usize) -> StoreCluster {
    start_built(StoreCluster::builder(kind, size).args(FAST_ELECTIONS).tls()).await
}

async fn start_built(builder: StoreClusterBuilder) -> StoreCluster {
    // Starting blocks while it polls the members: off the runtime, so clusters start side by side.
    match tokio::task::spawn_blocking(move || builder.start()).await {
        Ok(cluster) => cluster,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Talking to members with `etcd-client`.
#[allow(async_fn_in_trait)]
pub trait Clients {
    /// A client of member `i` alone.
    async fn client(&self, i: usize) -> Client;
    /// Index of the member that leads, as the members report it.
    async fn leader(&self) -> usize;
}

impl Clients for StoreCluster {
    async fn client(&self, i: usize) -> Client {
        connect(&[self.specs[i].endpoint()]).await
    }

    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for i in (0..self.specs.len()).filter(|&i| self.is_running(i)) {
                let mut client = self.client(i).await;
                if let Ok(status) = client.status().await {
                    let header = status.header().expect("header");
                    if status.leader() == header.member_id() {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub async fn connect(endpoints: &[String]) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    Client::connect(endpoints, Some(options))
        .await
        .expect("connecting to the store")
}

/// Every file under a member's data dir (the redb file and the Raft log's segments), sorted.
pub fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir).expect("reading the data dir") {
            let path = item.expect("data dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
