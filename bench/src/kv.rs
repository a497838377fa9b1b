//! `kv` suite: a 3-member `shoal kv` against a 3-member etcd 3.4, both fsync'ing, both on
//! this machine, driven by one load generator (the `etcd-client` crate) in one run.
//!
//! With `--tls` two more clusters run beside them: shoal kv and etcd with TLS on every client
//! and peer port and client certificates required, from one CA, the load generator presenting
//! the same `root` client certificate to both. A second table sets shoal with TLS against
//! shoal in plaintext and against etcd with TLS.
//!
//! Metrics: put throughput and p50/p99 latency at 1 client, at 128 concurrent clients and at
//! 1,000 clients as `etcdctl check perf --load=xl` drives them ([`put_xl`]), linearizable and serializable range throughput, and watch fan-out (events per second
//! delivered to 1,000 watchers). Both clusters stay up while rounds alternate between them;
//! each metric reports its median round. Results (medians and every round) go to
//! `target/bench/kv.json`, a table on stdout and `target/bench/kv.png`.
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::rounds::round_order;
use anyhow::{Context, bail};
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions, WatchOptions,
};
use serde::Serialize;
use shoal_harness::{ClusterTls, StoreCluster, StoreKind, free_ports};
use shoal_kv::member::{Config, Member, RunningMember};
use shoal_kv::tls::TlsFiles;
use shoal_pki::Usage;

const VALUE_BYTES: usize = 256;
const SINGLE_CLIENT_PUTS: usize = 500;
const MANY_CLIENTS: usize = 128;
const CONNECTIONS: usize = 16;
const MANY_CLIENT_PUTS: usize = 30_000;
const READERS: usize = 64;
const READS: usize = 20_000;
const WATCHERS: usize = 1_000;
const WATCHED_PUTS: usize = 100;

/// `etcdctl check perf --load=xl`: 1,000 clients, each with its own connection, put 256-byte
/// keys with 1 KiB values, at most 15,000 writes/s in all (etcd 3.4's `checkPerfCfgMap`).
/// etcdctl runs 60 s; the bench runs [`XL_SECONDS`] per round.
const XL_CLIENTS: usize = 1_000;
const XL_WRITES_PER_SEC: u64 = 15_000;
const XL_KEY_BYTES: usize = 256;
const XL_VALUE_BYTES: usize = 1024;
const XL_SECONDS: u64 = 10;

#[derive(Debug, Clone, Serialize, Default)]
struct Latency {
    /// Operations timed.
    #[serde(default)]
    ops: usize,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
struct StoreResults {
    put_1_client: Latency,
    /// One client talking to one member only: the leader, then each follower (how much the
    /// forwarding hop costs).
    put_1_client_per_member: Vec<MemberPuts>,
    put_128_clients: Latency,
    /// [`put_xl`]'s writes.
    #[serde(default)]
    put_1000_clients: Latency,
    range_linearizable: Latency,
    range_serializable: Latency,
    watch_events_per_sec: f64,
    /// What the members in this process (shoal's) spent per put: CPU at 1,000 clients, the
    /// process's thread wakeups at 1 client; `None` for a store in other processes.
    #[serde(default)]
    members: Option<MemberCosts>,
}

/// The in-process members' cost per put (see [`InProcess`]).
#[derive(Debug, Clone, Copy, Serialize, Default)]
struct MemberCosts {
    /// The members' threads' CPU (user + system) per put of [`put_xl`], in us.
    cpu_us_per_put_xl: f64,
    /// Voluntary context switches of the whole process (members and the client) per put from
    /// one client: each is a thread that went to sleep waiting for another.
    switches_per_put_1_client: f64,
}

/// The members' threads of this process (the bench runs shoal's members in-process: runtimes
/// `kv-m<i>`, the log flusher) and the whole process's voluntary context switches, at one
/// moment.
#[derive(Debug, Clone, Copy, Default)]
struct InProcess {
    member_cpu_seconds: f64,
    voluntary_switches: u64,
}

impl InProcess {
    fn sample() -> Self {
        // SAFETY: sysconf has no memory effects.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut sample = Self::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return sample;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.starts_with("kv-m") || comm.starts_with("kv-log-flusher") {
                let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
                let field = |n| -> f64 {
                    crate::leases::stat_field(&stat, n)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_default()
                };
                sample.member_cpu_seconds += (field(14) + field(15)) / ticks;
            }
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            sample.voluntary_switches += status
                .lines()
                .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or_default();
        }
        sample
    }

    /// Voluntary context switches per op since `before`.
    fn switches_per_op_since(&self, before: &Self, ops: usize) -> f64 {
        self.voluntary_switches
            .saturating_sub(before.voluntary_switches) as f64
            / ops.max(1) as f64
    }

    /// The members' CPU per op since `before`, in us.
    fn member_cpu_us_per_op_since(&self, before: &Self, ops: usize) -> f64 {
        (self.member_cpu_seconds - before.member_cpu_seconds) * 1e6 / ops.max(1) as f64
    }
}

