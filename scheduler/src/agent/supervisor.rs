//! The built-in supervisor, for machines where systemd is not PID 1.
//!
//! Every loaded unit gets an actor task that owns its processes and takes start/stop
//! commands. Processes run in their own process group (stopping kills the whole group), with
//! stdout and stderr appended to `<data_dir>/units/<name>/output.log` (what `fleetctl journal`
//! shows). The main process of a running unit is recorded in `run.json` next to it, so an agent
//! that restarts adopts the process instead of starting the unit a second time; an adopted
//! process is watched through `/proc` since it is no longer our child.

use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{
    dependencies::{Dependencies, Link, unit_list},
    runtime::{RuntimeError, UnitRuntime, UnitStatus, now_epoch, tail_lines},
    service::{ExecCommand, RestartPolicy, ServiceConfig, ServiceType, parse_environment_file},
};
use crate::unit::{UnitFile, UnitName};

const OUTPUT_FILE: &str = "output.log";
const RUN_FILE: &str = "run.json";
/// Output files are cut back to their tail when they grow past this.
const MAX_OUTPUT_BYTES: u64 = 4 << 20;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How often an adopted process (not our child) is checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// `run.json`: the main process of a running unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub pid: u32,
    /// Kernel start time of the process (`/proc/<pid>/stat` field 22), to tell it from a
    /// later process that got the same PID.
    pub start_time: u64,
    pub hash: String,
    #[serde(default)]
    pub since: u64,
}

pub(super) enum Command {
    Start,
    Stop(oneshot::Sender<()>),
}

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
        })
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
        let config = ServiceConfig::from_unit(name, unit)
            .map_err(|e| RuntimeError::unit(name.as_str(), e.to_string()))?;
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

/// The main process of a running simple service.
enum MainProcess {
    Child(tokio::process::Child),
    Adopted { pid: u32, start_time: u64 },
}

