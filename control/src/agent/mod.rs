//! `shoal agent`: the daemon of one node. It reads the node's YAML ([`config`]), then runs
//! together: a store member (masters) or the store's address (workers), the overlay control
//! plane and dataplane, fleet's agent and engine candidate, and the health endpoint
//! ([`health`]).
pub mod config;
pub mod health;

use std::path::PathBuf;

use clap::Args;

use self::config::AgentConfig;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Cloud-config-style YAML describing this node.
    #[arg(long, default_value = "/etc/shoal/agent.yaml")]
    pub config: PathBuf,
    /// Only validate the config and print it, then exit.
    #[arg(long)]
    pub check: bool,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::load(&args.config)?;
    if args.check {
        println!("{}: valid\n{config:#?}", args.config.display());
        return Ok(());
    }
    anyhow::bail!(
        "`shoal agent` cannot run components yet (issue #7); `shoal agent --check` validates {}",
        args.config.display()
    )
}
