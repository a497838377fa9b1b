//! Workload addresses in the node's subnet for `shoal run`: one file per address under a
//! directory per subnet (like CNI's host-local), created exclusively under a directory lock, so
//! no two containers ever share an address. A file names the process holding the address;
//! addresses of processes that are gone are reclaimed.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use ipnetwork::Ipv4Network;

use super::lease::subnet_key;
use shoal_store_client::Chain;

/// Default directory of the address files.
pub const DEFAULT_IPAM_DIR: &str = "/run/shoal/ipam";

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Network),
}

type Result<T, E = IpamError> = std::result::Result<T, E>;

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IpamError {
    let path = path.to_path_buf();
    move |source| IpamError::Io {
        action,
        path,
        source,
    }
}

/// The address book of one subnet.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    subnet: Ipv4Network,
}

/// An address held by this process until released (or dropped).
#[derive(Debug)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    path: PathBuf,
}

impl Allocation {
    pub fn release(self) {}
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "releasing address {}: {}", self.ip, Chain(&err));
        }
    }
}

impl Ipam {
    pub fn new(root: &Path, subnet: Ipv4Network) -> Self {
        Self {
            dir: root.join(subnet_key(subnet)),
            subnet,
        }
    }

    /// Hands out the lowest free host address after the gateway (the first host address),
    /// recording `owner_pid` and `name` as its holder.
    pub fn allocate(&self, owner_pid: u32, name: &str) -> Result<Allocation> {
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        let _lock = self.lock()?;
        let first = u32::from(self.subnet.network()) + 2;
        let last = u32::from(self.subnet.broadcast()).saturating_sub(1);
        for raw in first..=last {
            let ip = Ipv4Addr::from(raw);
            let path = self.dir.join(ip.to_string());
            if path.exists() && !holder_is_gone(&path) {
                continue;
            }
            let mut file = File::create(&path).map_err(io("creating", &path))?;
            writeln!(file, "{owner_pid}\n{name}").map_err(io("writing", &path))?;
            return Ok(Allocation { ip, path });
        }
        Err(IpamError::Exhausted(self.subnet))
    }

    /// Addresses currently held, with their holders' names.
    pub fn held(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io("listing", &self.dir)(err)),
        };
        let mut held = Vec::new();
        for entry in entries.flatten() {
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
            else {
                continue;
            };
            if holder_is_gone(&entry.path()) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            held.push((ip, text.lines().nth(1).unwrap_or_default().to_string()));
        }
        held.sort();
        Ok(held)
    }

    fn lock(&self) -> Result<File> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        // SAFETY: flock(2) on a descriptor we own; released when `file` is closed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io("locking", &path)(std::io::Error::last_os_error()));
        }
        Ok(file)
    }
}

/// Whether the process named in an address file no longer exists.
fn holder_is_gone(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    match text
        .lines()
        .next()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
    {
        Some(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_and_released() {
        let root = tempfile::tempdir().expect("tempdir");
        let subnet: Ipv4Network = "10.5.7.0/29".parse().expect("cidr");
        let ipam = Ipam::new(root.path(), subnet);
        let me = std::process::id();
        let a = ipam.allocate(me, "a").expect("first");
        let b = ipam.allocate(me, "b").expect("second");
        assert_eq!(a.ip, Ipv4Addr::new(10, 5, 7, 2));
        assert_eq!(b.ip, Ipv4Addr::new(10, 5, 7, 3));
        assert_eq!(ipam.held().expect("listing").len(), 2);
        drop(a);
        let c = ipam.allocate(me, "c").expect("reuses the released address");
        assert_eq!(c.ip, Ipv4Addr::new(10, 5, 7, 2));
        let _rest: Vec<Allocation> = (0..3)
            .map(|i| ipam.allocate(me, &format!("r{i}")).expect("fits"))
            .collect();
        assert!(matches!(
            ipam.allocate(me, "full"),
            Err(IpamError::Exhausted(_))
        ));
    }

    #[test]
    fn addresses_of_dead_holders_are_reclaimed() {
        let root = tempfile::tempdir().expect("tempdir");
        let subnet: Ipv4Network = "10.5.8.0/30".parse().expect("cidr");
        let ipam = Ipam::new(root.path(), subnet);
        // A pid above the kernel's pid_max cannot be alive.
        let stale = ipam.allocate(u32::MAX - 1, "dead").expect("allocated");
        let ip = stale.ip;
        std::mem::forget(stale);
        let fresh = ipam
            .allocate(std::process::id(), "alive")
            .expect("reclaimed");
        assert_eq!(fresh.ip, ip);
    }
}
