//! `cargo xtask robustness`: rounds of random traffic under faults against a 3-member shoal kv
//! cluster, a real etcd 3.4 cluster (the control), or both, every round checked for
//! linearizability, watch and lease guarantees and equal replicas (see kv/robustness). Reports
//! in `target/robustness/<store>-<unix time>.{json,txt}`; fails when a run fails.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use shoal_harness::StoreKind;
use shoal_robustness::faults::Fault;
use shoal_robustness::report::RunReport;
use shoal_robustness::runner::{self, RunConfig};

use crate::workspace_root;

#[derive(Args)]
pub struct RobustnessArgs {
    /// Which store to run against.
    #[arg(long, value_enum, default_value_t = Store::Both)]
    store: Store,
    /// Rounds per store (hours of rounds for the long form).
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Seconds of traffic per round.
    #[arg(long, default_value_t = 10)]
    round_seconds: u64,
    /// Faults, one per round in turn (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = Fault::ALL.map(|f| f.name().to_string()))]
    faults: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Seed of the traffic's randomness.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Store {
    Shoal,
    Etcd,
    Both,
}

impl Store {
    fn kinds(self) -> Vec<StoreKind> {
        match self {
            Store::Shoal => vec![StoreKind::ShoalKv],
            Store::Etcd => vec![StoreKind::Etcd],
            Store::Both => vec![StoreKind::ShoalKv, StoreKind::Etcd],
        }
    }
}

pub fn run(args: RobustnessArgs) -> Result<()> {
    let faults = args
        .faults
        .iter()
        .map(|name| name.parse::<Fault>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut failed = Vec::new();
    for kind in args.store.kinds() {
        let mut config = RunConfig::new(
            kind,
            args.rounds,
            Duration::from_secs(args.round_seconds),
            &faults,
        );
        config.shape.clients = args.clients;
        config.seed = args.seed;
        let report = runtime.block_on(runner::run(&config));
        write(&report, kind)?;
        if !report.passed() {
            failed.push(kind.name());
        }
    }
    if !failed.is_empty() {
        bail!("the robustness suite failed against {}", failed.join(" and "));
    }
    Ok(())
}

/// Prints the report's table and writes it under target/robustness/.
fn write(report: &RunReport, kind: StoreKind) -> Result<()> {
    let name = match kind {
        StoreKind::ShoalKv => "shoal",
        StoreKind::Etcd => "etcd",
    };
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let dir = workspace_root().join("target/robustness");
    let (json, text) = report.write(&dir, &format!("{name}-{stamp}"))?;
    println!("{}", report.table());
    println!("report: {} and {}", json.display(), text.display());
    Ok(())
}
