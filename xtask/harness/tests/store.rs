//! The store cluster starts ready, survives a member's kill -9 and restart, runs inside a
//! namespace, and leaves no process behind when dropped.
use std::time::Duration;

use shoal_harness::{Cluster, Process, StoreCluster, StoreKind, wait_for};

fn alive(pid: i32) -> bool {
    // A reaped child's /proc entry is gone; a zombie counts as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn etcd_members_can_be_killed_and_restarted() {
    let mut store = StoreCluster::start(StoreKind::Etcd, 3);
    assert_eq!(store.endpoints().len(), 3);
    store.ctl(&["put", "k", "v"]).expect("put");
    let pid = store.process(1).expect("member 1 runs").pid();
    store.kill(1);
    assert!(!alive(pid), "a killed member is gone");
    assert_eq!(store.live_endpoints().len(), 2);
    store.restart(1);
    assert!(store.is_running(1));
    let got = store.ctl(&["get", "k", "--print-value-only"]).expect("get");
    assert_eq!(got.trim(), "v");
    let pids: Vec<i32> = (0..3)
        .map(|i| store.process(i).expect("runs").pid())
        .collect();
    drop(store);
    assert!(
        pids.iter().all(|&pid| !alive(pid)),
        "members outlived the cluster"
    );
}

#[test]
fn a_store_runs_inside_a_namespace() {
    let cluster = Cluster::builder()
        .nodes(1)
        .container_supernet(None)
        .build()
        .expect("a one-node cluster");
    let node = cluster.node(0);
    let store = StoreCluster::in_namespace(StoreKind::Etcd, node.ns(), node.underlay_ip());
    assert_eq!(
        store.client_url(0),
        format!("http://{}:2379", node.underlay_ip())
    );
    store
        .ctl(&["put", "k", "v"])
        .expect("put through the namespace");
}

#[test]
fn a_process_is_stopped_on_drop() {
    let process = Process::spawn("sleep", std::process::Command::new("sleep").arg("600"));
    let pid = process.pid();
    assert!(alive(pid));
    drop(process);
    wait_for("sleep to end", Duration::from_secs(1), || {
        (!alive(pid)).then_some(())
    });
}
