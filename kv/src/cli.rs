//! `shoal kv`: run one member of the store. Flag names follow etcd's.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::backup::restore::SnapshotCommand;

use crate::member::{AutoCompaction, ClusterState, Config, Member};
use crate::tls::TlsFiles;

/// Run one member of shoal's embedded etcd-compatible store.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KvArgs {
    #[command(subcommand)]
    pub command: Option<KvCommand>,
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory [default: ${name}.etcd, as etcd].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Client URLs of this member to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic (comma-separated).
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub listen_peer_urls: String,
    /// Peer URLs of this member to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: `name=peer-url,...`
    /// [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join one (after `member add`).
    #[arg(long, default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token, part of member and cluster IDs.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Number of committed entries that trigger a snapshot (and log compaction).
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Path to the client server TLS cert file (re-read when it changes).
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file (re-read when it changes).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file: clients must present a certificate
    /// it signed (re-read when it changes).
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication (the certificate's CN is the user).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub client_cert_auth: bool,
    /// Path to the peer server TLS cert file, also presented when dialing peers.
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file: peers' certificates are checked against it.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub peer_client_cert_auth: bool,
    /// Auth token type: `simple` (etcd's `jwt` is not supported).
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// Time (in seconds) a simple auth token lives without being used.
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// Interpret --auto-compaction-retention as a duration (`periodic`) or as a number of
    /// revisions to keep (`revision`).
    #[arg(long, default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Auto compaction retention for the MVCC history: `0` is off; periodic mode takes a
    /// duration (`30m`) or a number of hours, revision mode a number of revisions.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// Revision mode: how often the leader checks the revision (shoal's flag; etcd checks
    /// every 5 minutes).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub auto_compaction_check_interval: Duration,
}

/// What `shoal kv` does besides running a member.
#[derive(Debug, Clone, Subcommand)]
pub enum KvCommand {
    /// Snapshot files in etcd's format: restore a data dir from one, or inspect it.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// The certificate flags of one side (`""` or `"peer-"`), checked as etcd checks them.
struct TlsFlags<'a> {
    prefix: &'static str,
    cert_file: &'a Option<PathBuf>,
    key_file: &'a Option<PathBuf>,
    trusted_ca_file: &'a Option<PathBuf>,
    client_cert_auth: bool,
}

impl TlsFlags<'_> {
    /// The TLS files, if any; `urls` (this side's) may be `https://` only with them.
    fn resolve<'u>(
        &self,
        side: &str,
        urls: impl IntoIterator<Item = &'u String>,
    ) -> anyhow::Result<Option<TlsFiles>> {
        let prefix = self.prefix;
        let files = match (self.cert_file, self.key_file) {
            (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                trusted_ca_file: self.trusted_ca_file.clone(),
                client_cert_auth: self.client_cert_auth,
            }),
            (None, None) => None,
            _ => bail!("--{prefix}cert-file and --{prefix}key-file go together"),
        };
        if files.is_none() && (self.client_cert_auth || self.trusted_ca_file.is_some()) {
            bail!(
                "--{prefix}client-cert-auth and --{prefix}trusted-ca-file need --{prefix}cert-file and --{prefix}key-file"
            );
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            bail!("--{prefix}client-cert-auth needs --{prefix}trusted-ca-file");
        }
        let Some(url) = urls.into_iter().find(|u| u.starts_with("https://")) else {
            return Ok(files);
        };
        if files.is_none() {
            bail!(
                "TLS key/cert (--{prefix}cert-file, --{prefix}key-file) must be provided for {side} url {url} with HTTPS scheme"
            );
        }
        // A member dials its peers: it verifies them by the peer CA (there are no system roots).
        if side == "peer" && self.trusted_ca_file.is_none() {
            bail!("https peer URLs need --peer-trusted-ca-file to verify peers with");
        }
        Ok(files)
    }
}

fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses `--initial-cluster` (`name=url,name=url2,other=url3`) keeping the order of names.
fn parse_initial_cluster(spec: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut cluster: Vec<(String, Vec<String>)> = Vec::new();
    for item in split_urls(spec) {
        let (name, url) = item
            .split_once('=')
            .with_context(|| format!("--initial-cluster: {item:?} is not name=url"))?;
        match cluster.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => cluster.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(cluster)
}

/// `shoal kv`'s flags parsed on their own (for a restore, which takes some of them).
#[derive(Parser)]
struct MemberFlags {
    #[command(flatten)]
    args: KvArgs,
}

impl KvArgs {
    /// A member's flags with what a restore names and the defaults for the rest.
    pub fn for_restore(
        name: &str,
        data_dir: Option<PathBuf>,
        initial_cluster: Option<String>,
        initial_cluster_token: &str,
        initial_advertise_peer_urls: &str,
    ) -> anyhow::Result<KvArgs> {
        let mut flags = vec![
            "shoal-kv".to_string(),
            format!("--name={name}"),
            format!("--initial-cluster-token={initial_cluster_token}"),
            format!("--initial-advertise-peer-urls={initial_advertise_peer_urls}"),
        ];
        flags.extend(data_dir.map(|d| format!("--data-dir={}", d.display())));
        flags.extend(initial_cluster.map(|c| format!("--initial-cluster={c}")));
        Ok(MemberFlags::try_parse_from(flags)?.args)
    }

    /// Resolves the flags into a member configuration, checking them as etcd does.
    pub fn config(&self) -> anyhow::Result<Config> {
        let peer_urls = split_urls(&self.initial_advertise_peer_urls);
        let initial_cluster = match &self.initial_cluster {
            Some(spec) => parse_initial_cluster(spec)?,
            None => vec![(self.name.clone(), peer_urls.clone())],
        };
        let Some((_, mine)) = initial_cluster.iter().find(|(n, _)| *n == self.name) else {
            bail!(
                "--initial-cluster has no member named {:?} (--name)",
                self.name
            );
        };
        let (mut mine, mut advertised) = (mine.clone(), peer_urls.clone());
        mine.sort();
        advertised.sort();
        if mine != advertised {
            bail!(
                "--initial-cluster must include {}={} given --initial-advertise-peer-urls={}",
                self.name,
                self.initial_advertise_peer_urls,
                self.initial_advertise_peer_urls
            );
        }
        check_auth_token(&self.auth_token)?;
        let initial_cluster_state = match self.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => bail!("--initial-cluster-state must be new or existing, not {other:?}"),
        };
        let client_tls = TlsFlags {
            prefix: "",
            cert_file: &self.cert_file,
            key_file: &self.key_file,
            trusted_ca_file: &self.trusted_ca_file,
            client_cert_auth: self.client_cert_auth,
        }
        .resolve(
            "client",
            split_urls(&self.listen_client_urls)
                .iter()
                .chain(&split_urls(&self.advertise_client_urls)),
        )?;
        let peer_tls = TlsFlags {
            prefix: "peer-",
            cert_file: &self.peer_cert_file,
            key_file: &self.peer_key_file,
            trusted_ca_file: &self.peer_trusted_ca_file,
            client_cert_auth: self.peer_client_cert_auth,
        }
        .resolve(
            "peer",
            split_urls(&self.listen_peer_urls)
                .iter()
                .chain(&peer_urls)
                .chain(initial_cluster.iter().flat_map(|(_, urls)| urls)),
        )?;
        Ok(Config {
            name: self.name.clone(),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name))),
            listen_client_urls: split_urls(&self.listen_client_urls),
            advertise_client_urls: split_urls(&self.advertise_client_urls),
            listen_peer_urls: split_urls(&self.listen_peer_urls),
            initial_advertise_peer_urls: peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token: self.initial_cluster_token.clone(),
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count,
            client_tls,
            peer_tls,
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl),
            auto_compaction: self.auto_compaction()?,
        })
    }
}

impl KvArgs {
    fn auto_compaction(&self) -> anyhow::Result<AutoCompaction> {
        let mut mode =
            AutoCompaction::parse(&self.auto_compaction_mode, &self.auto_compaction_retention)
                .map_err(anyhow::Error::msg)?;
        if let AutoCompaction::Revision { check_interval, .. } = &mut mode {
            if self.auto_compaction_check_interval.is_zero() {
                bail!("--auto-compaction-check-interval must be more than 0");
            }
            *check_interval = self.auto_compaction_check_interval;
        }
        Ok(mode)
    }
}

