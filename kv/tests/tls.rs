//! TLS on every port with etcd's flags: the harness's TLS fixture brings up etcd 3.4 and shoal
//! kv the same way (client and peer certificates from shoal-pki, `--client-cert-auth` on both
//! ports), and etcdctl works against both with the root client certificate.
mod common;

use shoal_harness::{StoreCluster, StoreKind};

fn start_tls(kind: StoreKind, size: usize) -> StoreCluster {
    StoreCluster::builder(kind, size)
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .tls()
        .start()
}

#[test]
fn etcdctl_puts_and_gets_over_tls_against_etcd_and_shoal_kv() {
    for kind in [StoreKind::Etcd, StoreKind::ShoalKv] {
        let cluster = start_tls(kind, 3);
        assert!(
            cluster
                .client_urls()
                .iter()
                .all(|u| u.starts_with("https://"))
        );
        assert_eq!(
            cluster.ctl(&["put", "/tls", "yes"]).expect("put").trim(),
            "OK"
        );
        let got = cluster.ctl(&["get", "/tls"]).expect("get");
        assert_eq!(got, "/tls\nyes\n", "{}", kind.name());
        let members = cluster.ctl(&["member", "list"]).expect("member list");
        println!("{}: member list\n{members}", kind.name());
        assert_eq!(
            members.matches("https://127.0.0.1:").count(),
            6,
            "{members}"
        );
    }
}
