//! `shoal`: one binary for every part of the platform. Invoked through a symlink named
//! `fleetctl`, it behaves as `shoal fleetctl`.
use std::{ffi::OsString, path::Path};

use anyhow::Result;
use clap::Parser;
use shoal_control::cli::{Cli, Command};
use shoal_scheduler::cli::FleetctlArgs;

fn main() -> std::process::ExitCode {
    init_tracing();
    let args: Vec<OsString> = std::env::args_os().collect();
    let result = if invoked_as(&args, "fleetctl") {
        runtime().and_then(|rt| {
            rt.block_on(shoal_scheduler::cli::run_fleetctl(
                FleetctlArgs::parse_from(args),
            ))
        })
    } else {
        let cli = Cli::parse_from(args);
        runtime().and_then(|rt| rt.block_on(dispatch(cli.command)))
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn invoked_as(args: &[OsString], name: &str) -> bool {
    args.first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .is_some_and(|file| file == name)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(shoal_kv::runtime::multi_thread(None).build()?)
}

/// Logs go to stderr, filtered by `SHOAL_LOG` (default: info for shoal, warnings for the
/// chattier libraries).
fn init_tracing() {
    use std::io::IsTerminal;
    const DEFAULT_FILTER: &str = "info,openraft=warn,netlink_packet_route=error,h2=warn,tower=warn";
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Agent(args) => shoal_control::agent::run(args).await,
        Command::Kv(args) => shoal_kv::cli::run(args).await,
        Command::Flannel(args) => shoal_flannel::cli::run(args).await,
        Command::Fleetd(args) => shoal_scheduler::cli::run_fleetd(args).await,
        Command::Fleetctl(args) => shoal_scheduler::cli::run_fleetctl(args).await,
        Command::Run(args) => shoal_control::run::run(args).await,
        Command::Pki(args) => shoal_control::pki::run(args),
        Command::Install(args) => shoal_control::install::install(args).await,
        Command::Uninstall(args) => shoal_control::install::uninstall(args).await,
        Command::Version => {
            shoal_control::cli::print_version();
            Ok(())
        }
    }
}
