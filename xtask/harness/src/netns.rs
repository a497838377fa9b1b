//! One network namespace, owned: created on construction, emptied of processes and deleted on
//! drop. Commands run inside it through `ip netns exec`.
use std::{
    ffi::OsStr,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    Result,
    command::{self, run},
};

/// Prefix of every namespace the harness creates; [`sweep`] looks for it.
pub(crate) const NAME_PREFIX: &str = "shoal-";

/// A run id unique on this machine while this process lives: `<pid>x<counter>`.
pub(crate) fn new_run_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace that is deleted, with every process inside it, when dropped.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Creates a namespace named `name` with loopback up.
    pub fn create(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args...` inside the namespace and returns its stdout; fails on a non-zero
    /// exit with its stderr.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command(program).args(args))
    }

    /// Runs a command inside the namespace and returns its whole output, whatever its exit.
    pub fn output<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        command::output(&mut cmd)
    }

    /// Starts a long-running process inside the namespace. It is killed when the namespace is
    /// dropped, if it has not exited by then.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        cmd.stdin(Stdio::null());
        command::spawn(cmd)
    }

    /// Writes a sysctl inside the namespace (e.g. `net.ipv4.ip_forward`, `1`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", ["-qw", &format!("{key}={value}")])
            .map(drop)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(err) = delete(&self.name) {
            tracing::warn!(namespace = %self.name, "cleanup failed: {err}");
        }
    }
}

/// Kills every process in namespace `name`, then deletes it.
fn delete(name: &str) -> Result<()> {
    kill_processes_in(name);
    run(Command::new("ip").args(["netns", "del", name])).map(drop)
}

fn kill_processes_in(name: &str) {
    // Repeat: a dying process may have forked. Bounded so a stuck process cannot hang a test.
    for _ in 0..20 {
        let pids = run(Command::new("ip").args(["netns", "pids", name])).unwrap_or_default();
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from the kernel; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Removes the namespaces (and their processes) of harness runs whose process is gone: what a
/// killed test run left behind. Returns how many namespaces it removed.
pub fn sweep() -> Result<usize> {
    let listing = run(Command::new("ip").args(["netns", "list"]))?;
    let mut removed = 0;
    for name in listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(owner) = owner_pid(name) else {
            continue;
        };
        if process_alive(owner) {
            continue;
        }
        match delete(name) {
            Ok(()) => removed += 1,
            // Another test's cluster, sweeping at the same time, removed it first.
            Err(_) if !Path::new("/run/netns").join(name).exists() => {}
            Err(err) => return Err(err),
        }
    }
    Ok(removed)
}

/// The pid encoded in a harness namespace name `shoal-<pid>x<n>-...`.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    rest.split_once('x')?.0.parse().ok()
}

fn process_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_harness_names_only() {
        assert_eq!(owner_pid("shoal-1234x0-n1"), Some(1234));
        assert_eq!(owner_pid("shoal-1234x12-sw"), Some(1234));
        assert_eq!(owner_pid("other-1234x0-n1"), None);
        assert_eq!(owner_pid("shoal-abc"), None);
    }
}
