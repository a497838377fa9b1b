//! `cargo xtask bench leases`: the overlay control plane at scale. Simulated nodes (the real
//! lease acquisition and lease sync of `shoal flannel`, no dataplane; 1,000 unless `--nodes`
//! names other counts, e.g. `--nodes 1000,2000,5000`) take leases from a 3-member store and
//! watch each other, against `shoal kv` and against etcd 3.4 in alternating rounds of the same
//! run (a fresh cluster each round). Reports, per node count, the median round's time until
//! every node knows every lease (with every round's figure), acquisition latency, and the
//! store's load per node (CPU and resident memory its members gained).
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

use crate::rounds::round_order;
use anyhow::{Context, Result, bail};
use ipnetwork::Ipv4Network;
use serde::Serialize;
use shoal_flannel::{
    acquire::{self, LEASE_TTL},
    backend::BackendResult,
    config::NetworkConfig,
    lease::{BackendData, Lease, LeaseAttrs, VxlanBackendData, format_mac},
    registry::Registry,
    sync::{LeaseScope, LeaseSync, PeerSink, WatchTally},
};
use shoal_harness::{StoreCluster, StoreKind, binaries};

/// Simulated nodes when `--nodes` names none.
pub const DEFAULT_NODES: usize = 1000;
/// Rounds per store and node count when `--rounds` names none.
pub const DEFAULT_ROUNDS: usize = 3;
const PREFIX: &str = "/coreos.com/network";
const NETWORK: &str = r#"{"Network": "10.0.0.0/8", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#;
/// A run must converge within this, or the suite fails: two minutes at 1,000 nodes, a minute
/// more per 1,000 more.
fn deadline(nodes: usize) -> Duration {
    Duration::from_secs(60 + 60 * nodes.div_ceil(1000) as u64)
}

/// How reports name a store.
pub fn label(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::ShoalKv => "shoal-kv",
        StoreKind::Etcd => "etcd-3.4",
    }
}

/// Results of one store.
#[derive(Debug, Clone, Serialize)]
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
    /// CPU milliseconds of the members per simulated node.
    cpu_ms_per_node: f64,
    /// What the members' peak resident memory grew by during the run, per node.
    rss_kb_per_node: f64,
    /// Lease keys in the store at the end.
    leases_stored: usize,
    /// Create-if-absent transactions lost to another node (each costs a node one more list,
    /// grant, transaction and revoke).
    races: usize,
    /// CPU time (user + system) of this process, which runs every simulated node.
    client_cpu_s: f64,
    /// This process's resident memory when the round ended.
    client_rss_mb: f64,
    /// The client's CPU milliseconds per simulated node.
    client_cpu_ms_per_node: f64,
    /// What this process's resident memory grew by during the round, per node.
    client_rss_kb_per_node: f64,
    /// Lease watch responses that carried events, summed over the nodes.
    watch_responses: u64,
    /// The events they carried.
    watch_events: u64,
    /// Events per such response (1 means one message per event per node).
    events_per_response: f64,
}

/// What a run of the suite measures.
pub struct Settings {
    /// Node counts, each measured in its own rounds.
    pub nodes: Vec<usize>,
    pub rounds: usize,
}

/// Every round of one node count, and each store's median round.
#[derive(Debug, Serialize)]
struct Size {
    nodes: usize,
    /// Per store, its rounds in the order they ran.
    rounds: Vec<Outcome>,
    /// Per store, the round with the median convergence time.
    median: Vec<Outcome>,
}

