//! `shoal agent`: the per-node daemon that runs every component of a node.
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Cloud-config-style YAML describing this node.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub async fn run(_args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("`shoal agent` is not implemented yet (issue #7: per-node agent)")
}
