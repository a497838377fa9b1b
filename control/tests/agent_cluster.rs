//! Three `shoal agent` masters in a network-namespace cluster converge: store quorum, a lease
//! per node known on every node, every machine registered with fleet; containers started with
//! `shoal run` talk across nodes over the eBPF overlay, and keep talking after an agent stops
//! gracefully; with one master down the store keeps serving.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use shoal_harness::{
    AgentOptions, Agents, Cluster, Node,
    binaries::{self, QUIET_LOG},
    wait_for,
};

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
        .command(binaries::shoal())
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
    let mut options = AgentOptions::new(binaries::shoal(), temp.path());
    options.agent_ttl = Duration::from_secs(5);
    // Plain HTTP without auth (secure_cluster.rs runs the secure default).
    options.secure = false;
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

    // A web container on node3 answers a client container on node1 over the overlay.
    let node3 = cluster.node(2);
    let mut web = start_web_container(node3, &agents.node_dir(2), cluster.run_id());
    let web_ip = read_first_line(&mut web);
    let client_dir = agents.node_dir(0);
    let reply = wait_for(
        "an answer over the overlay",
        Duration::from_secs(10),
        || ask_web(cluster.node(0), &client_dir, &web_ip),
    );
    assert_eq!(reply.trim(), "hello-from-web");

    // /metrics reports the store, fleet and the dataplane's pinned counters.
    let metrics = cluster
        .node(0)
        .exec("curl", &["-sf", "http://127.0.0.1:9901/metrics"])
        .expect("metrics");
    assert!(metrics.contains("shoal_store_up 1"), "{metrics}");
    assert!(metrics.contains("shoal_fleet_machines 3"), "{metrics}");
    let encapsulated = metrics
        .lines()
        .find(|line| line.contains("counter=\"encap_vxlan_packets\""))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no dataplane counters in /metrics:\n{metrics}"));
    assert!(encapsulated > 0, "{metrics}");

    // A graceful stop of node3's agent leaves its overlay in place for running containers.
    assert!(
        agents.stop(2),
        "the agent exits cleanly on SIGTERM:\n{}",
        agents.logs()
    );
    let reply = ask_web(cluster.node(0), &client_dir, &web_ip).unwrap_or_else(|| {
        let routes = cluster.node(2).exec("ip", &["route"]).unwrap_or_default();
        let links = cluster
            .node(2)
            .exec("ip", &["-d", "link"])
            .unwrap_or_default();
        panic!(
            "the container does not answer after its node's agent stopped\n{routes}\n{links}\n{}",
            agents.logs()
        )
    });
    assert_eq!(reply.trim(), "hello-from-web");
    // SIGTERM: `shoal run` forwards it to the command and removes the container.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(web.id() as i32, libc::SIGTERM) };
    let _ = web.wait();

    // The agent comes back on the same subnet.
    agents.restart(&cluster, 2).expect("restart node3's agent");
    agents
        .wait_ready(&cluster, Duration::from_secs(30), |_, _| {})
        .unwrap_or_else(|err| panic!("{err}\n{}", agents.logs()));

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

/// `shoal run` on `node` with the node's subnet file and an IPAM directory of its own.
fn shoal_run(
    node: &Node,
    node_dir: &Path,
    name: Option<&str>,
    command: &[&str],
) -> std::process::Command {
    let mut cmd = node.ns().command(binaries::shoal());
    cmd.arg("run")
        .arg("--subnet-file")
        .arg(node_dir.join("subnet.env"))
        .arg("--ipam-dir")
        .arg(node_dir.join("ipam"));
    if let Some(name) = name {
        cmd.args(["--name", name]);
    }
    cmd.arg("--").args(command).env("SHOAL_LOG", QUIET_LOG);
    cmd
}

fn start_web_container(node: &Node, node_dir: &Path, run_id: &str) -> Child {
    let name = format!("shoal-{run_id}-web");
    shoal_run(
        node,
        node_dir,
        Some(&name),
        &[
            "socat",
            "TCP-LISTEN:8080,fork,reuseaddr",
            "SYSTEM:echo hello-from-web",
        ],
    )
    .stdout(Stdio::piped())
    .stdin(Stdio::null())
    .spawn()
    .expect("start the web container")
}

/// The container's address: the first line `shoal run` prints.
fn read_first_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the address");
    let ip = line.trim().to_string();
    assert!(
        ip.parse::<std::net::Ipv4Addr>().is_ok(),
        "shoal run printed {line:?}"
    );
    ip
}

fn ask_web(node: &Node, node_dir: &Path, ip: &str) -> Option<String> {
    let target = format!("TCP:{ip}:8080,connect-timeout=2");
    let out = shoal_run(node, node_dir, None, &["socat", "-T", "2", "-", &target])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The first line is the client container's own address.
    let reply = text.lines().skip(1).collect::<Vec<_>>().join("\n");
    (out.status.success() && !reply.is_empty()).then_some(reply)
}
