//! `cargo xtask <chore>`: the one place every chore of the project lives.
mod bench;
mod robustness;
mod setup;
mod steps;
mod test;
mod up;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Chore,
}

#[derive(Subcommand)]
enum Chore {
    /// Install everything the build, tests and benchmarks need (idempotent).
    Setup,
    /// Run every quality gate and test, as CI does.
    Test(test::TestArgs),
    /// The platform on this machine's network namespaces, no VMs (fast, for development).
    Up(up::UpArgs),
    /// Run a benchmark suite side by side with its reference; results in target/bench/.
    Bench(bench::BenchArgs),
    /// The consistency suite: random traffic under faults against shoal kv and etcd 3.4,
    /// checked for linearizability, watch and lease guarantees and equal replicas.
    Robustness(robustness::RobustnessArgs),
    /// Remove network namespaces and processes left behind by killed test runs.
    Sweep,
    /// Bring the platform up on its embedded defaults: a shoal cluster on qemu VMs (`down`
    /// stops it; see xtask/vm).
    VmCluster(vm::VmClusterArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Chore::Setup => setup::run(),
        Chore::Test(args) => test::run(args),
        Chore::Up(args) => up::run(args),
        Chore::Bench(args) => bench::run(args),
        Chore::Robustness(args) => robustness::run(args),
        Chore::VmCluster(args) => {
            setup::run()?;
            vm::run(args)
        }
        Chore::Sweep => {
            let removed = shoal_harness::sweep()?;
            println!("removed {removed} leftover namespace(s)");
            Ok(())
        }
    }
}

/// Root of the workspace (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Runs a command to completion, failing with the command line if it fails.
pub fn run_cmd(cmd: &mut std::process::Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|err| anyhow::anyhow!("starting {cmd:?}: {err}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}
