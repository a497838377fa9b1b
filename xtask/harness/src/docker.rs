//! A Docker daemon per test node: Debian's `dockerd` inside the node's network namespace,
//! configured as the `docker.service` drop-in `shoal install` writes would start it (the
//! `DOCKER_OPTS` flannel writes beside subnet.env, split as systemd splits `$DOCKER_OPTS`),
//! with a data root, exec root, pidfile and socket of its own. Its client is Debian's
//! `/usr/bin/docker` (the 20.10 client of that daemon; another client may sit earlier on PATH).
//!
//! dockerd is entered with `nsenter --net` rather than `ip netns exec`, which remounts /sys and
//! so hides the cgroup mounts dockerd needs. Dropping the daemon removes its containers and
//! stops it: a daemon killed with its namespace would orphan the containers' processes.
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{Error, Process, Result, command};

/// Debian's daemon and client (docker.io).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";

/// How long a stopping daemon gives its containers before it kills them.
const SHUTDOWN_TIMEOUT_SECS: u32 = 2;

/// A running dockerd in a node's namespace.
pub struct Dockerd {
    dir: PathBuf,
    socket: PathBuf,
    process: Option<Process>,
}

impl Dockerd {
    /// Starts dockerd in the network namespace named `ns` with `options` (e.g. [`options_from_file`]), its state under
    /// `dir`, listening on `socket`; trusts the plain-HTTP registries in `insecure_registries`.
    /// Waits until it answers.
    pub fn start(
        ns: &str,
        dir: &Path,
        socket: &Path,
        options: &[String],
        insecure_registries: &[&str],
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|cause| Error::io(dir, cause))?;
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent).map_err(|cause| Error::io(parent, cause))?;
        }
        let log_path = dir.join("dockerd.log");
        let log = std::fs::File::create(&log_path).map_err(|cause| Error::io(&log_path, cause))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{ns}"))
            .arg(DOCKERD)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg(format!("--shutdown-timeout={SHUTDOWN_TIMEOUT_SECS}"))
            .args(
                insecure_registries
                    .iter()
                    .map(|registry| format!("--insecure-registry={registry}")),
            )
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // A test killed mid-run (a timeout) takes its daemon with it, which then stops its
        // containers, rather than leaving them orphaned.
        // SAFETY: prctl(2) only, which is async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command::spawn(&mut cmd)?;
        let mut daemon = Self {
            dir: dir.to_path_buf(),
            socket: socket.to_path_buf(),
            process: Some(Process::adopt(&format!("dockerd in {ns}"), child)),
        };
        daemon.wait_answering(Duration::from_secs(60))?;
        Ok(daemon)
    }

    /// `unix://<socket>`: what `DOCKER_HOST` or `-H` name to reach this daemon.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// A `docker` client command aimed at this daemon.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.env("DOCKER_HOST", self.host());
        cmd
    }

    /// Runs `docker args...`; its stdout, or an error with its stderr.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        command::run(self.command().args(args))
    }

    /// Runs `docker args...`; its whole output, whatever its exit.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        command::output(self.command().args(args))
    }

    /// `docker import` of a root file system tarball as image `name`, with Dockerfile
    /// instructions `changes` (CMD, EXPOSE, ...).
    pub fn import(&self, tarball: &Path, name: &str, changes: &[&str]) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("import");
        for change in changes {
            cmd.args(["--change", change]);
        }
        cmd.arg(tarball).arg(name);
        command::run(&mut cmd).map(drop)
    }

    /// The address of container `name` on the default bridge.
    pub fn container_ip(&self, name: &str) -> Result<String> {
        let ip = self.docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name])?;
        Ok(ip.trim().to_string())
    }

    fn wait_answering(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self
                .output(&["version"])
                .is_ok_and(|out| out.status.success())
            {
                return Ok(());
            }
            if let Some(process) = &mut self.process
                && let Some(status) = process.exited()
            {
                return Err(self.not_ready(&format!("exited ({status})")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(self.not_ready(&format!("not answering after {timeout:?}")))
    }

    fn not_ready(&self, what: &str) -> Error {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Error::Fixture(format!(
            "dockerd on {} {what}: {}",
            self.socket.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }

    /// Removes every container, then stops the daemon (SIGTERM, up to 20 s, then SIGKILL).
    pub fn stop(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                if let Err(err) = self.docker(&args) {
                    tracing::warn!("removing containers: {err}");
                }
            }
        }
        // SAFETY: kill(2) on our own child, not yet reaped (Process owns it).
        unsafe { libc::kill(process.pid(), libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if process.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!("dockerd on {} ignored SIGTERM", self.socket.display());
        process.kill();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The options a `docker.service` drop-in passes as `$DOCKER_OPTS`: the variable's value in the
/// environment file `path` (flannel's `/run/flannel/docker`), split at whitespace as systemd
/// splits an unquoted `$VAR`.
pub fn options_from_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|cause| Error::io(path, cause))?;
    options_from_text(&text)
        .ok_or_else(|| Error::Fixture(format!("{} sets no DOCKER_OPTS: {text:?}", path.display())))
}

fn options_from_text(text: &str) -> Option<Vec<String>> {
    let value = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("DOCKER_OPTS="))?;
    let value = value.trim().trim_matches('"');
    Some(value.split_whitespace().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_opts_are_split_like_systemd_does() {
        let text = "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n\
                    DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450\"\n";
        assert_eq!(
            options_from_text(text).expect("found"),
            ["--bip=10.1.74.1/24", "--ip-masq=false", "--mtu=1450"]
        );
        assert_eq!(options_from_text("DOCKER_OPT_MTU=\"--mtu=1\"\n"), None);
    }
}
