//! Command lines of `shoal fleetd` and `shoal fleetctl` (also reachable as a `fleetctl` symlink).
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, Parser};
use shoal_store_client::{Credentials, StoreConfig, TlsFiles};

pub use crate::fleetctl::{BlockArgs, FleetctlCommand, TableArgs};
use crate::{
    config::{DEFAULT_CONFIG_FILE, FleetConfig},
    fleetctl,
};

/// Run fleet's daemon on this machine: agent and engine candidate.
///
/// Takes fleet's own spellings: `--etcd_servers`, `-etcd_servers=...` (see [`go_style_flags`])
/// and `--etcd-servers` alike; each option also comes from `FLEET_<NAME>` in the environment and
/// from the config file (`--config`, else /etc/fleet/fleet.conf when it exists). A flag wins
/// over the environment, which wins over the file.
#[derive(Debug, Clone, Default, Args)]
pub struct FleetdArgs {
    /// Path to a fleet config file (fleet's option names, `key=value` lines); default
    /// /etc/fleet/fleet.conf when it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// etcd v3 endpoints of the store, comma-separated.
    #[arg(long, alias = "etcd_servers", env = "FLEET_ETCD_SERVERS")]
    pub etcd_servers: Option<String>,
    /// Key prefix of fleet's state in the store.
    #[arg(long, alias = "etcd_key_prefix", env = "FLEET_ETCD_KEY_PREFIX")]
    pub etcd_key_prefix: Option<String>,
    /// This machine's metadata, `key=value,key=value`.
    #[arg(long, env = "FLEET_METADATA")]
    pub metadata: Option<String>,
    /// Address other machines reach this one at (default: the route to the store).
    #[arg(long, alias = "public_ip", env = "FLEET_PUBLIC_IP")]
    pub public_ip: Option<String>,
    /// Heartbeat TTL: a machine silent this long is considered gone (e.g. `30s`).
    #[arg(long, alias = "agent_ttl", env = "FLEET_AGENT_TTL")]
    pub agent_ttl: Option<String>,
    /// Seconds between the engine's full reconciliations (besides event-driven ones).
    #[arg(
        long,
        alias = "engine_reconcile_interval",
        env = "FLEET_ENGINE_RECONCILE_INTERVAL"
    )]
    pub engine_reconcile_interval: Option<String>,
    /// Store request timeout (e.g. `3s`).
    #[arg(
        long,
        alias = "etcd_request_timeout",
        env = "FLEET_ETCD_REQUEST_TIMEOUT"
    )]
    pub etcd_request_timeout: Option<String>,
    /// CA file that signs the store's certificate (TLS).
    #[arg(long, alias = "etcd_cafile", env = "FLEET_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate file, for a store that checks clients (with `--etcd-keyfile`).
    #[arg(long, alias = "etcd_certfile", env = "FLEET_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Key file of the client certificate.
    #[arg(long, alias = "etcd_keyfile", env = "FLEET_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// Store user (etcd auth).
    #[arg(long, alias = "etcd_username", env = "FLEET_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// Password of the store user.
    #[arg(
        long,
        alias = "etcd_password",
        env = "FLEET_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
    /// Machine ID (32 hex characters; default /etc/machine-id or a generated one).
    #[arg(long, alias = "machine_id", env = "FLEET_MACHINE_ID")]
    pub machine_id: Option<String>,
    /// Where the agent keeps its state and unit output.
    #[arg(long, alias = "data_dir", env = "FLEET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run only the agent, never the engine (`--disable-engine` or `--disable-engine=BOOL`).
    #[arg(
        long,
        alias = "disable_engine",
        env = "FLEET_DISABLE_ENGINE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub disable_engine: Option<String>,
    /// `auto`, `systemd` or `supervisor`.
    #[arg(long, alias = "unit_runtime", env = "FLEET_UNIT_RUNTIME")]
    pub unit_runtime: Option<String>,
    /// Logging level: above 0, debug logs.
    #[arg(long, env = "FLEET_VERBOSITY")]
    pub verbosity: Option<String>,
    /// Where the systemd runtime writes unit files.
    #[arg(long, alias = "units_directory", env = "FLEET_UNITS_DIRECTORY")]
    pub units_directory: Option<PathBuf>,
    /// Run units with `systemd --user` (not supported: only `false` is accepted).
    #[arg(
        long,
        alias = "systemd_user",
        env = "FLEET_SYSTEMD_USER",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub systemd_user: Option<String>,
    /// fleet's API page size (no effect: shoal has no fleet API).
    #[arg(long, alias = "token_limit", env = "FLEET_TOKEN_LIMIT")]
    pub token_limit: Option<String>,
    /// fleet's gRPC between engine and agent (no effect: they talk through the store).
    #[arg(
        long,
        alias = "enable_grpc",
        env = "FLEET_ENABLE_GRPC",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub enable_grpc: Option<String>,
    /// Poll instead of watching the store (no effect: shoal always watches).
    #[arg(
        long,
        alias = "disable_watches",
        env = "FLEET_DISABLE_WATCHES",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub disable_watches: Option<String>,
    /// Deprecated in fleet and ignored there, as here.
    #[arg(
        long,
        alias = "verify_units",
        env = "FLEET_VERIFY_UNITS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub verify_units: Option<String>,
    /// Deprecated in fleet and ignored there, as here.
    #[arg(
        long,
        alias = "authorized_keys_file",
        env = "FLEET_AUTHORIZED_KEYS_FILE"
    )]
    pub authorized_keys_file: Option<String>,
}

