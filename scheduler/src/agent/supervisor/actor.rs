//! One loaded unit's actor: owns its processes and walks its states (start sequence, running,
//! exit, restart by policy, stop) on the commands it receives, reporting each state change.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use shoal_store_client::Chain;
use tokio::sync::mpsc;

use super::{
    command::Command,
    dependencies::Dependencies,
    exec::{ExecError, environment, run_control, start_sequence},
    output::append_output,
    process::{MainProcess, kill_group},
    records::{RUN_FILE, RunRecord, read_run_record},
};
use crate::agent::{
    runtime::{UnitStatus, now_epoch},
    service::{ExecCommand, RestartPolicy, ServiceConfig},
};

enum Phase {
    Idle,
    Running(MainProcess),
    Exited,
    RestartAt(tokio::time::Instant),
}

pub(super) struct Actor {
    pub(super) name: String,
    pub(super) hash: String,
    pub(super) config: ServiceConfig,
    pub(super) dir: PathBuf,
    pub(super) status: Arc<Mutex<UnitStatus>>,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) stopping: bool,
    pub(super) dependencies: Arc<Dependencies>,
}

impl Actor {
    pub(super) async fn run(mut self, adopted: Option<RunRecord>) {
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
                        Some(Command::Stop(done)) => break (Err(ExecError::StoppedWhileStarting), Some(done)),
                        Some(Command::Start) => continue,
                        None => break (Err(ExecError::ShutDown), None),
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
                self.note(&format!("start failed: {}", Chain(&reason)));
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
                self.note(&format!("{}: {}", command.argv[0], Chain(&err)));
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
