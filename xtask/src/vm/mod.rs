//! `cargo xtask vm-cluster`: a shoal cluster on qemu VMs, kept up until Ctrl-C or
//! `cargo xtask vm-cluster down`. The work is done by the `shoal-vm` library (xtask/vm), which
//! the vm-tests use too; this file is the command line and what it prints.
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use shoal_vm::{
    ClusterSpec, GuestImage, Progress, VmCluster, build, cluster, config, guest, signals,
};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct VmClusterArgs {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    up: UpArgs,
}

#[derive(Subcommand)]
enum Action {
    /// Stop every VM cluster and remove every device and namespace they made.
    Down,
    /// Run a shell command inside a node of the running cluster.
    Exec {
        /// Node name (n1, n2, ...).
        node: String,
        /// The command, run by the guest's `sh`.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Args)]
struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// How many of the nodes (the first ones) run the store.
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// Fleet metadata of the nodes in order, one `--metadata k=v,k=v` per node
    /// (default: `rack=rack<i>`).
    #[arg(long)]
    metadata: Vec<String>,
    /// Memory per VM, MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// How long to wait for every agent's /readyz, seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
    /// Guest image: `small` (busybox initramfs) or `debian` (systemd, `shoal install`).
    #[arg(long, value_enum, default_value_t = Image::Small)]
    image: Image,
    /// Boot, wait for convergence, print the timings and tear down (exit status: converged).
    #[arg(long)]
    check: bool,
    /// Plain HTTP and no store auth (the default is TLS everywhere, auth on).
    #[arg(long)]
    insecure: bool,
    /// Run the debug build of shoal in the guests (no release build needed, but about five
    /// times the CPU under TCG: slower to converge).
    #[arg(long)]
    debug: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Image {
    Small,
    Debian,
}

pub fn run(args: VmClusterArgs) -> Result<()> {
    match args.action {
        Some(Action::Down) => down(),
        Some(Action::Exec { node, command }) => exec(&node, &command.join(" ")),
        None => up(args.up),
    }
}

fn up(args: UpArgs) -> Result<()> {
    signals::block_termination();
    let spec = ClusterSpec {
        image: match args.image {
            Image::Small => GuestImage::Small,
            Image::Debian => GuestImage::Debian,
        },
        nodes: args.nodes,
        masters: args.masters,
        metadata: args
            .metadata
            .iter()
            .map(|text| config::parse_metadata(text))
            .collect::<Result<_, _>>()?,
        memory_mib: args.memory,
        profile: if args.debug {
            build::Profile::Debug
        } else {
            build::Profile::Release
        },
        secure: !args.insecure,
        ..ClusterSpec::default()
    };
    let started = Instant::now();
    let mut cluster = VmCluster::up(&spec, &mut print_progress).context("booting the VMs")?;
    print_access(&cluster);
    let timeout = Duration::from_secs(args.ready_timeout);
    let ready = cluster
        .wait_ready(timeout, &mut print_progress)
        .and_then(|_| cluster.wait_machines_listed(timeout));
    match &ready {
        Ok(elapsed) => println!(
            "cluster converged: every agent ready and every machine in list-machines {:.1}s after start",
            elapsed.as_secs_f64()
        ),
        Err(err) => println!("cluster NOT converged: {err:#}"),
    }
    print_boot_timings(&cluster, started);
    if args.check {
        ready.context("waiting for every agent to be ready")?;
        return Ok(());
    }
    println!("the cluster stays up: Ctrl-C or `cargo xtask vm-cluster down` stops it");
    stay_up(&mut cluster);
    drop(cluster);
    println!("every VM stopped, namespace and devices removed");
    Ok(())
}

fn print_progress(step: Progress) {
    let node = step.node.as_deref().unwrap_or("vm-cluster");
    println!(
        "[{:6.1}s] {node:>10}: {}",
        step.elapsed.as_secs_f64(),
        step.message
    );
}

fn print_access(cluster: &VmCluster) {
    let ns = cluster.namespace_name();
    let access = cluster.store_access();
    let shoal = cluster.dir().join("share/shoal");
    println!("cluster {} is booted; from this host:", cluster.id());
    println!(
        "  ip netns exec {ns} env ETCDCTL_API=3 etcdctl {} endpoint status -w table",
        access.etcdctl_args().join(" ")
    );
    println!(
        "  ip netns exec {ns} {} fleetctl {} list-machines",
        shoal.display(),
        access.fleetctl_args().join(" ")
    );
    for node in cluster.nodes() {
        println!(
            "  ip netns exec {ns} wget -qO- http://{}:{}/readyz   # {} health",
            node.address(),
            config::HEALTH_PORT,
            node.name()
        );
    }
    println!(
        "  cargo xtask vm-cluster exec n1 -- /usr/sbin/ip -br addr   # a command inside a node"
    );
    println!("  consoles: {}/<node>.console.log", cluster.dir().display());
}

fn print_boot_timings(cluster: &VmCluster, started: Instant) {
    println!(
        "boot timings (seconds after each qemu started; accelerator {}):",
        cluster.accel().accel.name()
    );
    for (node, markers) in cluster.boot_timings() {
        let milestones = markers
            .iter()
            .filter(|m| !m.text.starts_with("version"))
            .map(|m| format!("{:.2} {}", m.at.as_secs_f64(), short(&m.text)))
            .collect::<Vec<_>>()
            .join(" | ");
        println!("  {node}: {milestones}");
    }
    println!(
        "  total since the command started: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn short(text: &str) -> &str {
    text.split(" at ").next().unwrap_or(text)
}

/// Waits for Ctrl-C / SIGTERM, reporting VMs that stop on their own.
fn stay_up(cluster: &mut VmCluster) {
    let mut reported = Vec::new();
    loop {
        if let Some(signal) = signals::wait_termination(Duration::from_secs(1)) {
            println!("signal {signal}: stopping the cluster");
            return;
        }
        if let Some(node) = cluster.exited_node()
            && !reported.contains(&node)
        {
            println!("{node}: qemu exited; the rest of the cluster stays up");
            reported.push(node);
        }
    }
}

fn down() -> Result<()> {
    let stopped = cluster::down_all(Duration::from_secs(15))?;
    if stopped.is_empty() {
        println!("no VM cluster was running");
    }
    for id in stopped {
        println!("cluster {id} stopped and removed");
    }
    Ok(())
}

fn exec(node: &str, command: &str) -> Result<()> {
    let (namespace, address) = cluster::find_node(node)?
        .with_context(|| format!("no running cluster has a node {node}"))?;
    let output = guest::exec(&namespace, address, command, Duration::from_secs(60))?;
    print!("{}", output.output);
    anyhow::ensure!(output.success(), "exit code {}", output.rc);
    Ok(())
}
