//! `shoal kv snapshot restore|status`: etcdutl's commands for a snapshot file written by
//! `etcdctl snapshot save` against shoal or etcd 3.4. A restore checks the file, builds the
//! state it holds and seeds a new member's data dir with it, for the cluster its flags name.
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::etcd_format;
use crate::cli::KvArgs;
use crate::member::new_cluster;
use crate::storage::state_machine::write_restored;
use crate::storage::store::open_database;

/// Work with snapshot files in etcd's format.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCommand {
    /// Restore a new member's data dir from a snapshot (etcdutl snapshot restore).
    Restore(RestoreArgs),
    /// Print a snapshot's hash, revision, key count and size (etcdctl snapshot status).
    Status(StatusArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Human-readable name of the member restored.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory to create [default: ${name}.etcd].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The new cluster: `name=peer-url,...` [default: ${name}=${initial-advertise-peer-urls}].
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// Initial cluster token of the new cluster.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Peer URLs of the member restored.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Restore even if the file has no (or a wrong) SHA-256 trailer, e.g. a copied db file.
    #[arg(long)]
    pub skip_hash_check: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Output format: simple, table or json (as etcdctl's `-w`).
    #[arg(short = 'w', long = "write-out", default_value = "simple")]
    pub write_out: String,
}

pub fn run(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Restore(args) => restore(&args),
        SnapshotCommand::Status(args) => status(&args),
    }
}

fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    let member = KvArgs::for_restore(
        &args.name,
        args.data_dir.clone(),
        args.initial_cluster.clone(),
        &args.initial_cluster_token,
        &args.initial_advertise_peer_urls,
    )?;
    let config = member.config()?;
    if config.data_dir.exists() {
        bail!("data-dir {:?} exists", config.data_dir.display());
    }
    let file = std::fs::read(&args.file)
        .with_context(|| format!("reading snapshot {}", args.file.display()))?;
    let state = etcd_format::import(&file, args.skip_hash_check)
        .with_context(|| format!("snapshot {}", args.file.display()))?;
    let revision = state.mvcc.revision();
    let (members, cluster_id) = new_cluster(&config);
    let db = open_database(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    write_restored(&db, &state, members, cluster_id).with_context(|| {
        format!(
            "writing the restored state to {}",
            config.data_dir.display()
        )
    })?;
    tracing::info!(
        path = %args.file.display(),
        data_dir = %config.data_dir.display(),
        revision,
        "restored snapshot"
    );
    Ok(())
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let file = std::fs::read(&args.file)
        .with_context(|| format!("reading snapshot {}", args.file.display()))?;
    let status =
        etcd_format::status(&file).with_context(|| format!("snapshot {}", args.file.display()))?;
    let (hash, revision, keys, size) = (
        status.hash,
        status.revision,
        status.total_keys,
        status.total_size,
    );
    match args.write_out.as_str() {
        "simple" => println!("{hash:x}, {revision}, {keys}, {size}"),
        "json" => println!(
            "{{\"hash\":{hash},\"revision\":{revision},\"totalKey\":{keys},\"totalSize\":{size}}}"
        ),
        "table" => {
            println!("HASH\tREVISION\tTOTAL KEYS\tTOTAL SIZE");
            println!("{hash:x}\t{revision}\t{keys}\t{size}");
        }
        other => bail!("-w must be simple, table or json, not {other:?}"),
    }
    Ok(())
}
