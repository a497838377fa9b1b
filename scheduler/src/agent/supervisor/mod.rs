//! The built-in supervisor, for machines where systemd is not PID 1.
//!
//! Every loaded unit gets an actor task that owns its processes and takes start/stop
//! commands. Processes run in their own process group (stopping kills the whole group), with
//! stdout and stderr appended to `<data_dir>/units/<name>/output.log` (what `fleetctl journal`
//! shows). The main process of a running unit is recorded in `run.json` next to it, so an agent
//! that restarts adopts the process instead of starting the unit a second time; an adopted
//! process is watched through `/proc` since it is no longer our child.

mod actor;
mod command;
mod dependencies;
mod exec;
mod output;
mod process;
mod records;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

pub use records::RunRecord;

use self::{
    actor::Actor,
    command::Command,
    dependencies::{Dependencies, Link, unit_list},
    output::OUTPUT_FILE,
    process::{kill_group, process_alive},
    records::{RUN_FILE, find_running},
};
use super::{
    runtime::{RuntimeError, UnitRuntime, UnitStatus, tail_lines},
    service::ServiceConfig,
};
use crate::unit::{UnitFile, UnitName};

struct Slot {
    hash: String,
    status: Arc<Mutex<UnitStatus>>,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

/// The built-in supervisor. See the module documentation.
pub struct Supervisor {
    dir: PathBuf,
    slots: tokio::sync::Mutex<HashMap<String, Slot>>,
    dependencies: Arc<Dependencies>,
    adoptable: Mutex<HashMap<String, RunRecord>>,
    /// Given to every unit before its own `Environment=` (which overrides it).
    environment: Vec<(String, String)>,
}

impl Supervisor {
    /// Opens the supervisor's directory and finds processes left running by a previous agent.
    pub fn new(data_dir: &Path) -> Result<Self, RuntimeError> {
        let dir = data_dir.join("units");
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        let adoptable = find_running(&dir);
        if !adoptable.is_empty() {
            tracing::info!(
                units = adoptable.len(),
                "supervisor: found running units to adopt"
            );
        }
        Ok(Self {
            dir,
            slots: tokio::sync::Mutex::new(HashMap::new()),
            dependencies: Arc::default(),
            adoptable: Mutex::new(adoptable),
            environment: Vec::new(),
        })
    }

    /// Gives every unit these variables, as CoreOS's `/etc/environment` did; a unit's own
    /// `Environment=` and `EnvironmentFile=` override them.
    pub fn with_environment(mut self, environment: Vec<(String, String)>) -> Self {
        self.environment = environment;
        self
    }

    fn unit_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn take_adoptable(&self, name: &str, hash: &str) -> Option<RunRecord> {
        let record = self.adoptable.lock().ok()?.remove(name)?;
        if record.hash == hash && process_alive(record.pid, record.start_time) {
            return Some(record);
        }
        kill_group(record.pid, libc::SIGKILL);
        None
    }
}

#[async_trait]
impl UnitRuntime for Supervisor {
    async fn load(&self, name: &UnitName, unit: &UnitFile, hash: &str) -> Result<(), RuntimeError> {
        let mut slots = self.slots.lock().await;
        if slots
            .get(name.as_str())
            .is_some_and(|slot| slot.hash == hash)
        {
            return Ok(());
        }
        let mut config = ServiceConfig::from_unit(name, unit)
            .map_err(|e| RuntimeError::unit(name.as_str(), e.to_string()))?;
        config
            .environment
            .splice(0..0, self.environment.iter().cloned());
        let dir = self.unit_dir(name.as_str());
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        std::fs::write(dir.join("unit"), unit.serialize())
            .map_err(|e| RuntimeError::io(format!("writing {}", dir.display()), e))?;
        let adopted = self.take_adoptable(name.as_str(), hash);
        let status = Arc::new(Mutex::new(initial_status(hash, adopted.as_ref())));
        let (commands, receiver) = mpsc::unbounded_channel();
        let actor = Actor {
            name: name.to_string(),
            hash: hash.to_string(),
            config,
            dir,
            status: status.clone(),
            commands: receiver,
            stopping: false,
            dependencies: self.dependencies.clone(),
        };
        self.dependencies.register(
            name.as_str(),
            Link {
                binds_to: unit_list(unit, "BindsTo"),
                part_of: unit_list(unit, "PartOf"),
                status: status.clone(),
                commands: commands.clone(),
            },
        );
        let task = tokio::spawn(actor.run(adopted));
        if let Some(old) = slots.insert(
            name.to_string(),
            Slot {
                hash: hash.to_string(),
                status,
                commands,
                task,
            },
        ) {
            stop_slot(old).await;
        }
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let slots = self.slots.lock().await;
        let slot = slots
            .get(name)
            .ok_or_else(|| RuntimeError::unit(name, "not loaded"))?;
        if let Ok(mut status) = slot.status.lock() {
            status.started = true;
        }
        if !self.dependencies.may_start(name) {
            tracing::info!(unit = %name, "supervisor: waiting for its BindsTo= units to be active");
            return Ok(());
        }
        slot.commands
            .send(Command::Start)
            .map_err(|_| RuntimeError::unit(name, "supervisor task is gone"))
    }

