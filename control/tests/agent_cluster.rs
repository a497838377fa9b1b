//! Three `shoal agent` masters in a network-namespace cluster converge: store quorum, a lease
//! per node known on every node, every machine registered with fleet; and with one master
//! down the store keeps serving.
mod common;

use std::time::Duration;

use common::{SHOAL, wait_for};
use shoal_harness::{AgentOptions, Agents, Cluster, Node};

fn etcdctl(node: &Node, args: &[&str]) -> Option<String> {
    let out = node
        .ns()
        .command("etcdctl")
        .args([
            "--endpoints",
            "http://127.0.0.1:2379",
            "--command-timeout",
            "3s",
        ])
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn fleetctl(node: &Node, args: &[&str]) -> String {
    let out = node
        .ns()
        .command(SHOAL)
        .arg("fleetctl")
        .args(args)
        .output()
        .expect("run fleetctl");
    assert!(
        out.status.success(),
        "fleetctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn three_masters_converge_and_survive_one_down() {
    let cluster = Cluster::builder()
        .nodes(3)
        .container_supernet(None)
        .build()
        .expect("cluster");
    let temp = tempfile::tempdir().expect("tempdir");
    let mut options = AgentOptions::new(SHOAL, temp.path());
    options.agent_ttl = Duration::from_secs(5);
    let mut agents = Agents::start(&cluster, options).expect("start agents");

    let converged = agents
        .wait_ready(&cluster, Duration::from_secs(30), |node, after| {
            eprintln!("{} ready after {after:?}", node.name());
        })
        .unwrap_or_else(|err| panic!("{err}\n{}", agents.logs()));
    eprintln!("3 agents converged in {converged:?}");

    let members = etcdctl(cluster.node(0), &["member", "list"]).expect("member list");
    assert_eq!(members.lines().count(), 3, "{members}");

    let leases = etcdctl(
        cluster.node(1),
        &[
            "get",
            "--prefix",
            "--keys-only",
            "/coreos.com/network/subnets/",
        ],
    )
    .expect("list leases");
    let subnets: Vec<String> = leases
        .lines()
        .filter(|line| !line.is_empty())
        .filter_map(|key| key.rsplit('/').next().map(|s| s.replace('-', "/")))
        .collect();
    assert_eq!(subnets.len(), 3, "one lease per node: {leases}");

    // Every node routes the subnets of the other two.
    for node in cluster.nodes() {
        let env = std::fs::read_to_string(agents.node_dir(node.index()).join("subnet.env"))
            .expect("subnet.env");
        for subnet in &subnets {
            let network = subnet.split('/').next().expect("address");
            let own_prefix = network.rsplit_once('.').expect("dotted").0;
            if env.contains(&format!("FLANNEL_SUBNET={own_prefix}.")) {
                continue;
            }
            wait_for(
                &format!("{} routes {subnet}", node.name()),
                Duration::from_secs(5),
                || {
                    let routes = node.exec("ip", &["route", "show", subnet]).ok()?;
                    (!routes.trim().is_empty()).then_some(())
                },
            );
        }
    }

    let machines = fleetctl(cluster.node(2), &["list-machines", "--no-legend"]);
    assert_eq!(machines.lines().count(), 3, "{machines}");
    assert!(machines.contains("compute=db"), "{machines}");

    // One master down: the other two keep a quorum and serve writes and reads.
    agents.kill(1);
    wait_for(
        "a write with one master down",
        Duration::from_secs(10),
        || etcdctl(cluster.node(0), &["put", "/test/one-down", "ok"]),
    );
    let value = etcdctl(cluster.node(2), &["get", "/test/one-down"]).expect("get");
    assert!(value.contains("ok"), "{value}");
}
