//! etcdctl users write endpoints as URLs (`--endpoints=http://host:2379`). etcdctl 3.4 dials its
//! per-endpoint commands with the whole URL as the HTTP/2 `:authority`; etcd accepts that, and so
//! must we (`shoal_kv::api::authority`).
mod common;

use shoal_harness::StoreKind;
use shoal_harness::store::etcdctl;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_endpoint_commands_work_with_url_endpoints_as_on_etcd() {
    for flavor in [StoreKind::Etcd, StoreKind::ShoalKv] {
        let cluster = common::start(flavor, 1).await;
        let url = vec![cluster.specs[0].client_url()];
        assert!(url[0].starts_with("http://"));
        for command in [
            &["put", "k", "v"][..],
            &["endpoint", "status"],
            &["endpoint", "hashkv"],
            &["endpoint", "health"],
            &["defrag"],
            &["get", "k"],
        ] {
            let (ok, out, err) = etcdctl(&url, command, None);
            println!(
                "{flavor:?} $ etcdctl --endpoints={} {}\n{out}{err}",
                url[0],
                command.join(" ")
            );
            assert!(ok, "{flavor:?}: etcdctl {command:?} failed: {err}");
        }
    }
}