#[derive(Debug, Clone, Serialize, Default)]
struct MemberPuts {
    endpoint: String,
    leader: bool,
    puts: Latency,
}

/// Puts from one client connected to each member alone, leader first.
async fn puts_per_member(
    name: &str,
    store: &Store,
    value: &[u8],
) -> anyhow::Result<Vec<MemberPuts>> {
    let mut results = Vec::new();
    for endpoint in &store.endpoints {
        let mut client = store.connect(std::slice::from_ref(endpoint)).await?;
        let status = client.status().await?;
        let leader = status.header().map(|h| h.member_id()) == Some(status.leader());
        let value = value.to_vec();
        let put = move |mut c: Client, n: usize| {
            let value = value.clone();
            async move {
                c.put(format!("bench/member/{n}"), value, None).await?;
                anyhow::Ok(())
            }
        };
        let puts = run_concurrent(&[client], 1, SINGLE_CLIENT_PUTS / 2, put).await?;
        eprintln!("{name}: put 1 client to {endpoint} (leader: {leader}) {puts:?}");
        results.push(MemberPuts {
            endpoint: endpoint.clone(),
            leader,
            puts,
        });
    }
    results.sort_by_key(|m| !m.leader);
    Ok(results)
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    /// Each metric's median round.
    shoal: StoreResults,
    etcd: StoreResults,
    /// shoal / etcd for throughput; etcd / shoal for latency (above 1 means shoal is better).
    ratios: Vec<(String, f64)>,
    shoal_rounds: Vec<StoreResults>,
    etcd_rounds: Vec<StoreResults>,
    /// Both stores with TLS (`--tls` runs only).
    tls: Option<TlsReport>,
}

/// The `--tls` half of a report: the same metrics with TLS on every port of both stores.
#[derive(Debug, Serialize)]
struct TlsReport {
    shoal: StoreResults,
    etcd: StoreResults,
    /// shoal with TLS / etcd with TLS, as [`Report::ratios`].
    ratios: Vec<(String, f64)>,
    /// shoal with TLS / shoal in plaintext, throughput (above 0.8 is the issue's target).
    shoal_tls_over_plain: Vec<(String, f64)>,
    shoal_rounds: Vec<StoreResults>,
    etcd_rounds: Vec<StoreResults>,
}

/// How the load generator reaches one cluster: its endpoints (`https://` URLs with TLS) and
/// the TLS options (the CA and the client certificate) it connects with.
struct Store {
    endpoints: Vec<String>,
    tls: Option<TlsOptions>,
    /// Its members run in this process (shoal's): [`MemberCosts`] are measured for it.
    in_process: bool,
}

impl Store {
    fn plain(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            in_process: false,
        }
    }

    /// The cluster whose members run in this process.
    fn in_process(self) -> Self {
        Self {
            in_process: true,
            ..self
        }
    }

    /// `endpoints` (`https://` URLs) with the CA and the `root` client certificate of `tls`.
    fn tls(endpoints: Vec<String>, tls: &ClusterTls) -> anyhow::Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let options = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
            .identity(Identity::from_pem(
                read(&tls.root.certificate)?,
                read(&tls.root.key)?,
            ));
        Ok(Self {
            endpoints,
            tls: Some(options),
            in_process: false,
        })
    }

    async fn connect(&self, endpoints: &[String]) -> anyhow::Result<Client> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        Ok(Client::connect(endpoints, Some(options)).await?)
    }
}

/// Three shoal kv members, each on its own 2-thread runtime (as each etcd has its own
/// process), stopped when dropped. In-process (not the harness's store cluster) so that
/// `SHOAL_KV_PROFILE`'s stage timings are collected here and printed per round.
struct ShoalCluster {
    members: Vec<(tokio::runtime::Runtime, Option<RunningMember>)>,
    endpoints: Vec<String>,
}

