//! Fixtures of the fleet integration tests: a real etcd 3.4 on free loopback ports, and fleetd
//! nodes running in-process, each on its own thread and runtime so that one can be killed
//! abruptly (its tasks vanish, its heartbeat stops) while its unit processes keep running.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use shoal_scheduler::{
    FleetConfig, Fleetd,
    agent::supervisor::kill_recorded_units,
    config::RuntimeKind,
    registry::{Job, Registry, ValidUnit},
    store::{Store, TargetState, UnitStateRecord},
};

pub const ETCD: &str = "/usr/bin/etcd";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Adds the flags of a single-member etcd named `name` to `command` (which runs etcd).
pub fn etcd_member(
    mut command: Command,
    name: &str,
    data_dir: &Path,
    client: &str,
    peer: &str,
) -> Command {
    command
        .args(["--name", name, "--data-dir"])
        .arg(data_dir)
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args(["--initial-cluster", &format!("{name}={peer}")]);
    command
}

/// A single-member etcd 3.4 in a temporary directory, killed on drop.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts etcd serving clients on `client_port`.
    pub async fn start_on(client_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = etcd_member(
            Command::new(ETCD),
            "fleet-test",
            &dir.path().join("data"),
            &client,
            &peer,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd 3.4 at /usr/bin/etcd");
        let etcd = Self {
            child,
            endpoint: client,
            _dir: dir,
        };
        let endpoint = etcd.endpoint.clone();
        wait_until(Duration::from_secs(20), "etcd to answer", || {
            let endpoint = endpoint.clone();
            async move { connect(&endpoint).await.is_some() }
        })
        .await;
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which store the fleet tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Etcd,
    ShoalKv,
}

/// A single-member store of either kind, stopped on drop.
pub enum StoreServer {
    Etcd(Etcd),
    ShoalKv(ShoalKv),
}

impl StoreServer {
    pub async fn start(backend: Backend) -> Self {
        match backend {
            Backend::Etcd => StoreServer::Etcd(Etcd::start().await),
            Backend::ShoalKv => StoreServer::ShoalKv(ShoalKv::start().await),
        }
    }

    pub fn endpoint(&self) -> &str {
        match self {
            StoreServer::Etcd(etcd) => &etcd.endpoint,
            StoreServer::ShoalKv(kv) => &kv.endpoint,
        }
    }
}

/// A single-member shoal kv, in-process on its own thread and runtime.
pub struct ShoalKv {
    pub endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl ShoalKv {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let args = shoal_kv::cli::KvArgs {
            name: "fleet-test".into(),
            data_dir: Some(dir.path().join("data")),
            listen_client_urls: client.clone(),
            advertise_client_urls: client.clone(),
            listen_peer_urls: peer.clone(),
            initial_advertise_peer_urls: peer,
            initial_cluster: None,
            initial_cluster_state: "new".into(),
            initial_cluster_token: "fleet-test".into(),
            heartbeat_interval: 100,
            election_timeout: 1000,
            snapshot_count: 10_000,
        };
        let config = args.config().expect("shoal kv config");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let member = shoal_kv::member::Member::start(config)
                    .await
                    .expect("shoal kv member");
                let _ = stopped.await;
                member.shutdown().await;
            });
        });
        let kv = Self {
            endpoint: client,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        };
        let endpoint = kv.endpoint.clone();
        wait_until(Duration::from_secs(20), "shoal kv to answer", || {
            let endpoint = endpoint.clone();
            async move { connect(&endpoint).await.is_some() }
        })
        .await;
        kv
    }
}

