//! `cargo xtask bench watch`: watch fan-out on its own. For each watcher count (1,000 and 10,000
//! unless `--watchers` names others), that many watch streams on one key, spread over
//! [`CONNECTIONS`] client connections to the three members, hear [`PUTS`] writes of the key from
//! one writer. Reports events delivered per second (watchers x puts over the time until the
//! last watcher had the last event) and the delivery latency (put sent -> event received) p50
//! and p99, for a 3-member shoal kv (`shoal kv`) and a 3-member etcd 3.4, both up while rounds
//! alternate between them; each figure is the median round's, with every round listed. The writer
//! is a client of its own (its own connection to the first member, on its own thread). Every
//! watcher checks that it gets every put, in order, with its payload. Beside the rates, where a
//! round's time went: the members' and the bench client's CPU per 1,000 events (the client runs
//! on the same machine and decodes every response) and the writer's mean put latency (the puts
//! are sequential, so it bounds the round).
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use crate::rounds::round_order;
use anyhow::{Context, bail};
use etcd_client::{Client, WatchOptions};
use serde::Serialize;
use shoal_harness::{StoreCluster, StoreKind, binaries};

/// Watcher counts when `--watchers` names none.
pub const DEFAULT_WATCHERS: [usize; 2] = [1_000, 10_000];
/// Client connections the watch streams share (etcd clients multiplex watches on one).
const CONNECTIONS: usize = 64;
/// Writes of the watched key per round.
const PUTS: usize = 100;
const KEY: &str = "bench/watched";

/// What a run of the suite measures.
pub struct Settings {
    pub watchers: Vec<usize>,
    pub rounds: usize,
    /// Puts the writer keeps in flight (at least 1).
    pub puts_in_flight: usize,
}

/// One round of one store.
#[derive(Debug, Clone, Serialize)]
struct Round {
    store: &'static str,
    watchers: usize,
    events_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    /// The three members' CPU time per 1,000 events delivered, from the first put to the last
    /// event.
    store_cpu_ms_per_1k: f64,
    /// The bench process's (watchers' and writer's) CPU time per 1,000 events, same window.
    client_cpu_ms_per_1k: f64,
    /// The writer's mean put latency.
    put_mean_ms: f64,
}

#[derive(Debug, Serialize)]
struct Size {
    watchers: usize,
    rounds: Vec<Round>,
    /// Per store, the round with the median events per second.
    median: Vec<Round>,
}

fn label(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::ShoalKv => "shoal-kv",
        StoreKind::Etcd => "etcd-3.4",
    }
}

pub fn run(settings: &Settings) -> anyhow::Result<String> {
    if settings.puts_in_flight == 0 {
        bail!("--puts-in-flight must be at least 1");
    }
    crate::leases::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let clusters: Vec<(StoreKind, StoreCluster)> = [StoreKind::ShoalKv, StoreKind::Etcd]
        .into_iter()
        .map(|kind| {
            let builder = StoreCluster::builder(kind, 3);
            let cluster = match kind {
                StoreKind::Etcd => builder.start(),
                StoreKind::ShoalKv => builder.program(binaries::shoal(), ["kv"]).start(),
            };
            (kind, cluster)
        })
        .collect();
    let mut sizes = Vec::new();
    for &watchers in &settings.watchers {
        let mut rounds = Vec::new();
        for round in 1..=settings.rounds {
            for (kind, cluster) in round_order(&clusters.iter().collect::<Vec<_>>(), round) {
                let members = member_pids(cluster);
                let measured = runtime.block_on(fan_out(
                    *kind,
                    &cluster.endpoints(),
                    &members,
                    watchers,
                    settings.puts_in_flight,
                ))?;
                eprintln!(
                    "watch: {watchers} watchers, {} round {round}: {:.0} events/s, p99 {:.1} ms, \
                     CPU ms/1k events store {:.1} client {:.1}, put {:.2} ms",
                    label(*kind),
                    measured.events_per_s,
                    measured.latency_p99_ms,
                    measured.store_cpu_ms_per_1k,
                    measured.client_cpu_ms_per_1k,
                    measured.put_mean_ms,
                );
                rounds.push(measured);
            }
        }
        let median = clusters
            .iter()
            .filter_map(|(kind, _)| median_round(&rounds, label(*kind)))
            .collect();
        sizes.push(Size {
            watchers,
            rounds,
            median,
        });
    }
    drop(clusters);
    let json = serde_json::json!({
        "suite": "watch",
        "target_ratio": 2.0,
        "puts_in_flight": settings.puts_in_flight,
        "sizes": sizes,
    });
    crate::results::write_outputs("watch", &json, CHART)?;
    Ok(table(&sizes, settings.puts_in_flight))
}

fn median_round(rounds: &[Round], store: &str) -> Option<Round> {
    let mut mine: Vec<&Round> = rounds.iter().filter(|r| r.store == store).collect();
    mine.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    mine.get(mine.len() / 2).map(|r| (*r).clone())
}