impl Drop for ShoalCluster {
    fn drop(&mut self) {
        for (runtime, member) in self.members.drain(..) {
            if let Some(member) = member {
                runtime.block_on(member.shutdown());
            }
            runtime.shutdown_background();
        }
    }
}

/// Member `i` serves clients on `ports[2 * i]` and peers on `ports[2 * i + 1]`, with TLS on
/// both (client certificates required, as the harness's TLS etcd) when `tls` is given.
fn start_shoal(
    dir: &Path,
    ports: &[u16],
    tls: Option<&ClusterTls>,
) -> anyhow::Result<ShoalCluster> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (clients, peers): (Vec<u16>, Vec<u16>) =
        ports.chunks(2).map(|pair| (pair[0], pair[1])).unzip();
    let initial: Vec<(String, Vec<String>)> = peers
        .iter()
        .enumerate()
        .map(|(i, peer)| {
            (
                format!("m{i}"),
                vec![format!("{scheme}://127.0.0.1:{peer}")],
            )
        })
        .collect();
    let mut members = Vec::new();
    for (i, (&client, &peer)) in clients.iter().zip(&peers).enumerate() {
        let name = format!("m{i}");
        let mut config = Config::local(&name, dir.join(format!("shoal-{name}")), client, peer);
        config.initial_cluster = initial.clone();
        if let Some(tls) = tls {
            with_tls(&mut config, tls, &format!("shoal-{name}"));
        }
        let runtime = shoal_kv::runtime::multi_thread(Some(2))
            .thread_name(format!("kv-m{i}"))
            .build()?;
        let running = runtime.block_on(Member::start(config))?;
        members.push((runtime, Some(running)));
    }
    let endpoints = clients
        .iter()
        .map(|client| format!("{scheme}://127.0.0.1:{client}"))
        .collect();
    Ok(ShoalCluster { members, endpoints })
}

/// Turns `config`'s URLs to `https://` and gives it server and peer certificates issued for
/// `name` by `tls`'s CA, which it also trusts for clients and peers (etcd's `--client-cert-auth`
/// and `--peer-client-cert-auth`).
fn with_tls(config: &mut Config, tls: &ClusterTls, name: &str) {
    let https = |urls: &mut Vec<String>| {
        for url in urls.iter_mut() {
            *url = url.replacen("http://", "https://", 1);
        }
    };
    https(&mut config.listen_client_urls);
    https(&mut config.advertise_client_urls);
    https(&mut config.listen_peer_urls);
    https(&mut config.initial_advertise_peer_urls);
    let hosts = ["127.0.0.1".to_string()];
    let files = |usage: Usage, suffix: &str| {
        let issued = tls.issue(&format!("{name}-{suffix}"), usage, &hosts);
        TlsFiles {
            cert_file: issued.certificate,
            key_file: issued.key,
            trusted_ca_file: Some(tls.ca.clone()),
            client_cert_auth: true,
        }
    };
    config.client_tls = Some(files(Usage::Server, "server"));
    config.peer_tls = Some(files(Usage::Peer, "peer"));
}

