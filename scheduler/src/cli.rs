//! Command lines of `shoal fleetd` and `shoal fleetctl` (also reachable as a `fleetctl` symlink).
use clap::{Args, Parser, Subcommand};

/// Run fleet's daemon on this machine: agent and engine candidate.
#[derive(Debug, Clone, Args)]
pub struct FleetdArgs {
    /// Path to a fleet config file (fleet's option names).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

/// fleetctl: manage units across the cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "fleetctl")]
pub struct FleetctlArgs {
    /// etcd v3 endpoint(s) of the store, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2379", global = true)]
    pub endpoint: String,
    /// Key prefix of fleet's state in the store.
    #[arg(long, default_value = "/_coreos.com/fleet/", global = true)]
    pub etcd_key_prefix: String,
    #[command(subcommand)]
    pub command: FleetctlCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum FleetctlCommand {
    /// Upload unit files to the cluster without loading them.
    Submit { units: Vec<String> },
    /// Schedule units on machines without starting them.
    Load { units: Vec<String> },
    /// Start units, scheduling them first if needed.
    Start { units: Vec<String> },
    /// Stop running units.
    Stop { units: Vec<String> },
    /// Unschedule units from their machines.
    Unload { units: Vec<String> },
    /// Remove units from the cluster.
    Destroy { units: Vec<String> },
    /// Stop then start units.
    Restart { units: Vec<String> },
    /// Print a unit file.
    Cat { unit: String },
    /// Show a unit's status on its machine.
    Status { units: Vec<String> },
    /// Print a unit's output.
    Journal { unit: String },
    /// List the units in the cluster and their states.
    ListUnits,
    /// List the unit files in the cluster.
    ListUnitFiles,
    /// List the machines in the cluster.
    ListMachines,
}

pub async fn run_fleetd(_args: FleetdArgs) -> anyhow::Result<()> {
    anyhow::bail!("`shoal fleetd` is not implemented yet (issue #6: fleet)")
}

pub async fn run_fleetctl(args: FleetctlArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "`fleetctl {:?}` is not implemented yet (issue #6: fleet)",
        args.command
    )
}