impl FleetdArgs {
    /// The config file (the one named, else fleet's default when it exists) with the flags and
    /// `FLEET_*` variables applied on top.
    pub fn to_config(&self) -> anyhow::Result<FleetConfig> {
        let mut config = match self.config_file(Path::new(DEFAULT_CONFIG_FILE)) {
            Some(path) => FleetConfig::from_conf_file(&path)?,
            None => FleetConfig::default(),
        };
        for (key, value) in self.options() {
            // fleet treats an empty value as the option's default.
            if let Some(value) = value.filter(|value| !value.is_empty()) {
                config
                    .set(key, &value)
                    .with_context(|| format!("flag --{key} (or FLEET_{})", key.to_uppercase()))?;
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// The config file to read: the one named, else `default` when it exists.
    fn config_file(&self, default: &Path) -> Option<PathBuf> {
        match &self.config {
            Some(path) => Some(path.clone()),
            None => default.is_file().then(|| default.to_path_buf()),
        }
    }

    /// Each option under its fleet name, with the value given by flag or environment.
    fn options(&self) -> [(&'static str, Option<String>); 24] {
        [
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
            ("disable_engine", self.disable_engine.clone()),
            ("unit_runtime", self.unit_runtime.clone()),
            ("verbosity", self.verbosity.clone()),
            ("units_directory", path_text(self.units_directory.as_ref())),
            ("systemd_user", self.systemd_user.clone()),
            ("token_limit", self.token_limit.clone()),
            ("enable_grpc", self.enable_grpc.clone()),
            ("disable_watches", self.disable_watches.clone()),
            ("verify_units", self.verify_units.clone()),
            ("authorized_keys_file", self.authorized_keys_file.clone()),
        ]
    }
}

/// Go's flag package takes `-name`, `-name=value` and `--name` alike; fleet's units wrote
/// `fleetd -etcd_servers=...`. Rewrites single-dash long options into clap's `--name`, up to a
/// `--` (single letters such as `-h` stay as they are).
pub fn go_style_flags<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut rewritten = Vec::new();
    let mut options_ended = false;
    for arg in args {
        let long = arg
            .to_str()
            .and_then(|text| text.strip_prefix('-'))
            .filter(|name| is_long_name(name.split('=').next().unwrap_or_default()));
        match long {
            Some(name) if !options_ended => rewritten.push(OsString::from(format!("--{name}"))),
            _ => {
                options_ended |= arg == "--";
                rewritten.push(arg);
            }
        }
    }
    rewritten
}

/// The command line of a `shoal` or `shoal-fleet` binary with fleetd's options in Go's style
/// rewritten (after a `fleetd` subcommand; every other command line is left as it is).
pub fn with_fleetd_flags(args: Vec<OsString>) -> Vec<OsString> {
    if args.get(1).is_none_or(|command| command != "fleetd") {
        return args;
    }
    let mut args = args.into_iter();
    let head: Vec<OsString> = args.by_ref().take(2).collect();
    head.into_iter().chain(go_style_flags(args)).collect()
}

/// fleetd invoked under its own name (a `fleetd` symlink to shoal, as CoreOS's fleet.service
/// ran `/usr/bin/fleetd`): the whole command line is fleetd's.
#[derive(Debug, Parser)]
#[command(name = "fleetd")]
pub struct FleetdCommandLine {
    #[command(flatten)]
    pub args: FleetdArgs,
}

impl FleetdCommandLine {
    /// Parses a Go-style fleetd command line (`-etcd_servers=...`).
    pub fn parse_go_style(args: Vec<OsString>) -> Self {
        let mut args = args.into_iter();
        let program: Vec<OsString> = args.by_ref().take(1).collect();
        Self::parse_from(program.into_iter().chain(go_style_flags(args)))
    }
}

/// A word of two or more characters starting with a letter: a Go long option's name.
fn is_long_name(name: &str) -> bool {
    name.len() > 1 && name.starts_with(|c: char| c.is_ascii_alphabetic())
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
    #[arg(
        long,
        default_value_t = 3.0,
        env = "FLEETCTL_REQUEST_TIMEOUT",
        global = true
    )]
    pub request_timeout: f64,
    /// Location of the TLS CA file that signs the store's certificate.
    #[arg(long, alias = "etcd-cafile", env = "FLEETCTL_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Location of the TLS client certificate, for a store that checks clients.
    #[arg(
        long,
        alias = "etcd-certfile",
        env = "FLEETCTL_CERT_FILE",
        global = true
    )]
    pub cert_file: Option<PathBuf>,
    /// Location of the TLS client certificate's key.
    #[arg(long, alias = "etcd-keyfile", env = "FLEETCTL_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// Store user, for a store with etcd auth enabled (fleetd's `etcd_username`).
    #[arg(long, env = "FLEETCTL_ETCD_USERNAME", global = true)]
    pub etcd_username: Option<String>,
    /// Password of the store user.
    #[arg(
        long,
        env = "FLEETCTL_ETCD_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub etcd_password: Option<String>,
    #[command(subcommand)]
    pub command: FleetctlCommand,
}