impl Drop for ShoalKv {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn connect(endpoint: &str) -> Option<Store> {
    Store::connect(
        &[endpoint.to_string()],
        shoal_scheduler::store::DEFAULT_PREFIX,
        Duration::from_secs(2),
    )
    .await
    .ok()
}

pub async fn registry(endpoint: &str) -> Registry {
    Registry::new(connect(endpoint).await.expect("store reachable"))
}

/// Polls `condition` every 100 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Machine ID number `index` (32 hex characters, distinct short IDs).
pub fn machine_id(index: usize) -> String {
    format!(
        "{:08x}{:024x}",
        0x1000_0000 + index as u64 * 0x0101_0101,
        index
    )
}

/// One fleetd in-process, on its own thread and runtime.
pub struct Node {
    pub id: String,
    pub config: FleetConfig,
    data_dir: tempfile::TempDir,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    pub fn start(endpoint: &str, index: usize, metadata: &[(&str, &str)], ttl: Duration) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let id = machine_id(index);
        let config = FleetConfig {
            etcd_servers: vec![endpoint.to_string()],
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            public_ip: Some(format!("10.99.0.{}", index + 1)),
            agent_ttl: ttl,
            engine_reconcile_interval: Duration::from_secs(1),
            etcd_request_timeout: Duration::from_secs(2),
            machine_id: Some(id.clone()),
            data_dir: data_dir.path().to_path_buf(),
            unit_runtime: RuntimeKind::Supervisor,
            ..FleetConfig::default()
        };
        let mut node = Self {
            id,
            config,
            data_dir,
            kill: None,
            thread: None,
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let config = self.config.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let (_stop, shutdown) = tokio::sync::watch::channel(false);
                tokio::select! {
                    result = Fleetd::run(config, shutdown) => {
                        if let Err(err) = result {
                            eprintln!("fleetd exited: {err}");
                        }
                    }
                    _ = killed => {}
                }
            });
            runtime.shutdown_background();
        });
        self.kill = Some(kill);
        self.thread = Some(thread);
    }

    /// Kills the daemon abruptly: no goodbye to the store; its units keep running.
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Starts the daemon again with the same identity and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn output_file(&self, unit: &str) -> PathBuf {
        self.data_dir
            .path()
            .join("units")
            .join(unit)
            .join("output.log")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        kill_recorded_units(self.data_dir.path());
    }
}

/// A cluster of nodes sharing one store, all killed (units included) on drop.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub store: StoreServer,
}

impl Cluster {
    pub async fn start(backend: Backend, metadata: &[&[(&str, &str)]], ttl: Duration) -> Self {
        let store = StoreServer::start(backend).await;
        let nodes = metadata
            .iter()
            .enumerate()
            .map(|(index, meta)| Node::start(store.endpoint(), index, meta, ttl))
            .collect();
        let cluster = Self { nodes, store };
        let registry = cluster.registry().await;
        let expected = metadata.len();
        wait_until(Duration::from_secs(15), "machines to register", || async {
            registry.machines().await.map(|m| m.len()).unwrap_or(0) == expected
        })
        .await;
        cluster
    }

    pub fn endpoint(&self) -> &str {
        self.store.endpoint()
    }

    pub async fn registry(&self) -> Registry {
        registry(self.endpoint()).await
    }
}

/// A long-running service that prints a line, then sleeps.
pub fn sleeper(x_fleet: &str) -> String {
    format!(
        "[Unit]\nDescription=test unit %n\n\n[Service]\nExecStart=/bin/sh -c 'echo hello from %n; exec sleep 600'\n\n[X-Fleet]\n{x_fleet}\n"
    )
}

/// Submits units and sets them launched.
pub async fn start_units(registry: &Registry, units: &[(&str, String)]) {
    let valid: Vec<ValidUnit> = units
        .iter()
        .map(|(name, text)| ValidUnit::new(name, name, text).expect("valid unit"))
        .collect();
    registry.submit(&valid, false).await.expect("submit");
    let names: Vec<String> = units.iter().map(|(name, _)| name.to_string()).collect();
    registry
        .set_target_state(&names, TargetState::Launched)
        .await
        .expect("launch");
}

/// Machines on which `unit` reports active/running.
pub async fn running_on(registry: &Registry, unit: &str) -> Vec<String> {
    let states = registry.states().await.unwrap_or_default();
    active_machines(states.get(unit))
}

pub fn active_machines(states: Option<&BTreeMap<String, UnitStateRecord>>) -> Vec<String> {
    states
        .map(|per_machine| {
            per_machine
                .iter()
                .filter(|(_, s)| s.active_state == "active" && s.sub_state == "running")
                .map(|(m, _)| m.clone())
                .collect()
        })
        .unwrap_or_default()
}

pub async fn job(registry: &Registry, unit: &str) -> Job {
    registry
        .job(unit)
        .await
        .expect("store")
        .expect("job exists")
}

/// Runs each listed `async fn name(backend: Backend)` against etcd 3.4 and against shoal kv.
#[macro_export]
macro_rules! against_both_stores {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Etcd).await
                }
            )*
        }
        mod shoal_kv {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::ShoalKv).await
                }
            )*
        }
    };
}
