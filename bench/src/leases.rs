//! `cargo xtask bench leases`: the overlay control plane at scale. 1,000 simulated nodes (the
//! real lease acquisition and lease sync of `shoal flannel`, no dataplane) take leases from a
//! 3-member store and watch each other, once against `shoal kv` and once against etcd 3.4, in
//! the same run. Reports the time until every node knows every lease, acquisition latency, and
//! the store's load (CPU seconds and peak memory of its members).
use std::{
    collections::HashSet,
    fmt::Write as _,
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ipnetwork::Ipv4Network;
use serde::Serialize;
use shoal_flannel::{
    acquire::{self, LEASE_TTL},
    backend::BackendResult,
    config::NetworkConfig,
    lease::{Lease, LeaseAttrs},
    registry::Registry,
    sync::{LeaseScope, LeaseSync, PeerSink},
};
use shoal_harness::{StoreCluster, StoreKind, binaries};

/// Simulated nodes; `SHOAL_BENCH_LEASES_NODES` overrides it for quick runs.
const DEFAULT_NODES: usize = 1000;
const PREFIX: &str = "/coreos.com/network";
const NETWORK: &str = r#"{"Network": "10.0.0.0/8", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#;
/// The whole run must converge within this, or the suite fails.
const DEADLINE: Duration = Duration::from_secs(120);

/// How reports name a store.
fn label(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::ShoalKv => "shoal-kv",
        StoreKind::Etcd => "etcd-3.4",
    }
}

/// Results of one store.
#[derive(Debug, Serialize)]
struct Outcome {
    /// The store's [`label`].
    store: &'static str,
    nodes: usize,
    /// From the start of all nodes until the last node held its lease.
    all_acquired_s: f64,
    /// From the start of all nodes until the last node knew every other lease.
    all_known_s: f64,
    /// Per node, seconds from start until it knew every other lease (sorted).
    converged_s: Vec<f64>,
    acquire_p50_ms: f64,
    acquire_p99_ms: f64,
    /// CPU time (user + system) of all members during the run.
    store_cpu_s: f64,
    /// Sum of the members' peak resident memory.
    store_peak_rss_mb: f64,
    /// Lease keys in the store at the end.
    leases_stored: usize,
}

fn node_count() -> usize {
    std::env::var("SHOAL_BENCH_LEASES_NODES")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|nodes| *nodes >= 2)
        .unwrap_or(DEFAULT_NODES)
}

pub fn run() -> Result<String> {
    raise_fd_limit();
    let nodes = node_count();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut outcomes = Vec::new();
    for kind in [StoreKind::ShoalKv, StoreKind::Etcd] {
        eprintln!("leases: {nodes} nodes against a 3-member {}", label(kind));
        let cluster = start_store(kind);
        cluster
            .ctl(&["put", &format!("{PREFIX}/config"), NETWORK])
            .context("writing the network config")?;
        let outcome = runtime.block_on(run_nodes(kind, &cluster, nodes))?;
        eprintln!(
            "leases: {} converged in {:.2} s",
            label(kind),
            outcome.all_known_s
        );
        outcomes.push(outcome);
    }
    write_outputs(&outcomes)?;
    Ok(table(&outcomes))
}

/// Three members on loopback; shoal kv runs as `shoal kv`, the way nodes run it.
fn start_store(kind: StoreKind) -> StoreCluster {
    let builder = StoreCluster::builder(kind, 3);
    match kind {
        StoreKind::Etcd => builder.start(),
        StoreKind::ShoalKv => builder.program(binaries::shoal(), ["kv"]).start(),
    }
}

/// The members' process ids, for their CPU time and memory.
fn member_pids(cluster: &StoreCluster) -> Vec<u32> {
    (0..cluster.specs.len())
        .filter_map(|i| cluster.process(i).map(|member| member.child.id()))
        .collect()
}