fn member_pids(cluster: &StoreCluster) -> Vec<u32> {
    (0..cluster.endpoints().len())
        .filter_map(|i| cluster.process(i).map(|member| member.child.id()))
        .collect()
}

/// Nanoseconds processes ran on a CPU, every thread's (`/proc/<pid>/task/*/schedstat`: finer
/// than `stat`'s clock ticks, which a round of a fraction of a second needs).
fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A put's value: its sequence number and its send time (microseconds since the round's epoch).
fn payload(sequence: usize, sent_us: u128) -> String {
    format!("{sequence} {sent_us}")
}

/// What a watcher has seen, to check each event against.
struct Seen {
    /// Put by put: whether its event arrived.
    puts: Vec<bool>,
    count: usize,
    last_revision: i64,
    /// Whether the writer sent one put at a time (then events must come in sequence order).
    sequential: bool,
}

impl Seen {
    fn new(sequential: bool) -> Self {
        Seen {
            puts: vec![false; PUTS],
            count: 0,
            last_revision: 0,
            sequential,
        }
    }

    /// The send time of a watched event, checked: a put of [`KEY`] with the writer's payload,
    /// after the previous event in revision order, seen once, and with a sequential writer
    /// the next put in sequence.
    fn check(&mut self, event: &etcd_client::Event) -> anyhow::Result<Duration> {
        let n = self.count;
        let kv = event.kv().context("an event without its key-value")?;
        if event.event_type() != etcd_client::EventType::Put || kv.key() != KEY.as_bytes() {
            bail!("event {n}: not a put of {KEY}");
        }
        let text = std::str::from_utf8(kv.value()).context("a payload that is not text")?;
        let (sequence, sent_us) = text
            .split_once(' ')
            .and_then(|(sequence, sent)| {
                Some((sequence.parse::<usize>().ok()?, sent.parse().ok()?))
            })
            .filter(|(sequence, _)| *sequence < PUTS)
            .with_context(|| format!("event {n}: payload {text:?} is not the writer's"))?;
        if kv.mod_revision() <= self.last_revision {
            bail!(
                "event {n}: revision {} after {}",
                kv.mod_revision(),
                self.last_revision
            );
        }
        if std::mem::replace(&mut self.puts[sequence], true) {
            bail!("event {n}: put {sequence} arrived twice");
        }
        if self.sequential && sequence != n {
            bail!("event {n} arrived as put {sequence}: out of order or missing");
        }
        self.last_revision = kv.mod_revision();
        self.count += 1;
        Ok(Duration::from_micros(sent_us))
    }
}

/// One round: `watchers` streams on [`KEY`], [`PUTS`] writes, each carrying its sequence number
/// and send time.
async fn fan_out(
    kind: StoreKind,
    endpoints: &[String],
    members: &[u32],
    watchers: usize,
    puts_in_flight: usize,
) -> anyhow::Result<Round> {
    // More than PUTS in flight is every put at once.
    let puts_in_flight = puts_in_flight.min(PUTS);
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for n in 0..CONNECTIONS {
        let endpoint = &endpoints[n % endpoints.len()];
        clients.push(
            Client::connect([endpoint], None)
                .await
                .with_context(|| format!("connecting to {endpoint}"))?,
        );
    }
    let epoch = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    let mut tasks = Vec::with_capacity(watchers);
    for w in 0..watchers {
        let mut client = clients[w % clients.len()].clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client.watch(KEY, Some(WatchOptions::new())).await?;
            stream.message().await?;
            ready.send(()).await?;
            let mut latencies = Vec::with_capacity(PUTS);
            let mut seen = Seen::new(puts_in_flight == 1);
            while latencies.len() < PUTS {
                let Some(response) = stream.message().await? else {
                    bail!("watch stream ended after {} events", latencies.len());
                };
                let received = epoch.elapsed();
                for event in response.events() {
                    let sent = seen.check(event)?;
                    latencies.push(received.saturating_sub(sent));
                }
            }
            anyhow::Ok((epoch.elapsed(), latencies))
        }));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        ready_rx.recv().await.context("a watcher failed to start")?;
    }
    let client = [std::process::id()];
    let writer_endpoint = endpoints[0].clone();
    let measured = members.to_vec();
    let ((store_cpu_before, client_cpu_before, started), put_time) =
        tokio::task::spawn_blocking(move || {
            write(&writer_endpoint, epoch, puts_in_flight, || {
                (cpu_ns(&measured), cpu_ns(&client), epoch.elapsed())
            })
        })
        .await??;
    let put_mean = put_time / PUTS as u32;
    let mut last = started;
    let mut latencies = Vec::with_capacity(watchers * PUTS);
    for task in tasks {
        let (done, mine) = task.await??;
        last = last.max(done);
        latencies.extend(mine);
    }
    let events = (watchers * PUTS) as f64;
    let per_1k_events = |ns: u64| ns as f64 / 1e6 / (events / 1000.0);
    let store_cpu = per_1k_events(cpu_ns(members) - store_cpu_before);
    let client_cpu = per_1k_events(cpu_ns(&client) - client_cpu_before);
    latencies.sort();
    let percentile = |fraction: f64| {
        let index = ((latencies.len() as f64 - 1.0) * fraction).round() as usize;
        latencies
            .get(index)
            .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
    };
    Ok(Round {
        store: label(kind),
        watchers,
        events_per_s: events / (last - started).as_secs_f64(),
        latency_p50_ms: percentile(0.50),
        latency_p99_ms: percentile(0.99),
        store_cpu_ms_per_1k: store_cpu,
        client_cpu_ms_per_1k: client_cpu,
        put_mean_ms: put_mean.as_secs_f64() * 1000.0,
    })
}

