//! A unit's main process as the supervisor watches it: our child, or one adopted from a previous
//! agent and watched through `/proc`; how it exited, and signalling its process group.

use std::time::Duration;

/// How often an adopted process (not our child) is checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

/// The main process of a running simple service.
pub(super) enum MainProcess {
    Child(tokio::process::Child),
    Adopted { pid: u32, start_time: u64 },
}

impl MainProcess {
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            MainProcess::Child(child) => child.id(),
            MainProcess::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// Waits for exit; returns whether it counts as a success (an adopted process's status
    /// cannot be known and counts as a failure).
    pub(super) async fn wait(&mut self) -> bool {
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

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
pub(super) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return None;
    }
    fields.get(19)?.parse().ok()
}

pub(super) fn process_alive(pid: u32, start_time: u64) -> bool {
    process_start_time(pid).is_some_and(|started| start_time == 0 || started == start_time)
}

/// Signals the process group led by `pid`; a group that is already gone is fine.
pub(super) fn kill_group(pid: u32, signal: i32) {
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