/// The results table to record; `None` (the table printed, nothing recorded) when
/// `SHOAL_BENCH_ONLY` measured one store alone.
pub fn run(settings: &Settings) -> Result<Option<String>> {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // `SHOAL_BENCH_ONLY=shoal` (or `etcd`) measures one store, for profiling runs; the
    // report files are only written by a full side-by-side run.
    let only = std::env::var("SHOAL_BENCH_ONLY").ok();
    let kinds: Vec<StoreKind> = [StoreKind::ShoalKv, StoreKind::Etcd]
        .into_iter()
        .filter(|kind| {
            only.as_deref().is_none_or(|only| match kind {
                StoreKind::ShoalKv => only == "shoal",
                StoreKind::Etcd => only == "etcd",
            })
        })
        .collect();
    anyhow::ensure!(
        !kinds.is_empty(),
        "SHOAL_BENCH_ONLY must be `shoal` or `etcd`, not {only:?}"
    );
    let mut sizes = Vec::new();
    for &nodes in &settings.nodes {
        anyhow::ensure!(nodes >= 2, "at least 2 nodes, not {nodes}");
        let mut rounds = Vec::new();
        for round in 1..=settings.rounds {
            // A store that always ran first would pay alone for the client process's growth.
            for kind in round_order(&kinds, round) {
                eprintln!(
                    "leases: {nodes} nodes against a 3-member {}, round {round}",
                    label(kind)
                );
                let cluster = start_store(kind, nodes);
                cluster
                    .ctl(&["put", &format!("{PREFIX}/config"), NETWORK])
                    .context("writing the network config")?;
                let outcome = runtime.block_on(run_nodes(kind, &cluster, nodes))?;
                eprintln!(
                    "leases: {} converged in {:.2} s (store CPU {:.1} s, client CPU {:.1} s, \
                     {:.2} events per watch response; this client process: {:.0} MiB resident)",
                    label(kind),
                    outcome.all_known_s,
                    outcome.store_cpu_s,
                    outcome.client_cpu_s,
                    outcome.events_per_response,
                    rss_mb(&[std::process::id()], "VmRSS:")
                );
                rounds.push(outcome);
            }
        }
        let median = [StoreKind::ShoalKv, StoreKind::Etcd]
            .into_iter()
            .filter_map(|kind| median_round(&rounds, label(kind)))
            .collect();
        sizes.push(Size {
            nodes,
            rounds,
            median,
        });
    }
    if only.is_some() {
        print!("{}", table(&sizes));
        return Ok(None);
    }
    write_outputs(&sizes)?;
    Ok(Some(table(&sizes)))
}

/// The round of `store` with the median time until every node knew every lease.
fn median_round(rounds: &[Outcome], store: &str) -> Option<Outcome> {
    let mut mine: Vec<&Outcome> = rounds.iter().filter(|o| o.store == store).collect();
    mine.sort_by(|a, b| a.all_known_s.total_cmp(&b.all_known_s));
    mine.get(mine.len() / 2).map(|o| (*o).clone())
}

/// Three members on loopback; shoal kv runs as `shoal kv`, the way nodes run it. Every node
/// connects from 127.0.0.1 (twice: its client and its lease watch's channel, both to the
/// member it was given), so shoal's per-address connection limit (etcd has none) is raised to
/// the node count plus the bench's own clients: a member serves a third of the nodes, two
/// connections each.
fn start_store(kind: StoreKind, nodes: usize) -> StoreCluster {
    let builder = StoreCluster::builder(kind, 3);
    match kind {
        StoreKind::Etcd => builder.start(),
        StoreKind::ShoalKv => builder
            .program(binaries::shoal(), ["kv"])
            .args([
                "--max-connections-per-client".to_string(),
                (nodes + CONNECTIONS_SPARE).to_string(),
            ])
            .start(),
    }
}

/// Connections a member allows from 127.0.0.1 beyond one per node: the bench's own clients.
const CONNECTIONS_SPARE: usize = 100;

/// The members' process ids, for their CPU time and memory.
fn member_pids(cluster: &StoreCluster) -> Vec<u32> {
    (0..cluster.specs.len())
        .filter_map(|i| cluster.process(i).map(|member| member.child.id()))
        .collect()
}

/// Lets 1,000 clients and their store connections fit in the descriptor limit.
pub fn raise_fd_limit() {
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
    known: KnownSubnets,
    want: usize,
    start: Instant,
    converged: Arc<Mutex<Vec<f64>>>,
    done: Arc<AtomicUsize>,
    reported: bool,
}

/// A set of subnets: a bit per slot of the network's subnet length (8 KiB for the /24s of a
/// /8), so 5,000 nodes knowing 5,000 leases each cost the bench neither a hash per event nor
/// 5,000 hash tables; subnets of other lengths (none in this bench) go to a hash set.
struct KnownSubnets {
    network: Ipv4Network,
    subnet_len: u8,
    slots: Vec<u64>,
    others: HashSet<Ipv4Network>,
    count: usize,
}

impl KnownSubnets {
    fn new(config: &NetworkConfig) -> Self {
        let slots = 1usize << (config.subnet_len - config.network.prefix());
        Self {
            network: config.network,
            subnet_len: config.subnet_len,
            slots: vec![0; slots.div_ceil(64)],
            others: HashSet::new(),
            count: 0,
        }
    }

    fn slot(&self, subnet: Ipv4Network) -> Option<usize> {
        (subnet.prefix() == self.subnet_len && self.network.contains(subnet.network())).then(|| {
            ((u32::from(subnet.network()) - u32::from(self.network.network()))
                >> (32 - self.subnet_len)) as usize
        })
    }