pub async fn run_fleetd(args: FleetdArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    init_tracing(config.verbosity);
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
    /// The store fleetctl talks to: `--endpoint`, `--request-timeout`, the TLS files and the
    /// store user.
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
        match (&self.etcd_username, &self.etcd_password) {
            (Some(user), password) => {
                store = store.with_credentials(Credentials {
                    user: user.clone(),
                    password: password.clone().unwrap_or_default(),
                })
            }
            (None, Some(_)) => anyhow::bail!("--etcd-password needs --etcd-username"),
            (None, None) => {}
        }
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

/// Logs to stderr at `RUST_LOG`, else info (debug when fleet's `verbosity` is above 0). A
/// subscriber already in place (the `shoal` binary's) is kept.
fn init_tracing(verbosity: u32) {
    let level = if verbosity > 0 { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
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

    fn strings(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn go_style_single_dash_options_become_long_options() {
        let args = go_style_flags(strings(&[
            "-etcd_servers=http://10.0.0.1:2379",
            "-public_ip",
            "10.0.0.5",
            "--metadata=rack=r1",
            "-h",
            "-1",
            "--",
            "-after_the_end",
        ]));
        assert_eq!(
            args,
            strings(&[
                "--etcd_servers=http://10.0.0.1:2379",
                "--public_ip",
                "10.0.0.5",
                "--metadata=rack=r1",
                "-h",
                "-1",
                "--",
                "-after_the_end",
            ])
        );
        let untouched = strings(&["shoal", "fleetctl", "-endpoint"]);
        assert_eq!(with_fleetd_flags(untouched.clone()), untouched);
        assert_eq!(
            with_fleetd_flags(strings(&["shoal", "fleetd", "-agent_ttl=5s"])),
            strings(&["shoal", "fleetd", "--agent_ttl=5s"])
        );
    }

    #[test]
    fn fleet_1_0_command_line_sets_every_option() {
        let line = FleetdCommandLine::parse_go_style(strings(&[
            "fleetd",
            "-etcd_servers=http://10.0.0.1:2379,http://10.0.0.2:2379",
            "-etcd_key_prefix=/fleet/",
            "--public_ip",
            "10.0.0.5",
            "-metadata=region=eu,rack=r2",
            "-agent_ttl=10s",
            "-engine_reconcile_interval=0.5",
            "-etcd_request_timeout=2",
            "-etcd_cafile=/ca.pem",
            "-etcd_certfile=/c.pem",
            "-etcd_keyfile=/k.pem",
            "-etcd_username=fleet",
            "-etcd_password=secret",
            "-verbosity=1",
            "-units_directory=/run/units",
            "-disable_engine",
            "-systemd_user=false",
            "-enable_grpc=true",
            "-token_limit=100",
        ]));
        let config = line.args.to_config().expect("valid");
        assert_eq!(
            config.etcd_servers,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(config.etcd_key_prefix, "/fleet/");
        assert_eq!(config.public_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(config.metadata.get("rack").map(String::as_str), Some("r2"));
        assert_eq!(config.agent_ttl, Duration::from_secs(10));
        assert_eq!(config.engine_reconcile_interval, Duration::from_millis(500));
        assert_eq!(config.etcd_request_timeout, Duration::from_secs(2));
        assert_eq!(config.verbosity, 1);
        assert_eq!(config.units_directory, PathBuf::from("/run/units"));
        assert!(config.disable_engine);
        assert_eq!(
            config.without_effect,
            ["enable_grpc"],
            "token_limit=100 is fleet's default"
        );
        let store = config.store_config();
        assert_eq!(
            store.credentials,
            Some(Credentials {
                user: "fleet".into(),
                password: "secret".into()
            })
        );
        assert_eq!(store.tls.and_then(|tls| tls.key), Some("/k.pem".into()));
        let dashed = FleetdCommandLine::parse_go_style(strings(&[
            "fleetd",
            "--etcd-servers",
            "http://10.0.0.9:2379",
            "--disable-engine=false",
        ]));
        let config = dashed.args.to_config().expect("valid");
        assert_eq!(config.etcd_servers, ["http://10.0.0.9:2379"]);
        assert!(!config.disable_engine);
    }

    #[test]
    fn flags_override_the_file_and_the_default_file_is_read_when_present() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("fleet.conf");
        std::fs::write(&file, "metadata=\"rack=file\"\npublic_ip=10.0.0.1\n").expect("write");
        let args = FleetdArgs {
            config: Some(file.clone()),
            public_ip: Some("10.0.0.2".into()),
            ..FleetdArgs::default()
        };
        let config = args.to_config().expect("valid");
        assert_eq!(config.public_ip.as_deref(), Some("10.0.0.2"), "flag wins");
        assert_eq!(
            config.metadata.get("rack").map(String::as_str),
            Some("file")
        );
        let unnamed = FleetdArgs::default();
        assert_eq!(unnamed.config_file(&file), Some(file.clone()));
        assert_eq!(unnamed.config_file(&dir.path().join("absent.conf")), None);
        let missing = FleetdArgs {
            config: Some(dir.path().join("absent.conf")),
            ..FleetdArgs::default()
        };
        assert!(missing.to_config().is_err(), "a named file must exist");
    }

    #[test]
    fn unsupported_fleet_options_are_refused_not_ignored() {
        let user = FleetdArgs {
            systemd_user: Some("true".into()),
            ..FleetdArgs::default()
        };
        let err = user.to_config().expect_err("systemd --user");
        assert!(format!("{err:#}").contains("not supported"), "{err:#}");
        let verbosity = FleetdArgs {
            verbosity: Some("loud".into()),
            ..FleetdArgs::default()
        };
        assert!(verbosity.to_config().is_err());
    }

    #[test]
    fn fleetctl_credentials_reach_the_store_config() {
        let args = FleetctlArgs::parse_from([
            "fleetctl",
            "--etcd-username",
            "root",
            "--etcd-password",
            "pw",
            "--etcd-cafile",
            "/ca.pem",
            "list-machines",
        ]);
        let store = args.store_config().expect("valid flags");
        assert_eq!(
            store.credentials,
            Some(Credentials {
                user: "root".into(),
                password: "pw".into()
            })
        );
        assert_eq!(store.tls.and_then(|tls| tls.ca), Some("/ca.pem".into()));
        let orphan = FleetctlArgs::parse_from(["fleetctl", "--etcd-password", "pw", "list-units"]);
        assert!(orphan.store_config().is_err(), "a password without a user");
    }
}
