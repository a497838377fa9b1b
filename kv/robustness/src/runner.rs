//! Rounds of traffic under faults against a 3-member store cluster, each followed by every
//! check: a round runs the clients and a watcher per family while its fault comes and goes,
//! heals, reads every key and writes an end marker per family, waits for the watchers to see
//! it, reopens each watch from the middle of what it saw, compares the members, and checks the
//! history.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use shoal_harness::nemesis::{self, points};
use shoal_harness::{StoreCluster, StoreKind};
use tokio::sync::watch as signal;

use crate::faults::{self, SharedCluster};
use crate::history::{History, Outcome, Request, Response, WatchLog};
use crate::linearizability::{self, Budget};
use crate::report::{self, RoundReport, RunReport};
use crate::traffic::{self, Clock, Keys, Shape, TrafficClient};
use crate::{lease, patch, replicas, serializable, watch};

/// Elections in half a second, as the store tests run them, and snapshots often enough that a
/// blackholed follower needs one within a round.
const MEMBER_FLAGS: [&str; 6] = [
    "--heartbeat-interval",
    "50",
    "--election-timeout",
    "500",
    "--snapshot-count",
    "100",
];
/// How long watchers have after the end marker before they count as stuck.
const WATCH_GRACE: Duration = Duration::from_secs(20);
/// Attempts at a request the round's own bookkeeping needs (a final read, an end marker).
const ATTEMPTS: usize = 10;

/// What a run does.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub store: StoreKind,
    pub rounds: usize,
    /// The least traffic per round; it also goes on until the fault is healed, and a quarter
    /// of this after.
    pub round_duration: Duration,
    /// Fault names ([`faults::NAMES`]); round `n` injects the `n`th in turn. Faults the store
    /// cannot take (failpoints on etcd) are left out and listed in the report.
    pub faults: Vec<String>,
    pub shape: Shape,
    pub seed: u64,
    pub budget: Budget,
    /// The control experiment: shoal kv with the `raftlog::skip_fsync` failpoint on every
    /// member (acknowledging writes it never synced) and a power loss of all members each
    /// round. The suite must fail.
    pub broken: bool,
    /// Keep every round's history in the report, not only the failed rounds' (to check them
    /// again with `cargo xtask robustness --recheck`).
    pub keep_histories: bool,
}

impl RunConfig {
    /// A run of `rounds` rounds of `round_duration` against `store`, with the default shape.
    pub fn new(store: StoreKind, rounds: usize, round_duration: Duration, faults: &[&str]) -> Self {
        RunConfig {
            store,
            rounds,
            round_duration,
            faults: faults.iter().map(|f| f.to_string()).collect(),
            shape: Shape::default(),
            seed: 1,
            budget: Budget::default(),
            broken: false,
            keep_histories: false,
        }
    }

    /// The control experiment against shoal kv: see [`RunConfig::broken`].
    pub fn broken(rounds: usize, round_duration: Duration) -> Self {
        let mut config = Self::new(
            StoreKind::ShoalKv,
            rounds,
            round_duration,
            &["power-loss-all"],
        );
        config.broken = true;
        config
    }
}

/// An invalid run: a fault name that means nothing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRun(String);

/// Starts a 3-member cluster of `config.store` (isolated if a fault cuts the network, with
/// failpoints if one needs them) and runs every round against it.
pub async fn run(config: &RunConfig) -> Result<RunReport, InvalidRun> {
    let mut faults = Vec::new();
    let mut skipped = Vec::new();
    let (mut isolated, mut failpoints) = (false, config.broken);
    for name in &config.faults {
        let Some(fault) = faults::parse(name).map_err(InvalidRun)? else {
            faults.push(name.clone());
            continue;
        };
        if faults::needs_failpoints(&fault) && config.store != StoreKind::ShoalKv {
            skipped.push(name.clone());
            continue;
        }
        isolated |= faults::needs_isolation(&fault);
        failpoints |= faults::needs_failpoints(&fault);
        faults.push(name.clone());
    }
    if faults.is_empty() {
        faults.push("none".to_string());
    }
    let mut builder = StoreCluster::builder(config.store, 3).args(MEMBER_FLAGS);
    if isolated {
        builder = builder.isolated();
    }
    if failpoints {
        builder = builder.failpoints();
    }
    let cluster = match tokio::task::spawn_blocking(move || builder.start()).await {
        Ok(cluster) => cluster,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    };
    let cluster = Arc::new(Mutex::new(cluster));
    let clock = Clock::start();
    let mut report = RunReport {
        store: config.store.name().to_string(),
        broken: config.broken,
        seed: config.seed,
        skipped_faults: skipped,
        rounds: Vec::new(),
    };
    for round in 1..=config.rounds {
        let fault = faults[(round - 1) % faults.len()].clone();
        let result = run_round(&cluster, config, round, fault.clone(), clock).await;
        tracing::info!(round, fault, passed = result.passed(), "round done");
        report.rounds.push(result);
    }
    Ok(report)
}

