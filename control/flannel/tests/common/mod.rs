//! Fixtures of the flannel tests on top of the harness's (store cluster, process guard,
//! `wait_for`, the `shoal` binary): the store as flannel sees it (network config and lease
//! keys), `shoal flannel` and `shoal run` processes inside harness nodes, all stopped on drop.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use shoal_harness::{
    Node, Process, StoreCluster, StoreClusterBuilder, StoreKind,
    binaries::{self, QUIET_LOG},
    wait_for,
};

pub const PREFIX: &str = "/coreos.com/network";

/// etcd's auth set up as an operator would: root, and a `flannel` user with `password` whose
/// role has `permission` (`read`, `readwrite`) on every key under `prefix`; then auth on.
pub fn enable_auth(store: &StoreCluster, permission: &str, prefix: &str, password: &str) {
    for command in [
        vec!["user", "add", "root", "--new-user-password", "root-secret"],
        vec!["user", "grant-role", "root", "root"],
        vec!["role", "add", "flannel"],
        vec![
            "role",
            "grant-permission",
            "flannel",
            permission,
            prefix,
            "--prefix=true",
        ],
        vec!["user", "add", "flannel", "--new-user-password", password],
        vec!["user", "grant-role", "flannel", "flannel"],
        vec!["auth", "enable"],
    ] {
        store.ctl(&command).expect("etcdctl");
    }
}

/// A single-member store of `kind`; shoal kv runs as `shoal kv`, the way nodes run it.
pub fn store(kind: StoreKind) -> StoreClusterBuilder {
    let builder = StoreCluster::builder(kind, 1);
    match kind {
        StoreKind::Etcd => builder,
        StoreKind::ShoalKv => builder.program(binaries::shoal(), ["kv"]),
    }
}

/// The store's keys as flannel lays them out, through etcdctl.
pub trait FlannelKeys {
    /// The client URL flannel is given (`--etcd-endpoints`).
    fn endpoint(&self) -> String;
    fn put(&self, key: &str, value: &str);
    /// The subnet lease keys under the prefix, with their values.
    fn leases(&self) -> Vec<(String, String)>;
}

impl FlannelKeys for StoreCluster {
    fn endpoint(&self) -> String {
        self.client_url(0)
    }

    fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value]).expect("etcdctl put");
    }

    fn leases(&self) -> Vec<(String, String)> {
        let listing = self
            .ctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")])
            .expect("etcdctl get");
        let lines: Vec<&str> = listing.lines().collect();
        lines
            .chunks(2)
            .filter(|pair| pair.len() == 2)
            .map(|pair| (pair[0].to_string(), pair[1].to_string()))
            .collect()
    }
}

/// `shoal flannel` inside a node, with its subnet file in `dir`.
pub struct Flannel {
    pub process: Process,
    pub subnet_file: PathBuf,
}

impl Flannel {
    pub fn start(node: &Node, endpoint: &str, dir: &Path, extra: &[&str]) -> Self {
        let subnet_file = dir.join(format!("{}.env", node.name()));
        let log =
            std::fs::File::create(dir.join(format!("{}.log", node.name()))).expect("log file");
        let mut cmd = node.ns().command(binaries::shoal());
        cmd.args([
            "flannel",
            "--etcd-endpoints",
            endpoint,
            "--iface",
            "eth0",
            "--subnet-file",
        ])
        .arg(&subnet_file)
        .args(extra)
        .env("SHOAL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
        Self {
            process: Process::spawn(&format!("flannel on {}", node.name()), &mut cmd),
            subnet_file,
        }
    }

    /// Waits for the subnet file and returns `(FLANNEL_SUBNET, FLANNEL_MTU)`.
    pub fn wait_subnet(&self) -> (String, u32) {
        wait_for("subnet.env", Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&self.subnet_file).ok()?;
            let get = |key: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(&format!("{key}=")))
                    .map(str::to_string)
            };
            Some((get("FLANNEL_SUBNET")?, get("FLANNEL_MTU")?.parse().ok()?))
        })
    }
}

/// `shoal run` on `node` with `subnet_file` and `ipam_dir`, running `command`.
fn shoal_run(node: &Node, subnet_file: &Path, ipam_dir: &Path, command: &[&str]) -> Command {
    let mut cmd = node.ns().command(binaries::shoal());
    cmd.env("SHOAL_LOG", QUIET_LOG)
        .args(["run", "--subnet-file"])
        .arg(subnet_file)
        .arg("--ipam-dir")
        .arg(ipam_dir)
        .arg("--")
        .args(command);
    cmd
}

/// A `shoal run` container on a node; its address is what `shoal run` printed.
pub struct Container {
    pub ip: Ipv4Addr,
    pub process: Process,
}

impl Container {
    pub fn start(node: &Node, subnet_file: &Path, ipam_dir: &Path, command: &[&str]) -> Self {
        let mut cmd = shoal_run(node, subnet_file, ipam_dir, command);
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut process = Process::spawn(&format!("shoal run on {}", node.name()), &mut cmd);
        let stdout = process.child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the address");
        let ip = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("shoal run printed {line:?} instead of an address"));
        Self { ip, process }
    }
}

/// Runs a short command in a fresh `shoal run` container and returns whether it succeeded.
pub fn run_once(node: &Node, subnet_file: &Path, ipam_dir: &Path, command: &[&str]) -> bool {
    let output = shoal_run(node, subnet_file, ipam_dir, command)
        .output()
        .expect("running shoal run");
    if !output.status.success() {
        eprintln!(
            "{:?} on {} failed: {}{}",
            command,
            node.name(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output.status.success()
}

/// The routes of a node for `destination` (`ip route show <destination>`).
pub fn route_to(node: &Node, destination: &str) -> String {
    node.ns()
        .ip(["route", "show", destination])
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Connects to a TCP port from the test (for health endpoints inside namespaces).
pub fn http_get(address: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).ok()?;
    stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// A bpffs directory of its own for the eBPF dataplane's pins, removed on drop.
pub struct BpfPins {
    pub path: PathBuf,
}

impl BpfPins {
    pub fn new() -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            path: PathBuf::from(format!("/sys/fs/bpf/shoal-test-{}-{n}", std::process::id())),
        }
    }
}

impl Default for BpfPins {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BpfPins {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("removing {}: {err}", self.path.display());
        }
    }
}
