//! Against a real etcd 3.4: connecting fails over past a dead endpoint, a dead endpoint alone is
//! a timeout or refusal that names it, and a client whose member died reconnects to a live one.

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use shoal_harness::{StoreCluster, StoreKind, free_port};
use shoal_store_client::{Chain, StoreClient, StoreConfig, StoreError, etcd_client};

/// A single-member etcd 3.4, answering, killed on drop; its `http://` client URL.
fn etcd() -> (StoreCluster, String) {
    let cluster = StoreCluster::start(StoreKind::Etcd, 1);
    let endpoint = cluster.client_url(0);
    (cluster, endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_over_past_a_dead_endpoint() {
    let (_etcd, endpoint) = etcd();
    let dead = format!("127.0.0.1:{}", free_port());
    let config = StoreConfig::new([dead, endpoint.clone()]).with_timeout(Duration::from_secs(2));
    let store = StoreClient::connect(&config)
        .await
        .expect("the live endpoint is used");
    assert_eq!(store.endpoint().url(), endpoint);
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
    let (first, first_endpoint) = etcd();
    let (_second, second_endpoint) = etcd();
    let timeout = Duration::from_millis(800);
    let config =
        StoreConfig::new([first_endpoint.clone(), second_endpoint.clone()]).with_timeout(timeout);
    let store = StoreClient::connect(&config)
        .await
        .expect("the first endpoint answers");
    assert_eq!(store.endpoint().url(), first_endpoint);
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
        format!("store at {first_endpoint}: stuck read timed out after {timeout:?}")
    );
    drop(first);
    assert!(store.ready().await.is_err(), "the first endpoint is gone");
    let store = store
        .reconnected()
        .await
        .expect("the second endpoint answers");
    assert_eq!(store.endpoint().url(), second_endpoint);
}
