//! fleetctl's subcommands and their shared flags, as clap parses them.

use clap::{Args, Subcommand};

/// `--no-block` and `--block-attempts`.
#[derive(Debug, Clone, Args)]
pub struct BlockArgs {
    /// Return as soon as the desired state is recorded.
    #[arg(long)]
    pub no_block: bool,
    /// How many times to check (every 500 ms) that units reached the state; 0 waits forever.
    #[arg(long, default_value_t = 0)]
    pub block_attempts: u32,
}

/// `--full`, `--no-legend`, `--fields`.
#[derive(Debug, Clone, Args)]
pub struct TableArgs {
    /// Do not truncate IDs and hashes.
    #[arg(long)]
    pub full: bool,
    /// Do not print the header line.
    #[arg(long)]
    pub no_legend: bool,
    /// Columns to print, comma-separated.
    #[arg(long)]
    pub fields: Option<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum FleetctlCommand {
    /// Upload unit files to the cluster without loading them.
    Submit {
        #[arg(required = true)]
        units: Vec<String>,
        /// Replace units that exist with different contents.
        #[arg(long)]
        replace: bool,
    },
    /// Schedule units on machines without starting them.
    Load {
        #[arg(required = true)]
        units: Vec<String>,
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        block: BlockArgs,
    },
    /// Start units, submitting and scheduling them first if needed.
    Start {
        #[arg(required = true)]
        units: Vec<String>,
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        block: BlockArgs,
    },
    /// Stop running units.
    Stop {
        #[arg(required = true)]
        units: Vec<String>,
        #[command(flatten)]
        block: BlockArgs,
    },
    /// Unschedule units from their machines.
    Unload {
        #[arg(required = true)]
        units: Vec<String>,
        #[command(flatten)]
        block: BlockArgs,
    },
    /// Remove units from the cluster.
    Destroy {
        #[arg(required = true)]
        units: Vec<String>,
    },
    /// Stop then start units.
    Restart {
        #[arg(required = true)]
        units: Vec<String>,
        #[command(flatten)]
        block: BlockArgs,
    },
    /// Print a unit file.
    Cat { unit: String },
    /// Show a unit's status on its machine(s).
    Status {
        #[arg(required = true)]
        units: Vec<String>,
        /// Output lines to show.
        #[arg(long, default_value_t = 10)]
        lines: usize,
    },
    /// Print a unit's output.
    Journal {
        unit: String,
        /// Number of recent lines to show.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: usize,
        /// Keep printing new output.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// List the units in the cluster and their states.
    ListUnits {
        #[command(flatten)]
        table: TableArgs,
    },
    /// List the unit files in the cluster.
    ListUnitFiles {
        #[command(flatten)]
        table: TableArgs,
    },
    /// List the machines in the cluster.
    ListMachines {
        #[command(flatten)]
        table: TableArgs,
        /// Show full machine IDs (same as --full).
        #[arg(short = 'l', hide = true)]
        long: bool,
    },
}