/// Makes every running member acknowledge writes without syncing them (the broken build).
async fn skip_fsync_everywhere(cluster: &SharedCluster) -> Result<(), String> {
    faults::blocking(cluster, |c| {
        for i in (0..c.specs.len()).filter(|&i| c.is_running(i)) {
            nemesis::set_failpoint(&c.specs[i], points::LOG_SKIP_FSYNC, "return")
                .map_err(|err| format!("setting {} on {}: {err}", points::LOG_SKIP_FSYNC, i))?;
        }
        Ok(())
    })
    .await
}

async fn run_round(
    cluster: &SharedCluster,
    config: &RunConfig,
    round: usize,
    fault: String,
    clock: Clock,
) -> RoundReport {
    let started = Instant::now();
    let shape = &config.shape;
    let keys = Keys {
        prefix: format!("/robustness/r{round}/"),
        families: shape.families,
        per_family: shape.keys_per_family,
    };
    let endpoints = faults::blocking(cluster, |c| c.endpoints()).await;
    let seed = config
        .seed
        .wrapping_mul(1_000_003)
        .wrapping_add(round as u64);
    let mut checker =
        connect_client(&endpoints, shape.clients, seed, &keys, clock, shape, round).await;
    let start_revision = current_revision(&mut checker).await + 1;

    // Watchers, one per family, until the end marker or the grace deadline.
    let (deadline_tx, deadline_rx) = signal::channel(None);
    let mut ends = Vec::new();
    let mut watchers = Vec::new();
    for family in 0..keys.families {
        let (end_tx, end_rx) = signal::channel(None);
        ends.push(end_tx);
        watchers.push(tokio::spawn(traffic::watch(
            endpoints.clone(),
            keys.family_prefix(family),
            start_revision,
            end_rx,
            deadline_rx.clone(),
        )));
    }

    let broken = if config.broken {
        skip_fsync_everywhere(cluster).await.err()
    } else {
        None
    };

    // The clients, and the fault in the middle of their traffic; the traffic goes on until the
    // fault is healed (a blackhole heals only once the log moved on) and a while after. Even
    // clients talk to one member each, so a member cut off slows only its own clients; odd ones
    // to every member, moving between them as etcd's clients do.
    let until = Instant::now() + config.round_duration;
    let (stop_tx, stop_rx) = signal::channel(false);
    let mut clients = Vec::new();
    for id in 0..shape.clients {
        let reach = if id % 2 == 0 {
            std::slice::from_ref(&endpoints[(id / 2) % endpoints.len()])
        } else {
            &endpoints[..]
        };
        let mut client =
            connect_client(reach, id, seed + id as u64 + 1, &keys, clock, shape, round).await;
        let stop = stop_rx.clone();
        clients.push(tokio::spawn(async move {
            client.run_until_stopped(stop).await;
            client.history
        }));
    }
    let quarter = config.round_duration / 4;
    let injected = faults::inject(
        cluster.clone(),
        fault,
        quarter,
        quarter.max(Duration::from_secs(1)),
        clock,
    )
    .await;
    tokio::time::sleep_until(until.max(Instant::now() + quarter).into()).await;
    let _ = stop_tx.send(true);
    let mut operations = Vec::new();
    for client in clients {
        operations.extend(client.await.unwrap_or_default());
    }
    let mut injected = injected;
    if let Some(err) = broken {
        injected.error = Some(err);
    }

    // After the heal: every key read once more, and an end marker per family.
    for key in keys.all() {
        retry(&mut checker, || Request::Get {
            key: key.clone(),
            serializable: false,
        })
        .await;
    }
    for (family, end) in ends.iter().enumerate() {
        let marker = Request::Put {
            key: format!("{}end", keys.family_prefix(family)),
            value: format!("end-{round}-{family}"),
            lease: None,
        };
        if let Outcome::Done(Response::Put { revision }) =
            retry(&mut checker, || marker.clone()).await
        {
            let _ = end.send(Some(revision));
        }
    }
    let _ = deadline_tx.send(Some(Instant::now() + WATCH_GRACE));
    let mut watches = Vec::new();
    for watcher in watchers {
        watches.push(watcher.await.unwrap_or_default());
    }
    operations.append(&mut checker.history);
    let resumed = resume_watches(&endpoints, &watches).await;
    let agreement = replicas::check(&endpoints).await;

    let history = History {
        operations,
        watches,
        resumed,
    };
    let budget = config.budget;
    let (history, settled, linearizability) = match tokio::task::spawn_blocking(move || {
        let (settled, report) = check_linearizability(&history, budget);
        (history, settled, report)
    })
    .await
    {
        Ok(checked) => checked,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    };
    let mut result = RoundReport {
        round,
        seconds: started.elapsed().as_secs_f64(),
        fault: injected,
        operations: report::count(&history.operations),
        settled,
        linearizability,
        watch: watch::check(&history),
        lease: lease::check(&history.operations),
        serializable: serializable::check(&history.operations),
        replicas: agreement,
        history: None,
    };
    // A failed round keeps its whole history in the report, to be read.
    if !result.passed() || config.keep_histories {
        result.history = Some(history);
    }
    result
}

