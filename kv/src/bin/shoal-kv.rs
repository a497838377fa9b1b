//! The store alone (`shoal kv` without the rest of shoal): tests kill -9 it.
use clap::Parser;

#[derive(Parser)]
#[command(name = "shoal-kv", about = "shoal's embedded etcd-compatible store")]
struct Cli {
    #[command(flatten)]
    args: shoal_kv::cli::KvArgs,
}

fn main() -> anyhow::Result<()> {
    shoal_kv::init_tracing();
    let cli = Cli::parse();
    shoal_kv::runtime::multi_thread(None)
        .build()?
        .block_on(shoal_kv::cli::run(cli.args))
}
