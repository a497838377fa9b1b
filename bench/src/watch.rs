//! `cargo xtask bench watch`: watch fan-out on its own. For each watcher count (1,000 and 10,000
//! unless `--watchers` names others), that many watch streams on one key, spread over
//! [`CONNECTIONS`] client connections to the three members, hear [`PUTS`] writes of the key from
//! one writer. Reports events delivered per second (watchers x puts over the time until the
//! last watcher had the last event) and the delivery latency (put sent -> event received) p50
//! and p99, for a 3-member shoal kv (`shoal kv`) and a 3-member etcd 3.4, both up while rounds
//! alternate between them; each figure is the median round's, with every round listed.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

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
}

/// One round of one store.
#[derive(Debug, Clone, Serialize)]
struct Round {
    store: &'static str,
    watchers: usize,
    events_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
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
            for (kind, cluster) in &clusters {
                let measured = runtime.block_on(fan_out(*kind, &cluster.endpoints(), watchers))?;
                eprintln!(
                    "watch: {watchers} watchers, {} round {round}: {:.0} events/s, p99 {:.1} ms",
                    label(*kind),
                    measured.events_per_s,
                    measured.latency_p99_ms
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
    let json = serde_json::json!({"suite": "watch", "target_ratio": 2.0, "sizes": sizes});
    crate::results::write_outputs("watch", &json, CHART)?;
    Ok(table(&sizes))
}

fn median_round(rounds: &[Round], store: &str) -> Option<Round> {
    let mut mine: Vec<&Round> = rounds.iter().filter(|r| r.store == store).collect();
    mine.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    mine.get(mine.len() / 2).map(|r| (*r).clone())
}

/// One round: `watchers` streams on [`KEY`], [`PUTS`] writes, each carrying its send time.
async fn fan_out(kind: StoreKind, endpoints: &[String], watchers: usize) -> anyhow::Result<Round> {
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
            while latencies.len() < PUTS {
                let Some(response) = stream.message().await? else {
                    bail!("watch stream ended after {} events", latencies.len());
                };
                let received = epoch.elapsed();
                for event in response.events() {
                    let sent = event
                        .kv()
                        .and_then(|kv| std::str::from_utf8(kv.value()).ok())
                        .and_then(|text| text.parse::<u64>().ok())
                        .context("an event without its send time")?;
                    latencies.push(received.saturating_sub(Duration::from_micros(sent)));
                }
            }
            anyhow::Ok((epoch.elapsed(), latencies))
        }));
    }
    drop(ready_tx);
    for _ in 0..watchers {
        ready_rx.recv().await.context("a watcher failed to start")?;
    }
    let mut writer = clients[0].clone();
    let started = epoch.elapsed();
    for _ in 0..PUTS {
        let sent = epoch.elapsed().as_micros().to_string();
        writer.put(KEY, sent, None).await?;
    }
    let mut last = started;
    let mut latencies = Vec::with_capacity(watchers * PUTS);
    for task in tasks {
        let (done, mine) = task.await??;
        last = last.max(done);
        latencies.extend(mine);
    }
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
        events_per_s: (watchers * PUTS) as f64 / (last - started).as_secs_f64(),
        latency_p50_ms: percentile(0.50),
        latency_p99_ms: percentile(0.99),
    })
}

/// The results table, as printed and as recorded in RESULTS.md.
fn table(sizes: &[Size]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{PUTS} puts of one key, watched by every watcher ({CONNECTIONS} connections); median of alternating rounds"
    );
    let _ = writeln!(
        out,
        "| watchers | store | events/s | latency p50 ms | latency p99 ms | every round's events/s |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- |");
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
                "| {} | {} | {:.0} | {:.1} | {:.1} | {} |",
                size.watchers,
                median.store,
                median.events_per_s,
                median.latency_p50_ms,
                median.latency_p99_ms,
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
