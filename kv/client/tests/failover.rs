//! Against a real etcd 3.4: connecting fails over past a dead endpoint, a dead endpoint alone is
//! a timeout or refusal that names it, and a client whose member died reconnects to a live one.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use shoal_store_client::{Chain, StoreClient, StoreConfig, StoreError};

const ETCD: &str = "/usr/bin/etcd";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A single-member etcd 3.4 in a temporary directory, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoint = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new(ETCD)
            .args(["--name", "client-test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("client-test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd 3.4 at /usr/bin/etcd");
        let etcd = Self {
            child,
            endpoint,
            _dir: dir,
        };
        let config = StoreConfig::new([etcd.endpoint.clone()]).with_timeout(Duration::from_secs(1));
        let start = Instant::now();
        while StoreClient::connect(&config).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd never answered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_over_past_a_dead_endpoint() {
    let etcd = Etcd::start().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let config =
        StoreConfig::new([dead, etcd.endpoint.clone()]).with_timeout(Duration::from_secs(2));
    let store = StoreClient::connect(&config)
        .await
        .expect("the live endpoint is used");
    assert_eq!(store.endpoint().url(), etcd.endpoint);
    for round in 0..10 {
        let value = format!("ok{round}");
        let mut client = store.client();
        store
            .call("put", client.put("/probe", value.clone(), None))
            .await
            .expect("every write goes to the live endpoint");
        let response = store
            .call("get", client.get("/probe", None))
            .await
            .expect("read back");
        assert_eq!(response.kvs()[0].value(), value.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_alone_is_an_error_naming_it() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = StoreConfig::new([dead.clone()]).with_timeout(Duration::from_millis(500));
    let err = StoreClient::connect(&config)
        .await
        .expect_err("nobody listens");
    assert!(
        matches!(&err, StoreError::Request { endpoints, .. } | StoreError::Timeout { endpoints, .. } if *endpoints == dead),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("store at {dead}: ")),
        "{message}"
    );
    let chain = Chain(&err).to_string();
    assert_eq!(chain.matches("Connection refused").count(), 1, "{chain}");
    assert!(!chain.contains("tonic::"), "Debug output in {chain}");
    let both =
        StoreConfig::new([dead.clone(), dead.clone()]).with_timeout(Duration::from_millis(500));
    let err = StoreClient::connect(&both)
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_accepts_but_never_answers_times_out() {
    // The kernel completes the TCP handshake for the listener's backlog; nothing ever answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let endpoint = format!("http://{}", silent.local_addr().expect("its address"));
    let timeout = Duration::from_millis(500);
    let config = StoreConfig::new([endpoint.clone()]).with_timeout(timeout);
    let started = Instant::now();
    let err = StoreClient::connect(&config)
        .await
        .expect_err("nobody answers");
    assert!(
        matches!(&err, StoreError::Timeout { endpoints, .. } if *endpoints == endpoint),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .ends_with(&format!("timed out after {timeout:?}")),
        "{err}"
    );
    assert!(
        started.elapsed() < timeout * 4,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_member_that_died_times_out_and_reconnects_elsewhere() {
    let first = Etcd::start().await;
    let second = Etcd::start().await;
    let timeout = Duration::from_millis(800);
    let config =
        StoreConfig::new([first.endpoint.clone(), second.endpoint.clone()]).with_timeout(timeout);
    let store = StoreClient::connect(&config)
        .await
        .expect("the first endpoint answers");
    assert_eq!(store.endpoint().url(), first.endpoint);
    // A request that never completes stands in for a member that stopped answering.
    let err = store
        .call(
            "stuck read",
            std::future::pending::<Result<(), etcd_client::Error>>(),
        )
        .await
        .expect_err("times out");
    assert!(
        matches!(&err, StoreError::Timeout { operation, timeout: t, .. } if operation == "stuck read" && *t == timeout),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "store at {}: stuck read timed out after {timeout:?}",
            first.endpoint
        )
    );
    drop(first);
    assert!(store.ready().await.is_err(), "the first endpoint is gone");
    let store = store
        .reconnected()
        .await
        .expect("the second endpoint answers");
    assert_eq!(store.endpoint().url(), second.endpoint);
}
