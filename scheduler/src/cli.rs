//! Command lines of `shoal fleetd` and `shoal fleetctl` (also reachable as a `fleetctl` symlink).
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser};

pub use crate::fleetctl::{BlockArgs, FleetctlCommand, TableArgs};
use crate::{config::FleetConfig, fleetctl};

/// Run fleet's daemon on this machine: agent and engine candidate.
#[derive(Debug, Clone, Args)]
pub struct FleetdArgs {
    /// Path to a fleet config file (fleet's option names, `key=value` lines).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// etcd v3 endpoints of the store, comma-separated.
    #[arg(long)]
    pub etcd_servers: Option<String>,
    /// Key prefix of fleet's state in the store.
    #[arg(long)]
    pub etcd_key_prefix: Option<String>,
    /// This machine's metadata, `key=value,key=value`.
    #[arg(long)]
    pub metadata: Option<String>,
    /// Address other machines reach this one at (default: the route to the store).
    #[arg(long)]
    pub public_ip: Option<String>,
    /// Heartbeat TTL: a machine silent this long is considered gone (e.g. `30s`).
    #[arg(long)]
    pub agent_ttl: Option<String>,
    /// Seconds between the engine's full reconciliations (besides event-driven ones).
    #[arg(long)]
    pub engine_reconcile_interval: Option<String>,
    /// Store request timeout (e.g. `3s`).
    #[arg(long)]
    pub etcd_request_timeout: Option<String>,
    /// Machine ID (32 hex characters; default /etc/machine-id or a generated one).
    #[arg(long)]
    pub machine_id: Option<String>,
    /// Where the agent keeps its state and unit output.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Run only the agent, never the engine.
    #[arg(long)]
    pub disable_engine: bool,
    /// `auto`, `systemd` or `supervisor`.
    #[arg(long)]
    pub unit_runtime: Option<String>,
}

impl FleetdArgs {
    /// The config file (if any) with the flags applied on top.
    pub fn to_config(&self) -> anyhow::Result<FleetConfig> {
        let mut config = match &self.config {
            Some(path) => FleetConfig::from_conf_file(path)?,
            None => FleetConfig::default(),
        };
        let flags = [
            ("etcd_servers", self.etcd_servers.clone()),
            ("etcd_key_prefix", self.etcd_key_prefix.clone()),
            ("metadata", self.metadata.clone()),
            ("public_ip", self.public_ip.clone()),
            ("agent_ttl", self.agent_ttl.clone()),
            (
                "engine_reconcile_interval",
                self.engine_reconcile_interval.clone(),
            ),
            ("etcd_request_timeout", self.etcd_request_timeout.clone()),
            ("machine_id", self.machine_id.clone()),
            (
                "data_dir",
                self.data_dir.as_ref().map(|p| p.display().to_string()),
            ),
            ("unit_runtime", self.unit_runtime.clone()),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                config
                    .set(key, &value)
                    .with_context(|| format!("flag --{}", key.replace('_', "-")))?;
            }
        }
        config.disable_engine |= self.disable_engine;
        config.validate()?;
        Ok(config)
    }
}

/// fleetctl: manage units across the cluster.
#[derive(Debug, Clone, Parser)]
#[command(name = "fleetctl")]
pub struct FleetctlArgs {
    /// etcd v3 endpoint(s) of the store, comma-separated.
    #[arg(
        long,
        default_value = "http://127.0.0.1:2379",
        env = "FLEETCTL_ENDPOINT",
        global = true
    )]
    pub endpoint: String,
    /// Key prefix of fleet's state in the store.
    #[arg(
        long,
        default_value = "/_coreos.com/fleet/",
        env = "FLEETCTL_ETCD_KEY_PREFIX",
        global = true
    )]
    pub etcd_key_prefix: String,
    /// Seconds to wait for each store request.
    #[arg(long, default_value_t = 3.0, global = true)]
    pub request_timeout: f64,
    #[command(subcommand)]
    pub command: FleetctlCommand,
}

pub async fn run_fleetd(args: FleetdArgs) -> anyhow::Result<()> {
    init_tracing();
    let config = args.to_config()?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("fleetd: shutting down; units keep running and will be adopted");
        let _ = stop.send(true);
    });
    crate::Fleetd::run(config, shutdown).await?;
    Ok(())
}

pub async fn run_fleetctl(args: FleetctlArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(args.request_timeout.max(0.1));
    let endpoints: Vec<String> = args
        .endpoint
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    fleetctl::run(&endpoints, &args.etcd_key_prefix, timeout, args.command).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
