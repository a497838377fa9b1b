//! `shoal install` / `shoal uninstall`: put shoal in place as a systemd service.
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The agent's config file to install.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub async fn install(_args: InstallArgs) -> anyhow::Result<()> {
    anyhow::bail!("`shoal install` is not implemented yet (issue #7: per-node agent)")
}

pub async fn uninstall() -> anyhow::Result<()> {
    anyhow::bail!("`shoal uninstall` is not implemented yet (issue #7: per-node agent)")
}