impl MainProcess {
    fn pid(&self) -> Option<u32> {
        match self {
            MainProcess::Child(child) => child.id(),
            MainProcess::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// Waits for exit; returns whether it counts as a success (an adopted process's status
    /// cannot be known and counts as a failure).
    async fn wait(&mut self) -> bool {
        match self {
            MainProcess::Child(child) => match child.wait().await {
                Ok(status) => clean_exit(status),
                Err(_) => false,
            },
            MainProcess::Adopted { pid, start_time } => {
                while process_alive(*pid, *start_time) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                false
            }
        }
    }
}

/// systemd's idea of a clean exit: status 0 or one of the termination signals.
fn clean_exit(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.success()
        || matches!(
            status.signal(),
            Some(libc::SIGTERM | libc::SIGHUP | libc::SIGINT | libc::SIGPIPE)
        )
}

enum Phase {
    Idle,
    Running(MainProcess),
    Exited,
    RestartAt(tokio::time::Instant),
}

struct Actor {
    name: String,
    hash: String,
    config: ServiceConfig,
    dir: PathBuf,
    status: Arc<Mutex<UnitStatus>>,
    commands: mpsc::UnboundedReceiver<Command>,
    stopping: bool,
    dependencies: Arc<Dependencies>,
}

impl Actor {
    async fn run(mut self, adopted: Option<RunRecord>) {
        let mut phase = match adopted {
            Some(record) => {
                self.note(&format!("adopted running main process {}", record.pid));
                Phase::Running(MainProcess::Adopted {
                    pid: record.pid,
                    start_time: record.start_time,
                })
            }
            None => Phase::Idle,
        };
        loop {
            phase = match phase {
                Phase::Idle | Phase::Exited => {
                    let exited = matches!(phase, Phase::Exited);
                    match self.commands.recv().await {
                        None => return,
                        Some(Command::Start) if exited => Phase::Exited,
                        Some(Command::Start) => self.start().await,
                        Some(Command::Stop(done)) => {
                            if exited {
                                self.stop_exited().await;
                            }
                            let _ = done.send(());
                            Phase::Idle
                        }
                    }
                }
                Phase::Running(mut main) => {
                    tokio::select! {
                        success = main.wait() => self.main_exited(success).await,
                        command = self.commands.recv() => match command {
                            None => return,
                            Some(Command::Start) => Phase::Running(main),
                            Some(Command::Stop(done)) => {
                                self.stop_running(main).await;
                                let _ = done.send(());
                                Phase::Idle
                            }
                        },
                    }
                }
                Phase::RestartAt(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => self.start().await,
                        command = self.commands.recv() => match command {
                            None => return,
                            Some(Command::Start) => Phase::RestartAt(deadline),
                            Some(Command::Stop(done)) => {
                                self.set_state("inactive", "dead", None);
                                let _ = done.send(());
                                Phase::Idle
                            }
                        },
                    }
                }
            };
        }
    }

    /// Runs the start sequence; a stop arriving meanwhile aborts it.
    async fn start(&mut self) -> Phase {
        self.stopping = false;
        self.set_state("activating", "start-pre", None);
        self.note("starting");
        let (phase, pending_stop) = {
            let sequence = start_sequence(&self.name, &self.hash, &self.config, &self.dir);
            tokio::pin!(sequence);
            loop {
                tokio::select! {
                    outcome = &mut sequence => break (outcome, None),
                    command = self.commands.recv() => match command {
                        Some(Command::Stop(done)) => break (Err("stopped while starting".to_string()), Some(done)),
                        Some(Command::Start) => continue,
                        None => break (Err("supervisor shut down".to_string()), None),
                    },
                }
            }
        };
        match (phase, pending_stop) {
            (Ok(main), None) => self.started(main),
            (Ok(main), Some(done)) => {
                if let Some(main) = main {
                    self.stop_running(main).await;
                }
                let _ = done.send(());
                Phase::Idle
            }
            (Err(reason), pending) => {
                if let Some(record) = read_run_record(&self.dir) {
                    kill_group(record.pid, libc::SIGKILL);
                }
                let _ = std::fs::remove_file(self.dir.join(RUN_FILE));
                self.note(&format!("start failed: {reason}"));
                match pending {
                    Some(done) => {
                        self.set_state("inactive", "dead", None);
                        let _ = done.send(());
                        Phase::Idle
                    }
                    None => self.after_failure(),
                }
            }
        }
    }

    fn started(&mut self, main: Option<MainProcess>) -> Phase {
        match main {
            Some(main) => {
                self.note(&format!(
                    "started, main process {}",
                    main.pid().unwrap_or(0)
                ));
                self.set_state("active", "running", main.pid());
                Phase::Running(main)
            }
            None if self.config.remain_after_exit => {
                self.note("finished, remaining active");
                self.set_state("active", "exited", None);
                Phase::Exited
            }
            None => {
                self.note("finished");
                self.set_state("inactive", "dead", None);
                Phase::Exited
            }
        }
    }

    async fn main_exited(&mut self, success: bool) -> Phase {
        let _ = std::fs::remove_file(self.dir.join(RUN_FILE));
        self.note(&format!(
            "main process exited ({})",
            if success { "success" } else { "failure" }
        ));
        let env = self.environment();
        for command in &self.config.exec_stop_post {
            let _ = run_control(&self.name, command, &env, &self.config, &self.dir, None).await;
        }
        let restart = match self.config.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::No => false,
        };
        if restart {
            return self.schedule_restart();
        }
        if success {
            self.set_state("inactive", "dead", None);
        } else {
            self.set_state("failed", "failed", None);
        }
        Phase::Exited
    }

    fn after_failure(&mut self) -> Phase {
        if self.config.restart == RestartPolicy::No {
            self.set_state("failed", "failed", None);
            return Phase::Exited;
        }
        self.schedule_restart()
    }

    fn schedule_restart(&mut self) -> Phase {
        self.note(&format!("restarting in {:?}", self.config.restart_sec));
        self.set_state("activating", "auto-restart", None);
        Phase::RestartAt(tokio::time::Instant::now() + self.config.restart_sec)
    }

    async fn stop_running(&mut self, mut main: MainProcess) {
        self.stopping = true;
        self.set_state("deactivating", "stop", main.pid());
        self.note("stopping");
        let pid = main.pid();
        let mut env = self.environment();
        if let Some(pid) = pid {
            env.push(("MAINPID".into(), pid.to_string()));
        }
        self.run_stop_commands(&self.config.exec_stop, &env).await;
        if let Some(pid) = pid {
            kill_group(pid, libc::SIGTERM);
            if tokio::time::timeout(self.config.timeout_stop, main.wait())
                .await
                .is_err()
            {
                self.note("stop timed out, killing");
                kill_group(pid, libc::SIGKILL);
                let _ = main.wait().await;
            }
            kill_group(pid, libc::SIGKILL);
        }
        self.stop_exited().await;
    }

    async fn stop_exited(&mut self) {
        let env = self.environment();
        if !self.stopping {
            self.run_stop_commands(&self.config.exec_stop, &env).await;
        }
        self.run_stop_commands(&self.config.exec_stop_post, &env)
            .await;
        let _ = std::fs::remove_file(self.dir.join(RUN_FILE));
        self.note("stopped");
        self.set_state("inactive", "dead", None);
    }

