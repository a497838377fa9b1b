//! Command lines of `shoal fleetd` and `shoal fleetctl` (also reachable as a `fleetctl` symlink).
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser};
use shoal_store_client::{StoreConfig, TlsFiles};

pub use crate::fleetctl::{BlockArgs, FleetctlCommand, TableArgs};
use crate::{config::FleetConfig, fleetctl};

/// Run fleet's daemon on this machine: agent and engine candidate.
#[derive(Debug, Clone, Default, Args)]
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
    /// CA file that signs the store's certificate (TLS).
    #[arg(long)]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate file, for a store that checks clients (with `--etcd-keyfile`).
    #[arg(long)]
    pub etcd_certfile: Option<PathBuf>,
    /// Key file of the client certificate.
    #[arg(long)]
    pub etcd_keyfile: Option<PathBuf>,
    /// Store user (etcd auth).
    #[arg(long)]
    pub etcd_username: Option<String>,
    /// Password of the store user.
    #[arg(long)]
    pub etcd_password: Option<String>,
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
            ("etcd_cafile", path_text(self.etcd_cafile.as_ref())),
            ("etcd_certfile", path_text(self.etcd_certfile.as_ref())),
            ("etcd_keyfile", path_text(self.etcd_keyfile.as_ref())),
            ("etcd_username", self.etcd_username.clone()),
            ("etcd_password", self.etcd_password.clone()),
            ("machine_id", self.machine_id.clone()),
            ("data_dir", path_text(self.data_dir.as_ref())),
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

fn path_text(path: Option<&PathBuf>) -> Option<String> {
    path.map(|path| path.display().to_string())
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
    /// Location of the TLS CA file that signs the store's certificate.
    #[arg(long, env = "FLEETCTL_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Location of the TLS client certificate, for a store that checks clients.
    #[arg(long, env = "FLEETCTL_CERT_FILE", global = true)]
    pub cert_file: Option<PathBuf>,
    /// Location of the TLS client certificate's key.
    #[arg(long, env = "FLEETCTL_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
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
    let store = args.store_config()?;
    fleetctl::run_with(&store, &args.etcd_key_prefix, args.command).await
}

impl FleetctlArgs {
    /// The store fleetctl talks to: `--endpoint`, `--request-timeout` and the TLS files.
    pub fn store_config(&self) -> anyhow::Result<StoreConfig> {
        let timeout = Duration::from_secs_f64(self.request_timeout.max(0.1));
        let endpoints = self
            .endpoint
            .split(',')
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
            .map(String::from);
        let mut store = StoreConfig::new(endpoints).with_timeout(timeout);
        if self.cert_file.is_some() != self.key_file.is_some() {
            anyhow::bail!("--cert-file and --key-file go together");
        }
        store.tls = TlsFiles::given(
            self.ca_file.clone(),
            self.cert_file.clone(),
            self.key_file.clone(),
        );
        Ok(store)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleetctl_tls_flags_reach_the_store_config() {
        let args = FleetctlArgs::parse_from([
            "fleetctl",
            "--endpoint",
            "10.0.0.1:2379,https://10.0.0.2:2379",
            "--ca-file",
            "/ca.pem",
            "--cert-file",
            "/client.pem",
            "--key-file",
            "/client-key.pem",
            "list-machines",
        ]);
        let store = args.store_config().expect("valid flags");
        assert_eq!(
            store.tls,
            Some(TlsFiles {
                ca: Some("/ca.pem".into()),
                cert: Some("/client.pem".into()),
                key: Some("/client-key.pem".into()),
            })
        );
        assert_eq!(store.timeout, Duration::from_secs(3));
        let urls: Vec<String> = store
            .parsed_endpoints()
            .expect("valid endpoints")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(urls, ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]);
        let half = FleetctlArgs::parse_from(["fleetctl", "--cert-file", "/c.pem", "list-units"]);
        assert!(
            half.store_config().is_err(),
            "a certificate without its key"
        );
    }

    #[test]
    fn fleetd_tls_flags_override_the_config() {
        let args = FleetdArgs {
            etcd_cafile: Some("/ca.pem".into()),
            etcd_username: Some("fleet".into()),
            ..FleetdArgs::default()
        };
        let config = args.to_config().expect("valid");
        assert_eq!(config.etcd_cafile, Some(PathBuf::from("/ca.pem")));
        let store = config.store_config();
        assert_eq!(store.tls.and_then(|tls| tls.ca), Some("/ca.pem".into()));
        assert_eq!(store.credentials.map(|c| c.user).as_deref(), Some("fleet"));
    }
}
