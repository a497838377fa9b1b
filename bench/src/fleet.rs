//! `cargo xtask bench fleet`: fleet's engine at 1,000 simulated agents and 10,000 units with
//! mixed constraints, against a 3-member etcd 3.4 and a 3-member shoal kv side by side.
//!
//! The engine is shoal's real engine ([`shoal_scheduler::engine::run_engine`]). The agents are
//! simulated: each has its own store lease (kept alive on its own keep-alive stream) and machine
//! key with metadata, and reports a unit `active/running` under its lease as soon as the unit is
//! scheduled to it and launched, as a real agent does after starting it. One watch feeds all
//! simulated agents; their reports are written in transactions of up to 128 puts.
//!
//! Measured: submit -> every unit reported running by its target machine; after 100 agents stop
//! heart-beating, the time from their machine keys expiring (TTL) to all their units running
//! elsewhere; and store key writes per second (watch events) during the launch.
//! Scale can be lowered with FLEET_BENCH_MACHINES, FLEET_BENCH_UNITS, FLEET_BENCH_TTL.

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
    registry::{Registry, ValidUnit},
    store::{DEFAULT_PREFIX, MachineRecord, Store, TargetState, UnitStateRecord},
};
use tokio::sync::{mpsc, watch};

const LAUNCH_TARGET: Duration = Duration::from_secs(30);
const RESCHEDULE_TARGET: Duration = Duration::from_secs(10);
const DEAD_AGENTS: usize = 100;

#[derive(Debug, Clone, Copy)]
struct Scale {
    machines: usize,
    units: usize,
    ttl: Duration,
}