    /// Runs stop-side commands one after the other, each bounded by TimeoutStopSec; their
    /// failures are logged by `run_control` and do not stop the sequence.
    async fn run_stop_commands(&self, commands: &[ExecCommand], env: &[(String, String)]) {
        for command in commands {
            let limit = Some(self.config.timeout_stop);
            if let Err(err) =
                run_control(&self.name, command, env, &self.config, &self.dir, limit).await
            {
                self.note(&format!("{}: {err}", command.argv[0]));
            }
        }
    }

    fn environment(&self) -> Vec<(String, String)> {
        environment(&self.config).unwrap_or_default()
    }

    fn set_state(&self, active: &str, sub: &str, pid: Option<u32>) {
        let previous = match self.status.lock() {
            Ok(mut status) => {
                if active == "active" && status.active_state != "active" {
                    status.since = Some(now_epoch());
                }
                let previous = std::mem::replace(&mut status.active_state, active.to_string());
                status.sub_state = sub.to_string();
                status.main_pid = pid;
                previous
            }
            Err(_) => return,
        };
        // The status lock is released: the dependencies lock other units' statuses.
        self.dependencies
            .state_changed(&self.name, &previous, active);
    }

    fn note(&self, message: &str) {
        tracing::info!(unit = %self.name, "{message}");
        append_output(&self.dir, &format!("fleet: {}: {message}", self.name));
    }
}

/// Runs ExecStartPre, ExecStart, ExecStartPost; returns the main process of a simple service.
async fn start_sequence(
    name: &str,
    hash: &str,
    config: &ServiceConfig,
    dir: &Path,
) -> Result<Option<MainProcess>, String> {
    trim_output(dir);
    let env = environment(config)?;
    for command in &config.exec_start_pre {
        run_control(name, command, &env, config, dir, None).await?;
    }
    let main = match config.service_type {
        ServiceType::Simple => {
            let command = &config.exec_start[0];
            let child = spawn(command, &env, config, dir, false)?;
            let pid = child.id().ok_or("main process vanished at once")?;
            let record = RunRecord {
                pid,
                start_time: process_start_time(pid).unwrap_or(0),
                hash: hash.to_string(),
                since: now_epoch(),
            };
            write_run_record(dir, &record)?;
            Some(MainProcess::Child(child))
        }
        ServiceType::Oneshot => {
            for command in &config.exec_start {
                run_control(name, command, &env, config, dir, None).await?;
            }
            None
        }
    };
    let mut post_env = env.clone();
    if let Some(pid) = main.as_ref().and_then(MainProcess::pid) {
        post_env.push(("MAINPID".into(), pid.to_string()));
    }
    for command in &config.exec_start_post {
        run_control(name, command, &post_env, config, dir, None).await?;
    }
    Ok(main)
}

/// Runs a control command to completion; its failure is an error unless it has the `-` prefix.
async fn run_control(
    name: &str,
    command: &ExecCommand,
    env: &[(String, String)],
    config: &ServiceConfig,
    dir: &Path,
    timeout: Option<Duration>,
) -> Result<(), String> {
    let outcome = match spawn(command, env, config, dir, true) {
        Ok(mut child) => {
            let waited = match timeout {
                Some(limit) => tokio::time::timeout(limit, child.wait())
                    .await
                    .map_err(|_| format!("{} timed out after {limit:?}", command.argv[0]))
                    .and_then(|r| r.map_err(|e| e.to_string())),
                None => child.wait().await.map_err(|e| e.to_string()),
            };
            match waited {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("{} exited with {status}", command.argv[0])),
                Err(err) => Err(err),
            }
        }
        Err(err) => Err(err),
    };
    match outcome {
        Err(err) if command.ignore_failure => {
            tracing::debug!(unit = name, "ignored failure: {err}");
            Ok(())
        }
        other => other,
    }
}

