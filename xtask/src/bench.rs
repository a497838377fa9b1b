//! `cargo xtask bench <suite>`: build the benchmarks in release mode and run one suite.
use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::{run_cmd, workspace_root};

#[derive(Args)]
pub struct BenchArgs {
    /// The suite: net, kv, leases, fleet or watch.
    suite: String,
    /// Extra arguments for the suite.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    crate::setup::run()?;
    run_cmd(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args([
                "run",
                "--release",
                "--quiet",
                "--package",
                "shoal-bench",
                "--",
            ])
            .arg(&args.suite)
            .args(&args.args),
    )
}