    async fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        let (done, acknowledged) = oneshot::channel();
        {
            let slots = self.slots.lock().await;
            let slot = slots
                .get(name)
                .ok_or_else(|| RuntimeError::unit(name, "not loaded"))?;
            if let Ok(mut status) = slot.status.lock() {
                status.started = false;
            }
            self.dependencies.cancel_start(name);
            self.dependencies.stopping(name);
            if slot.commands.send(Command::Stop(done)).is_err() {
                return Ok(());
            }
        }
        let _ = acknowledged.await;
        Ok(())
    }

    async fn unload(&self, name: &str) -> Result<(), RuntimeError> {
        let slot = self.slots.lock().await.remove(name);
        self.dependencies.stopping(name);
        self.dependencies.remove(name);
        if let Some(slot) = slot {
            stop_slot(slot).await;
        }
        Ok(())
    }

    async fn units(&self) -> Vec<(String, UnitStatus)> {
        let slots = self.slots.lock().await;
        slots
            .iter()
            .filter_map(|(name, slot)| Some((name.clone(), slot.status.lock().ok()?.clone())))
            .collect()
    }

    async fn journal(&self, name: &str, lines: usize) -> Result<String, RuntimeError> {
        let path = self.unit_dir(name).join(OUTPUT_FILE);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(tail_lines(&String::from_utf8_lossy(&bytes), lines)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(err) => Err(RuntimeError::io(format!("reading {}", path.display()), err)),
        }
    }

    async fn finish_adoption(&self) {
        self.discard_unadopted();
    }
}

impl Supervisor {
    /// Kills processes of a previous agent that no loaded unit adopted.
    pub fn discard_unadopted(&self) {
        let Ok(mut adoptable) = self.adoptable.lock() else {
            return;
        };
        for (name, record) in adoptable.drain() {
            if process_alive(record.pid, record.start_time) {
                tracing::info!(unit = %name, pid = record.pid, "supervisor: stopping unit no longer scheduled here");
                kill_group(record.pid, libc::SIGKILL);
            }
            let _ = std::fs::remove_file(self.unit_dir(&name).join(RUN_FILE));
        }
    }

    /// Stops every unit (used when the agent purges on shutdown).
    pub async fn stop_all(&self) {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .await
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        for slot in slots {
            stop_slot(slot).await;
        }
    }
}

/// Kills the process groups recorded in a data directory (test and purge cleanup).
pub fn kill_recorded_units(data_dir: &Path) {
    for (_, record) in find_running(&data_dir.join("units")) {
        kill_group(record.pid, libc::SIGKILL);
    }
}

async fn stop_slot(slot: Slot) {
    let (done, acknowledged) = oneshot::channel();
    if slot.commands.send(Command::Stop(done)).is_ok() {
        let _ = acknowledged.await;
    }
    slot.task.abort();
}

fn initial_status(hash: &str, adopted: Option<&RunRecord>) -> UnitStatus {
    UnitStatus {
        hash: hash.to_string(),
        load_state: "loaded".into(),
        active_state: if adopted.is_some() {
            "active"
        } else {
            "inactive"
        }
        .into(),
        sub_state: if adopted.is_some() { "running" } else { "dead" }.into(),
        started: adopted.is_some(),
        main_pid: adopted.map(|r| r.pid),
        since: adopted.map(|r| r.since),
    }
}