/// Lets 1,000 clients and their store connections fit in the descriptor limit.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Counts the distinct peer leases a simulated node knows; notes when it knows them all.
struct Knowledge {
    known: HashSet<Ipv4Network>,
    want: usize,
    start: Instant,
    converged: Arc<Mutex<Vec<f64>>>,
    done: Arc<AtomicUsize>,
    reported: bool,
}

impl Knowledge {
    fn check(&mut self) {
        if !self.reported && self.known.len() >= self.want {
            self.reported = true;
            if let Ok(mut converged) = self.converged.lock() {
                converged.push(self.start.elapsed().as_secs_f64());
            }
            self.done.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait::async_trait]
impl PeerSink for Knowledge {
    async fn upsert(&mut self, lease: &Lease) -> BackendResult<()> {
        self.known.insert(lease.subnet);
        self.check();
        Ok(())
    }

    async fn remove(&mut self, lease: &Lease) -> BackendResult<()> {
        self.known.remove(&lease.subnet);
        Ok(())
    }

    async fn resynced(&mut self, keep: &[Ipv4Network]) -> BackendResult<()> {
        self.known.retain(|subnet| keep.contains(subnet));
        Ok(())
    }
}

async fn connect(endpoint: &str) -> Result<Registry> {
    let client = etcd_client::Client::connect([endpoint], None)
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(Registry::from_client(client, PREFIX))
}

async fn run_nodes(kind: StoreKind, cluster: &StoreCluster, nodes: usize) -> Result<Outcome> {
    let config = NetworkConfig::parse(NETWORK)?;
    let endpoints = cluster.endpoints();
    // Connect every node first, so the measurement covers leases and watches only.
    let mut registries = Vec::with_capacity(nodes);
    for node in 0..nodes {
        registries.push(connect(&endpoints[node % endpoints.len()]).await?);
    }
    let cpu_before = cpu_seconds(&member_pids(cluster));
    let converged = Arc::new(Mutex::new(Vec::with_capacity(nodes)));
    let acquired = Arc::new(Mutex::new(Vec::with_capacity(nodes)));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(nodes);
    for (node, registry) in registries.into_iter().enumerate() {
        let config = config.clone();
        let (converged, acquired, done) = (converged.clone(), acquired.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let progress = Progress {
                start,
                converged,
                acquired,
                done,
            };
            simulate_node(node, nodes, registry, config, progress).await
        }));
    }
    while done.load(Ordering::SeqCst) < nodes {
        if start.elapsed() > DEADLINE {
            bail!(
                "{}: only {} of {nodes} nodes knew every lease after {DEADLINE:?}",
                label(kind),
                done.load(Ordering::SeqCst)
            );
        }
        if let Some(failed) = tasks.iter().position(|task| task.is_finished()) {
            let task = tasks.swap_remove(failed);
            match task.await {
                Ok(Err(err)) => bail!("a simulated node failed: {err:#}"),
                Ok(Ok(())) => {}
                Err(err) => bail!("a simulated node panicked: {err}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_known_s = start.elapsed().as_secs_f64();
    let store_cpu_s = cpu_seconds(&member_pids(cluster)) - cpu_before;
    for task in &tasks {
        task.abort();
    }
    let leases_stored = connect(&endpoints[0]).await?.list().await?.0.len();
    let mut converged = converged
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    converged.sort_by(f64::total_cmp);
    let mut acquired = acquired
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    acquired.sort_by(f64::total_cmp);
    Ok(Outcome {
        store: label(kind),
        nodes,
        // Every node starts acquiring right at the start, so its latency is its finish time.
        all_acquired_s: acquired.last().copied().unwrap_or_default(),
        all_known_s,
        converged_s: converged,
        acquire_p50_ms: percentile(&acquired, 0.50) * 1000.0,
        acquire_p99_ms: percentile(&acquired, 0.99) * 1000.0,
        store_cpu_s,
        store_peak_rss_mb: peak_rss_mb(&member_pids(cluster)),
        leases_stored,
    })
}

/// Where simulated nodes report their progress.
struct Progress {
    start: Instant,
    converged: Arc<Mutex<Vec<f64>>>,
    acquired: Arc<Mutex<Vec<f64>>>,
    done: Arc<AtomicUsize>,
}

/// One node: take a lease exactly as `shoal flannel` does, then follow every lease.
async fn simulate_node(
    node: usize,
    nodes: usize,
    mut registry: Registry,
    config: NetworkConfig,
    progress: Progress,
) -> Result<()> {
    let Progress {
        start,
        converged,
        acquired,
        done,
    } = progress;
    let public_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + node as u32 + 1);
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(
            serde_json::json!({"VNI": 1, "VtepMAC": format!("02:00:00:00:{:02x}:{:02x}", node >> 8, node & 0xff)}),
        ),
    };
    let began = Instant::now();
    let own = acquire::acquire(&mut registry, &config, &attrs, None, LEASE_TTL).await?;
    if let Ok(mut acquired) = acquired.lock() {
        acquired.push(began.elapsed().as_secs_f64());
    }
    let mut knowledge = Knowledge {
        known: HashSet::new(),
        want: nodes - 1,
        start,
        converged,
        done,
        reported: false,
    };
    let scope = LeaseScope {
        network: config.network,
        underlay: Vec::new(),
    };
    let mut sync = LeaseSync::new(registry, own.subnet, scope);
    let end = sync.run_from(Some(own.snapshot), &mut knowledge).await;
    Err(anyhow::Error::new(end))
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// User + system CPU seconds of processes, from `/proc/<pid>/stat`.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start after ") ".
            let rest = stat.rsplit_once(") ")?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

fn peak_rss_mb(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .sum::<f64>()
        / 1024.0
}

/// The results table, as printed and as recorded in RESULTS.md.
fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>6} {:>14} {:>14} {:>12} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "store",
        "nodes",
        "all leased (s)",
        "all known (s)",
        "p50 node (s)",
        "acq p50 ms",
        "acq p99 ms",
        "store CPU s",
        "peak RSS MB",
        "leases"
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "{:<10} {:>6} {:>14.2} {:>14.2} {:>12.2} {:>12.1} {:>12.1} {:>12.1} {:>12.0} {:>8}",
            o.store,
            o.nodes,
            o.all_acquired_s,
            o.all_known_s,
            percentile(&o.converged_s, 0.5),
            o.acquire_p50_ms,
            o.acquire_p99_ms,
            o.store_cpu_s,
            o.store_peak_rss_mb,
            o.leases_stored
        );
    }
    if let Some(ratio) = speedup(outcomes) {
        let _ = writeln!(
            out,
            "shoal kv converges {ratio:.2}x as fast as etcd 3.4 (target: every store under 10 s)"
        );
    }
    out
}