async fn wait_ready(store: &Store) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for endpoint in &store.endpoints {
        loop {
            let ready = match store.connect(std::slice::from_ref(endpoint)).await {
                Ok(mut client) => client.put("bench/ready", "1", None).await.is_ok(),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("{endpoint} did not become ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration) -> Latency {
    latencies.sort_unstable();
    let at = |q: f64| {
        let idx = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies
            .get(idx)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or_default()
    };
    Latency {
        ops: latencies.len(),
        ops_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

/// Runs `total` operations from `workers` concurrent tasks over `clients`, timing each one.
async fn run_concurrent<F, Fut>(
    clients: &[Client],
    workers: usize,
    total: usize,
    op: F,
) -> anyhow::Result<Latency>
where
    F: Fn(Client, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let per_worker = total / workers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let client = clients[worker % clients.len()].clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for n in 0..per_worker {
                let t = Instant::now();
                op(client.clone(), worker * per_worker + n).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(summarize(all, started.elapsed()))
}

async fn measure(name: &str, store: &Store) -> anyhow::Result<StoreResults> {
    wait_ready(store).await?;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(store.connect(&store.endpoints).await?);
    }
    let value = vec![b'v'; VALUE_BYTES];
    let put = {
        let value = value.clone();
        move |mut c: Client, n: usize| {
            let value = value.clone();
            async move {
                c.put(format!("bench/key/{n}"), value, None).await?;
                anyhow::Ok(())
            }
        }
    };
    let _ = shoal_kv::profile::take_report();
    let before = InProcess::sample();
    let put_1_client = run_concurrent(&clients[..1], 1, SINGLE_CLIENT_PUTS, put.clone()).await?;
    let after_1_client = InProcess::sample();
    eprintln!("{name}: put 1 client {put_1_client:?}");
    eprint!("{}", shoal_kv::profile::take_report());
    let put_1_client_per_member = puts_per_member(name, store, &value).await?;
    let put_128_clients = run_concurrent(&clients, MANY_CLIENTS, MANY_CLIENT_PUTS, put).await?;
    eprintln!("{name}: put {MANY_CLIENTS} clients {put_128_clients:?}");
    eprint!("{}", shoal_kv::profile::take_report());
    let before_xl = InProcess::sample();
    let put_1000_clients = put_xl(store).await?;
    let after_xl = InProcess::sample();
    eprintln!("{name}: put {XL_CLIENTS} clients (check perf xl) {put_1000_clients:?}");
    // Only shoal's members run in this process (with `--tls` both shoal clusters do: the idle
    // one's heartbeats count too, well under 1 us per put).
    let members = store.in_process.then(|| MemberCosts {
        cpu_us_per_put_xl: after_xl.member_cpu_us_per_op_since(&before_xl, put_1000_clients.ops),
        switches_per_put_1_client: after_1_client.switches_per_op_since(&before, put_1_client.ops),
    });
    if let Some(members) = &members {
        eprintln!(
            "{name}: members' CPU per put at {XL_CLIENTS} clients {:.1} us; voluntary context \
             switches per put at 1 client {:.1}",
            members.cpu_us_per_put_xl, members.switches_per_put_1_client
        );
    }
    eprint!("{}", shoal_kv::profile::take_report());
    let get = |serializable: bool| {
        move |mut c: Client, n: usize| async move {
            let mut options = GetOptions::new();
            if serializable {
                options = options.with_serializable();
            }
            c.get(format!("bench/key/{}", n % 1000), Some(options))
                .await?;
            anyhow::Ok(())
        }
    };
    let range_linearizable = run_concurrent(&clients, READERS, READS, get(false)).await?;
    eprintln!("{name}: range linearizable {range_linearizable:?}");
    let range_serializable = run_concurrent(&clients, READERS, READS, get(true)).await?;
    eprintln!("{name}: range serializable {range_serializable:?}");
    let _ = shoal_kv::profile::take_report();
    let watch_events_per_sec = watch_fan_out(&clients).await?;
    eprintln!("{name}: watch fan-out {watch_events_per_sec:.0} events/s");
    // The write path's stages while its events fan out: where a put waits under watch load.
    eprint!("{}", shoal_kv::profile::take_report());
    Ok(StoreResults {
        put_1_client,
        put_1_client_per_member,
        put_128_clients,
        put_1000_clients,
        range_linearizable,
        range_serializable,
        watch_events_per_sec,
        members,
    })
}

/// The writes of `etcdctl check perf --load=xl` (see [`XL_CLIENTS`]) for [`XL_SECONDS`]: a
/// pacer hands out [`XL_WRITES_PER_SEC`] permits a second (at most one waiting per client, as
/// etcdctl's request channel holds one per client), each client puts once per permit. The
/// clients' connections go to the members in turn.
async fn put_xl(store: &Store) -> anyhow::Result<Latency> {
    let mut clients = Vec::with_capacity(XL_CLIENTS);
    for n in 0..XL_CLIENTS {
        let endpoint = &store.endpoints[n % store.endpoints.len()];
        clients.push(store.connect(std::slice::from_ref(endpoint)).await?);
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Instant::now();
    let pacer = {
        let permits = permits.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut issued = 0u64;
            while started.elapsed() < Duration::from_secs(XL_SECONDS) {
                tick.tick().await;
                let due = started.elapsed().as_micros() as u64 * XL_WRITES_PER_SEC / 1_000_000;
                let room = XL_CLIENTS.saturating_sub(permits.available_permits()) as u64;
                let grant = due.saturating_sub(issued).min(room);
                permits.add_permits(grant as usize);
                // Permits not granted for want of room are not owed later (etcdctl's limiter
                // blocks while the channel is full).
                issued = due;
            }
            permits.close();
        })
    };
    let mut tasks = Vec::with_capacity(XL_CLIENTS);
    for (n, mut client) in clients.into_iter().enumerate() {
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let value = vec![0u8; XL_VALUE_BYTES];
            let mut latencies = Vec::new();
            let mut key = b"bench/xl/".to_vec();
            key.resize(key.len() + XL_KEY_BYTES, 0);
            let mut sequence = 0u64;
            while let Ok(permit) = permits.acquire().await {
                permit.forget();
                let unique = ((n as u64) << 40) | sequence;
                key[9..17].copy_from_slice(&unique.to_be_bytes());
                sequence += 1;
                let t = Instant::now();
                client.put(key.clone(), value.clone(), None).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = started.elapsed();
    pacer.await?;
    Ok(summarize(all, elapsed))
}

/// Events per second delivered to [`WATCHERS`] watchers of one key while it is written
/// [`WATCHED_PUTS`] times.
async fn watch_fan_out(clients: &[Client]) -> anyhow::Result<f64> {
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
    let mut watchers = Vec::new();
    for w in 0..WATCHERS {
        let mut client = clients[w % clients.len()].clone();
        let ready = ready_tx.clone();
        watchers.push(tokio::spawn(async move {
            let mut stream = client
                .watch("bench/watched", Some(WatchOptions::new()))
                .await?;
            stream.message().await?;
            ready.send(()).await?;
            let mut seen = 0;
            while seen < WATCHED_PUTS {
                let Some(response) = stream.message().await? else {
                    bail!("watch stream ended after {seen} events");
                };
                seen += response.events().len();
            }
            anyhow::Ok(Instant::now())
        }));
    }
    for _ in 0..WATCHERS {
        ready_rx.recv().await.context("a watcher failed to start")?;
    }
    let mut writer = clients[0].clone();
    let started = Instant::now();
    for n in 0..WATCHED_PUTS {
        writer.put("bench/watched", n.to_string(), None).await?;
    }
    let mut last = started;
    for watcher in watchers {
        last = last.max(watcher.await??);
    }
    Ok((WATCHERS * WATCHED_PUTS) as f64 / (last - started).as_secs_f64())
}

fn ratios(shoal: &StoreResults, etcd: &StoreResults) -> Vec<(String, f64)> {
    let r = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    vec![
        (
            "put 1 client ops/s".into(),
            r(
                shoal.put_1_client.ops_per_sec,
                etcd.put_1_client.ops_per_sec,
            ),
        ),
        (
            "put 1 client p99 (etcd/shoal)".into(),
            r(etcd.put_1_client.p99_ms, shoal.put_1_client.p99_ms),
        ),
        (
            "put 128 clients ops/s".into(),
            r(
                shoal.put_128_clients.ops_per_sec,
                etcd.put_128_clients.ops_per_sec,
            ),
        ),
        (
            "put 128 clients p99 (etcd/shoal)".into(),
            r(etcd.put_128_clients.p99_ms, shoal.put_128_clients.p99_ms),
        ),
        (
            "put 1000 clients ops/s".into(),
            r(
                shoal.put_1000_clients.ops_per_sec,
                etcd.put_1000_clients.ops_per_sec,
            ),
        ),
        (
            "put 1000 clients p99 (etcd/shoal)".into(),
            r(etcd.put_1000_clients.p99_ms, shoal.put_1000_clients.p99_ms),
        ),
        (
            "range linearizable ops/s".into(),
            r(
                shoal.range_linearizable.ops_per_sec,
                etcd.range_linearizable.ops_per_sec,
            ),
        ),
        (
            "range serializable ops/s".into(),
            r(
                shoal.range_serializable.ops_per_sec,
                etcd.range_serializable.ops_per_sec,
            ),
        ),
        (
            "watch events/s".into(),
            r(shoal.watch_events_per_sec, etcd.watch_events_per_sec),
        ),
    ]
}

/// shoal / etcd (or any store over another) for every throughput metric, in table order.
fn throughput_ratios(a: &StoreResults, b: &StoreResults) -> Vec<(String, f64)> {
    let r = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    METRICS
        .iter()
        .zip(throughputs(a).into_iter().zip(throughputs(b)))
        .map(|(name, (a, b))| (name.to_string(), r(a, b)))
        .collect()
}

/// A store's throughput for each of [`METRICS`].
fn throughputs(s: &StoreResults) -> [f64; 6] {
    [
        s.put_1_client.ops_per_sec,
        s.put_128_clients.ops_per_sec,
        s.put_1000_clients.ops_per_sec,
        s.range_linearizable.ops_per_sec,
        s.range_serializable.ops_per_sec,
        s.watch_events_per_sec,
    ]
}

/// The table's metrics, in order.
const METRICS: [&str; 6] = [
    "put, 1 client",
    "put, 128 clients",
    "put, 1,000 clients (check perf xl)",
    "range, linearizable",
    "range, serializable",
    "watch fan-out, 1,000 watchers",
];

/// One store's cells for [`METRICS`].
fn cells(s: &StoreResults) -> Vec<String> {
    vec![
        format!(
            "{:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
            s.put_1_client.ops_per_sec, s.put_1_client.p50_ms, s.put_1_client.p99_ms
        ),
        format!(
            "{:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
            s.put_128_clients.ops_per_sec, s.put_128_clients.p50_ms, s.put_128_clients.p99_ms
        ),
        format!(
            "{:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
            s.put_1000_clients.ops_per_sec, s.put_1000_clients.p50_ms, s.put_1000_clients.p99_ms
        ),
        format!(
            "{:.0} ops/s, p99 {:.2} ms",
            s.range_linearizable.ops_per_sec, s.range_linearizable.p99_ms
        ),
        format!(
            "{:.0} ops/s, p99 {:.2} ms",
            s.range_serializable.ops_per_sec, s.range_serializable.p99_ms
        ),
        format!("{:.0} events/s", s.watch_events_per_sec),
    ]
}

/// A table's header rows: the metric column, then `columns`.
fn header(out: &mut String, columns: &[&str]) {
    let _ = writeln!(out, "| metric | {} |", columns.join(" | "));
    let _ = writeln!(out, "| --- |{}", " --- |".repeat(columns.len()));
}

/// The results table, as printed and as recorded in RESULTS.md.
fn table(report: &Report) -> String {
    let mut out = String::new();
    let ratio_for = [0, 2, 4, 6, 7, 8];
    let _ = writeln!(
        out,
        "median of {} alternating rounds per store",
        report.shoal_rounds.len()
    );
    header(
        &mut out,
        &[
            "shoal kv (3 members)",
            "etcd 3.4 (3 members)",
            "shoal / etcd",
        ],
    );
    let (shoal, etcd) = (cells(&report.shoal), cells(&report.etcd));
    for (i, name) in METRICS.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {:.2}x |",
            shoal[i], etcd[i], report.ratios[ratio_for[i]].1
        );
    }
    let _ = writeln!(
        out,
        "p99 ratio (etcd / shoal, above 1 is better): 1 client {:.2}x, 128 clients {:.2}x, 1,000 clients {:.2}x",
        report.ratios[1].1, report.ratios[3].1, report.ratios[5].1
    );
    out.push_str(&every_round(report));
    for (store, results) in [("shoal", &report.shoal), ("etcd", &report.etcd)] {
        let per_member: Vec<String> = results
            .put_1_client_per_member
            .iter()
            .map(|m| {
                let role = if m.leader { "leader" } else { "follower" };
                format!("{role} p50 {:.2} ms", m.puts.p50_ms)
            })
            .collect();
        let _ = writeln!(
            out,
            "{store}: put 1 client by member: {}",
            per_member.join(", ")
        );
    }
    if let Some(tls) = &report.tls {
        out.push_str(&tls_table(report, tls));
    }
    out
}

/// Every round's throughput of each metric, per store, in the order the rounds ran.
fn every_round(report: &Report) -> String {
    let mut out = String::from("every round (shoal | etcd):\n");
    let figures = |rounds: &[StoreResults], i: usize| {
        rounds
            .iter()
            .map(|r| format!("{:.0}", throughputs(r)[i]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, name) in METRICS.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {name}: {} | {}",
            figures(&report.shoal_rounds, i),
            figures(&report.etcd_rounds, i)
        );
    }
    out
}

/// The `--tls` table: shoal in plaintext, shoal with TLS and etcd with TLS side by side, with
/// the issue's two put-throughput targets.
fn tls_table(report: &Report, tls: &TlsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nTLS on every client and peer port, client certificates required (one CA), median of {} rounds",
        tls.shoal_rounds.len()
    );
    header(
        &mut out,
        &[
            "shoal kv plaintext",
            "shoal kv TLS",
            "etcd 3.4 TLS",
            "shoal TLS / plaintext",
            "shoal TLS / etcd TLS",
            "etcd TLS / plaintext",
        ],
    );
    let (plain, shoal, etcd) = (cells(&report.shoal), cells(&tls.shoal), cells(&tls.etcd));
    let over_etcd = throughput_ratios(&tls.shoal, &tls.etcd);
    let etcd_cost = throughput_ratios(&tls.etcd, &report.etcd);
    for (i, name) in METRICS.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {:.2}x | {:.2}x | {:.2}x |",
            plain[i],
            shoal[i],
            etcd[i],
            tls.shoal_tls_over_plain[i].1,
            over_etcd[i].1,
            etcd_cost[i].1
        );
    }
    let _ = writeln!(
        out,
        "put throughput, 128 clients: shoal TLS / shoal plaintext {:.2}x (target >= 0.80), shoal TLS / etcd TLS {:.2}x (target >= 1.00)",
        tls.shoal_tls_over_plain[1].1, over_etcd[1].1
    );
    out
}

const CHART: &str = r#"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
report = json.load(open(sys.argv[1]))
names = ["put_1_client", "put_128_clients", "put_1000_clients", "range_linearizable", "range_serializable"]
labels = ["put 1 client", "put 128 clients", "put 1,000 clients", "range lin.", "range ser.", "watch events/s"]
def values(results):
    return [results[n]["ops_per_sec"] for n in names] + [results["watch_events_per_sec"]]
stores = [("shoal kv (3 members)", report["shoal"]), ("etcd 3.4 (3 members)", report["etcd"])]
if report.get("tls"):
    stores += [("shoal kv, TLS", report["tls"]["shoal"]), ("etcd 3.4, TLS", report["tls"]["etcd"])]
fig, ax = plt.subplots(figsize=(10, 5))
x = range(len(labels))
width = 0.8 / len(stores)
for k, (label, results) in enumerate(stores):
    offset = (k - (len(stores) - 1) / 2) * width
    ax.bar([i + offset for i in x], values(results), width, label=label)
ax.set_xticks(list(x))
ax.set_xticklabels(labels)
ax.set_yscale("log")
ax.set_ylabel("operations (events) per second, log scale")
ax.set_title("kv: shoal kv vs etcd 3.4, fsync on, " + report["machine"])
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2])
"#;

