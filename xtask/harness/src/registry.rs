//! An image registry for the tests: Debian's `docker-registry` (distribution 2.8) serving
//! plain HTTP inside a namespace, its storage in a directory of the test's. Nodes' daemons
//! name it in `--insecure-registry`; it stops when dropped.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use crate::{Error, Namespace, Process, Result};

/// Debian's registry binary.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// The port registries listen on by convention.
pub const PORT: u16 = 5000;

/// A running registry.
pub struct Registry {
    address: String,
    dir: PathBuf,
    _process: Process,
}

impl Registry {
    /// Starts a registry in `ns` on `ip:5000`, storing its blobs under `dir`, and waits until it
    /// answers `/v2/`.
    pub fn start(ns: &Namespace, ip: Ipv4Addr, dir: &Path) -> Result<Self> {
        let address = format!("{ip}:{PORT}");
        std::fs::create_dir_all(dir).map_err(|cause| Error::io(dir, cause))?;
        let config = dir.join("config.yml");
        std::fs::write(&config, config_text(&address, &dir.join("storage")))
            .map_err(|cause| Error::io(&config, cause))?;
        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path).map_err(|cause| Error::io(&log_path, cause))?;
        let mut cmd = ns.command(REGISTRY_BINARY);
        cmd.arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log);
        let process = Process::adopt("docker-registry", ns.spawn(&mut cmd)?);
        let registry = Self {
            address,
            dir: dir.to_path_buf(),
            _process: process,
        };
        registry.wait_serving(ns, Duration::from_secs(20))?;
        Ok(registry)
    }

    /// `IP:PORT`, the prefix of its image names (`IP:PORT/nginx`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The name of image `name` in this registry.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.address)
    }

    fn wait_serving(&self, ns: &Namespace, timeout: Duration) -> Result<()> {
        let url = format!("http://{}/v2/", self.address);
        let start = Instant::now();
        while start.elapsed() < timeout {
            let answered = ns
                .output("curl", ["-sf", "-m", "1", &url])
                .is_ok_and(|out| out.status.success());
            if answered {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::Fixture(format!(
            "docker-registry on {} not serving after {timeout:?}; log in {}",
            self.address,
            self.dir.join("registry.log").display()
        )))
    }
}

/// distribution's configuration: filesystem storage, plain HTTP on `address`, quiet logs.
pub fn config_text(address: &str, storage: &Path) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {address}\n",
        storage.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_storage_and_address() {
        let text = config_text("10.0.0.1:5000", Path::new("/tmp/reg"));
        assert!(text.contains("rootdirectory: /tmp/reg\n"));
        assert!(text.contains("addr: 10.0.0.1:5000\n"));
    }
}
