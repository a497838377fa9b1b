//! The secure default end to end: three `shoal agent` masters with a cluster PKI serve the
//! store over TLS with client certificates required, turn on auth with least-privilege users,
//! and still converge (flannel leases as user `flannel`, fleet machines as user `fleet`); a
//! client without a certificate is refused, and `flannel` cannot write fleet's keys.
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
        .nodes(3)
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
    eprintln!("3 secure agents converged in {converged:?}");
    let node = cluster.node(1);
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
        3,
        "{}",
        text(&leases)
    );

    let shoal = binaries::shoal();
    let mut fleetctl = vec!["fleetctl".to_string()];
    fleetctl.extend(agents.access(cluster.node(0)).fleetctl_args());
    fleetctl.push("list-machines".into());
    let machines = run(node, &shoal, &fleetctl);
    assert!(machines.status.success(), "{}", text(&machines));
    assert_eq!(text(&machines).lines().count(), 4, "{}", text(&machines));

    // No client certificate: refused at the TLS handshake, whatever the client.
    let pki = agents.pki_dir().expect("a secure cluster");
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

    // Least privilege: the overlay's user reads its prefix and writes nothing of fleet's.
    let as_flannel = |args: &[&str]| {
        let flannel = [
            "--endpoints".to_string(),
            endpoint.clone(),
            "--cacert".into(),
            ca.clone(),
            "--cert".into(),
            pki.join("flannel.pem").display().to_string(),
            "--key".into(),
            pki.join("flannel-key.pem").display().to_string(),
        ];
        etcdctl(node, &flannel, args)
    };
    let own = as_flannel(&["get", "/coreos.com/network/config"]);
    assert!(own.status.success(), "{}", text(&own));
    let denied = as_flannel(&["put", "/_coreos.com/fleet/job/evil/object", "{}"]);
    assert!(
        text(&denied).contains("etcdserver: permission denied"),
        "{}",
        text(&denied)
    );
}