/// How many times as fast as etcd shoal kv had every node know every lease.
fn speedup(outcomes: &[Outcome]) -> Option<f64> {
    match outcomes {
        [shoal, etcd] if shoal.all_known_s > 0.0 => Some(etcd.all_known_s / shoal.all_known_s),
        _ => None,
    }
}

fn write_outputs(outcomes: &[Outcome]) -> Result<()> {
    let json = serde_json::json!({
        "suite": "leases",
        "target_s": 10.0,
        "speedup_vs_etcd": speedup(outcomes),
        "results": outcomes,
    });
    crate::results::write_outputs("leases", &json, CHART)
}

/// A CDF of per-node convergence times, one line per store.
const CHART: &str = r#"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.load(open(sys.argv[1]))
fig, ax = plt.subplots(figsize=(7, 4))
for result in data["results"]:
    times = result["converged_s"]
    ax.plot(times, [(i + 1) / len(times) for i in range(len(times))],
            label="%s (all known in %.2f s)" % (result["store"], result["all_known_s"]))
ax.axvline(data["target_s"], color="grey", linestyle="--", label="target")
ax.set_xlabel("seconds since all nodes started")
ax.set_ylabel("fraction of nodes that know every lease")
ax.set_title("%d simulated flannel nodes, 3-member store" % data["results"][0]["nodes"])
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
"#;
