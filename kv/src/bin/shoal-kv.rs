//! The store alone (`shoal kv` without the rest of shoal): tests kill -9 it.
use clap::Parser;

#[derive(Parser)]
#[command(name = "shoal-kv", about = "shoal's embedded etcd-compatible store")]
struct Cli {
    #[command(flatten)]
    args: shoal_kv::cli::KvArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_kv::init_tracing();
    shoal_kv::cli::run(Cli::parse().args).await
}
