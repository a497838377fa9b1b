//! `fleetd` as a library: the agent and the engine candidate of one machine, in-process.

use std::{sync::Arc, time::Duration};

use shoal_store_client::Chain;
use tokio::sync::watch;

use crate::lease::until_stopped;

use crate::{
    agent::{
        Agent, AgentSettings, UnitRuntime, identity, runtime::systemd_is_init,
        supervisor::Supervisor, systemd::Systemd,
    },
    config::{ConfigError, FleetConfig, RuntimeKind},
    engine::{EngineSettings, run_engine},
    store::{MachineRecord, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum FleetdError {
    #[error("configuration")]
    Config(#[from] ConfigError),
    #[error("machine identity")]
    Identity(#[from] identity::IdentityError),
    #[error("unit runtime")]
    Runtime(#[from] crate::agent::RuntimeError),
    #[error("store")]
    Store(#[from] StoreError),
}

/// One machine's fleet daemon.
pub struct Fleetd;

impl Fleetd {
    /// Runs the agent and (unless disabled) an engine candidate until `shutdown` turns true.
    /// Waits for the store if it is unreachable at first; errors only on bad configuration.
    /// Units keep running when it returns (a restarted fleetd adopts them).
    pub async fn run(
        config: FleetConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), FleetdError> {
        config.validate()?;
        for option in &config.without_effect {
            tracing::warn!(option, "fleetd: this fleet option has no effect in shoal");
        }
        let machine_id = identity::machine_id(config.machine_id.as_deref(), &config.data_dir)?;
        let route_ip = identity::detect_public_ip(&config.etcd_servers);
        let public_ip = config
            .public_ip
            .clone()
            .or_else(|| route_ip.map(|ip| ip.to_string()));
        let unit_environment = identity::coreos_environment(public_ip.as_deref(), route_ip);
        let runtime = make_runtime(&config, unit_environment)?;
        let store = connect_until_ready(&config, shutdown.clone()).await;
        let Some(store) = store else { return Ok(()) };
        tracing::info!(machine = %machine_id, public_ip = ?public_ip, "fleetd: starting");
        let machine = MachineRecord {
            id: machine_id.clone(),
            public_ip: public_ip.unwrap_or_default(),
            metadata: config.metadata.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let agent = Agent::new(
            store.clone(),
            AgentSettings {
                machine,
                ttl: config.agent_ttl,
            },
            runtime,
        );
        let agent_task = tokio::spawn(agent.run(shutdown.clone()));
        if !config.disable_engine {
            let settings = EngineSettings {
                machine_id,
                lease_ttl: config.agent_ttl,
                reconcile_interval: config.engine_reconcile_interval,
            };
            run_engine(store, settings, shutdown).await;
        }
        let _ = agent_task.await;
        Ok(())
    }
}

/// The unit runtime, giving every unit `environment` (CoreOS's `COREOS_*` addresses).
fn make_runtime(
    config: &FleetConfig,
    environment: Vec<(String, String)>,
) -> Result<Arc<dyn UnitRuntime>, FleetdError> {
    let use_systemd = match config.unit_runtime {
        RuntimeKind::Auto => systemd_is_init(),
        RuntimeKind::Systemd => true,
        RuntimeKind::Supervisor => false,
    };
    if use_systemd {
        tracing::info!("fleetd: running units through systemd");
        return Ok(Arc::new(
            Systemd::new(&config.units_directory).with_environment(environment),
        ));
    }
    tracing::info!(data_dir = %config.data_dir.display(), "fleetd: running units with the built-in supervisor");
    Ok(Arc::new(
        Supervisor::new(&config.data_dir)?.with_environment(environment),
    ))
}

/// Connects to the store, retrying while it is unreachable; `None` on shutdown.
async fn connect_until_ready(
    config: &FleetConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Store> {
    let store = config.store_config();
    loop {
        match Store::connect_with(&store, &config.etcd_key_prefix).await {
            Ok(store) => return Some(store),
            Err(err) => tracing::warn!("fleetd: {}; retrying", Chain(&err)),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = until_stopped(&mut shutdown) => return None,
        }
    }
}
