//! `shoal-dpctl`: drives the dataplane of one interface by hand (debugging, and the process whose
//! restart the tests exercise). Acts in the network namespace it runs in; run it with
//! `nsenter --net=...` rather than `ip netns exec`, whose private mount namespace hides bpffs.
//!
//! ```text
//! shoal-dpctl attach --iface eth0 --underlay-ip 10.99.0.1 --subnet 10.244.1.0/24 \
//!     --route 10.244.2.0/24,10.99.0.2,02:00:00:00:00:02,vxlan
//! shoal-dpctl stats  --iface eth0 --underlay-ip 10.99.0.1 --subnet 10.244.1.0/24
//! shoal-dpctl detach --iface eth0 --underlay-ip 10.99.0.1 --subnet 10.244.1.0/24
//! ```
use std::{io::Write, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ipnetwork::Ipv4Network;
use shoal_dataplane::{Backend, Config, Dataplane, DecapHook, MacAddr, RouteTarget};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load or take over the dataplane, program the routes, print `attached`, and hold it until
    /// killed (the dataplane stays when the process goes).
    Attach(Args),
    /// Print the counters.
    Stats(Args),
    /// Detach the programs, remove the routes and pins.
    Detach(Args),
}

#[derive(clap::Args)]
struct Args {
    #[arg(long)]
    iface: String,
    #[arg(long)]
    underlay_ip: Ipv4Addr,
    /// This node's subnet.
    #[arg(long)]
    subnet: Ipv4Network,
    #[arg(long, default_value = shoal_dataplane_common::PIN_ROOT)]
    pin_root: PathBuf,
    /// Pin subdirectory; the interface name when absent.
    #[arg(long)]
    instance: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    decap: Hook,
    /// With `attach`: register the local workloads for direct delivery every this many seconds
    /// (0: never).
    #[arg(long, default_value_t = 0)]
    sync_endpoints_secs: u64,
    /// Source address for locally originated overlay traffic.
    #[arg(long)]
    source: Option<Ipv4Addr>,
    /// `SUBNET,UNDERLAY_IP,VTEP_MAC,vxlan|udp`, repeatable.
    #[arg(long)]
    route: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Hook {
    Auto,
    Xdp,
    Tc,
}

impl Args {
    fn config(&self) -> Config {
        let mut config = Config::new(&self.iface, self.underlay_ip, self.subnet);
        config.pin_root = self.pin_root.clone();
        if let Some(instance) = &self.instance {
            config.instance = instance.clone();
        }
        config.decap_hook = match self.decap {
            Hook::Auto => DecapHook::Auto,
            Hook::Xdp => DecapHook::Xdp,
            Hook::Tc => DecapHook::Tc,
        };
        config.route_source = self.source;
        config
    }
}

fn parse_route(text: &str) -> anyhow::Result<(Ipv4Network, RouteTarget)> {
    let parts: Vec<&str> = text.split(',').collect();
    let [subnet, underlay_ip, mac, backend] = parts.as_slice() else {
        bail!("route {text:?} is not SUBNET,UNDERLAY_IP,VTEP_MAC,BACKEND");
    };
    let backend = match *backend {
        "vxlan" => Backend::Vxlan,
        "udp" => Backend::Udp,
        other => bail!("unknown backend {other:?} in route {text:?}"),
    };
    Ok((
        subnet
            .parse()
            .with_context(|| format!("subnet in {text:?}"))?,
        RouteTarget {
            underlay_ip: underlay_ip
                .parse()
                .with_context(|| format!("underlay IP in {text:?}"))?,
            vtep_mac: mac.parse::<MacAddr>()?,
            backend,
        },
    ))
}

/// Keeps the process alive (until killed), syncing the local endpoints every `every_secs`.
fn hold(mut dataplane: Dataplane, every_secs: u64) -> anyhow::Result<()> {
    loop {
        if every_secs == 0 {
            std::thread::park();
            continue;
        }
        if let Err(err) = dataplane.sync_endpoints() {
            tracing::warn!("syncing endpoints: {:#}", anyhow::Error::from(err));
        }
        std::thread::sleep(std::time::Duration::from_secs(every_secs));
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Attach(args) => {
            let routes = args
                .route
                .iter()
                .map(|text| parse_route(text))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut dataplane = Dataplane::load_or_attach(args.config())?;
            for (subnet, target) in routes {
                dataplane.set_route(subnet, target)?;
            }
            println!(
                "attached {:?} vtep {}",
                dataplane.attach_mode(),
                dataplane.vtep_mac()
            );
            std::io::stdout().flush()?;
            hold(dataplane, args.sync_endpoints_secs)
        }
        Command::Stats(args) => {
            let dataplane = Dataplane::load_or_attach(args.config())?;
            for (counter, value) in dataplane.stats()?.iter() {
                println!("{} {value}", counter.name());
            }
            Ok(())
        }
        Command::Detach(args) => {
            Dataplane::load_or_attach(args.config())?.detach()?;
            Ok(())
        }
    }
}