    fn insert(&mut self, subnet: Ipv4Network) {
        let added = match self.slot(subnet) {
            Some(slot) => {
                let (word, bit) = (slot / 64, 1u64 << (slot % 64));
                let added = self.slots[word] & bit == 0;
                self.slots[word] |= bit;
                added
            }
            None => self.others.insert(subnet),
        };
        self.count += usize::from(added);
    }

    fn remove(&mut self, subnet: Ipv4Network) {
        let removed = match self.slot(subnet) {
            Some(slot) => {
                let (word, bit) = (slot / 64, 1u64 << (slot % 64));
                let removed = self.slots[word] & bit != 0;
                self.slots[word] &= !bit;
                removed
            }
            None => self.others.remove(&subnet),
        };
        self.count -= usize::from(removed);
    }

    /// Keeps only `keep`.
    fn retain(&mut self, keep: &[Ipv4Network]) {
        let mut kept = Self {
            network: self.network,
            subnet_len: self.subnet_len,
            slots: vec![0; self.slots.len()],
            others: HashSet::new(),
            count: 0,
        };
        for subnet in keep {
            if self.contains(*subnet) {
                kept.insert(*subnet);
            }
        }
        *self = kept;
    }

    fn contains(&self, subnet: Ipv4Network) -> bool {
        match self.slot(subnet) {
            Some(slot) => self.slots[slot / 64] & (1u64 << (slot % 64)) != 0,
            None => self.others.contains(&subnet),
        }
    }

    fn len(&self) -> usize {
        self.count
    }
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

impl PeerSink for Knowledge {
    async fn upsert(&mut self, lease: &Lease) -> BackendResult<()> {
        self.known.insert(lease.subnet);
        self.check();
        Ok(())
    }

    async fn remove(&mut self, lease: &Lease) -> BackendResult<()> {
        self.known.remove(lease.subnet);
        Ok(())
    }

    async fn resynced(&mut self, keep: &[Ipv4Network]) -> BackendResult<()> {
        // Linear in `keep`: a node's first list holds up to every lease, and a scan of `keep`
        // per known lease would cost each node the square of the node count.
        self.known.retain(keep);
        Ok(())
    }
}

async fn connect(endpoint: &str) -> Result<Registry> {
    let client = etcd_client::Client::connect([endpoint], None)
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Registry::from_client(client, endpoint, PREFIX)
        .await
        .with_context(|| format!("the lease watch's channel to {endpoint}"))
}

async fn run_nodes(kind: StoreKind, cluster: &StoreCluster, nodes: usize) -> Result<Outcome> {
    let config = NetworkConfig::parse(NETWORK)?;
    let endpoints = cluster.endpoints();
    // Connect every node first, so the measurement covers leases and watches only.
    let mut registries = Vec::with_capacity(nodes);
    for node in 0..nodes {
        registries.push(connect(&endpoints[node % endpoints.len()]).await?);
    }
    let client = [std::process::id()];
    let cpu_before = cpu_seconds(&member_pids(cluster));
    let client_cpu_before = cpu_seconds(&client);
    let client_rss_before_mb = rss_mb(&client, "VmRSS:");
    let tally = Arc::new(WatchTally::default());
    let rss_before_mb = rss_mb(&member_pids(cluster), "VmRSS:");
    let converged = Arc::new(Mutex::new(Vec::with_capacity(nodes)));
    let acquired = Arc::new(Mutex::new(Vec::with_capacity(nodes)));
    let done = Arc::new(AtomicUsize::new(0));
    let races = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(nodes);
    for (node, registry) in registries.into_iter().enumerate() {
        let config = config.clone();
        let (converged, acquired, done, races, tally) = (
            converged.clone(),
            acquired.clone(),
            done.clone(),
            races.clone(),
            tally.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let progress = Progress {
                start,
                converged,
                acquired,
                done,
                races,
                tally,
            };
            simulate_node(node, nodes, registry, config, progress).await
        }));
    }
    while done.load(Ordering::SeqCst) < nodes {
        if start.elapsed() > deadline(nodes) {
            bail!(
                "{}: only {} of {nodes} nodes knew every lease after {:?}",
                label(kind),
                done.load(Ordering::SeqCst),
                deadline(nodes)
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
    let client_cpu_s = cpu_seconds(&client) - client_cpu_before;
    let client_rss_mb = rss_mb(&client, "VmRSS:");
    let (watch_responses, watch_events) = (tally.responses(), tally.events());
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
    let store_peak_rss_mb = rss_mb(&member_pids(cluster), "VmHWM:");
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
        store_peak_rss_mb,
        cpu_ms_per_node: store_cpu_s * 1000.0 / nodes as f64,
        rss_kb_per_node: (store_peak_rss_mb - rss_before_mb).max(0.0) * 1024.0 / nodes as f64,
        leases_stored,
        races: races.load(Ordering::SeqCst),
        client_cpu_s,
        client_rss_mb,
        client_cpu_ms_per_node: client_cpu_s * 1000.0 / nodes as f64,
        client_rss_kb_per_node: (client_rss_mb - client_rss_before_mb).max(0.0) * 1024.0
            / nodes as f64,
        watch_responses,
        watch_events,
        events_per_response: watch_events as f64 / watch_responses.max(1) as f64,
    })
}

