//! `shoal kv`: run one member of the store. Flag names follow etcd's.
use clap::Args;

/// Run one member of shoal's embedded etcd-compatible store.
#[derive(Debug, Clone, Args)]
pub struct KvArgs {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    pub name: String,
}

/// Runs a store member until it is asked to stop.
pub async fn run(_args: KvArgs) -> anyhow::Result<()> {
    anyhow::bail!("`shoal kv` is not implemented yet (issue #4: embedded Raft key-value store)")
}
