//! `shoal run`: start a command in a container network namespace on the overlay.
use clap::Args;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name of the container (and of its network namespace).
    #[arg(long)]
    pub name: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn run(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`shoal run` is not implemented yet (issue #5: overlay control plane)")
}