/// Where simulated nodes report their progress.
struct Progress {
    start: Instant,
    converged: Arc<Mutex<Vec<f64>>>,
    acquired: Arc<Mutex<Vec<f64>>>,
    done: Arc<AtomicUsize>,
    /// Create-if-absent transactions the nodes lost.
    races: Arc<AtomicUsize>,
    /// What the nodes' lease watches delivered.
    tally: Arc<WatchTally>,
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
        races,
        tally,
    } = progress;
    let public_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + node as u32 + 1);
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(BackendData::encode(&VxlanBackendData {
            vni: 1,
            vtep_mac: format_mac([2, 0, 0, (node >> 16) as u8, (node >> 8) as u8, node as u8]),
        })?),
        backend_v6_data: None,
    };
    let began = Instant::now();
    let own = acquire::acquire(&mut registry, &config, &attrs, None, LEASE_TTL).await?;
    races.fetch_add(own.races, Ordering::SeqCst);
    if let Ok(mut acquired) = acquired.lock() {
        acquired.push(began.elapsed().as_secs_f64());
    }
    let mut knowledge = Knowledge {
        known: KnownSubnets::new(&config),
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
    let mut sync = LeaseSync::new(registry, own.subnet, scope).with_tally(tally);
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
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|&pid| proc_stat(pid))
        .filter_map(|stat| {
            let utime: f64 = stat_field(&stat, 14)?.parse().ok()?;
            let stime: f64 = stat_field(&stat, 15)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// `/proc/<pid>/stat`, if the process still exists.
pub fn proc_stat(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Field `number` of a `/proc/<pid>/stat` line, numbered as in proc(5), from 3 (the state) on:
/// the command name before it (field 2) may hold spaces.
pub fn stat_field(stat: &str, number: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(number.checked_sub(3)?)
}

/// The sum of one memory line of `/proc/<pid>/status` (`VmRSS:` now, `VmHWM:` the peak) over
/// processes, in MiB.
pub fn rss_mb(pids: &[u32], field: &str) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|line| line.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .sum::<f64>()
        / 1024.0
}

/// The results table, as printed and as recorded in RESULTS.md: each node count's median round
/// per store, then every round's convergence time.
fn table(sizes: &[Size]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>6} {:>14} {:>14} {:>12} {:>11} {:>11} {:>11} {:>11} {:>11} {:>7} {:>6} {:>12} {:>13} {:>14} {:>14} {:>8}",
        "store",
        "nodes",
        "all leased (s)",
        "all known (s)",
        "p50 node (s)",
        "acq p50 ms",
        "acq p99 ms",
        "store CPU s",
        "CPU ms/node",
        "RSS KB/node",
        "leases",
        "races",
        "client CPU s",
        "client RSS MB",
        "client ms/node",
        "client KB/node",
        "ev/resp"
    );
    for size in sizes {
        for o in &size.median {
            let _ = writeln!(
                out,
                "{:<10} {:>6} {:>14.2} {:>14.2} {:>12.2} {:>11.1} {:>11.1} {:>11.1} {:>11.2} {:>11.1} {:>7} {:>6} {:>12.1} {:>13.0} {:>14.2} {:>14.1} {:>8.2}",
                o.store,
                o.nodes,
                o.all_acquired_s,
                o.all_known_s,
                percentile(&o.converged_s, 0.5),
                o.acquire_p50_ms,
                o.acquire_p99_ms,
                o.store_cpu_s,
                o.cpu_ms_per_node,
                o.rss_kb_per_node,
                o.leases_stored,
                o.races,
                o.client_cpu_s,
                o.client_rss_mb,
                o.client_cpu_ms_per_node,
                o.client_rss_kb_per_node,
                o.events_per_response
            );
        }
    }
    let _ = writeln!(
        out,
        "medians of alternating rounds; every round's all-known time (s):"
    );
    for size in sizes {
        for store in ["shoal-kv", "etcd-3.4"] {
            let rounds: Vec<String> = size
                .rounds
                .iter()
                .filter(|o| o.store == store)
                .map(|o| format!("{:.2}", o.all_known_s))
                .collect();
            let _ = writeln!(
                out,
                "  {} nodes, {store}: {}",
                size.nodes,
                rounds.join(", ")
            );
        }
        if let Some(ratio) = time_ratio(&size.median) {
            let target = if size.nodes >= 5000 {
                "target <= 0.50 and under 20 s"
            } else {
                "target <= 0.50"
            };
            let _ = writeln!(
                out,
                "{} nodes: shoal kv takes {ratio:.2}x etcd 3.4's time to converge ({target})",
                size.nodes
            );
        }
        if let [shoal, etcd] = size.median.as_slice() {
            let _ = writeln!(
                out,
                "{} nodes, the store's load per node: shoal kv {:.2} ms CPU and {:.1} KB RSS, \
                 etcd 3.4 {:.2} ms CPU and {:.1} KB RSS (shoal / etcd: CPU {}, RSS {})",
                size.nodes,
                shoal.cpu_ms_per_node,
                shoal.rss_kb_per_node,
                etcd.cpu_ms_per_node,
                etcd.rss_kb_per_node,
                ratio_text(shoal.cpu_ms_per_node, etcd.cpu_ms_per_node),
                ratio_text(shoal.rss_kb_per_node, etcd.rss_kb_per_node),
            );
        }
    }
    out
}

