//! `shoal-bench <suite>`, run through `cargo xtask bench <suite>`. Every suite runs shoal and its
//! reference side by side in one run, reports ratios, and writes `target/bench/<suite>.json`, a
//! table on stdout and a PNG chart.
use clap::{Parser, ValueEnum};

mod fleet;
mod kv;
mod leases;
mod net;
mod results;
mod rounds;
mod watch;

/// The allocator of `shoal` and `shoal-kv`, for the members this process runs (see
/// kv/src/bin/shoal-kv.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Cli {
    suite: Suite,
    /// kv only: also run both stores with TLS on every port (client certificates required).
    #[arg(long)]
    tls: bool,
    /// leases only: simulated node counts, each measured in its own rounds (e.g. 1000,2000,5000).
    #[arg(long, value_delimiter = ',', default_values_t = [leases::DEFAULT_NODES])]
    nodes: Vec<usize>,
    /// leases and fleet: rounds per store and scale, alternating between the stores.
    #[arg(long, default_value_t = leases::DEFAULT_ROUNDS)]
    rounds: usize,
    /// fleet only: simulated agents per scale (one unit count each in `--units`).
    #[arg(long, value_delimiter = ',', default_values_t = [fleet::DEFAULT_MACHINES])]
    machines: Vec<usize>,
    /// watch only: watcher counts, each measured in its own rounds.
    #[arg(long, value_delimiter = ',', default_values_t = watch::DEFAULT_WATCHERS)]
    watchers: Vec<usize>,
    /// watch only: puts the writer keeps in flight (1: each put waits for the previous one, so
    /// the put latency bounds a round; more measure what the store can deliver).
    #[arg(long, default_value_t = 1)]
    puts_in_flight: usize,
    /// fleet only: units per scale.
    #[arg(long, value_delimiter = ',', default_values_t = [fleet::DEFAULT_UNITS])]
    units: Vec<usize>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Suite {
    /// Packet path: host-gw, kernel-vxlan, shoal-vxlan, shoal-udp (issue #3).
    Net,
    /// Store: 3-member shoal kv against 3-member etcd 3.4 (issue #4).
    Kv,
    /// Overlay control plane at 1,000 simulated nodes, or `--nodes` (issue #5).
    Leases,
    /// Watch fan-out at 1,000 and 10,000 watchers, or `--watchers` (issue #18).
    Watch,
    /// fleet at 1,000 agents and 10,000 units, or `--machines`/`--units` (issue #6).
    Fleet,
}

fn main() -> anyhow::Result<()> {
    let Cli {
        suite,
        tls,
        nodes,
        rounds,
        machines,
        units,
        watchers,
        puts_in_flight,
    } = Cli::parse();
    if tls && !matches!(suite, Suite::Kv) {
        anyhow::bail!("--tls is for the kv suite only");
    }
    let run = results::Run::start(suite.name());
    let table = match suite {
        Suite::Fleet => fleet::run(&fleet::Settings {
            machines,
            units,
            rounds,
        })?,
        Suite::Kv => kv::run(tls)?,
        Suite::Leases => leases::run(&leases::Settings { nodes, rounds })?,
        Suite::Watch => Some(watch::run(&watch::Settings {
            watchers,
            rounds,
            puts_in_flight,
        })?),
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
            Suite::Watch => "watch",
        }
    }
}
