//! `cargo xtask up`: the platform on its embedded defaults, on this machine: a cluster of
//! network namespaces, each node running `shoal agent` (store member, overlay, fleet), kept
//! until Ctrl-C. `cargo xtask vm-cluster` does the same on qemu VMs.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use shoal_harness::{
    AgentOptions, Agents, Cluster,
    binaries::{self, Profile},
};

use crate::workspace_root;

#[derive(Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// How many of the nodes are masters of the store (the rest are workers).
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// Build shoal in release mode.
    #[arg(long)]
    release: bool,
    /// Bring the cluster up, check it converged, and tear it down at once (a smoke test).
    #[arg(long)]
    check: bool,
    /// Plain HTTP and no store auth (the default is TLS everywhere, auth on).
    #[arg(long)]
    insecure: bool,
}

pub fn run(args: UpArgs) -> Result<()> {
    crate::setup::run()?;
    let shoal = build_shoal(args.release)?;
    let dir = workspace_root().join("target/up");
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = Cluster::builder()
        .nodes(args.nodes)
        .container_supernet(None)
        .build()?;
    let mut options = AgentOptions::new(&shoal, &dir);
    options.masters = args.masters.clamp(1, args.nodes);
    options.secure = !args.insecure;
    println!(
        "starting {} agents ({} masters) in cluster {}; logs in {}",
        args.nodes,
        options.masters,
        cluster.run_id(),
        dir.display()
    );
    let agents = Agents::start(&cluster, options)?;
    let converged = agents
        .wait_ready(&cluster, Duration::from_secs(60), |node, after| {
            println!(
                "  node{} ({}) ready after {after:.1?}",
                node.index() + 1,
                node.underlay_ip()
            );
        })
        .with_context(|| agents.logs())?;
    println!("cluster converged in {converged:.1?}: store quorum, every lease, every machine\n");
    print_how_to_reach(&cluster, &agents, &shoal);
    if args.check {
        return Ok(());
    }
    println!("\nCtrl-C stops every agent and removes every namespace and link");
    wait_for_ctrl_c()?;
    println!("tearing down cluster {}", cluster.run_id());
    Ok(())
}

fn build_shoal(release: bool) -> Result<PathBuf> {
    let profile = if release {
        Profile::Release
    } else {
        Profile::Debug
    };
    Ok(binaries::build("shoal-control", "shoal", profile)?)
}

fn print_how_to_reach(cluster: &Cluster, agents: &Agents, shoal: &std::path::Path) {
    let first = cluster.node(0).ns().name();
    let subnet_file = agents.node_dir(0).join("subnet.env");
    let access = agents.access(cluster.node(0));
    if let Some(pki) = agents.pki_dir() {
        println!(
            "TLS and auth on: certificates in {} (clients use root.pem)",
            pki.display()
        );
    }
    println!("every node is a network namespace; for example, from node1:");
    println!(
        "  ip netns exec {first} {} fleetctl {} list-machines",
        shoal.display(),
        access.fleetctl_args().join(" ")
    );
    println!(
        "  ip netns exec {first} env ETCDCTL_API=3 etcdctl {} member list",
        access.etcdctl_args().join(" ")
    );
    println!(
        "  ip netns exec {first} {} run --subnet-file {} -- ip addr show eth0",
        shoal.display(),
        subnet_file.display()
    );
    println!("  ip netns exec {first} curl -s http://127.0.0.1:9901/metrics");
    for node in cluster.nodes() {
        println!(
            "  node{}: {} underlay {}",
            node.index() + 1,
            node.ns().name(),
            node.underlay_ip()
        );
    }
}

/// Blocks until SIGINT or SIGTERM, so the cluster is dropped (and removed) on Ctrl-C.
fn wait_for_ctrl_c() -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })?;
    rx.recv()?;
    Ok(())
}
