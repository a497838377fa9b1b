//! `shoal flannel` against a store that checks who it is (etcd 3.4 and shoal kv alike): TLS with client certificates
//! (`--client-cert-auth`) and auth enabled, with a user that may write only under the network
//! prefix. flanneld's `--etcd-cafile/--etcd-certfile/--etcd-keyfile/--etcd-username/
//! --etcd-password` reach the store client; without the password the store's refusal is the
//! error flannel stops with.
mod common;

use std::time::Duration;

use common::{Flannel, FlannelKeys, PREFIX};
use shoal_harness::{Cluster, StoreKind, wait_for};

const CONFIG: &str = r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const PASSWORD: &str = "flannel-secret";

#[test]
fn etcd_flannel_takes_a_lease_with_tls_and_a_password_and_is_refused_without_it() {
    takes_a_lease_with_tls_and_a_password_and_is_refused_without_it(StoreKind::Etcd);
}

#[test]
fn shoal_kv_flannel_takes_a_lease_with_tls_and_a_password_and_is_refused_without_it() {
    takes_a_lease_with_tls_and_a_password_and_is_refused_without_it(StoreKind::ShoalKv);
}

fn takes_a_lease_with_tls_and_a_password_and_is_refused_without_it(kind: StoreKind) {
    let cluster = Cluster::builder()
        .nodes(1)
        .containers_per_node(0)
        .container_supernet(None)
        .build()
        .expect("cluster");
    let node = cluster.node(0);
    let store = common::store(kind)
        .in_namespace(node.ns(), node.underlay_ip())
        .tls()
        .start();
    store.put(&format!("{PREFIX}/config"), CONFIG);
    common::enable_auth(&store, "readwrite", "/coreos.com/network/", PASSWORD);
    let tls = store.tls().expect("a TLS cluster");
    // A certificate whose name is no user: the password is what lets flannel in.
    let certificate = tls.client("node-without-a-user");
    let path = |p: &std::path::Path| p.display().to_string();
    let (ca, cert, key) = (
        path(&tls.ca),
        path(&certificate.certificate),
        path(&certificate.key),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = [
        "--etcd-cafile",
        ca.as_str(),
        "--etcd-certfile",
        cert.as_str(),
        "--etcd-keyfile",
        key.as_str(),
        "--etcd-username",
        "flannel",
    ];

    let mut refused = Flannel::start(node, &store.client_url(0), dir.path(), &flags);
    let exit = wait_for("flannel to stop", Duration::from_secs(20), || {
        refused.process.exited()
    });
    assert!(!exit.success());
    let log = std::fs::read_to_string(dir.path().join(format!("{}.log", node.name())))
        .expect("flannel log");
    assert!(
        log.contains("the store refused the credentials of user \"flannel\"")
            && log.contains("authentication failed, invalid user ID or password"),
        "{log}"
    );
    assert!(store.leases().is_empty());

    let mut with_password = flags.to_vec();
    with_password.extend(["--etcd-password", PASSWORD]);
    let flannel = Flannel::start(node, &store.client_url(0), dir.path(), &with_password);
    flannel.wait_subnet();
    let leases = store.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(leases[0].1.contains(&node.underlay_ip().to_string()));
}