/// The linearizability check of a round's history: writes of unknown outcome settled from the
/// watches, then the search.
pub fn check_linearizability(
    history: &History,
    budget: Budget,
) -> (patch::Settled, linearizability::Report) {
    let (settled_ops, settled) = patch::settle(&history.operations, &history.watches);
    (settled, linearizability::check(&settled_ops, budget))
}

async fn connect_client(
    endpoints: &[String],
    id: usize,
    seed: u64,
    keys: &Keys,
    clock: Clock,
    shape: &Shape,
    round: usize,
) -> TrafficClient {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match traffic::connect(endpoints).await {
            Ok(client) => {
                let timeout = shape.request_timeout;
                return TrafficClient::new(id, client, seed, keys.clone(), clock, timeout, round);
            }
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(%err, "connecting a client again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("no client could connect to {endpoints:?} in 30 s: {err}"),
        }
    }
}

/// Sends the request `make` builds until the store answers it (each attempt is recorded).
async fn retry(client: &mut TrafficClient, make: impl Fn() -> Request) -> Outcome {
    let mut outcome = Outcome::Unknown("not sent".into());
    for _ in 0..ATTEMPTS {
        outcome = client.execute(make()).await;
        if matches!(outcome, Outcome::Done(_)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outcome
}

/// The store's revision now (a linearizable read, not recorded: it names no key of the round).
async fn current_revision(client: &mut TrafficClient) -> i64 {
    for _ in 0..ATTEMPTS {
        let options = GetOptions::new().with_keys_only().with_limit(1);
        if let Ok(response) = client.raw().get("/robustness/", Some(options)).await {
            return response.header().map_or(0, |h| h.revision());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the store gave no revision in {ATTEMPTS} attempts");
}

/// Reopens every watch that saw events from the revision of its middle event, until it reaches
/// what the first one reached.
async fn resume_watches(endpoints: &[String], watches: &[WatchLog]) -> Vec<WatchLog> {
    let mut resumed = Vec::new();
    for first in watches {
        let events: Vec<i64> = first.events().map(|e| e.mod_revision).collect();
        let Some(middle) = events.get(events.len() / 2) else {
            continue;
        };
        let (_end_tx, end_rx) = signal::channel(Some(first.last_revision()));
        let (_deadline_tx, deadline_rx) = signal::channel(Some(Instant::now() + WATCH_GRACE));
        let log = traffic::watch(
            endpoints.to_vec(),
            first.prefix.clone(),
            *middle,
            end_rx,
            deadline_rx,
        )
        .await;
        resumed.push(log);
    }
    resumed
}