/// `--auth-token`: etcd's `simple` tokens; `jwt` is refused rather than served as simple.
fn check_auth_token(spec: &str) -> anyhow::Result<()> {
    match spec {
        "simple" => Ok(()),
        jwt if jwt.split(',').next() == Some("jwt") => {
            bail!("--auth-token=jwt is not supported by shoal kv; use --auth-token=simple")
        }
        other => bail!("--auth-token must be simple, not {other:?}"),
    }
}

/// Runs a store member until it is asked to stop (SIGINT or SIGTERM).
pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    if let Some(KvCommand::Snapshot(command)) = args.command {
        return crate::backup::restore::run(command);
    }
    #[cfg(feature = "failpoints")]
    crate::failpoints::setup().context("setting up failpoints")?;
    let config = args.config()?;
    let data_dir = config.data_dir.display().to_string();
    let running = Member::start(config)
        .await
        .with_context(|| format!("starting member {:?} (data dir {data_dir})", args.name))?;
    tracing::info!(
        member = format!("{:x}", running.member.id),
        clients = ?running.client_addrs,
        "shoal kv is serving"
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate.recv() => {},
    }
    running.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kv: KvArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        let mut argv = vec!["shoal-kv"];
        argv.extend(args);
        Cli::try_parse_from(argv)?.kv.config()
    }

    fn error(args: &[&str]) -> String {
        format!("{:#}", config(args).expect_err("refused"))
    }

    #[test]
    fn tls_flags_combine_as_in_etcd() {
        let https = "--listen-client-urls=https://127.0.0.1:2379";
        assert_eq!(
            error(&[https]),
            "TLS key/cert (--cert-file, --key-file) must be provided for client url \
             https://127.0.0.1:2379 with HTTPS scheme"
        );
        assert_eq!(
            error(&["--initial-advertise-peer-urls=https://127.0.0.1:2380"]),
            "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url \
             https://127.0.0.1:2380 with HTTPS scheme"
        );
        assert_eq!(
            error(&[
                "--listen-peer-urls=https://127.0.0.1:2380",
                "--peer-cert-file=p.pem",
                "--peer-key-file=k.pem"
            ]),
            "https peer URLs need --peer-trusted-ca-file to verify peers with"
        );
        assert_eq!(
            error(&[https, "--cert-file=s.pem"]),
            "--cert-file and --key-file go together"
        );
        assert_eq!(
            error(&[
                https,
                "--cert-file=s.pem",
                "--key-file=k.pem",
                "--client-cert-auth"
            ]),
            "--client-cert-auth needs --trusted-ca-file"
        );
        assert_eq!(
            error(&["--peer-client-cert-auth=true"]),
            "--peer-client-cert-auth and --peer-trusted-ca-file need --peer-cert-file and \
             --peer-key-file"
        );

        let resolved = config(&[
            https,
            "--cert-file=s.pem",
            "--key-file=k.pem",
            "--trusted-ca-file=ca.pem",
            "--client-cert-auth=true",
        ])
        .expect("a TLS client listener");
        let tls = resolved.client_tls.expect("client TLS");
        assert!(tls.client_cert_auth && tls.requires_client_certificates());
        assert_eq!(resolved.peer_tls, None);
        let ca_only = config(&[
            https,
            "--cert-file=s.pem",
            "--key-file=k.pem",
            "--trusted-ca-file=ca.pem",
        ])
        .expect("a trusted CA alone");
        let tls = ca_only.client_tls.expect("client TLS");
        assert!(
            !tls.client_cert_auth && tls.requires_client_certificates(),
            "a trusted CA file makes client certificates required, as in etcd"
        );
    }

    #[test]
    fn only_simple_tokens_are_accepted() {
        assert!(check_auth_token("simple").is_ok());
        let jwt = check_auth_token("jwt,pub-key=a.pem,priv-key=b.pem,sign-method=RS256");
        assert_eq!(
            jwt.expect_err("jwt").to_string(),
            "--auth-token=jwt is not supported by shoal kv; use --auth-token=simple"
        );
        assert!(check_auth_token("simple,ttl=5").is_err());
    }
}
