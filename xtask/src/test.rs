//! `cargo xtask test`: what CI runs. Setup, then the quality gates, then every test (with
//! cargo-nextest, which the machine image ships and `cargo xtask setup` installs if missing).
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

use crate::{run_cmd, steps::Steps, workspace_root};

#[derive(Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and clippy (for a quick local loop).
    #[arg(long)]
    no_lints: bool,
    /// Extra arguments for `cargo nextest run` (e.g. a test name filter).
    #[arg(last = true)]
    nextest_args: Vec<String>,
}

pub fn run(args: TestArgs) -> Result<()> {
    ensure_root()?;
    crate::setup::run()?;
    let steps = Steps::new("test")?;
    let root = workspace_root();
    let cargo = || {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root);
        cmd
    };
    if !args.no_lints {
        steps.run(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--check"]),
        )?;
        steps.run(
            "cargo clippy, warnings denied",
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        steps.run(
            "cargo doc, warnings denied",
            cargo()
                .args([
                    "doc",
                    "--workspace",
                    "--no-deps",
                    "--exclude",
                    "shoal-dataplane-ebpf",
                ])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )?;
    }
    // The VM tests (vm-tests/) run the release build of shoal in their guests: built here,
    // outside the tests' time limits, when they will run (with a filter, the first VM test
    // selected builds it).
    match shoal_vm::host::vm_tests_skip_reason() {
        None if args.nextest_args.is_empty() => steps.run(
            "building shoal (release) for the VM tests",
            cargo().args([
                "build",
                "--release",
                "-p",
                "shoal-control",
                "--bin",
                "shoal",
            ]),
        )?,
        None => {}
        Some(reason) => steps.skip(&format!("the VM tests will skip: {reason}")),
    }
    // The container tests import images built from Debian's packages: built here (minutes
    // the first time), outside the tests' time limits, or found in target/images.
    steps.timed(
        "building the container images (cached in target/images)",
        || {
            for recipe in shoal_harness::images::ALL {
                shoal_harness::images::rootfs(&recipe)?;
            }
            Ok(())
        },
    )?;
    steps.run(
        "building the tests",
        cargo()
            .args(["nextest", "run", "--workspace", "--no-run"])
            .args(&args.nextest_args),
    )?;
    // Every test in its own process, retried and time-limited as .config/nextest.toml says.
    // The harness sweeps namespaces left by killed runs before every cluster it builds.
    run_cmd(
        cargo()
            .args(["nextest", "run", "--workspace"])
            .args(&args.nextest_args),
    )?;
    // nextest does not run doctests.
    steps.run("doctests", cargo().args(["test", "--workspace", "--doc"]))
}

/// The integration tests build network namespaces and load eBPF programs; setup installs
/// Debian packages. Both need root, and failing here is clearer than in the middle of a run.
fn ensure_root() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    anyhow::ensure!(
        uid == 0,
        "cargo xtask test needs root (namespaces, eBPF, apt); \
         the unit tests run without it: cargo nextest run --workspace --lib"
    );
    Ok(())
}