/// The writer: [`PUTS`] puts of [`KEY`], `puts_in_flight` at a time, each carrying its sequence
/// number and send time, once connected and `ready` ran; returns what `ready` did and the time
/// the puts took, summed. A program of its own beside the
/// watchers, as a writer is: its own connection, and its own thread, so that its puts queue
/// neither behind the watchers' events on a shared connection nor behind the watcher tasks.
fn write<T>(
    endpoint: &str,
    epoch: Instant,
    puts_in_flight: usize,
    ready: impl FnOnce() -> T,
) -> anyhow::Result<(T, Duration)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let writer = Client::connect([endpoint], None)
            .await
            .with_context(|| format!("connecting the writer to {endpoint}"))?;
        let ready = ready();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut writers = Vec::with_capacity(puts_in_flight);
        for _ in 0..puts_in_flight {
            let mut writer = writer.clone();
            let next = next.clone();
            writers.push(tokio::spawn(async move {
                let mut put_time = Duration::ZERO;
                loop {
                    let sequence = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if sequence >= PUTS {
                        return anyhow::Ok(put_time);
                    }
                    let sent = epoch.elapsed();
                    writer
                        .put(KEY, payload(sequence, sent.as_micros()), None)
                        .await?;
                    put_time += epoch.elapsed() - sent;
                }
            }));
        }
        let mut put_time = Duration::ZERO;
        for writer in writers {
            put_time += writer.await??;
        }
        Ok((ready, put_time))
    })
}

/// The results table, as printed and as recorded in RESULTS.md.
fn table(sizes: &[Size], puts_in_flight: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{PUTS} puts of one key ({puts_in_flight} in flight), watched by every watcher ({CONNECTIONS} connections); median of alternating rounds"
    );
    let _ = writeln!(
        out,
        "| watchers | store | events/s | latency p50 ms | latency p99 ms | store CPU ms/1k events | client CPU ms/1k events | put ms | every round's events/s |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for size in sizes {
        for median in &size.median {
            let rounds: Vec<String> = size
                .rounds
                .iter()
                .filter(|r| r.store == median.store)
                .map(|r| format!("{:.0}", r.events_per_s))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} |",
                size.watchers,
                median.store,
                median.events_per_s,
                median.latency_p50_ms,
                median.latency_p99_ms,
                median.store_cpu_ms_per_1k,
                median.client_cpu_ms_per_1k,
                median.put_mean_ms,
                rounds.join(", ")
            );
        }
    }
    for size in sizes {
        if let [shoal, etcd] = size.median.as_slice() {
            let _ = writeln!(
                out,
                "{} watchers: shoal kv {:.2}x etcd 3.4's events/s (target >= 2.00 at 1,000), p99 {:.2}x etcd's",
                size.watchers,
                shoal.events_per_s / etcd.events_per_s,
                shoal.latency_p99_ms / etcd.latency_p99_ms.max(f64::MIN_POSITIVE)
            );
        }
    }
    out
}

/// Events per second against watchers (medians, every round as a dot), and p99 latency.
const CHART: &str = r##"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.load(open(sys.argv[1]))
sizes = data["sizes"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
for store, color in (("shoal-kv", "#4c72b0"), ("etcd-3.4", "#dd8452")):
    xs = [s["watchers"] for s in sizes]
    for key, ax in (("events_per_s", axes[0]), ("latency_p99_ms", axes[1])):
        med = [next((r[key] for r in s["median"] if r["store"] == store), None) for s in sizes]
        ax.plot(xs, med, marker="o", color=color, label=store + " (median)")
        for s in sizes:
            rounds = [r[key] for r in s["rounds"] if r["store"] == store]
            ax.scatter([s["watchers"]] * len(rounds), rounds, color=color, alpha=0.4, s=12)
axes[0].set_title("watch fan-out: events delivered per second")
axes[0].set_ylabel("events/s")
axes[1].set_title("delivery latency p99 (put sent -> event received)")
axes[1].set_ylabel("ms")
for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel("watchers")
    ax.set_ylim(bottom=0)
    ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
"##;
