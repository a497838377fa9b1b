//! Fixtures of the fleet integration tests beside the harness's store cluster: fleetd nodes
//! running in-process, each on its own thread and runtime so that one can be killed abruptly
//! (its tasks vanish, its heartbeat stops) while its unit processes keep running, and helpers
//! that read fleet's registry.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use shoal_harness::{StoreCluster, StoreKind, wait_until};

use shoal_scheduler::{
    FleetConfig, Fleetd,
    agent::supervisor::kill_recorded_units,
    config::RuntimeKind,
    registry::{Job, Registry, ValidUnit},
    store::{Store, TargetState, UnitStateRecord},
};

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

/// A single-member etcd 3.4 on loopback, ready.
pub fn etcd() -> StoreCluster {
    StoreCluster::start(StoreKind::Etcd, 1)
}

/// A cluster of nodes sharing one store, all killed (units included) on drop.
pub struct Cluster {
    pub nodes: Vec<Node>,
    endpoint: String,
    pub store: StoreCluster,
}

impl Cluster {
    pub async fn start(backend: StoreKind, metadata: &[&[(&str, &str)]], ttl: Duration) -> Self {
        let store = StoreCluster::start(backend, 1);
        let endpoint = store.client_url(0);
        let nodes = metadata
            .iter()
            .enumerate()
            .map(|(index, meta)| Node::start(&endpoint, index, meta, ttl))
            .collect();
        let cluster = Self {
            nodes,
            endpoint,
            store,
        };
        let registry = cluster.registry().await;
        let expected = metadata.len();
        wait_until(Duration::from_secs(15), "machines to register", || async {
            registry.machines().await.map(|m| m.len()).unwrap_or(0) == expected
        })
        .await;
        cluster
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
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

/// Runs each listed `async fn name(backend: StoreKind)` against etcd 3.4 and against shoal kv.
#[macro_export]
macro_rules! against_both_stores {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(shoal_harness::StoreKind::Etcd).await
                }
            )*
        }
        mod shoal_kv {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(shoal_harness::StoreKind::ShoalKv).await
                }
            )*
        }
    };
}
