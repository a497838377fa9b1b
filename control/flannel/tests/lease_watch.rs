//! flannel's own lease watch stream (`watch.rs`) against etcd 3.4 and shoal kv: it delivers
//! the events etcd-client's watch delivers, reports compaction, refuses a response over its
//! size limit, and carries the user's token when auth is on.
mod common;

use std::time::Duration;

use common::{FlannelKeys, PREFIX};
use shoal_flannel::{
    registry::{Registry, StoreOptions},
    watch::{EventType, WatchError, WatchResponse, WatchStream},
};
use shoal_harness::{StoreCluster, StoreKind};
use shoal_store_client::etcd_client::{
    self, Client, CompactionOptions, ConnectOptions, PutOptions, WatchOptions,
};

const WAIT: Duration = Duration::from_secs(10);

/// What an event says: type, key, value, mod revision, etcd lease.
type Seen = (bool, Vec<u8>, Vec<u8>, i64, i64);

fn subnets() -> String {
    format!("{PREFIX}/subnets/")
}

async fn registry(store: &StoreCluster, user: Option<(&str, &str)>) -> Registry {
    Registry::connect(&StoreOptions {
        endpoints: vec![FlannelKeys::endpoint(store)],
        prefix: PREFIX.into(),
        username: user.map(|(name, _)| name.to_string()),
        password: user.map(|(_, password)| password.to_string()),
        ..StoreOptions::default()
    })
    .await
    .expect("connecting to the store")
}

async fn client(store: &StoreCluster) -> Client {
    Client::connect([FlannelKeys::endpoint(store)], None)
        .await
        .expect("etcd-client")
}

/// Leases put and deleted the way flannel does, one under an etcd lease, and a key beside
/// the prefix that neither watch may report.
async fn write_leases(client: &mut Client) {
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    let value = r#"{"PublicIP":"10.99.0.1","PublicIPv6":null,"BackendType":"host-gw"}"#;
    let key = |name: &str| format!("{}{name}", subnets());
    client
        .put(
            key("10.5.1.0-24"),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put");
    client
        .put(key("10.5.2.0-24"), value, None)
        .await
        .expect("put");
    client
        .put(format!("{PREFIX}/subnetsX"), "beside the prefix", None)
        .await
        .expect("put");
    client
        .delete(key("10.5.2.0-24"), None)
        .await
        .expect("delete");
}

/// The events of `stream` until `count` arrived.
async fn ours(stream: &mut WatchStream, count: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let response = next(stream).await.expect("a watch response");
        seen.extend(response.events.iter().map(|event| {
            let kv = event.kv.as_ref().expect("kv");
            (
                event.event_type() == EventType::Delete,
                kv.key.to_vec(),
                kv.value.to_vec(),
                kv.mod_revision,
                kv.lease,
            )
        }));
    }
    seen
}

async fn next(stream: &mut WatchStream) -> Result<WatchResponse, WatchError> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a response in time")?
        .ok_or_else(|| WatchError::Status(tonic::Status::cancelled("the stream ended")))
}

async fn etcd_clients(client: &mut Client, count: usize) -> Vec<Seen> {
    let options = WatchOptions::new().with_prefix().with_start_revision(1);
    let mut stream = client.watch(subnets(), Some(options)).await.expect("watch");
    let mut seen = Vec::new();
    while seen.len() < count {
        let response = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("in time")
            .expect("a response")
            .expect("not ended");
        seen.extend(response.events().iter().map(|event| {
            let kv = event.kv().expect("kv");
            (
                event.event_type() == etcd_client::EventType::Delete,
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.mod_revision(),
                kv.lease(),
            )
        }));
    }
    seen
}

#[tokio::test]
async fn etcd_the_lease_watch_delivers_what_etcd_clients_watch_delivers() {
    delivers_what_etcd_clients_watch_delivers(StoreKind::Etcd).await;
}

#[tokio::test]
async fn shoal_kv_the_lease_watch_delivers_what_etcd_clients_watch_delivers() {
    delivers_what_etcd_clients_watch_delivers(StoreKind::ShoalKv).await;
}

async fn delivers_what_etcd_clients_watch_delivers(kind: StoreKind) {
    let store = common::store(kind).start();
    let mut client = client(&store).await;
    write_leases(&mut client).await;
    let mut registry = registry(&store, None).await;
    let mut stream = registry.watch(1).await.expect("watch");
    let seen = ours(&mut stream, 3).await;
    assert_eq!(seen, etcd_clients(&mut client, 3).await);
    assert_eq!(
        seen.iter()
            .map(|(deleted, ..)| *deleted)
            .collect::<Vec<_>>(),
        [false, false, true]
    );
    assert!(seen[0].4 != 0, "the first lease is under an etcd lease");
    assert!(
        seen.iter()
            .all(|(_, key, ..)| key.starts_with(subnets().as_bytes()))
    );
}

#[tokio::test]
async fn etcd_a_watch_from_a_compacted_revision_reports_the_compaction() {
    reports_compaction(StoreKind::Etcd).await;
}

