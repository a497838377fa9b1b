//! Runtime for machines where systemd is PID 1: units are written to fleet's `units_directory` (`/run/fleet/units`),
//! linked into systemd at runtime and driven with `systemctl`; output comes from `journalctl`.
//! systemd keeps running units across agent restarts, so adoption is implicit.
//!
//! Not exercised on the development machine (systemd is not PID 1 there); the VM tests run it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use tokio::{process::Command, sync::Mutex};

use super::runtime::{RuntimeError, UnitRuntime, UnitStatus};
use crate::unit::{UnitFile, UnitName};

pub struct Systemd {
    dir: PathBuf,
    loaded: Mutex<HashMap<String, (String, bool)>>,
    /// Set in systemd's manager environment (inherited by every unit) before the first load.
    environment: Vec<(String, String)>,
    environment_published: Mutex<bool>,
}

impl Systemd {
    /// A runtime writing its unit files into `dir` (fleet's `units_directory`).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            loaded: Mutex::new(HashMap::new()),
            environment: Vec::new(),
            environment_published: Mutex::new(false),
        }
    }

    /// Gives every unit these variables (CoreOS's `COREOS_*` addresses) through
    /// `systemctl set-environment`, as `/etc/environment` gave them on CoreOS.
    pub fn with_environment(mut self, environment: Vec<(String, String)>) -> Self {
        self.environment = environment;
        self
    }

    async fn publish_environment(&self) -> Result<(), RuntimeError> {
        let mut published = self.environment_published.lock().await;
        if *published || self.environment.is_empty() {
            return Ok(());
        }
        let assignments: Vec<String> = self
            .environment
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let mut args = vec!["set-environment"];
        args.extend(assignments.iter().map(String::as_str));
        systemctl(&args).await?;
        *published = true;
        Ok(())
    }
}

async fn systemctl(args: &[&str]) -> Result<String, RuntimeError> {
    let output = Command::new("systemctl")
        .args(args)
        .output()
        .await
        .map_err(|e| RuntimeError::io("running systemctl", e))?;
    if !output.status.success() {
        return Err(RuntimeError::unit(
            args.last().copied().unwrap_or_default(),
            format!(
                "systemctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[async_trait]
impl UnitRuntime for Systemd {
    async fn load(&self, name: &UnitName, unit: &UnitFile, hash: &str) -> Result<(), RuntimeError> {
        self.publish_environment().await?;
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| RuntimeError::io(format!("creating {}", self.dir.display()), e))?;
        let path = self.dir.join(name.as_str());
        tokio::fs::write(&path, unit.serialize())
            .await
            .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))?;
        let path_text = path.to_string_lossy().into_owned();
        systemctl(&["link", "--runtime", "--force", &path_text]).await?;
        systemctl(&["daemon-reload"]).await?;
        let active = self.state_of(name.as_str()).await.active_state == "active";
        self.loaded
            .lock()
            .await
            .insert(name.to_string(), (hash.to_string(), active));
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        systemctl(&["start", "--no-block", name]).await?;
        if let Some(entry) = self.loaded.lock().await.get_mut(name) {
            entry.1 = true;
        }
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        systemctl(&["stop", name]).await?;
        if let Some(entry) = self.loaded.lock().await.get_mut(name) {
            entry.1 = false;
        }
        Ok(())
    }

    async fn unload(&self, name: &str) -> Result<(), RuntimeError> {
        let _ = systemctl(&["stop", name]).await;
        let _ = systemctl(&["disable", "--runtime", name]).await;
        let _ = tokio::fs::remove_file(self.dir.join(name)).await;
        systemctl(&["daemon-reload"]).await?;
        self.loaded.lock().await.remove(name);
        Ok(())
    }

    async fn units(&self) -> Vec<(String, UnitStatus)> {
        let loaded: Vec<(String, (String, bool))> = self
            .loaded
            .lock()
            .await
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut units = Vec::with_capacity(loaded.len());
        for (name, (hash, started)) in loaded {
            let mut status = self.state_of(&name).await;
            status.hash = hash;
            status.started = started;
            units.push((name, status));
        }
        units
    }

    async fn journal(&self, name: &str, lines: usize) -> Result<String, RuntimeError> {
        let output = Command::new("journalctl")
            .args(["--no-pager", "-u", name, "-n", &lines.to_string()])
            .output()
            .await
            .map_err(|e| RuntimeError::io("running journalctl", e))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Systemd {
    async fn state_of(&self, name: &str) -> UnitStatus {
        let shown = systemctl(&["show", "-p", "LoadState,ActiveState,SubState,MainPID", name])
            .await
            .unwrap_or_default();
        let field = |key: &str| {
            shown
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or("unknown")
                .to_string()
        };
        UnitStatus {
            hash: String::new(),
            load_state: field("LoadState"),
            active_state: field("ActiveState"),
            sub_state: field("SubState"),
            started: false,
            main_pid: field("MainPID").parse().ok().filter(|pid| *pid != 0),
            since: None,
        }
    }
}
