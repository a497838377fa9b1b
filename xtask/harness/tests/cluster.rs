//! The harness builds what it promises and leaves nothing behind: no namespace, link or process,
//! also when the test using it panics.
use std::{
    net::Ipv4Addr,
    panic::{AssertUnwindSafe, catch_unwind},
    process::{Command, Stdio},
};

use shoal_harness::{Cluster, Namespace};

/// Namespaces of this run that still exist.
fn namespaces_of(run_id: &str) -> Vec<String> {
    let listing = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.contains(&format!("-{run_id}-")))
        .map(str::to_string)
        .collect()
}

fn process_alive(pid: u32) -> bool {
    // A killed child stays a zombie until reaped; count only live states.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .split_whitespace()
            .nth(2)
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn ping(ns: &Namespace, target: Ipv4Addr) {
    let out = ns
        .output("ping", ["-c", "1", "-W", "2", &target.to_string()])
        .expect("run ping");
    assert!(
        out.status.success(),
        "{} cannot reach {target}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn three_nodes_with_two_containers_each_talk_over_the_underlay() {
    let cluster = Cluster::builder()
        .nodes(3)
        .containers_per_node(2)
        .build()
        .expect("build cluster");
    let run_id = cluster.run_id().to_string();
    // 1 switch + 3 nodes + 6 containers.
    assert_eq!(namespaces_of(&run_id).len(), 10);

    for node in cluster.nodes() {
        for peer in cluster.nodes() {
            ping(node.ns(), peer.underlay_ip());
        }
    }

    cluster.install_host_gw_routes().expect("host-gw routes");
    let containers: Vec<_> = cluster
        .nodes()
        .iter()
        .flat_map(|n| n.containers())
        .collect();
    assert_eq!(containers.len(), 6);
    for from in &containers {
        for to in &containers {
            ping(from.ns(), to.ip().expect("containers are addressed"));
        }
    }

    // TCP across nodes, container to container, through the underlay.
    let server = cluster.node(2).container(1);
    let client = cluster.node(0).container(0);
    let mut listener = server
        .ns()
        .spawn(
            server
                .ns()
                .command("socat")
                .args(["-u", "TCP-LISTEN:5001", "STDOUT"])
                .stdout(Stdio::piped()),
        )
        .expect("start socat listener");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let sent = client
        .output(
            "sh",
            &[
                "-c",
                &format!(
                    "echo hello-from-n0 | socat -u STDIN TCP:{}:5001,connect-timeout=2",
                    server.ip().expect("ip")
                ),
            ],
        )
        .expect("run socat client");
    assert!(sent.status.success(), "socat client failed: {sent:?}");
    let received = listener.wait_with_output().expect("listener output");
    assert_eq!(
        String::from_utf8_lossy(&received.stdout).trim(),
        "hello-from-n0"
    );
    listener = server
        .ns()
        .spawn(server.ns().command("sleep").arg("300"))
        .expect("start sleeper");
    let sleeper = listener.id();

    drop(cluster);
    assert!(namespaces_of(&run_id).is_empty(), "namespaces left behind");
    assert!(!process_alive(sleeper), "process {sleeper} left behind");
    let _ = listener.wait();
}

#[test]
fn a_test_that_panics_midway_leaves_nothing_behind() {
    let mut seen_run_id = String::new();
    let mut sleeper = None;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let cluster = Cluster::builder()
            .nodes(3)
            .containers_per_node(2)
            .build()
            .expect("build cluster");
        seen_run_id = cluster.run_id().to_string();
        let node = cluster.node(1);
        sleeper = Some(
            node.ns()
                .spawn(node.ns().command("sleep").arg("300"))
                .expect("start sleeper"),
        );
        panic!("the test fails midway");
    }));
    assert!(outcome.is_err(), "the closure panicked");
    assert!(
        namespaces_of(&seen_run_id).is_empty(),
        "namespaces left behind"
    );
    let mut sleeper = sleeper.expect("the sleeper started before the panic");
    assert!(!process_alive(sleeper.id()), "process left behind");
    let _ = sleeper.wait();
}

#[test]
fn sweep_removes_what_a_killed_run_left() {
    // A run whose process is gone: a child that has exited.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead_pid = child.id();
    child.wait().expect("wait");
    let name = format!("shoal-{dead_pid}x0-n0");
    let status = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("ip netns add");
    assert!(status.success());
    // Make it look lived-in: a link and a process inside.
    Command::new("ip")
        .args([
            "-n", &name, "link", "add", "x0", "type", "veth", "peer", "name", "x1",
        ])
        .status()
        .expect("add veth");
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "300"])
        .spawn()
        .expect("spawn sleeper");

    // A cluster built concurrently by another test may sweep it first; either way it goes.
    shoal_harness::sweep().expect("sweep");
    let listing = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("list");
    assert!(!String::from_utf8_lossy(&listing.stdout).contains(&name));
    let _ = sleeper.wait();
    assert!(!process_alive(sleeper.id()));
}

#[test]
fn the_harness_rejects_a_layout_that_does_not_fit() {
    let err = Cluster::builder()
        .nodes(3)
        .underlay("10.99.0.0/31".parse().expect("valid"))
        .build()
        .expect_err("3 nodes do not fit in a /31");
    assert!(err.to_string().contains("do not fit"), "{err}");
}