#[tokio::test]
async fn shoal_kv_a_watch_from_a_compacted_revision_reports_the_compaction() {
    reports_compaction(StoreKind::ShoalKv).await;
}

async fn reports_compaction(kind: StoreKind) {
    let store = common::store(kind).start();
    let mut client = client(&store).await;
    write_leases(&mut client).await;
    let revision = client
        .get("any", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let mut registry = registry(&store, None).await;
    let mut stream = registry.watch(1).await.expect("watch");
    for _ in 0..3 {
        let response = next(&mut stream).await.expect("a response");
        if response.compact_revision > 0 {
            assert_eq!(response.compact_revision, revision);
            assert!(response.events.is_empty());
            return;
        }
    }
    panic!("no compaction reported in 3 responses");
}

#[tokio::test]
async fn etcd_a_watch_response_over_the_size_limit_is_refused() {
    refuses_oversized_responses(StoreKind::Etcd).await;
}

#[tokio::test]
async fn shoal_kv_a_watch_response_over_the_size_limit_is_refused() {
    refuses_oversized_responses(StoreKind::ShoalKv).await;
}

async fn refuses_oversized_responses(kind: StoreKind) {
    let store = common::store(kind).start();
    let mut client = client(&store).await;
    let big = format!(
        r#"{{"PublicIP":"10.99.0.1","BackendData":"{}"}}"#,
        "x".repeat(8192)
    );
    client
        .put(format!("{}10.5.3.0-24", subnets()), big, None)
        .await
        .expect("put");
    let mut registry = registry(&store, None).await.with_max_watch_message(4096);
    let mut stream = registry.watch(1).await.expect("watch");
    for _ in 0..3 {
        match next(&mut stream).await {
            Ok(response) => assert!(response.events.is_empty(), "an 8 KB event got through"),
            Err(WatchError::Status(status)) => {
                assert_eq!(status.code(), tonic::Code::OutOfRange, "{status}");
                return;
            }
            Err(err) => panic!("{err}"),
        }
    }
    panic!("the oversized response was not refused");
}

#[tokio::test]
async fn etcd_the_lease_watch_carries_the_users_token() {
    carries_the_users_token(StoreKind::Etcd).await;
}

#[tokio::test]
async fn shoal_kv_the_lease_watch_carries_the_users_token() {
    carries_the_users_token(StoreKind::ShoalKv).await;
}

async fn carries_the_users_token(kind: StoreKind) {
    let store = common::store(kind).start();
    let mut client = client(&store).await;
    write_leases(&mut client).await;
    common::enable_auth(&store, "read", &format!("{PREFIX}/"), "secret");
    let mut registry = registry(&store, Some(("flannel", "secret"))).await;
    let mut stream = registry.watch(1).await.expect("watch");
    assert_eq!(ours(&mut stream, 3).await.len(), 3);

    // A registry on a client without the user is refused by the store, not ignored.
    let anonymous = Client::connect([FlannelKeys::endpoint(&store)], None::<ConnectOptions>)
        .await
        .expect("etcd-client");
    let mut registry = Registry::from_client(anonymous, &FlannelKeys::endpoint(&store), PREFIX)
        .await
        .expect("registry");
    // etcd answers with a cancelled watch, a store may also refuse the call itself.
    let refused = match registry.watch(1).await {
        Err(_) => true,
        Ok(mut stream) => next(&mut stream)
            .await
            .map_or(true, |response| response.canceled),
    };
    assert!(refused, "an anonymous watch got through with auth on");
}

#[tokio::test]
async fn etcd_the_lease_watch_connects_with_the_registrys_tls_files() {
    connects_with_tls(StoreKind::Etcd).await;
}

#[tokio::test]
async fn shoal_kv_the_lease_watch_connects_with_the_registrys_tls_files() {
    connects_with_tls(StoreKind::ShoalKv).await;
}

/// A store that requires client certificates: the watch's own channel presents the
/// registry's CA, certificate and key.
async fn connects_with_tls(kind: StoreKind) {
    let store = common::store(kind).tls().start();
    let value = r#"{"PublicIP":"10.99.0.1","PublicIPv6":null,"BackendType":"host-gw"}"#;
    for subnet in ["10.5.1.0-24", "10.5.2.0-24"] {
        store.put(&format!("{}{subnet}", subnets()), value);
    }
    let tls = store.tls().expect("a TLS cluster");
    let certificate = tls.client("flannel-node");
    let mut registry = Registry::connect(&StoreOptions {
        endpoints: vec![FlannelKeys::endpoint(&store)],
        prefix: PREFIX.into(),
        cafile: Some(tls.ca.clone()),
        certfile: Some(certificate.certificate.clone()),
        keyfile: Some(certificate.key.clone()),
        ..StoreOptions::default()
    })
    .await
    .expect("connecting with TLS");
    let mut stream = registry.watch(1).await.expect("watch");
    let seen = ours(&mut stream, 2).await;
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|(deleted, _, seen_value, ..)| !deleted
                && seen_value.as_slice() == value.as_bytes())
    );
}