impl Scale {
    fn from_env() -> Self {
        let number = |key: &str, default: usize| {
            std::env::var(key)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            machines: number("FLEET_BENCH_MACHINES", 1_000),
            units: number("FLEET_BENCH_UNITS", 10_000),
            ttl: Duration::from_secs(number("FLEET_BENCH_TTL", 10) as u64),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct Outcome {
    store: String,
    machines: usize,
    units: usize,
    submit_s: f64,
    launch_s: f64,
    dead_agents: usize,
    orphaned_units: usize,
    ttl_s: f64,
    reschedule_after_expiry_s: f64,
    reschedule_after_kill_s: f64,
    key_writes_per_s: f64,
    write_txns_per_s: f64,
}

pub fn run() -> anyhow::Result<Option<String>> {
    let scale = Scale::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcomes = runtime.block_on(async {
        let mut outcomes = Vec::new();
        for backend in [StoreKind::Etcd, StoreKind::ShoalKv] {
            println!(
                "fleet bench: {} on a 3-member {}",
                describe(scale),
                backend.name()
            );
            // Starting polls the members until they answer: off the runtime's workers.
            let cluster = tokio::task::spawn_blocking(move || start_store(backend)).await?;
            let outcome = scenario(backend.name(), &cluster.client_urls(), scale).await;
            drop(cluster);
            match outcome {
                Ok(outcome) => outcomes.push(outcome),
                Err(err) => println!("  {} failed: {err:#}", backend.name()),
            }
        }
        anyhow::Ok(outcomes)
    })?;
    if outcomes.is_empty() {
        bail!("no store completed the scenario");
    }
    write_outputs(&outcomes)?;
    Ok(Some(table(&outcomes)))
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
    launched: HashSet<String>,
    /// (unit, machine) pairs reported running.
    running: HashSet<(String, String)>,
    key_writes: u64,
    revisions: HashSet<i64>,
}

impl View {
    fn is_running(&self, unit: &str) -> bool {
        self.target
            .get(unit)
            .is_some_and(|m| self.running.contains(&(unit.to_string(), m.clone())))
    }
}

async fn scenario(store_name: &str, endpoints: &[String], scale: Scale) -> anyhow::Result<Outcome> {
    let store = Store::connect(endpoints, DEFAULT_PREFIX, Duration::from_secs(10)).await?;
    let (stop, shutdown) = watch::channel(false);
    let agents = Agents::start(&store, scale.machines, scale.ttl).await?;
    let engine = tokio::spawn(run_engine(
        store.clone(),
        EngineSettings {
            machine_id: "engine-bench".into(),
            lease_ttl: Duration::from_secs(10),
            reconcile_interval: Duration::from_secs(2),
        },
        shutdown.clone(),
    ));
    let (view_tx, mut view_rx) = watch::channel(0u64);
    let view = std::sync::Arc::new(tokio::sync::Mutex::new(View::default()));
    let simulator = tokio::spawn(simulate(
        store.clone(),
        agents.leases.clone(),
        view.clone(),
        view_tx,
        shutdown.clone(),
    ));

    let units = unit_mix(scale.units);
    let names: Vec<String> = units.iter().map(|(n, _)| n.clone()).collect();
    let valid: Vec<ValidUnit> = units
        .iter()
        .map(|(name, text)| ValidUnit::new(name, name, text))
        .collect::<Result<_, _>>()?;
    let registry = Registry::new(store.clone());
    let (writes_before, revisions_before) = {
        let v = view.lock().await;
        (v.key_writes, v.revisions.len())
    };
    let started = Instant::now();
    registry.submit(&valid, false).await?;
    registry
        .set_target_state(&names, TargetState::Launched)
        .await?;
    let submit_s = started.elapsed().as_secs_f64();
    wait_all_running(&view, &mut view_rx, &names, Duration::from_secs(180)).await?;
    let launch = started.elapsed();
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

    // 100 agents stop heart-beating; their units must move once their TTL expires.
    let dead: Vec<String> = agents
        .ids
        .iter()
        .take(DEAD_AGENTS.min(scale.machines / 2))
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
    let expired = wait_machines_gone(&store, &dead, scale.ttl * 3).await?;
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
    let _ = stop.send(true);
    let _ = engine.await;
    simulator.abort();
    agents.stop().await;
    Ok(Outcome {
        store: store_name.to_string(),
        machines: scale.machines,
        units: scale.units,
        submit_s,
        launch_s: launch.as_secs_f64(),
        dead_agents: dead.len(),
        orphaned_units: orphans.len(),
        ttl_s: scale.ttl.as_secs_f64(),
        reschedule_after_expiry_s: reschedule.as_secs_f64(),
        reschedule_after_kill_s: since_kill.as_secs_f64(),
        key_writes_per_s: key_writes as f64 / launch.as_secs_f64(),
        write_txns_per_s: txns as f64 / launch.as_secs_f64(),
    })
}

/// Simulated agents: leases, machine keys, keep-alives.
struct Agents {
    ids: Vec<String>,
    leases: std::sync::Arc<std::sync::Mutex<HashMap<String, i64>>>,
    killers: HashMap<String, mpsc::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agents {
    async fn start(store: &Store, count: usize, ttl: Duration) -> anyhow::Result<Self> {
        let mut agents = Self {
            ids: Vec::new(),
            leases: Default::default(),
            killers: HashMap::new(),
            tasks: Vec::new(),
        };
        for index in 0..count {
            let id = machine_id(index);
            let mut client = store.client();
            let lease = client.lease_grant(ttl.as_secs() as i64, None).await?.id();
            let record = MachineRecord {
                id: id.clone(),
                public_ip: format!(
                    "10.{}.{}.{}",
                    index >> 16 & 255,
                    index >> 8 & 255,
                    index & 255
                ),
                metadata: machine_metadata(index).into_iter().collect(),
                version: "bench".into(),
            };
            client
                .put(
                    store.keys().machine(&id),
                    serde_json::to_string(&record)?,
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await?;
            let (keeper, mut responses) = client.lease_keep_alive(lease).await?;
            let (kill, mut killed) = mpsc::channel::<()>(1);
            let period = ttl / 3;
            let task = tokio::spawn(async move {
                let mut keeper = keeper;
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if keeper.keep_alive().await.is_err() { return; }
                            let _ = responses.message().await;
                        }
                        _ = killed.recv() => return,
                    }
                }
            });
            agents
                .leases
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(id.clone(), lease);
            agents.killers.insert(id.clone(), kill);
            agents.tasks.push(task);
            agents.ids.push(id);
        }
        Ok(agents)
    }

    async fn kill(&self, ids: &[String]) {
        for id in ids {
            if let Some(kill) = self.killers.get(id) {
                let _ = kill.send(()).await;
            }
            if let Ok(mut leases) = self.leases.lock() {
                leases.remove(id);
            }
        }
    }

    async fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The agents' side: report units scheduled to a live agent as running, under its lease.
async fn simulate(
    store: Store,
    leases: std::sync::Arc<std::sync::Mutex<HashMap<String, i64>>>,
    view: std::sync::Arc<tokio::sync::Mutex<View>>,
    notify: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let keys = store.keys().clone();
    let mut client = store.client();
    let mut events = client
        .watch(keys.prefix(), Some(WatchOptions::new().with_prefix()))
        .await?;
    let mut pending: Vec<(String, String)> = Vec::new();
    let mut flush = tokio::time::interval(Duration::from_millis(50));
    let mut generation = 0u64;
    loop {
        tokio::select! {
            message = events.message() => {
                let Some(response) = message? else { return Ok(()) };
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
                            ("target", true) => { v.target.insert(unit.to_string(), value.clone()); }
                            ("target", false) => { v.target.remove(unit); }
                            ("target-state", true) if value == "launched" => { v.launched.insert(unit.to_string()); }
                            ("target-state", _) => { v.launched.remove(unit); }
                            _ => continue,
                        }
                        if let Some(machine) = v.target.get(unit).filter(|_| v.launched.contains(unit)) {
                            pending.push((unit.to_string(), machine.clone()));
                        }
                    } else if let Some((unit, machine)) = keys.parse_state_key(&key) {
                        let pair = (unit.to_string(), machine.to_string());
                        if put { v.running.insert(pair); } else { v.running.remove(&pair); }
                    }
                }
                generation += 1;
                let _ = notify.send(generation);
            }
            _ = flush.tick() => {
                if !pending.is_empty() {
                    let batch = std::mem::take(&mut pending);
                    report_running(&store, &leases, batch).await?;
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

async fn report_running(
    store: &Store,
    leases: &std::sync::Arc<std::sync::Mutex<HashMap<String, i64>>>,
    batch: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let keys = store.keys();
    let leases = leases
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let ops: Vec<TxnOp> = batch
        .into_iter()
        .filter_map(|(unit, machine)| {
            let lease = *leases.get(&machine)?;
            let record = UnitStateRecord {
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                machine_id: machine.clone(),
                unit_hash: String::new(),
                main_pid: None,
                since: None,
            };
            let value = serde_json::to_string(&record).ok()?;
            Some(TxnOp::put(
                keys.state(&unit, &machine),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ))
        })
        .collect();
    for chunk in ops.chunks(shoal_scheduler::store::MAX_TXN_OPS) {
        let mut client = store.client();
        client.txn(Txn::new().and_then(chunk.to_vec())).await?;
    }
    Ok(())
}

async fn wait_all_running(
    view: &tokio::sync::Mutex<View>,
    changes: &mut watch::Receiver<u64>,
    names: &[String],
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        {
            let v = view.lock().await;
            let missing = names.iter().filter(|n| !v.is_running(n)).count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{missing} units not running after {limit:?}");
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
}

async fn wait_machines_gone(
    store: &Store,
    dead: &[String],
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let machines = store.machines().await?;
        let alive: HashSet<String> = machines.into_iter().map(|m| m.id).collect();
        if dead.iter().all(|id| !alive.contains(id)) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("dead agents' machine keys did not expire within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
                bail!("{missing} orphaned units not running elsewhere after {limit:?}");
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }
}

/// The results table, as printed and as recorded in RESULTS.md.
fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let reference = &outcomes[0];
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<10} {:>8} {:>7} {:>9} {:>9} {:>8} {:>11} {:>8} {:>10} {:>9} {:>8}",
        "store",
        "machines",
        "units",
        "submit s",
        "launch s",
        "vs 30 s",
        "resched s*",
        "vs 10 s",
        "since kill",
        "writes/s",
        "txns/s"
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>7} {:>9.2} {:>9.2} {:>7.2}x {:>11.2} {:>7.2}x {:>10.2} {:>9.0} {:>8.0}",
            o.store,
            o.machines,
            o.units,
            o.submit_s,
            o.launch_s,
            o.launch_s / LAUNCH_TARGET.as_secs_f64(),
            o.reschedule_after_expiry_s,
            o.reschedule_after_expiry_s / RESCHEDULE_TARGET.as_secs_f64(),
            o.reschedule_after_kill_s,
            o.key_writes_per_s,
            o.write_txns_per_s
        );
    }
    let _ = writeln!(
        out,
        "* the {} units of {} dead agents running elsewhere, from the moment all their machine keys expired ({} s TTL); \
         writes/s and txns/s: key changes and store revisions seen by a watch from submit to all running",
        reference.orphaned_units, reference.dead_agents, reference.ttl_s
    );
    for o in &outcomes[1..] {
        let _ = writeln!(
            out,
            "{} / {}: launch {:.2}x, reschedule {:.2}x, writes/s {:.2}x",
            o.store,
            reference.store,
            o.launch_s / reference.launch_s,
            o.reschedule_after_expiry_s / reference.reschedule_after_expiry_s,
            o.key_writes_per_s / reference.key_writes_per_s
        );
    }
    out
}

fn write_outputs(outcomes: &[Outcome]) -> anyhow::Result<()> {
    let document = json!({
        "suite": "fleet",
        "targets": {"launch_s": LAUNCH_TARGET.as_secs_f64(), "reschedule_after_expiry_s": RESCHEDULE_TARGET.as_secs_f64()},
        "fleet_documented_limits": {"machines": 100, "units": 1000},
        "results": outcomes,
    });
    crate::results::write_outputs("fleet", &document, CHART)
}

/// Launch and rescheduling time per store, against the targets.
const CHART: &str = r##"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.load(open(sys.argv[1]))
results = data["results"]
first = results[0]
stores = [r["store"] for r in results]
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
axes[0].bar(stores, [r["launch_s"] for r in results], color="#4c72b0")
axes[0].axhline(data["targets"]["launch_s"], color="red", linestyle="--", label="target")
axes[0].set_title("%d units on %d agents: submit -> all running" % (first["units"], first["machines"]))
axes[0].set_ylabel("seconds")
axes[0].legend()
axes[1].bar(stores, [r["reschedule_after_expiry_s"] for r in results], color="#dd8452")
axes[1].axhline(data["targets"]["reschedule_after_expiry_s"], color="red", linestyle="--", label="target")
axes[1].set_title("%d units of %d dead agents: after TTL expiry" % (first["orphaned_units"], first["dead_agents"]))
axes[1].set_ylabel("seconds")
axes[1].legend()
fig.tight_layout()
fig.savefig(sys.argv[2])
"##;
