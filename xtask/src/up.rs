//! `cargo xtask up`: the platform on its embedded defaults, on this machine. Until the agent
//! lands (issue #7) this is a cluster of network namespaces from the harness, kept until Ctrl-C.
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Containers per node.
    #[arg(long, default_value_t = 1)]
    containers: usize,
}

pub fn run(args: UpArgs) -> Result<()> {
    crate::setup::run()?;
    let cluster = shoal_harness::Cluster::builder()
        .nodes(args.nodes)
        .containers_per_node(args.containers)
        .build()?;
    cluster.install_host_gw_routes()?;
    println!("cluster {} is up:", cluster.run_id());
    for node in cluster.nodes() {
        println!(
            "  node {} underlay {} namespace {}",
            node.name(),
            node.underlay_ip(),
            node.ns().name()
        );
        for container in node.containers() {
            let ip = container.ip().map(|ip| ip.to_string()).unwrap_or_default();
            println!(
                "    container {} {ip} namespace {}",
                container.name(),
                container.ns().name()
            );
        }
    }
    println!("enter a node with `ip netns exec <namespace> bash`; Ctrl-C tears it all down");
    wait_for_ctrl_c()?;
    println!("tearing down cluster {}", cluster.run_id());
    Ok(())
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