/// `shoal / etcd` as `0.48x`, or `n/a` when etcd's figure is zero.
fn ratio_text(shoal: f64, etcd: f64) -> String {
    if etcd > 0.0 {
        format!("{:.2}x", shoal / etcd)
    } else {
        "n/a".to_string()
    }
}

/// shoal kv's time until every node knew every lease, as a fraction of etcd's.
fn time_ratio(median: &[Outcome]) -> Option<f64> {
    match median {
        [shoal, etcd] if etcd.all_known_s > 0.0 => Some(shoal.all_known_s / etcd.all_known_s),
        _ => None,
    }
}

fn write_outputs(sizes: &[Size]) -> Result<()> {
    let json = serde_json::json!({
        "suite": "leases",
        "target_ratio": 0.5,
        "sizes": sizes,
    });
    crate::results::write_outputs("leases", &json, CHART)
}

/// Left: time until every node knew every lease against the node count (medians, with every
/// round as a dot). Right: the CDF of per-node convergence at the largest count.
const CHART: &str = r##"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.load(open(sys.argv[1]))
sizes = data["sizes"]
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
for store, color in (("shoal-kv", "#4c72b0"), ("etcd-3.4", "#dd8452")):
    xs = [s["nodes"] for s in sizes]
    med = [next((o["all_known_s"] for o in s["median"] if o["store"] == store), None) for s in sizes]
    left.plot(xs, med, marker="o", color=color, label=store + " (median)")
    for s in sizes:
        rounds = [o["all_known_s"] for o in s["rounds"] if o["store"] == store]
        left.scatter([s["nodes"]] * len(rounds), rounds, color=color, alpha=0.4, s=12)
left.set_xlabel("simulated flannel nodes")
left.set_ylabel("seconds until every node knows every lease")
left.set_title("time to converge, 3-member store")
left.set_ylim(bottom=0)
left.legend()
largest = sizes[-1]
for result in largest["median"]:
    times = result["converged_s"]
    right.plot(times, [(i + 1) / len(times) for i in range(len(times))],
               label="%s (all known in %.2f s)" % (result["store"], result["all_known_s"]))
right.set_xlabel("seconds since all nodes started")
right.set_ylabel("fraction of nodes that know every lease")
right.set_title("%d nodes, median round" % largest["nodes"])
right.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
"##;

#[cfg(test)]
mod tests {
    use super::stat_field;

    #[test]
    fn stat_fields_are_numbered_as_in_proc5_past_a_command_name_with_spaces() {
        let stat = "42 (kv m0 (x)) S 1 42 42 0 -1 4194560 10 0 0 0 7 3";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 14), Some("7"));
        assert_eq!(stat_field(stat, 15), Some("3"));
        assert_eq!(stat_field(stat, 16), None);
        assert_eq!(stat_field(stat, 2), None);
    }
}
