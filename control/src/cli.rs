//! The `shoal` command line. Each component owns its own flags (`shoal_kv::cli`,
//! `shoal_flannel::cli`, `shoal_scheduler::cli`, this crate's modules); this file only wires
//! them together.
use clap::{Parser, Subcommand};

/// shoal turns a set of Linux machines into a cluster: an etcd-compatible store, a flannel
/// overlay with an eBPF dataplane, and fleet.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the per-node daemon: store member or client, overlay, fleet agent and engine.
    Agent(crate::agent::AgentArgs),
    /// Run only the embedded etcd v3-compatible key-value store.
    Kv(Box<shoal_kv::cli::KvArgs>),
    /// Run only the overlay network (flanneld-compatible).
    Flannel(shoal_flannel::cli::FlannelArgs),
    /// Run only fleet's daemon (agent and engine candidate; boxed: its flags are many).
    Fleetd(Box<shoal_scheduler::cli::FleetdArgs>),
    /// Manage units across the cluster (fleetctl-compatible).
    Fleetctl(shoal_scheduler::cli::FleetctlArgs),
    /// Answer the CNI protocol as flannel's CNI plugin (also reachable as a `flannel` symlink
    /// in the CNI bin dir).
    Cni,
    /// Write Docker's daemon options from flannel's subnet.env (flannel's mk-docker-opts.sh).
    MkDockerOpts(shoal_flannel::mk_docker_opts::MkDockerOptsArgs),
    /// Run a command in a new container network namespace on the overlay.
    Run(crate::run::RunArgs),
    /// Create a cluster's CA and certificates (TLS for the store, its peers and its users).
    Pki(crate::pki::PkiArgs),
    /// Install shoal as a systemd service on this host.
    Install(crate::install::InstallArgs),
    /// Remove what `shoal install` put in place.
    Uninstall(crate::install::UninstallArgs),
    /// Print version and build information.
    Version,
}

/// Prints the version and what this binary carries.
pub fn print_version() {
    println!("shoal {}", env!("CARGO_PKG_VERSION"));
    println!(
        "dataplane eBPF object: {} bytes",
        shoal_dataplane::object_size()
    );
}
