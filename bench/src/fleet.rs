//! `cargo xtask bench fleet`: fleet's engine at 1,000 simulated agents and 10,000 units with
//! mixed constraints, against a 3-member etcd 3.4 and a 3-member shoal kv side by side.
//!
//! The engine is shoal's real engine ([`shoal_scheduler::engine::run_engine`]), in this
//! process, on a connection of its own, as fleetctl's submit is. The agents are simulated: each
//! registers as the real agent does (a [`KeptLease`] refreshed every third of the TTL, its
//! machine key with metadata under it; a lease the store lets expire makes it register again
//! under a new one and report all its units again), and as soon as a unit is scheduled to it
//! and launched it writes what a real agent writes after starting it, under its lease: the
//! unit's state (`active/running`, with the unit's hash) and its journal (empty), each agent in
//! its own transactions of up to 128 operations. One watch, on its own connection, feeds all
//! simulated agents; the agents' keep-alives and reports go on connections shared by
//! [`AGENTS_PER_CONNECTION`] agents.
//!
//! Measured: submit -> every unit reported running by its target machine; after 10% of the
//! agents stop heart-beating, the time from their machine keys expiring (TTL) to all their units
//! running elsewhere; store key writes per second (watch events) during the launch; and the
//! store members' CPU and resident memory per unit, and the bench process's memory. `--machines
//! 1000,5000 --units 10000,50000` measures each pair in turn; rounds (`--rounds`) alternate
//! between the stores, a fresh cluster each, and the table reports each store's median launch
//! with every round. A round that fails (a store error, or no unit more running for a minute)
//! is reported with its reason and the other rounds go on.
//! FLEET_BENCH_TTL sets the agents' lease TTL (10 s).

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::bail;
use etcd_client::{EventType, PutOptions, Txn, TxnOp, WatchOptions};
use serde_json::json;
use shoal_harness::{StoreCluster, StoreKind};
use shoal_scheduler::{
    engine::{EngineSettings, run_engine},
    lease::KeptLease,
    registry::{Registry, ValidUnit},
    store::{DEFAULT_PREFIX, JobRecord, MachineRecord, Store, TargetState, UnitStateRecord},
};
use tokio::sync::{mpsc, watch};

/// The stores' labels in the order the table and the ratios use them.
const STORES: [&str; 2] = ["etcd-3.4", "shoal-kv"];
/// Issue 18: a lost machine's units run elsewhere within 5 s of its TTL.
const RESCHEDULE_TARGET: Duration = Duration::from_secs(5);
/// One agent in this many stops heart-beating.
const DEAD_FRACTION: usize = 10;
/// Agents and units when the flags name none.
pub const DEFAULT_MACHINES: usize = 1_000;
pub const DEFAULT_UNITS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Scale {
    machines: usize,
    units: usize,
    ttl: Duration,
}

/// The scales to measure, `machines[i]` agents with `units[i]` units each, and the rounds.
pub struct Settings {
    pub machines: Vec<usize>,
    pub units: Vec<usize>,
    pub rounds: usize,
}

