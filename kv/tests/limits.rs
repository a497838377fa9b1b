//! Limits per client (`--max-connections-per-client`, `--max-watchers-per-stream`,
//! `--max-concurrent-streams`) against one `shoal kv` member: what is past a limit is refused
//! with an error that names the limit, or (streams, as in etcd) waits for HTTP/2 to allow it.
mod common;

use std::time::Duration;

use shoal_harness::StoreKind;
use shoal_harness::store::etcdctl;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use common::Clients;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_address_past_its_connections_is_told_why_and_refused() {
    let cluster =
        common::start_with(StoreKind::ShoalKv, 1, &["--max-connections-per-client=2"]).await;
    let endpoint = cluster.endpoints()[0].clone();
    // The connection the harness checked readiness with may still be closing: until both of
    // ours are admitted (nothing heard from the member), start again.
    let mut attempts = 0;
    let (first, second) = loop {
        let mut first = TcpStream::connect(&endpoint)
            .await
            .expect("first connection");
        let mut second = TcpStream::connect(&endpoint)
            .await
            .expect("second connection");
        let (mut byte, mut other_byte) = ([0u8; 1], [0u8; 1]);
        let first_heard = tokio::time::timeout(Duration::from_millis(300), first.read(&mut byte));
        let second_heard =
            tokio::time::timeout(Duration::from_millis(300), second.read(&mut other_byte));
        if first_heard.await.is_err() && second_heard.await.is_err() {
            break (first, second);
        }
        attempts += 1;
        assert!(attempts < 10, "two connections are never admitted");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut third = TcpStream::connect(&endpoint)
        .await
        .expect("third connection");
    let mut heard = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut heard))
        .await
        .expect("the refused connection is closed")
        .expect("reading the refusal");
    // SETTINGS, then GOAWAY (type 7) with ENHANCE_YOUR_CALM (0xb) and the reason.
    assert_eq!(heard[3], 0x4, "a SETTINGS frame first");
    assert_eq!(heard[9 + 3], 0x7, "then a GOAWAY");
    assert_eq!(&heard[9 + 9 + 4..9 + 9 + 8], &[0, 0, 0, 0xb]);
    let reason = String::from_utf8_lossy(&heard[9 + 9 + 8..]).into_owned();
    assert_eq!(
        reason,
        "too many connections from this address (at most 2, --max-connections-per-client)"
    );
    let endpoints = cluster.endpoints();
    let refused = tokio::task::spawn_blocking(move || {
        etcdctl(
            &endpoints,
            &["--dial-timeout=1s", "--command-timeout=1s", "put", "k", "v"],
            None,
        )
    })
    .await
    .expect("etcdctl");
    println!(
        "etcdctl while the address has its 2 connections: {}",
        refused.2.trim()
    );
    assert!(!refused.0, "etcdctl is refused too");

    drop((first, second));
    let endpoints = cluster.endpoints();
    tokio::task::spawn_blocking(move || {
        shoal_harness::wait_for(
            "a put once the address closed its connections",
            Duration::from_secs(5),
            || {
                etcdctl(&endpoints, &["put", "k", "v"], None)
                    .0
                    .then_some(())
            },
        )
    })
    .await
    .expect("served once the address closed its connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_watchers_is_refused_with_the_limit_named() {
    let cluster = common::start_with(StoreKind::ShoalKv, 1, &["--max-watchers-per-stream=2"]).await;
    let mut client = cluster.client(0).await;
    let mut stream = client.watch("a", None).await.expect("a watch stream");
    let first = stream
        .message()
        .await
        .expect("a response")
        .expect("created");
    assert!(first.created() && !first.canceled());
    stream.watch("b", None).await.expect("a second watch");
    let second = stream
        .message()
        .await
        .expect("a response")
        .expect("created");
    assert!(second.created() && !second.canceled());
    stream
        .watch("c", None)
        .await
        .expect("a third watch asked for");
    let third = stream
        .message()
        .await
        .expect("a response")
        .expect("an answer");
    assert!(third.canceled(), "{third:?}");
    assert_eq!(
        third.cancel_reason(),
        "etcdserver: too many watchers on one stream (at most 2, --max-watchers-per-stream)"
    );
    // The stream's two watchers still hear their keys, and another stream has its own two.
    client.put("b", "1", None).await.expect("put");
    let event = stream
        .message()
        .await
        .expect("a response")
        .expect("an event");
    assert_eq!(event.events()[0].kv().expect("kv").key(), b"b");
    let mut other = client.watch("c", None).await.expect("another stream");
    assert!(
        !other
            .message()
            .await
            .expect("a response")
            .expect("created")
            .canceled()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_max_concurrent_streams_wait_for_one_to_end() {
    let cluster = common::start_with(StoreKind::ShoalKv, 1, &["--max-concurrent-streams=2"]).await;
    // One client: one HTTP/2 connection.
    let mut client = cluster.client(0).await;
    let mut first = client.watch("a", None).await.expect("a first stream");
    first.message().await.expect("a response");
    let mut second = client.watch("b", None).await.expect("a second stream");
    second.message().await.expect("a response");
    let mut waiting = client.clone();
    let third = tokio::spawn(async move {
        let mut stream = waiting.watch("c", None).await.expect("a third stream");
        stream
            .message()
            .await
            .expect("a response")
            .expect("created")
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third stream waits while two are open"
    );
    drop(first);
    let created = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third stream opens once the first ended")
        .expect("the third stream");
    assert!(created.created());
}
