//! `shoal-bench <suite>`, run through `cargo xtask bench <suite>`. Every suite runs shoal and its
//! reference side by side in one run, reports ratios, and writes `target/bench/<suite>.json`, a
//! table on stdout and a PNG chart.
use clap::{Parser, ValueEnum};

mod fleet;
mod kv;
mod leases;
mod net;
mod results;

#[derive(Parser)]
struct Cli {
    suite: Suite,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Suite {
    /// Packet path: host-gw, kernel-vxlan, shoal-vxlan, shoal-udp (issue #3).
    Net,
    /// Store: 3-member shoal kv against 3-member etcd 3.4 (issue #4).
    Kv,
    /// Overlay control plane at 1,000 simulated nodes (issue #5).
    Leases,
    /// fleet at 1,000 agents and 10,000 units (issue #6).
    Fleet,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.suite {
        Suite::Fleet => fleet::run(),
        Suite::Kv => kv::run(),
        Suite::Leases => leases::run(),
        Suite::Net => {
            let run = results::Run::start("net");
            let table = net::run(net::rounds_from_env())?;
            print!("{table}");
            run.record(&table)
        }
    }
}