fn spawn(
    command: &ExecCommand,
    env: &[(String, String)],
    config: &ServiceConfig,
    dir: &Path,
    kill_on_drop: bool,
) -> Result<tokio::process::Child, String> {
    let argv = expand_variables(&command.argv, env);
    let output = open_output(dir)?;
    let errors = output.try_clone().map_err(|e| e.to_string())?;
    let mut process = tokio::process::Command::new(&argv[0]);
    process
        .args(&argv[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(errors))
        .process_group(0)
        .kill_on_drop(kill_on_drop);
    if let Some(argv0) = &command.argv0 {
        process.arg0(argv0);
    }
    if let Some(dir) = &config.working_directory {
        process.current_dir(dir);
    }
    apply_user(&mut process, config)?;
    process
        .spawn()
        .map_err(|e| format!("running {}: {e}", argv[0]))
}

fn apply_user(process: &mut tokio::process::Command, config: &ServiceConfig) -> Result<(), String> {
    if let Some(user) = &config.user {
        let found = nix::unistd::User::from_name(user)
            .map_err(|e| format!("looking up user {user}: {e}"))?
            .ok_or_else(|| format!("no such user {user}"))?;
        process
            .uid(found.uid.as_raw())
            .gid(found.gid.as_raw())
            .env("USER", user)
            .env("LOGNAME", user)
            .env("HOME", &found.dir);
    }
    if let Some(group) = &config.group {
        let found = nix::unistd::Group::from_name(group)
            .map_err(|e| format!("looking up group {group}: {e}"))?
            .ok_or_else(|| format!("no such group {group}"))?;
        process.gid(found.gid.as_raw());
    }
    Ok(())
}

/// Environment= then EnvironmentFile= (whose settings override), as systemd does.
fn environment(config: &ServiceConfig) -> Result<Vec<(String, String)>, String> {
    let mut env = config.environment.clone();
    for file in &config.environment_files {
        match std::fs::read_to_string(&file.path) {
            Ok(text) => env.extend(parse_environment_file(&text)),
            Err(_) if file.optional => {}
            Err(err) => return Err(format!("EnvironmentFile {}: {err}", file.path.display())),
        }
    }
    Ok(env)
}

/// `${NAME}` inside a word, and a word that is exactly `$NAME` split on whitespace.
fn expand_variables(argv: &[String], env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    };
    let mut out = Vec::with_capacity(argv.len());
    for (index, word) in argv.iter().enumerate() {
        let bare = word.strip_prefix('$').filter(|name| {
            index > 0
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if let Some(name) = bare {
            out.extend(lookup(name).split_whitespace().map(str::to_string));
            continue;
        }
        let mut expanded = String::new();
        let mut rest = word.as_str();
        while let Some(start) = rest.find("${") {
            expanded.push_str(&rest[..start]);
            match rest[start + 2..].find('}') {
                Some(end) => {
                    expanded.push_str(lookup(&rest[start + 2..start + 2 + end]));
                    rest = &rest[start + 2 + end + 1..];
                }
                None => {
                    expanded.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        expanded.push_str(rest);
        out.push(expanded);
    }
    out
}

fn open_output(dir: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(OUTPUT_FILE))
        .map_err(|e| format!("opening output file in {}: {e}", dir.display()))
}

fn append_output(dir: &Path, line: &str) {
    if let Ok(mut file) = open_output(dir) {
        let _ = writeln!(file, "{line}");
    }
}

/// Keeps the output file bounded: past the limit it is cut to its last half.
fn trim_output(dir: &Path) {
    let path = dir.join(OUTPUT_FILE);
    let Ok(metadata) = std::fs::metadata(&path) else {
        return;
    };
    if metadata.len() <= MAX_OUTPUT_BYTES {
        return;
    }
    if let Ok(bytes) = std::fs::read(&path) {
        let keep = &bytes[bytes.len() - (MAX_OUTPUT_BYTES as usize / 2)..];
        let _ = std::fs::write(&path, keep);
    }
}

fn write_run_record(dir: &Path, record: &RunRecord) -> Result<(), String> {
    let text = serde_json::to_string(record).map_err(|e| e.to_string())?;
    let temporary = dir.join("run.json.tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, dir.join(RUN_FILE)))
        .map_err(|e| format!("recording main process in {}: {e}", dir.display()))
}

fn read_run_record(dir: &Path) -> Option<RunRecord> {
    let text = std::fs::read_to_string(dir.join(RUN_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Units under `dir` whose recorded main process is still alive.
fn find_running(dir: &Path) -> HashMap<String, RunRecord> {
    let mut running = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return running;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(record) = read_run_record(&entry.path()) {
            if process_alive(record.pid, record.start_time) {
                running.insert(name, record);
            } else {
                let _ = std::fs::remove_file(entry.path().join(RUN_FILE));
            }
        }
    }
    running
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn process_alive(pid: u32, start_time: u64) -> bool {
    process_start_time(pid).is_some_and(|started| start_time == 0 || started == start_time)
}

/// Signals the process group led by `pid`; a group that is already gone is fine.
fn kill_group(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative PID signals a process group; no memory is involved.
    unsafe {
        libc::kill(-pid, signal);
    }
}
