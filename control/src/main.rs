//! `shoal`: one binary for every part of the platform. Invoked through a symlink named
//! `fleetctl`, `fleetd` or `flannel` (the CNI plugin), it behaves as `shoal fleetctl`,
//! `shoal fleetd` or `shoal cni`.
use std::{ffi::OsString, path::Path};

use anyhow::Result;
use clap::Parser;
use shoal_control::cli::{Cli, Command};
use shoal_scheduler::cli::{FleetctlArgs, FleetdArgs, FleetdCommandLine, with_fleetd_flags};

/// The store's allocator (see kv/src/bin/shoal-kv.rs), for `shoal kv`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let command = if invoked_as(&args, "fleetctl") {
        Command::Fleetctl(FleetctlArgs::parse_from(args))
    } else if invoked_as(&args, "flannel") {
        Command::Cni
    } else if invoked_as(&args, "fleetd") {
        Command::Fleetd(Box::new(FleetdCommandLine::parse_go_style(args).args))
    } else {
        Cli::parse_from(with_fleetd_flags(args)).command
    };
    init_tracing(wants_debug(&command));
    let result = runtime().and_then(|rt| rt.block_on(dispatch(command)));
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

/// fleetd with fleet's `verbosity` above 0 logs at debug level.
fn wants_debug(command: &Command) -> bool {
    let fleetd_verbosity = |args: &FleetdArgs| args.to_config().map_or(0, |c| c.verbosity);
    matches!(command, Command::Fleetd(args) if fleetd_verbosity(args) > 0)
}

/// Logs go to stderr, filtered by `SHOAL_LOG` (default: info for shoal, or debug when asked,
/// warnings for the chattier libraries).
fn init_tracing(debug: bool) {
    use std::io::IsTerminal;
    const LIBRARIES: &str = "openraft=warn,netlink_packet_route=error,h2=warn,tower=warn";
    let level = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},{LIBRARIES}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Agent(args) => shoal_control::agent::run(args).await,
        Command::Kv(args) => shoal_kv::cli::run(*args).await,
        Command::Flannel(args) => shoal_flannel::cli::run(args).await,
        Command::Fleetd(args) => shoal_scheduler::cli::run_fleetd(*args).await,
        Command::Fleetctl(args) => shoal_scheduler::cli::run_fleetctl(args).await,
        Command::Cni => shoal_cni::run_as_plugin().map_err(Into::into),
        Command::MkDockerOpts(args) => shoal_flannel::mk_docker_opts::run(args).await,
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