fn write_outputs(report: &Report) -> anyhow::Result<()> {
    crate::results::write_outputs("kv", report, CHART)
}

/// Rounds per store (`SHOAL_BENCH_KV_ROUNDS` overrides it). Rounds alternate between etcd and
/// shoal with both clusters up, so a change in the machine's load (other work on the shared
/// cores) hits both; every metric reports its median round.
const DEFAULT_ROUNDS: usize = 3;

fn rounds() -> usize {
    std::env::var("SHOAL_BENCH_KV_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(DEFAULT_ROUNDS)
}

/// The round with the median value of `key`.
fn median_round(rounds: &[StoreResults], key: impl Fn(&StoreResults) -> f64) -> &StoreResults {
    let mut sorted: Vec<&StoreResults> = rounds.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted[sorted.len() / 2]
}

/// Each metric's median over the rounds (the per-member puts come with the median 1-client
/// round).
fn median_results(rounds: &[StoreResults]) -> StoreResults {
    if rounds.is_empty() {
        return StoreResults::default();
    }
    let one = median_round(rounds, |r| r.put_1_client.ops_per_sec);
    StoreResults {
        put_1_client: one.put_1_client.clone(),
        put_1_client_per_member: one.put_1_client_per_member.clone(),
        put_128_clients: median_round(rounds, |r| r.put_128_clients.ops_per_sec)
            .put_128_clients
            .clone(),
        put_1000_clients: median_round(rounds, |r| r.put_1000_clients.ops_per_sec)
            .put_1000_clients
            .clone(),
        range_linearizable: median_round(rounds, |r| r.range_linearizable.ops_per_sec)
            .range_linearizable
            .clone(),
        range_serializable: median_round(rounds, |r| r.range_serializable.ops_per_sec)
            .range_serializable
            .clone(),
        watch_events_per_sec: median_round(rounds, |r| r.watch_events_per_sec).watch_events_per_sec,
        members: median_round(rounds, |r| r.members.map_or(0.0, |m| m.cpu_us_per_put_xl)).members,
    }
}

/// One cluster under measurement and its rounds.
struct Side {
    name: &'static str,
    store: Store,
    rounds: Vec<StoreResults>,
}

/// The rounds of the side called `name` (none if it did not run).
fn rounds_of(sides: &mut [Side], name: &str) -> Vec<StoreResults> {
    sides
        .iter_mut()
        .find(|side| side.name == name)
        .map(|side| std::mem::take(&mut side.rounds))
        .unwrap_or_default()
}

/// Runs the suite (with `tls`, also both stores with TLS); its table, unless
/// `SHOAL_BENCH_ONLY` measured one store alone.
pub fn run(tls: bool) -> anyhow::Result<Option<String>> {
    // 1,000 client connections per store (`put_xl`), and the members' ends of them in-process.
    crate::leases::raise_fd_limit();
    let dir = tempfile::tempdir()?;
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kv-load")
        .enable_all()
        .build()?;
    // `SHOAL_BENCH_ONLY=shoal` (or `etcd`) measures one store, for profiling runs; the
    // report files are only written by a full side-by-side run.
    let only = std::env::var("SHOAL_BENCH_ONLY").ok();
    let wanted = |store: &str| only.as_deref().is_none_or(|o| o == store);
    // etcd answers (so holds its ports) before shoal picks its own.
    let etcd_cluster = wanted("etcd").then(|| StoreCluster::start(StoreKind::Etcd, 3));
    let etcd_tls_cluster =
        (tls && wanted("etcd")).then(|| StoreCluster::builder(StoreKind::Etcd, 3).tls().start());
    // shoal's TLS members get their certificates from etcd's CA, so one root client
    // certificate reaches both; from a CA of their own when etcd is not measured.
    let own_ca = (tls && etcd_tls_cluster.is_none())
        .then(|| ClusterTls::create(&dir.path().join("pki"), &[], None));
    let ca = etcd_tls_cluster
        .as_ref()
        .and_then(StoreCluster::tls)
        .or(own_ca.as_ref());
    let shoal_cluster = wanted("shoal")
        .then(|| start_shoal(&dir.path().join("plain"), &free_ports(6), None))
        .transpose()?;
    let shoal_tls_cluster = ca
        .filter(|_| wanted("shoal"))
        .map(|ca| start_shoal(&dir.path().join("tls"), &free_ports(6), Some(ca)))
        .transpose()?;

    let mut sides = Vec::new();
    if let Some(cluster) = &etcd_cluster {
        sides.push(("etcd", Store::plain(cluster.endpoints())));
    }
    if let Some(cluster) = &shoal_cluster {
        sides.push((
            "shoal",
            Store::plain(cluster.endpoints.clone()).in_process(),
        ));
    }
    if let (Some(cluster), Some(ca)) = (&etcd_tls_cluster, ca) {
        sides.push(("etcd TLS", Store::tls(cluster.client_urls(), ca)?));
    }
    if let (Some(cluster), Some(ca)) = (&shoal_tls_cluster, ca) {
        sides.push((
            "shoal TLS",
            Store::tls(cluster.endpoints.clone(), ca)?.in_process(),
        ));
    }
    let mut sides: Vec<Side> = sides
        .into_iter()
        .map(|(name, store)| Side {
            name,
            store,
            rounds: Vec::new(),
        })
        .collect();
    let indices: Vec<usize> = (0..sides.len()).collect();
    for round in 1..=rounds() {
        for side in round_order(&indices, round) {
            let side = &mut sides[side];
            let name = format!("{} round {round}", side.name);
            side.rounds
                .push(load.block_on(measure(&name, &side.store))?);
        }
    }
    drop((
        etcd_cluster,
        shoal_cluster,
        etcd_tls_cluster,
        shoal_tls_cluster,
    ));
    if only.is_some() {
        return Ok(None);
    }
    let (shoal_rounds, etcd_rounds) = (
        rounds_of(&mut sides, "shoal"),
        rounds_of(&mut sides, "etcd"),
    );
    let (shoal, etcd) = (median_results(&shoal_rounds), median_results(&etcd_rounds));
    let tls = tls.then(|| {
        let (shoal_rounds, etcd_rounds) = (
            rounds_of(&mut sides, "shoal TLS"),
            rounds_of(&mut sides, "etcd TLS"),
        );
        let (shoal_tls, etcd_tls) = (median_results(&shoal_rounds), median_results(&etcd_rounds));
        TlsReport {
            ratios: ratios(&shoal_tls, &etcd_tls),
            shoal_tls_over_plain: throughput_ratios(&shoal_tls, &shoal),
            shoal: shoal_tls,
            etcd: etcd_tls,
            shoal_rounds,
            etcd_rounds,
        }
    });
    let report = Report {
        machine: crate::results::host(),
        ratios: ratios(&shoal, &etcd),
        shoal,
        etcd,
        shoal_rounds,
        etcd_rounds,
        tls,
    };
    write_outputs(&report)?;
    Ok(Some(table(&report)))
}
