//! The store alone (`shoal kv` without the rest of shoal): tests kill -9 it.
use clap::Parser;

/// jemalloc rather than glibc's malloc: a put allocates and frees its ~1.3 KiB request several
/// times (gRPC decode, h2 buffers, log record, peer frames), above glibc's per-thread cache
/// (1,032 bytes), and at 1,000 clients glibc spent ~18% of the members' CPU in `_int_malloc`,
/// `unlink_chunk` and `malloc_consolidate`; jemalloc took ~15% off the members' CPU per put
/// (mimalloc 2.3 nothing; bench/PROFILES.md, branch putxl).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