impl Settings {
    fn scales(&self) -> anyhow::Result<Vec<Scale>> {
        anyhow::ensure!(
            self.machines.len() == self.units.len(),
            "--machines and --units name {} and {} scales: give one unit count per machine count",
            self.machines.len(),
            self.units.len()
        );
        let ttl = std::env::var("FLEET_BENCH_TTL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        Ok(self
            .machines
            .iter()
            .zip(&self.units)
            .map(|(&machines, &units)| Scale {
                machines,
                units,
                ttl: Duration::from_secs(ttl),
            })
            .collect())
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Outcome {
    store: String,
    machines: usize,
    units: usize,
    /// From the start of the submit until every unit is submitted and launched (fleetctl).
    submit_s: f64,
    /// From the start of the submit until every unit has a target (the engine).
    scheduled_s: f64,
    launch_s: f64,
    dead_agents: usize,
    orphaned_units: usize,
    ttl_s: f64,
    reschedule_after_expiry_s: f64,
    reschedule_after_kill_s: f64,
    key_writes_per_s: f64,
    write_txns_per_s: f64,
    /// The members' CPU milliseconds per unit, from submit to all running.
    cpu_ms_per_unit: f64,
    /// What the members' peak resident memory grew by, per unit, from before the agents
    /// registered to all running.
    rss_kb_per_unit: f64,
    /// The members' peak resident memory together, MB, at all running.
    members_rss_mb: f64,
    /// The bench process's resident memory (engine, fleetctl, simulated agents), MB, at all
    /// running.
    bench_rss_mb: f64,
    /// How often a live agent's lease expired and it registered again.
    leases_lost: u64,
}

pub fn run(settings: &Settings) -> anyhow::Result<Option<String>> {
    let scales = settings.scales()?;
    // The engine's warnings (leadership lost, a failed reconcile) explain a slow or failed
    // round; RUST_LOG chooses others.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("shoal_scheduler::engine=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut sizes = Vec::new();
    for scale in scales {
        let rounds = runtime.block_on(async {
            let mut rounds = Vec::new();
            let mut failures = Vec::new();
            for round in 1..=settings.rounds {
                for backend in [StoreKind::Etcd, StoreKind::ShoalKv] {
                    println!(
                        "fleet bench: {} on a 3-member {}, round {round}",
                        describe(scale),
                        backend.name()
                    );
                    // Starting polls the members until they answer: off the runtime's workers.
                    let cluster = tokio::task::spawn_blocking(move || start_store(backend)).await?;
                    let pids: Vec<u32> = (0..cluster.specs.len())
                        .filter_map(|i| cluster.process(i).map(|member| member.child.id()))
                        .collect();
                    let outcome = scenario(
                        crate::leases::label(backend),
                        &cluster.client_urls(),
                        &pids,
                        scale,
                    )
                    .await;
                    drop(cluster);
                    match outcome {
                        Ok(outcome) => rounds.push(outcome),
                        Err(err) => {
                            let reason = format!("{err:#}{}", agent_trouble());
                            println!("  {} failed: {reason}", backend.name());
                            failures.push(Failure {
                                store: crate::leases::label(backend).to_string(),
                                round,
                                reason,
                            });
                        }
                    }
                }
            }
            anyhow::Ok((rounds, failures))
        })?;
        let (rounds, failures) = rounds;
        // A scale no store completed stays in the table and the chart, with its failures.
        if rounds.is_empty() {
            println!("  no store completed the scenario at {}", describe(scale));
        }
        let median = STORES
            .into_iter()
            .filter_map(|store| median_round(&rounds, store))
            .collect();
        sizes.push(Size {
            machines: scale.machines,
            units: scale.units,
            rounds,
            failures,
            median,
        });
    }
    write_outputs(&sizes)?;
    Ok(Some(table(&sizes)))
}

/// What went wrong for the simulated agents in a failed round (leases lost, reports tried
/// again), counted since the round began.
fn agent_trouble() -> String {
    let lost = LEASES_LOST.swap(0, std::sync::atomic::Ordering::Relaxed);
    let retries = REPORT_RETRIES.swap(0, std::sync::atomic::Ordering::Relaxed);
    format!(" (live agents' leases expired {lost} times; {retries} reports tried again)")
}

/// Every round at one scale and each store's median round.
#[derive(Debug, serde::Serialize)]
struct Size {
    machines: usize,
    units: usize,
    rounds: Vec<Outcome>,
    /// Rounds that did not complete, and why.
    failures: Vec<Failure>,
    median: Vec<Outcome>,
}

/// A round that did not complete.
#[derive(Debug, serde::Serialize)]
struct Failure {
    store: String,
    round: usize,
    reason: String,
}

/// The round of `store` with the median launch time.
fn median_round(rounds: &[Outcome], store: &str) -> Option<Outcome> {
    let mut mine: Vec<&Outcome> = rounds.iter().filter(|o| o.store == store).collect();
    mine.sort_by(|a, b| a.launch_s.total_cmp(&b.launch_s));
    mine.get(mine.len() / 2).map(|o| (*o).clone())
}

/// How long a launch may take before the round counts as failed: generous, the point is to
/// report slow runs, not to lose them.
fn launch_limit(scale: Scale) -> Duration {
    Duration::from_secs(180 + scale.units as u64 / 100)
}

fn describe(scale: Scale) -> String {
    format!(
        "{} agents, {} units, TTL {:?}",
        scale.machines, scale.units, scale.ttl
    )
}

/// Three members on loopback; shoal kv snapshots every 10,000 entries, as it always has here.
fn start_store(kind: StoreKind) -> StoreCluster {
    let builder = StoreCluster::builder(kind, 3);
    match kind {
        StoreKind::Etcd => builder.start(),
        StoreKind::ShoalKv => builder.args(["--snapshot-count", "10000"]).start(),
    }
}

fn machine_id(index: usize) -> String {
    format!("{:08x}{:024x}", 0x1000_0000 + index, index)
}

fn machine_metadata(index: usize) -> Vec<(String, String)> {
    let role = match index % 5 {
        0 => "db",
        1 => "cache",
        _ => "web",
    };
    let disk = if index.is_multiple_of(2) {
        "ssd"
    } else {
        "hdd"
    };
    vec![
        ("role".into(), role.into()),
        ("rack".into(), format!("r{}", index % 10)),
        ("disk".into(), disk.into()),
    ]
}

/// The unit mix: 40% free, 30% web by metadata, 10% db on ssd (AND), 5% spread by
/// Conflicts, 5% MachineOf sidecars, 10% `!=` and OR metadata.
fn unit_mix(count: usize) -> Vec<(String, String)> {
    let body = "[Service]\nExecStart=/bin/sleep infinity\n[X-Fleet]\n";
    (0..count)
        .map(|i| match i % 20 {
            0..=7 => (format!("free-{i}.service"), body.to_string()),
            8..=13 => (
                format!("web@{i}.service"),
                format!("{body}MachineMetadata=role=web\n"),
            ),
            14 | 15 => (
                format!("db@{i}.service"),
                format!("{body}MachineMetadata=role=db\nMachineMetadata=disk=ssd\n"),
            ),
            16 => (
                format!("spread@{i}.service"),
                format!("{body}Conflicts=spread@*.service\n"),
            ),
            17 => (
                format!("side-{i}.service"),
                format!("{body}MachineOf=free-{}.service\n", i - 17),
            ),
            _ => (
                format!("edge@{i}.service"),
                format!("{body}MachineMetadata=role!=db rack=r1 rack=r2 rack=r3\n"),
            ),
        })
        .collect()
}

/// What the simulator and the measurement know about the cluster, from one watch.
#[derive(Default)]
struct View {
    target: HashMap<String, String>,
    /// Each job's unit hash, from its object.
    hash: HashMap<String, String>,
    launched: HashSet<String>,
    /// The machines each unit is reported running on.
    running: HashMap<String, HashSet<String>>,
    /// Units reported running on the machine they are scheduled to, kept as events arrive so
    /// the waits below cost nothing per event at 50,000 units.
    settled: HashSet<String>,
    /// Why the engine could not place a unit, as it wrote it.
    unschedulable: HashMap<String, String>,
    /// Machines registered (their keys live).
    machines: HashSet<String>,
    key_writes: u64,
    revisions: HashSet<i64>,
    /// Why the simulated agents stopped, if they did.
    stopped: Option<String>,
}

impl View {
    fn is_running(&self, unit: &str) -> bool {
        self.settled.contains(unit)
    }

    /// Re-derives whether `unit` runs where it is scheduled, after one of its keys changed.
    fn refresh(&mut self, unit: &str) {
        let settled = self.target.get(unit).is_some_and(|machine| {
            self.running
                .get(unit)
                .is_some_and(|machines| machines.contains(machine))
        });
        if settled {
            self.settled.insert(unit.to_string());
        } else {
            self.settled.remove(unit);
        }
    }

    /// The report `unit`'s agent writes once it runs it: when it is launched and has a target.
    fn report(&self, unit: &str) -> Option<Report> {
        let machine = self
            .target
            .get(unit)
            .filter(|_| self.launched.contains(unit))?;
        Some(Report {
            unit: unit.to_string(),
            machine: machine.clone(),
            hash: self.hash.get(unit).cloned().unwrap_or_default(),
        })
    }

    /// Fails once the simulated agents have stopped: nothing the waits wait for can happen.
    fn check_agents(&self) -> anyhow::Result<()> {
        match &self.stopped {
            Some(reason) => bail!("the simulated agents stopped: {reason}"),
            None => Ok(()),
        }
    }

    /// How many of `units` do not run where they are scheduled.
    fn unsettled(&self, units: &[String]) -> usize {
        units.iter().filter(|u| !self.is_running(u)).count()
    }

    /// Why `units` that do not run where they should do not, counted by cause, with one
    /// example of each: what a failed round reports.
    fn describe_missing<'a>(
        &self,
        units: impl IntoIterator<Item = &'a String>,
        dead: &HashSet<&String>,
    ) -> String {
        let mut causes: std::collections::BTreeMap<&str, (usize, String)> = Default::default();
        for unit in units {
            let cause = match self.target.get(unit) {
                _ if !self.launched.contains(unit) => "not launched",
                None if self.unschedulable.contains_key(unit) => "unschedulable",
                None => "no target",
                Some(machine) if dead.contains(machine) => "on a dead machine",
                Some(machine) if !self.machines.contains(machine) => "on a machine not registered",
                Some(machine) if self.running.get(unit).is_some_and(|m| !m.contains(machine)) => {
                    "reported running elsewhere only"
                }
                Some(_) => "not reported running",
            };
            let entry = causes.entry(cause).or_insert_with(|| {
                let reason = self.unschedulable.get(unit).map(|r| format!(": {r}"));
                (0, format!("{unit}{}", reason.unwrap_or_default()))
            });
            entry.0 += 1;
        }
        causes
            .iter()
            .map(|(cause, (count, example))| format!("{count} {cause} (e.g. {example})"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

async fn scenario(
    store_name: &str,
    endpoints: &[String],
    pids: &[u32],
    scale: Scale,
) -> anyhow::Result<Outcome> {
    let rss_before_mb = crate::leases::rss_mb(pids, "VmRSS:");
    LEASES_LOST.store(0, std::sync::atomic::Ordering::Relaxed);
    REPORT_RETRIES.store(0, std::sync::atomic::Ordering::Relaxed);
    // The engine, fleetctl and the agents' watch each on a connection of their own, as they
    // are on a real cluster's machines.
    let (fleetctl, engine_store, watcher) = (
        connect(endpoints).await?,
        connect(endpoints).await?,
        connect(endpoints).await?,
    );
    let (stop, shutdown) = watch::channel(false);
    let (reregistered, reregistrations) = mpsc::unbounded_channel();
    let agents = Agents::start(endpoints, scale.machines, scale.ttl, reregistered).await?;
    let mut engine = AbortOnDrop(tokio::spawn(run_engine(
        engine_store,
        EngineSettings {
            machine_id: "engine-bench".into(),
            lease_ttl: Duration::from_secs(10),
            reconcile_interval: Duration::from_secs(2),
        },
        shutdown.clone(),
    )));
    let (view_tx, mut view_rx) = watch::channel(0u64);
    // The agents registered before the watch began: their machines start the view.
    let view = std::sync::Arc::new(tokio::sync::Mutex::new(View {
        machines: agents.ids.iter().cloned().collect(),
        ..View::default()
    }));
    let (watching, watch_started) = tokio::sync::oneshot::channel();
    let simulated = simulate(
        watcher,
        agents.sessions.clone(),
        reregistrations,
        view.clone(),
        view_tx,
        watching,
        shutdown.clone(),
    );
    let simulator_view = view.clone();
    let simulator = AbortOnDrop(tokio::spawn(async move {
        // The waits below see the simulated agents stop, and why, instead of a frozen view.
        let reason = match simulated.await {
            Ok(()) => "their watch ended".to_string(),
            Err(err) => format!("{err:#}"),
        };
        simulator_view.lock().await.stopped = Some(reason);
    }));
    // The submit starts once the agents' watch sees every write.
    watch_started
        .await
        .map_err(|_| anyhow::anyhow!("the simulated agents' watch did not start"))?;

    let units = unit_mix(scale.units);
    let names: Vec<String> = units.iter().map(|(n, _)| n.clone()).collect();
    let valid: Vec<ValidUnit> = units
        .iter()
        .map(|(name, text)| ValidUnit::new(name, name, text))
        .collect::<Result<_, _>>()?;
    let registry = Registry::new(fleetctl);
    let (writes_before, revisions_before) = {
        let v = view.lock().await;
        (v.key_writes, v.revisions.len())
    };
    let cpu_before = crate::leases::cpu_seconds(pids);
    let started = Instant::now();
    registry.submit(&valid, false).await?;
    registry
        .set_target_state(&names, TargetState::Launched)
        .await?;
    let submit_s = started.elapsed().as_secs_f64();
    let all_targeted = wait_all_running(&view, &mut view_rx, &names, launch_limit(scale)).await?;
    let launch = started.elapsed();
    let scheduled_s = all_targeted.duration_since(started).as_secs_f64();
    let launch_cpu_s = crate::leases::cpu_seconds(pids) - cpu_before;
    let launch_rss_mb = crate::leases::rss_mb(pids, "VmHWM:");
    let bench_rss_mb = crate::leases::rss_mb(&[std::process::id()], "VmRSS:");
    let (key_writes, txns) = {
        let v = view.lock().await;
        (
            v.key_writes - writes_before,
            v.revisions.len() - revisions_before,
        )
    };
    println!(
        "  launched {} units in {:.2} s",
        names.len(),
        launch.as_secs_f64()
    );

    // 10% of the agents stop heart-beating; their units must move once their TTL expires.
    let dead: Vec<String> = agents
        .ids
        .iter()
        .take((scale.machines / DEAD_FRACTION).max(1))
        .cloned()
        .collect();
    let orphans: Vec<String> = {
        let v = view.lock().await;
        let dead_set: HashSet<&String> = dead.iter().collect();
        v.target
            .iter()
            .filter(|(_, m)| dead_set.contains(m))
            .map(|(u, _)| u.clone())
            .collect()
    };
    agents.kill(&dead).await;
    let killed = Instant::now();
    let expired = wait_machines_gone(&view, &mut view_rx, &dead, scale.ttl * 3).await?;
    let mut orphan_names = orphans.clone();
    orphan_names.sort();
    wait_moved(
        &view,
        &mut view_rx,
        &orphan_names,
        &dead,
        Duration::from_secs(120),
    )
    .await?;
    let reschedule = expired.elapsed();
    let since_kill = killed.elapsed();
    println!(
        "  {} units of {} dead agents running elsewhere {:.2} s after their TTL expired ({:.2} s after they died)",
        orphans.len(),
        dead.len(),
        reschedule.as_secs_f64(),
        since_kill.as_secs_f64()
    );
    let retries = REPORT_RETRIES.swap(0, std::sync::atomic::Ordering::Relaxed);
    if retries > 0 {
        println!("  {retries} simulated agents' reports failed and were tried again");
    }
    let leases_lost = LEASES_LOST.swap(0, std::sync::atomic::Ordering::Relaxed);
    if leases_lost > 0 {
        println!(
            "  {leases_lost} times a live simulated agent's lease expired (keep-alives late) and it registered again"
        );
    }
    let _ = stop.send(true);
    let _ = (&mut engine.0).await;
    drop(simulator);
    drop(agents);
    Ok(Outcome {
        store: store_name.to_string(),
        machines: scale.machines,
        units: scale.units,
        submit_s,
        scheduled_s,
        launch_s: launch.as_secs_f64(),
        dead_agents: dead.len(),
        orphaned_units: orphans.len(),
        ttl_s: scale.ttl.as_secs_f64(),
        reschedule_after_expiry_s: reschedule.as_secs_f64(),
        reschedule_after_kill_s: since_kill.as_secs_f64(),
        key_writes_per_s: key_writes as f64 / launch.as_secs_f64(),
        write_txns_per_s: txns as f64 / launch.as_secs_f64(),
        cpu_ms_per_unit: launch_cpu_s * 1000.0 / scale.units as f64,
        rss_kb_per_unit: (launch_rss_mb - rss_before_mb).max(0.0) * 1024.0 / scale.units as f64,
        members_rss_mb: launch_rss_mb,
        bench_rss_mb,
        leases_lost,
    })
}

/// Simulated agents: leases kept alive as the real agent keeps them, machine keys.
struct Agents {
    ids: Vec<String>,
    sessions: Sessions,
    killers: HashMap<String, mpsc::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A live agent's current lease and the connection it writes on.
#[derive(Clone)]
struct Session {
    lease: i64,
    store: Store,
}

/// Every live agent's session, by machine ID (a dead agent has none).
type Sessions = std::sync::Arc<std::sync::Mutex<HashMap<String, Session>>>;

/// How many simulated agents register at once.
const REGISTERING_AT_ONCE: usize = 64;
/// Simulated agents sharing one client connection. A real agent has a connection of its own;
/// 5,000 would cost the bench process more than the store. No agent shares a connection with
/// the engine's or the simulator's watch: a watch read late holds the connection's HTTP/2
/// flow-control window, and keep-alive answers queued behind it let leases expire.
const AGENTS_PER_CONNECTION: usize = 100;
/// Agents that lost their lease (and registered again), printed at the end of a round.
static LEASES_LOST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One registered simulated agent.
struct Registered {
    id: String,
    session: Session,
    kill: mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Agents {
    /// Registers `count` agents, [`REGISTERING_AT_ONCE`] at a time (one after the other, 5,000
    /// would take longer than the measurement), on connections of their own.
    async fn start(
        endpoints: &[String],
        count: usize,
        ttl: Duration,
        reregistered: mpsc::UnboundedSender<String>,
    ) -> anyhow::Result<Self> {
        let mut connections = Vec::new();
        for _ in 0..count.div_ceil(AGENTS_PER_CONNECTION).max(1) {
            connections.push(connect(endpoints).await?);
        }
        let mut agents = Self {
            ids: Vec::new(),
            sessions: Default::default(),
            killers: HashMap::new(),
            tasks: Vec::new(),
        };
        let mut registering = tokio::task::JoinSet::new();
        let mut registered = Vec::with_capacity(count);
        for index in 0..count {
            if registering.len() >= REGISTERING_AT_ONCE
                && let Some(done) = registering.join_next().await
            {
                registered.push(done??);
            }
            registering.spawn(register_agent(
                connections[index % connections.len()].clone(),
                index,
                ttl,
                agents.sessions.clone(),
                reregistered.clone(),
            ));
        }
        while let Some(done) = registering.join_next().await {
            registered.push(done??);
        }
        registered.sort_by(|a: &Registered, b| a.id.cmp(&b.id));
        let mut sessions = agents
            .sessions
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        for agent in registered {
            sessions.insert(agent.id.clone(), agent.session);
            agents.killers.insert(agent.id.clone(), agent.kill);
            agents.tasks.push(agent.task);
            agents.ids.push(agent.id);
        }
        drop(sessions);
        Ok(agents)
    }

    async fn kill(&self, ids: &[String]) {
        for id in ids {
            if let Some(kill) = self.killers.get(id) {
                let _ = kill.send(()).await;
            }
            if let Ok(mut sessions) = self.sessions.lock() {
                sessions.remove(id);
            }
        }
    }
}

/// A failed round leaves no agent heart-beating against the next round's store.
impl Drop for Agents {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A task of a round (the engine, the simulated agents), stopped when the round ends, also
/// when it fails half-way.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection of the bench's own (engine, fleetctl, simulator, a group of agents).
async fn connect(endpoints: &[String]) -> anyhow::Result<Store> {
    Ok(Store::connect(endpoints, DEFAULT_PREFIX, Duration::from_secs(10)).await?)
}

/// Agent `index`'s machine record: its ID, an address and its metadata.
fn machine_record(index: usize) -> MachineRecord {
    MachineRecord {
        id: machine_id(index),
        public_ip: format!(
            "10.{}.{}.{}",
            index >> 16 & 255,
            index >> 8 & 255,
            index & 255
        ),
        metadata: machine_metadata(index).into_iter().collect(),
        version: "bench".into(),
    }
}

/// Agent `index`, registered as the real agent registers (a [`KeptLease`], its machine key
/// under it), and a task that, like the real agent, registers again under a new lease when the
/// store says the lease is gone, until it is told to stop (its lease then expires by its TTL).
async fn register_agent(
    store: Store,
    index: usize,
    ttl: Duration,
    sessions: Sessions,
    reregistered: mpsc::UnboundedSender<String>,
) -> anyhow::Result<Registered> {
    let record = machine_record(index);
    let id = record.id.clone();
    let first = register(&store, &record, ttl).await?;
    let session = Session {
        lease: first.id(),
        store: store.clone(),
    };
    let (kill, mut killed) = mpsc::channel::<()>(1);
    let task = tokio::spawn(async move {
        let mut kept = first;
        loop {
            tokio::select! {
                _ = kept.lost() => {}
                // Dropping the lease stops its keep-alives: it expires by its TTL.
                _ = killed.recv() => return,
            }
            LEASES_LOST.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            kept = loop {
                tokio::select! {
                    again = register(&store, &record, ttl) => match again {
                        Ok(again) => break again,
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    },
                    _ = killed.recv() => return,
                }
            };
            if let Ok(mut sessions) = sessions.lock() {
                let session = Session {
                    lease: kept.id(),
                    store: store.clone(),
                };
                sessions.insert(record.id.clone(), session);
            }
            // The real agent reports every unit it runs again after registering.
            let _ = reregistered.send(record.id.clone());
        }
    });
    Ok(Registered {
        id,
        session,
        kill,
        task,
    })
}

/// A lease kept alive in the background and `record` written under it.
async fn register(
    store: &Store,
    record: &MachineRecord,
    ttl: Duration,
) -> anyhow::Result<KeptLease> {
    let lease = KeptLease::grant(store, ttl).await?;
    let mut client = store.client();
    store
        .call(
            "register machine",
            client.put(
                store.keys().machine(&record.id),
                serde_json::to_string(record)?,
                Some(PutOptions::new().with_lease(lease.id())),
            ),
        )
        .await?;
    Ok(lease)
}

/// The agents' side: report units scheduled to a live agent as running, under its lease, on
/// the agent's connection; an agent that registered again reports all its units again.
async fn simulate(
    store: Store,
    sessions: Sessions,
    mut reregistered: mpsc::UnboundedReceiver<String>,
    view: std::sync::Arc<tokio::sync::Mutex<View>>,
    notify: watch::Sender<u64>,
    watching: tokio::sync::oneshot::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let keys = store.keys().clone();
    let mut client = store.client();
    let mut events = client
        .watch(keys.prefix(), Some(WatchOptions::new().with_prefix()))
        .await?;
    let _ = watching.send(());
    let mut pending: Vec<Report> = Vec::new();
    // Reports are written beside the watch, as agents write theirs on their own.
    let mut reporting = tokio::task::JoinSet::new();
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(REPORTS_IN_FLIGHT));
    let mut flush = tokio::time::interval(Duration::from_millis(50));
    let mut generation = 0u64;
    loop {
        tokio::select! {
            message = events.message() => {
                let Some(response) = message? else { return Ok(()) };
                if response.canceled() {
                    bail!("the store cancelled the agents' watch: {}", response.cancel_reason());
                }
                let mut v = view.lock().await;
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    v.key_writes += 1;
                    v.revisions.insert(kv.mod_revision());
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let value = String::from_utf8_lossy(kv.value()).into_owned();
                    let put = event.event_type() == EventType::Put;
                    if let Some((unit, field)) = keys.parse_job_key(&key) {
                        match (field, put) {
                            ("object", true) => {
                                if let Ok(record) = serde_json::from_str::<JobRecord>(&value) {
                                    v.hash.insert(unit.to_string(), record.unit_hash);
                                }
                                continue;
                            }
                            ("target", true) => { v.target.insert(unit.to_string(), value.clone()); }
                            ("target", false) => { v.target.remove(unit); }
                            ("unschedulable", true) => { v.unschedulable.insert(unit.to_string(), value.clone()); continue; }
                            ("unschedulable", false) => { v.unschedulable.remove(unit); continue; }
                            ("target-state", true) if value == "launched" => { v.launched.insert(unit.to_string()); }
                            ("target-state", _) => { v.launched.remove(unit); }
                            _ => continue,
                        }
                        if let Some(report) = v.report(unit) {
                            pending.push(report);
                        }
                        v.refresh(unit);
                    } else if let Some(machine) = keys.parse_machine_key(&key) {
                        if put { v.machines.insert(machine.to_string()); } else { v.machines.remove(machine); }
                    } else if let Some((unit, machine)) = keys.parse_state_key(&key) {
                        let machines = v.running.entry(unit.to_string()).or_default();
                        if put { machines.insert(machine.to_string()); } else { machines.remove(machine); }
                        v.refresh(unit);
                    }
                }
                generation += 1;
                let _ = notify.send(generation);
            }
            Some(machine) = reregistered.recv() => {
                let v = view.lock().await;
                let units = v.target.iter().filter(|(_, m)| **m == machine).map(|(u, _)| u);
                pending.extend(units.filter_map(|unit| v.report(unit)));
            }
            _ = flush.tick() => {
                while let Some(done) = reporting.try_join_next() {
                    done??;
                }
                if !pending.is_empty() {
                    let batch = std::mem::take(&mut pending);
                    reporting.spawn(report_running(sessions.clone(), in_flight.clone(), batch));
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// A unit a simulated agent has started and reports.
struct Report {
    unit: String,
    machine: String,
    hash: String,
}

/// Writes `batch`'s reports as each agent writes its own: the unit's state and journal under
/// the agent's lease, on its connection, every agent in its own transactions of up to 128
/// operations, all agents at once within `in_flight`.
async fn report_running(
    sessions: Sessions,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    batch: Vec<Report>,
) -> anyhow::Result<()> {
    // One report per unit and agent (a unit's job events may queue it twice).
    let mut by_agent: HashMap<String, std::collections::BTreeMap<String, String>> = HashMap::new();
    for report in batch {
        by_agent
            .entry(report.machine)
            .or_default()
            .insert(report.unit, report.hash);
    }
    let agents: Vec<(String, Session, std::collections::BTreeMap<String, String>)> = {
        let sessions = sessions.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        by_agent
            .into_iter()
            // A dead agent reports nothing.
            .filter_map(|(machine, units)| {
                Some((machine.clone(), sessions.get(&machine)?.clone(), units))
            })
            .collect()
    };
    let mut writes = tokio::task::JoinSet::new();
    for (machine, session, units) in agents {
        let keys = session.store.keys();
        let options = PutOptions::new().with_lease(session.lease);
        let mut ops = Vec::with_capacity(units.len() * 2);
        for (unit, hash) in units {
            let record = UnitStateRecord {
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                machine_id: machine.clone(),
                unit_hash: hash,
                main_pid: None,
                since: None,
            };
            ops.push(TxnOp::put(
                keys.state(&unit, &machine),
                serde_json::to_string(&record)?,
                Some(options.clone()),
            ));
            ops.push(TxnOp::put(
                keys.journal(&unit, &machine),
                "",
                Some(options.clone()),
            ));
        }
        for chunk in ops.chunks(shoal_scheduler::store::MAX_TXN_OPS) {
            // Thousands of agents answering the same events at once timed etcd's requests out.
            let permit = in_flight.clone().acquire_owned().await?;
            let store = session.store.clone();
            let txn = Txn::new().and_then(chunk.to_vec());
            writes.spawn(async move {
                let written = report_txn(store, txn).await;
                drop(permit);
                written
            });
            while let Some(done) = writes.try_join_next() {
                done??;
            }
        }
    }
    while let Some(done) = writes.join_next().await {
        done??;
    }
    Ok(())
}

/// At most this many report transactions are in flight (all flushes together).
const REPORTS_IN_FLIGHT: usize = 256;
/// Reports that failed and were tried again, printed once at the end of a round.
static REPORT_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// gRPC's NOT_FOUND, the store's answer to a write under a lease that is gone.
const NOT_FOUND: i32 = 5;

/// One agent's report transaction, tried again as an agent reports again after a failure. A
/// report under a lease the store no longer has is dropped: the agent registers again under a
/// new lease and then reports everything again.
async fn report_txn(store: Store, txn: Txn) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        let mut client = store.client();
        match client.txn(txn.clone()).await {
            Ok(_) => return Ok(()),
            Err(etcd_client::Error::GRpcStatus(status))
                if i32::from(status.code()) == NOT_FOUND =>
            {
                return Ok(());
            }
            Err(err) if attempt < 20 => {
                attempt += 1;
                if REPORT_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                    eprintln!("  a simulated agent's report failed (trying again): {err}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Until the view changes or `period` passes (a view whose simulator stopped changes no more:
/// the waits then notice why).
async fn next_change(changes: &mut watch::Receiver<u64>, period: Duration) {
    if let Ok(Err(_)) = tokio::time::timeout(period, changes.changed()).await {
        tokio::time::sleep(period).await;
    }
}

/// A launch with no unit more running for this long has failed.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// Waits until every unit runs where it is scheduled; returns when every unit first had a
/// target (the engine's share of the launch).
async fn wait_all_running(
    view: &tokio::sync::Mutex<View>,
    changes: &mut watch::Receiver<u64>,
    names: &[String],
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    let mut all_targeted = None;
    let mut progress = (0, Instant::now());
    loop {
        {
            let v = view.lock().await;
            v.check_agents()?;
            if all_targeted.is_none()
                && v.target.len() >= names.len()
                && names.iter().all(|n| v.target.contains_key(n))
            {
                all_targeted = Some(Instant::now());
            }
            if v.settled.len() > progress.0 {
                progress = (v.settled.len(), Instant::now());
            } else if progress.1.elapsed() > STALL_LIMIT {
                let missing = v.unsettled(names);
                bail!(
                    "{missing} of {} units not running, none more for {STALL_LIMIT:?}: {}",
                    names.len(),
                    v.describe_missing(names.iter().filter(|u| !v.is_running(u)), &HashSet::new())
                );
            }
            // Counting is only worth it once as many units have settled as there are.
            if v.settled.len() >= names.len() {
                let missing = v.unsettled(names);
                if missing == 0 {
                    return Ok(all_targeted.unwrap_or_else(Instant::now));
                }
            }
            if Instant::now() > deadline {
                let missing = v.unsettled(names);
                bail!(
                    "{missing} units not running after {limit:?}: {}",
                    v.describe_missing(names.iter().filter(|u| !v.is_running(u)), &HashSet::new())
                );
            }
        }
        next_change(changes, Duration::from_millis(200)).await;
    }
}

/// Waits until the watch has seen every one of `dead`'s machine keys expire.
async fn wait_machines_gone(
    view: &tokio::sync::Mutex<View>,
    changes: &mut watch::Receiver<u64>,
    dead: &[String],
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        {
            let v = view.lock().await;
            v.check_agents()?;
            if dead.iter().all(|id| !v.machines.contains(id)) {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("dead agents' machine keys did not expire within {limit:?}");
        }
        next_change(changes, Duration::from_millis(50)).await;
    }
}

async fn wait_moved(
    view: &tokio::sync::Mutex<View>,
    changes: &mut watch::Receiver<u64>,
    units: &[String],
    dead: &[String],
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let dead: HashSet<&String> = dead.iter().collect();
    loop {
        {
            let v = view.lock().await;
            v.check_agents()?;
            let missing = units
                .iter()
                .filter(|u| {
                    !(v.is_running(u) && v.target.get(*u).is_some_and(|m| !dead.contains(m)))
                })
                .count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                let not_moved = units.iter().filter(|u| {
                    !(v.is_running(u) && v.target.get(*u).is_some_and(|m| !dead.contains(m)))
                });
                bail!(
                    "{missing} orphaned units not running elsewhere after {limit:?}: {}",
                    v.describe_missing(not_moved, &dead)
                );
            }
        }
        next_change(changes, Duration::from_millis(100)).await;
    }
}

/// The results table, as printed and as recorded in RESULTS.md: each scale's median round per
/// store, every round's launch and rescheduling times, and shoal kv's ratios to etcd.
fn table(sizes: &[Size]) -> String {
    let mut out = String::new();
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<10} {:>8} {:>7} {:>9} {:>11} {:>9} {:>11} {:>10} {:>9} {:>8} {:>11} {:>11} {:>10} {:>8}",
        "store",
        "machines",
        "units",
        "submit s",
        "scheduled s",
        "launch s",
        "resched s*",
        "since kill",
        "writes/s",
        "txns/s",
        "CPU ms/unit",
        "RSS KB/unit",
        "members MB",
        "bench MB"
    );
    for size in sizes {
        for o in &size.median {
            let _ = writeln!(
                out,
                "{:<10} {:>8} {:>7} {:>9.2} {:>11.2} {:>9.2} {:>11.2} {:>10.2} {:>9.0} {:>8.0} {:>11.3} {:>11.2} {:>10.0} {:>8.0}",
                o.store,
                o.machines,
                o.units,
                o.submit_s,
                o.scheduled_s,
                o.launch_s,
                o.reschedule_after_expiry_s,
                o.reschedule_after_kill_s,
                o.key_writes_per_s,
                o.write_txns_per_s,
                o.cpu_ms_per_unit,
                o.rss_kb_per_unit,
                o.members_rss_mb,
                o.bench_rss_mb
            );
        }
    }
    if let Some(o) = sizes.first().and_then(|size| size.median.first()) {
        let _ = writeln!(
            out,
            "* the units of 10% of the agents ({} of {} at the first scale, {} units) running elsewhere, from the moment all \
             their machine keys expired ({} s TTL); writes/s and txns/s: key changes and store revisions seen by a watch \
             from submit to all running; submit s: fleetctl's submit and start of every unit, scheduled s: until every unit \
             had a target, launch s: until every unit was reported running (all from the start of the submit); members MB: the \
             three members' peak resident memory together, bench MB: the bench process's (engine, fleetctl, simulated agents) \
             at all running; medians by launch time",
            o.dead_agents, o.machines, o.orphaned_units, o.ttl_s
        );
    }
    for size in sizes {
        for store in STORES {
            let rounds: Vec<String> = size
                .rounds
                .iter()
                .filter(|o| o.store == store)
                .map(|o| format!("{:.2}/{:.2}", o.launch_s, o.reschedule_after_expiry_s))
                .collect();
            let _ = writeln!(
                out,
                "  {} units on {} machines, {store}, launch/reschedule s per round: {}",
                size.units,
                size.machines,
                rounds.join(", ")
            );
        }
        for failure in &size.failures {
            let _ = writeln!(
                out,
                "  {} units on {} machines, {} round {} did not complete: {}",
                size.units, size.machines, failure.store, failure.round, failure.reason
            );
        }
        for o in size.rounds.iter().filter(|o| o.leases_lost > 0) {
            let _ = writeln!(
                out,
                "  {} units on {} machines, {}: live agents' leases expired {} times (each registered again)",
                size.units, size.machines, o.store, o.leases_lost
            );
        }
        if let [etcd, shoal] = size.median.as_slice() {
            let _ = writeln!(
                out,
                "{} units on {} machines: shoal kv launches in {:.2}x etcd's time (target <= 0.50{}), reschedules {:.2} s after the TTL (target <= 5 s; etcd {:.2} s)",
                size.units,
                size.machines,
                shoal.launch_s / etcd.launch_s,
                if size.units >= 50_000 {
                    ", under 60 s"
                } else {
                    ""
                },
                shoal.reschedule_after_expiry_s,
                etcd.reschedule_after_expiry_s
            );
        }
    }
    out
}

fn write_outputs(sizes: &[Size]) -> anyhow::Result<()> {
    let document = json!({
        "suite": "fleet",
        "targets": {"launch_ratio": 0.5, "reschedule_after_expiry_s": RESCHEDULE_TARGET.as_secs_f64()},
        "fleet_documented_limits": {"machines": 100, "units": 1000},
        "sizes": sizes,
    });
    crate::results::write_outputs("fleet", &document, CHART)
}

/// Launch time against units (medians, every round as a dot) and rescheduling after the TTL,
/// per store.
const CHART: &str = r##"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.load(open(sys.argv[1]))
sizes = data["sizes"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
for store, color in (("shoal-kv", "#4c72b0"), ("etcd-3.4", "#dd8452")):
    xs = [s["units"] for s in sizes]
    for key, ax in (("launch_s", axes[0]), ("reschedule_after_expiry_s", axes[1])):
        med = [next((o[key] for o in s["median"] if o["store"] == store), None) for s in sizes]
        ax.plot(xs, med, marker="o", color=color, label=store + " (median)")
        for s in sizes:
            rounds = [o[key] for o in s["rounds"] if o["store"] == store]
            ax.scatter([s["units"]] * len(rounds), rounds, color=color, alpha=0.4, s=12)
# A round that did not complete: an x on the axis, named.
for s in sizes:
    for i, f in enumerate(s.get("failures", [])):
        color = "#4c72b0" if f["store"] == "shoal-kv" else "#dd8452"
        axes[0].scatter([s["units"]], [0], marker="x", color=color, s=40, clip_on=False)
        axes[0].annotate(f"{f['store']} round {f['round']} did not complete", (s["units"], 0),
                         textcoords="offset points", xytext=(-4, 8 + 11 * i), ha="right",
                         fontsize=7, color=color)
axes[0].set_title("submit -> every unit running")
axes[0].set_xlabel("units (on units/10 machines)")
axes[0].set_ylabel("seconds")
axes[1].axhline(data["targets"]["reschedule_after_expiry_s"], color="red", linestyle="--", label="target")
axes[1].set_title("10% of machines lost: units elsewhere, after the TTL")
axes[1].set_xlabel("units")
axes[1].set_ylabel("seconds")
for ax in axes:
    ax.set_ylim(bottom=0)
    ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
"##;
