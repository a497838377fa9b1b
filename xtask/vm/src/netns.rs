//! The cluster's private network: a namespace `shoal-vmc-<id>` holding a bridge (with the
//! host's address in the cluster range) and one tap per VM. Processes started for the cluster
//! (qemu, and the host-side clients of tests) run inside it.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    time::Duration,
};

use shoal_harness::Namespace;

use crate::{Error, IoContext, Result, run};

/// Prefix of the namespaces of VM clusters (not `shoal-<pid>x`: the harness's sweep leaves
/// them alone; `vm-cluster down` and [`crate::cluster::sweep`] remove them).
pub const NAMESPACE_PREFIX: &str = "shoal-vmc-";
/// The bridge joining the VMs and the host side, inside the namespace.
pub const BRIDGE: &str = "br0";
/// The cluster's private range: the host side is `.1`, node `i` (from 1) is `.10 + i`.
pub const SUBNET_PREFIX_LEN: u8 = 24;

pub fn namespace_name(id: u32) -> String {
    format!("{NAMESPACE_PREFIX}{id}")
}

pub fn host_address(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 97, subnet_octet(id), 1)
}

/// Address of node number `index` (from 1).
pub fn node_address(id: u32, index: usize) -> Ipv4Addr {
    let host = u8::try_from(10 + index).expect("at most 240 nodes per cluster");
    Ipv4Addr::new(10, 97, subnet_octet(id), host)
}

/// Every cluster uses its own /24 of 10.97.0.0/16, so addresses never overlap even if two
/// clusters' namespaces were ever joined.
fn subnet_octet(id: u32) -> u8 {
    u8::try_from(id % 256).expect("modulo 256 fits in u8")
}

pub fn tap_name(index: usize) -> String {
    format!("tap{index}")
}

/// Creates the namespace, its bridge with the host address, and `taps` tap devices on it.
pub fn create(id: u32, taps: usize) -> Result<Namespace> {
    let ns = Namespace::create(namespace_name(id))?;
    let host = format!("{}/{SUBNET_PREFIX_LEN}", host_address(id));
    ns.ip(["link", "add", BRIDGE, "type", "bridge"])?;
    ns.ip(["addr", "add", &host, "dev", BRIDGE])?;
    ns.ip(["link", "set", BRIDGE, "up"])?;
    for index in 1..=taps {
        let tap = tap_name(index);
        ns.ip(["tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ns.ip(["link", "set", &tap, "master", BRIDGE, "up"])?;
    }
    Ok(ns)
}

/// Whether a namespace of that name exists.
pub fn exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Kills every process inside namespace `name` and deletes it (a cluster whose owner is gone).
pub fn remove(name: &str) -> Result<()> {
    for _ in 0..50 {
        let pids = run(Command::new("ip").args(["netns", "pids", name]))?;
        let pids: Vec<i32> = pids
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on a pid the kernel listed; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    run(Command::new("ip").args(["netns", "del", name]))?;
    Ok(())
}

/// Runs `work` on a fresh thread that has entered namespace `name` (sockets created there stay
/// in it), and returns its result.
pub fn within<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = std::path::Path::new("/run/netns").join(name);
    let handle = fs::File::open(&path).context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || {
        // SAFETY: setns(2) on an fd we own, for this thread only (a fresh one).
        let entered = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
        if entered != 0 {
            return Err(Error::Io {
                context: "entering the cluster namespace".to_string(),
                cause: std::io::Error::last_os_error(),
            });
        }
        work()
    })
    .join()
    .map_err(|_| Error::Invalid("namespace worker thread panicked".to_string()))?
}

/// A TCP connection from inside namespace `name` to `addr`.
pub fn connect(name: &str, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    within(name, move || {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .context(|| format!("connecting to {addr}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .context(|| format!("setting a read timeout on {addr}"))?;
        stream
            .set_write_timeout(Some(timeout))
            .context(|| format!("setting a write timeout on {addr}"))?;
        Ok(stream)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_inside_the_cluster_range() {
        assert_eq!(host_address(3), Ipv4Addr::new(10, 97, 3, 1));
        assert_eq!(node_address(3, 1), Ipv4Addr::new(10, 97, 3, 11));
        assert_eq!(node_address(300, 5), Ipv4Addr::new(10, 97, 44, 15));
        assert_eq!(namespace_name(7), "shoal-vmc-7");
    }
}
