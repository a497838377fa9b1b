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
    /// kv only: also run both stores with TLS on every port (client certificates required).
    #[arg(long)]
    tls: bool,
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
    let Cli { suite, tls } = Cli::parse();
    if tls && !matches!(suite, Suite::Kv) {
        anyhow::bail!("--tls is for the kv suite only");
    }
    let run = results::Run::start(suite.name());
    let table = match suite {
        Suite::Fleet => fleet::run()?,
        Suite::Kv => kv::run(tls)?,
        Suite::Leases => Some(leases::run()?),
        Suite::Net => {
            let table = net::run(net::rounds_from_env())?;
            if net::is_subset() {
                print!("{table}");
                None
            } else {
                Some(table)
            }
        }
    };
    // A partial run (one store, some configurations) records nothing.
    match table {
        Some(table) => {
            print!("{table}");
            run.record(&table)
        }
        None => Ok(()),
    }
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Net => "net",
            Suite::Kv => "kv",
            Suite::Leases => "leases",
            Suite::Fleet => "fleet",
        }
    }
}
