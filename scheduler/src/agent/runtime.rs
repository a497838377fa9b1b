//! What runs units on a machine: systemd when it is PID 1, else the built-in supervisor.

use async_trait::async_trait;

use crate::unit::{UnitFile, UnitName};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("unit {unit}: {message}")]
    Unit { unit: String, message: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn unit(unit: &str, message: impl Into<String>) -> Self {
        Self::Unit {
            unit: unit.to_string(),
            message: message.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// A unit's state in the runtime, in systemd's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitStatus {
    pub hash: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// Whether the unit was asked to run (it may be restarting or have failed since).
    pub started: bool,
    pub main_pid: Option<u32>,
    /// Seconds since the epoch when it last became active.
    pub since: Option<u64>,
}

#[async_trait]
pub trait UnitRuntime: Send + Sync {
    /// Makes the unit known (a unit with the same hash already there, e.g. adopted, is kept).
    async fn load(&self, name: &UnitName, unit: &UnitFile, hash: &str) -> Result<(), RuntimeError>;
    /// Starts a loaded unit; a running one is left alone.
    async fn start(&self, name: &str) -> Result<(), RuntimeError>;
    /// Stops a unit, waiting for it to be down.
    async fn stop(&self, name: &str) -> Result<(), RuntimeError>;
    /// Stops and forgets a unit.
    async fn unload(&self, name: &str) -> Result<(), RuntimeError>;
    /// Every unit the runtime holds for fleet.
    async fn units(&self) -> Vec<(String, UnitStatus)>;
    /// The last `lines` lines of a unit's output.
    async fn journal(&self, name: &str, lines: usize) -> Result<String, RuntimeError>;
    /// Called once the agent has loaded everything scheduled here after it started: units
    /// left running by a previous agent that nobody claimed are stopped.
    async fn finish_adoption(&self) {}
}

/// Is systemd the init system here (sd_booted)?
pub fn systemd_is_init() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// Seconds since the epoch, now.
pub fn now_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The last `lines` lines of `text`.
pub fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}
