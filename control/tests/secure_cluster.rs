//! The secure default end to end: three `shoal agent` masters and a worker with a cluster PKI
//! serve the store over TLS with client certificates required, turn on auth with
//! least-privilege users, and still converge (flannel leases as user `flannel`, fleet machines
//! as user `fleet`); only the first master holds `root`, the worker no peer certificate; a
//! client without a certificate is refused, `flannel` cannot write fleet's keys nor `fleet`
//! the network's.
use std::{process::Output, time::Duration};

use shoal_harness::{AgentOptions, Agents, Cluster, Node, binaries};

fn run(node: &Node, program: &std::path::Path, args: &[String]) -> Output {
    node.ns()
        .command(program)
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("running a client")
}

fn etcdctl(node: &Node, access: &[String], args: &[&str]) -> Output {
    let mut all = access.to_vec();
    all.extend(["--command-timeout".to_string(), "3s".to_string()]);
    all.extend(args.iter().map(|arg| arg.to_string()));
    run(node, std::path::Path::new("etcdctl"), &all)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_secure_cluster_converges_and_refuses_strangers() {
    let cluster = Cluster::builder()
        .nodes(4)
        .container_supernet(None)
        .build()
        .expect("cluster");
    let temp = tempfile::tempdir().expect("tempdir");
    let mut options = AgentOptions::new(binaries::shoal(), temp.path());
    options.agent_ttl = Duration::from_secs(5);
    let agents = Agents::start(&cluster, options).expect("start agents");
    let converged = agents
        .wait_ready(&cluster, Duration::from_secs(40), |node, after| {
            eprintln!("{} ready after {after:?}", node.name());
        })
        .unwrap_or_else(|err| panic!("{err}\n{}", agents.logs()));
    eprintln!("3 secure masters and a worker converged in {converged:?}");
    let node = cluster.node(1);
    let pki = agents.pki_dir().expect("a secure cluster");
    for (holder, admin) in [("node1", true), ("node2", false), ("node4", false)] {
        let has_root = shoal_pki::node_dir(&pki, holder)
            .join("root-key.pem")
            .exists();
        assert_eq!(has_root, admin, "{holder} holds root: {has_root}");
    }
    let worker_dir = shoal_pki::node_dir(&pki, "node4");
    assert!(
        !worker_dir.join("peer-key.pem").exists(),
        "a worker cannot speak Raft"
    );
    let worker_log = std::fs::read_to_string(agents.node_dir(3).join("agent.log")).expect("log");
    assert!(
        worker_log.contains("network config in place"),
        "the worker checks the network config as flannel:\n{worker_log}"
    );
    let root = agents.access(cluster.node(0)).etcdctl_args();

    let users = etcdctl(node, &root, &["user", "list"]);
    assert!(users.status.success(), "{}", text(&users));
    assert_eq!(
        text(&users).split_whitespace().collect::<Vec<_>>(),
        ["flannel", "fleet", "root"]
    );
    let leases = etcdctl(
        node,
        &root,
        &[
            "get",
            "--prefix",
            "--keys-only",
            "/coreos.com/network/subnets/",
        ],
    );
    assert_eq!(
        text(&leases).split_whitespace().count(),
        4,
        "{}",
        text(&leases)
    );

    let shoal = binaries::shoal();
    let mut fleetctl = vec!["fleetctl".to_string()];
    fleetctl.extend(agents.access(cluster.node(0)).fleetctl_args());
    fleetctl.push("list-machines".into());
    let machines = run(node, &shoal, &fleetctl);
    assert!(machines.status.success(), "{}", text(&machines));
    assert_eq!(text(&machines).lines().count(), 5, "{}", text(&machines));

    // No client certificate: refused at the TLS handshake, whatever the client.
    let ca = pki.join(shoal_pki::CA_CERT).display().to_string();
    let endpoint = agents.access(cluster.node(0)).endpoint;
    let stranger = etcdctl(
        node,
        &[
            "--endpoints".into(),
            endpoint.clone(),
            "--cacert".into(),
            ca.clone(),
        ],
        &["get", "x"],
    );
    assert!(!stranger.status.success(), "{}", text(&stranger));
    let plain = etcdctl(
        node,
        &["--endpoints".into(), endpoint.replace("https", "http")],
        &["get", "x"],
    );
    assert!(!plain.status.success(), "{}", text(&plain));
    let stranger_fleetctl = run(
        node,
        &shoal,
        &[
            "fleetctl",
            "--endpoint",
            &endpoint,
            "--ca-file",
            &ca,
            "list-machines",
        ]
        .map(String::from),
    );
    assert!(
        !stranger_fleetctl.status.success(),
        "{}",
        text(&stranger_fleetctl)
    );

    // Least privilege: each component's user reads its prefix and writes nothing of the
    // other's, with the certificates a worker holds.
    let worker = shoal_pki::node_dir(&pki, "node4");
    let as_user = |user: &str, args: &[&str]| {
        let access = [
            "--endpoints".to_string(),
            endpoint.clone(),
            "--cacert".into(),
            ca.clone(),
            "--cert".into(),
            worker.join(format!("{user}.pem")).display().to_string(),
            "--key".into(),
            worker.join(format!("{user}-key.pem")).display().to_string(),
        ];
        etcdctl(node, &access, args)
    };
    let own = as_user("flannel", &["get", "/coreos.com/network/config"]);
    assert!(own.status.success(), "{}", text(&own));
    let own = as_user(
        "fleet",
        &["get", "--prefix", "/_coreos.com/fleet/machines/"],
    );
    assert!(own.status.success(), "{}", text(&own));
    for (user, key) in [
        ("flannel", "/_coreos.com/fleet/job/evil/object"),
        ("fleet", "/coreos.com/network/config"),
        ("fleet", "/coreos.com/network/subnets/10.244.99.0-24"),
    ] {
        let denied = as_user(user, &["put", key, "{}"]);
        assert!(
            text(&denied).contains("etcdserver: permission denied"),
            "{user} writing {key}: {}",
            text(&denied)
        );
    }
}
