//! `run.json`, the record of a running unit's main process, and finding the units a previous
//! agent left running so that they are adopted instead of started twice.

use std::{collections::HashMap, path::Path};

use serde::{Deserialize, Serialize};

use super::process::process_alive;

pub(super) const RUN_FILE: &str = "run.json";

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

/// Writes `run.json` atomically (a temporary file renamed over it).
pub(super) fn write_run_record(dir: &Path, record: &RunRecord) -> std::io::Result<()> {
    let text = serde_json::to_string(record).map_err(std::io::Error::other)?;
    let temporary = dir.join("run.json.tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, dir.join(RUN_FILE))
}

pub(super) fn read_run_record(dir: &Path) -> Option<RunRecord> {
    let text = std::fs::read_to_string(dir.join(RUN_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Units under `dir` whose recorded main process is still alive.
pub(super) fn find_running(dir: &Path) -> HashMap<String, RunRecord> {
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
