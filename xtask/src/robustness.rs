//! `cargo xtask robustness`: rounds of random traffic under faults against a 3-member shoal kv
//! cluster, a real etcd 3.4 cluster (the control), or both, every round checked for
//! linearizability, watch and lease guarantees and equal replicas (see kv/robustness). Reports
//! in `target/robustness/<store>-<unix time>.{json,txt}`; fails when a run fails.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use shoal_harness::StoreKind;
use shoal_robustness::faults;
use shoal_robustness::linearizability::{Budget, Verdict};
use shoal_robustness::report::{self, RunReport};
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
    /// Faults, one per round in turn (comma-separated; `a+b` for two at once): none,
    /// kill-leader, kill-follower, kill-all, stop-leader, stop-follower, partition-leader,
    /// partition-follower, drop-leader-to-follower, drop-follower-to-leader, wipe-follower,
    /// blackhole-follower, membership-change, failpoint-append-leader,
    /// failpoint-append-follower, failpoint-fsync-slow-leader, failpoint-fsync-follower,
    /// failpoint-snapshot-build, failpoint-snapshot-install, failpoint-purge,
    /// power-loss-at-append-leader, power-loss-leader, power-loss-follower, power-loss-all.
    /// Failpoints and power loss apply to shoal kv only.
    #[arg(long, value_delimiter = ',', default_values_t = faults::DEFAULT.map(String::from))]
    faults: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Seed of the traffic's randomness.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The control experiment: shoal kv acknowledging writes it never synced (the
    /// `raftlog::skip_fsync` failpoint on every member) and a power loss of all members each
    /// round. Succeeds only if the suite finds the violation (lost acknowledged writes).
    #[arg(long, conflicts_with_all = ["store", "faults"])]
    broken: bool,
    /// Keeps every round's history in the report, not only the failed rounds'.
    #[arg(long)]
    keep_histories: bool,
    /// Runs no traffic: checks again the linearizability of the histories a saved report kept
    /// (its failed rounds', or every round's with `--keep-histories`), and prints each round's
    /// verdict and the checker's cost.
    #[arg(long, value_name = "REPORT.json", conflicts_with_all = ["store", "faults", "broken"])]
    recheck: Option<PathBuf>,
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
    // Progress (a line per round) on stderr; SHOAL_LOG filters it.
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(path) = &args.recheck {
        return recheck(path);
    }
    for name in &args.faults {
        faults::parse(name).map_err(anyhow::Error::msg)?;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let round = Duration::from_secs(args.round_seconds);
    if args.broken {
        let mut config = RunConfig::broken(args.rounds, round);
        config.shape.clients = args.clients;
        config.seed = args.seed;
        config.keep_histories = args.keep_histories;
        let report = runtime.block_on(runner::run(&config))?;
        write(&report, "broken")?;
        if !report.violated() {
            bail!("the broken build (no fsync, power loss) passed the suite: the suite missed it");
        }
        println!("the broken build failed the suite, as it must");
        return Ok(());
    }
    let faults: Vec<&str> = args.faults.iter().map(String::as_str).collect();
    let mut failed = Vec::new();
    for kind in args.store.kinds() {
        let mut config = RunConfig::new(kind, args.rounds, round, &faults);
        config.shape.clients = args.clients;
        config.seed = args.seed;
        config.keep_histories = args.keep_histories;
        let report = runtime.block_on(runner::run(&config))?;
        let name = match kind {
            StoreKind::ShoalKv => "shoal",
            StoreKind::Etcd => "etcd",
        };
        write(&report, name)?;
        if !report.passed() {
            failed.push(kind.name());
        }
    }
    if !failed.is_empty() {
        bail!(
            "the robustness suite failed against {}",
            failed.join(" and ")
        );
    }
    Ok(())
}

/// Checks again the histories the report at `path` kept; fails if one is not linearizable.
fn recheck(path: &Path) -> Result<()> {
    let json = std::fs::read_to_string(path)?;
    let rounds = report::saved_rounds(&json)?;
    if rounds.is_empty() {
        println!("{} kept no history (every round passed)", path.display());
    }
    let mut violated = false;
    for saved in rounds {
        let (settled, checked) = runner::check_linearizability(&saved.history, Budget::default());
        println!(
            "round {} {}: {} operations, {:?} in {:.2} s ({} partitions; settled {:?})",
            saved.round,
            saved.fault,
            saved.history.operations.len(),
            checked.verdict,
            checked.seconds,
            checked.partitions,
            settled,
        );
        if let Some(hardest) = &checked.hardest {
            println!("  hardest partition: {hardest:?}");
        }
        for failure in &checked.failures {
            println!(
                "  {:?} {:?}: {}",
                failure.verdict, failure.items, failure.detail
            );
        }
        violated |= checked.verdict == Verdict::NotLinearizable;
    }
    if violated {
        bail!("a history is not linearizable");
    }
    Ok(())
}

/// Prints the report's table and writes it under target/robustness/.
fn write(report: &RunReport, name: &str) -> Result<()> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let dir = workspace_root().join("target/robustness");
    let (json, text) = report.write(&dir, &format!("{name}-{stamp}"))?;
    println!("{}", report.table());
    println!("report: {} and {}", json.display(), text.display());
    Ok(())
}
