//! fleet alone (`shoal-fleet fleetd|fleetctl ...`), the same code as `shoal fleetd` and
//! `shoal fleetctl`, for tests that run and kill fleetd as processes in harness namespaces.
use clap::{Parser, Subcommand};
use shoal_scheduler::cli::{FleetctlArgs, FleetdArgs, run_fleetctl, run_fleetd, with_fleetd_flags};

#[derive(Parser)]
#[command(name = "shoal-fleet")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run fleet's daemon on this machine (boxed, as fleetctl: their flags are many).
    Fleetd(Box<FleetdArgs>),
    /// Manage units across the cluster.
    Fleetctl(Box<FleetctlArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(with_fleetd_flags(std::env::args_os().collect()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Fleetd(args) => run_fleetd(*args).await,
            Command::Fleetctl(args) => run_fleetctl(*args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
