//! End-to-end scenarios on a cluster of qemu VMs booted through `shoal-vm` (the library of
//! `cargo xtask vm-cluster`), driven from the host side of the cluster's network with
//! `shoal fleetctl`, `etcdctl` and HTTP, and inside the guests through their command server.
//!
//! The tests run whenever qemu, root, a tun device and the guest kernel are available (the
//! test command runs them, one at a time and alone: see `.config/nextest.toml`); otherwise, or
//! with `SHOAL_VM_TESTS=0`, each prints why and passes. The guests run the release build of
//! `shoal` (built on demand; the debug build burns five times the CPU under TCG and its store
//! misses fleetctl's 3 s deadlines).
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use shoal_vm::{ClusterSpec, Progress, VmCluster};

/// Set to `0` to skip the VM tests (see [`shoal_vm::host::VM_TESTS_ENV`]).
pub const ENABLE_ENV: &str = shoal_vm::host::VM_TESTS_ENV;

/// Why the VM tests cannot or should not run here, if so.
pub fn skip_reason() -> Option<String> {
    shoal_vm::host::vm_tests_skip_reason()
}

/// Prints why a test is skipped and returns true if it must be.
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(reason) => {
            println!("SKIPPED {test}: {reason}");
            true
        }
        None => false,
    }
}

/// One VM cluster at a time in this process: each boots several TCG guests on a small machine.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A booted cluster and what the scenario needs around it.
pub struct Scenario {
    pub cluster: VmCluster,
    pub units: tempfile::TempDir,
    shoal: PathBuf,
    /// Store endpoints of the masters still powered on (what fleetctl is given).
    endpoints: String,
}

impl Scenario {
    /// Boots `spec`, printing progress lines.
    pub fn boot(spec: &ClusterSpec) -> Result<Self> {
        let cluster = VmCluster::up(spec, &mut print_progress).context("booting the cluster")?;
        let shoal = cluster.dir().join("share").join("shoal");
        let endpoints = cluster.store_endpoints();
        Ok(Self {
            cluster,
            units: tempfile::tempdir().context("creating a unit directory")?,
            shoal,
            endpoints,
        })
    }

    /// Store endpoints of the masters still powered on.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Powers node `index` off (its qemu killed) and stops giving its endpoint to clients.
    pub fn power_off(&mut self, index: usize) {
        let gone = format!("://{}:", self.cluster.nodes()[index].address());
        self.cluster.power_off(index);
        self.endpoints = self
            .endpoints
            .split(',')
            .filter(|endpoint| !endpoint.contains(&gone))
            .collect::<Vec<_>>()
            .join(",");
    }

    /// `shoal fleetctl --endpoint <live masters> args...` from the host side; its stdout.
    pub fn fleetctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.cluster.host_command(&self.shoal);
        cmd.arg("fleetctl")
            .args(self.access(&self.endpoints).fleetctl_args())
            .args(args);
        output_of(cmd)
    }

    /// `etcdctl --endpoints <endpoints> args...` (v3 API) from the host side; its stdout.
    pub fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.cluster.host_command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(self.access(endpoints).etcdctl_args())
            .args(["--command-timeout", "5s"])
            .args(args);
        output_of(cmd)
    }

    /// The cluster's store access (TLS files in a secure cluster) for `endpoints`.
    fn access(&self, endpoints: &str) -> shoal_vm::StoreAccess {
        shoal_vm::StoreAccess {
            endpoint: endpoints.to_string(),
            ..self.cluster.store_access()
        }
    }

    /// Writes a unit file for `fleetctl start`; returns its path.
    pub fn unit(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.units.path().join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Runs `script` in node `index` (0-based); fails with its output if it fails.
    pub fn in_node(&self, index: usize, script: &str) -> Result<String> {
        let out = self
            .cluster
            .exec(index, script, Duration::from_secs(60))
            .with_context(|| format!("running `{script}` in {}", self.node_name(index)))?;
        if !out.success() {
            bail!(
                "`{script}` in {} exited {}: {}",
                self.node_name(index),
                out.rc,
                out.output
            );
        }
        Ok(out.output)
    }

    pub fn node_name(&self, index: usize) -> &str {
        self.cluster.nodes()[index].name()
    }

    /// Index of the node with underlay address `ip`.
    pub fn node_with_ip(&self, ip: &str) -> Option<usize> {
        self.cluster
            .nodes()
            .iter()
            .position(|n| n.address().to_string() == ip)
    }

    /// `fleetctl list-units` as (unit, machine ip, active, sub) rows.
    pub fn unit_states(&self) -> Result<Vec<UnitRow>> {
        let listing = self.fleetctl(&[
            "list-units",
            "--no-legend",
            "--full",
            "--fields",
            "unit,machine,active,sub",
        ])?;
        Ok(listing.lines().filter_map(UnitRow::parse).collect())
    }

    /// Waits until `unit` is active/running on exactly the nodes `wanted` returns true for,
    /// returning the ips it runs on.
    pub fn wait_unit_running(
        &self,
        unit: &str,
        timeout: Duration,
        wanted: impl Fn(&[String]) -> bool,
    ) -> Result<Vec<String>> {
        let mut last = Vec::new();
        wait_until(&format!("{unit} running where expected"), timeout, || {
            let rows = self.unit_states()?;
            last = rows.clone();
            let ips: Vec<String> = rows
                .iter()
                .filter(|row| row.unit == unit && row.active == "active" && row.sub == "running")
                .map(|row| row.machine_ip.clone())
                .collect();
            Ok((!ips.is_empty() && wanted(&ips)).then_some(ips))
        })
        .with_context(|| format!("last list-units: {last:?}"))
    }
}

/// A row of `fleetctl list-units --full --fields unit,machine,active,sub`.
#[derive(Debug, Clone)]
pub struct UnitRow {
    pub unit: String,
    pub machine_ip: String,
    pub active: String,
    pub sub: String,
}

impl UnitRow {
    fn parse(line: &str) -> Option<Self> {
        let mut columns = line.split_whitespace();
        let unit = columns.next()?.to_string();
        let machine = columns.next()?;
        let machine_ip = machine.rsplit('/').next()?.to_string();
        Some(Self {
            unit,
            machine_ip,
            active: columns.next()?.to_string(),
            sub: columns.next()?.to_string(),
        })
    }
}

fn output_of(mut cmd: Command) -> Result<String> {
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Polls `check` every half second until it returns `Some`, or fails after `timeout` with the
/// last error it gave.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::new();
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => {
                last_error.clear();
                let _ = write!(last_error, "; last error: {err:#}");
            }
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}{last_error}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn print_progress(step: Progress) {
    println!(
        "[{:6.1}s] {:>10}: {}",
        step.elapsed.as_secs_f64(),
        step.node.as_deref().unwrap_or("vm-cluster"),
        step.message
    );
}

/// Whether a namespace of that name still exists (cleanup checks).
pub fn namespace_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_units_rows_carry_the_machine_ip() {
        let row = UnitRow::parse("web.service 0123abcd/10.97.0.12 active running").expect("row");
        assert_eq!(row.unit, "web.service");
        assert_eq!(row.machine_ip, "10.97.0.12");
        assert_eq!(row.sub, "running");
        assert!(UnitRow::parse("short line").is_none());
    }
}
