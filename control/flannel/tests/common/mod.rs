//! Fixtures for the overlay tests: a real etcd 3.4 (on loopback or inside a node namespace),
//! `shoal flannel` and `shoal run` processes inside harness nodes, all killed on drop.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use shoal_harness::{Namespace, Node};

/// The `shoal` binary, brought up to date on first use by the helper the VM tests use (a no-op
/// after a workspace build). It belongs to the `shoal-control` package, so cargo builds it only
/// for that package's tests (`CARGO_BIN_EXE_shoal` exists only there).
pub fn shoal() -> &'static Path {
    static SHOAL: OnceLock<PathBuf> = OnceLock::new();
    SHOAL.get_or_init(|| {
        shoal_vm::build::shoal_binary(shoal_vm::build::Profile::Debug)
            .unwrap_or_else(|err| panic!("building the shoal binary: {err}"))
    })
}

pub const PREFIX: &str = "/coreos.com/network";
/// Log filter for spawned shoal processes (netlink-packet-route warns about every newer-kernel
/// attribute it does not know).
pub const QUIET_LOG: &str = "info,netlink_packet_route=error";

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGTERM, then SIGKILL) on drop.
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        Self {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then wait up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which store a test runs against: both speak the etcd v3 API and take etcd's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Debian's etcd 3.4.
    Etcd,
    /// `shoal kv`, the embedded store.
    ShoalKv,
}

impl StoreKind {
    fn command(self, ns: Option<&Namespace>) -> Command {
        let (program, args): (&Path, &[&str]) = match self {
            StoreKind::Etcd => (Path::new("/usr/bin/etcd"), &[]),
            StoreKind::ShoalKv => (shoal(), &["kv"]),
        };
        let mut cmd = match ns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        };
        cmd.args(args);
        cmd
    }
}

/// A single-member store (etcd 3.4 or shoal kv) with a temporary data directory.
pub struct Etcd {
    pub endpoint: String,
    /// The namespace etcd runs in, if not the test's own.
    ns_name: Option<String>,
    _process: Process,
    _data: tempfile::TempDir,
}

impl Etcd {
    /// A store on random loopback ports of this namespace.
    pub fn on_loopback(kind: StoreKind) -> Self {
        let client = free_port();
        let peer = free_port();
        Self::start(kind, None, Ipv4Addr::LOCALHOST, client, peer)
    }

    /// A store inside `ns`, listening on `ip:2379`.
    pub fn in_namespace(kind: StoreKind, ns: &Namespace, ip: Ipv4Addr) -> Self {
        Self::start(kind, Some(ns), ip, 2379, 2380)
    }

    fn start(
        kind: StoreKind,
        ns: Option<&Namespace>,
        ip: Ipv4Addr,
        client: u16,
        peer: u16,
    ) -> Self {
        let data = tempfile::tempdir().expect("etcd data dir");
        let endpoint = format!("http://{ip}:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = kind.command(ns);
        cmd.args(["--name", "test", "--data-dir"])
            .arg(data.path())
            .args([
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let etcd = Self {
            endpoint,
            ns_name: ns.map(|ns| ns.name().to_string()),
            _process: Process::spawn(&format!("{kind:?}"), &mut cmd),
            _data: data,
        };
        wait_for("etcd to answer", Duration::from_secs(20), || {
            etcd.ctl(&["endpoint", "health"]).ok().map(drop)
        });
        etcd
    }

    /// Runs etcdctl (v3 API) against this etcd; its stdout, or its stderr as the error.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = match &self.ns_name {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "/usr/bin/etcdctl"]);
                cmd
            }
            None => Command::new("/usr/bin/etcdctl"),
        };
        let output = cmd
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint, "--command-timeout", "5s"])
            .args(args)
            .output()
            .map_err(|err| err.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    pub fn put(&self, key: &str, value: &str) {
        self.ctl(&["put", key, value]).expect("etcdctl put");
    }

    /// The subnet lease keys under the prefix, with their values.
    pub fn leases(&self) -> Vec<(String, String)> {
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
        let mut cmd = node.ns().command(shoal());
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

/// A `shoal run` container on a node; its address is what `shoal run` printed.
pub struct Container {
    pub ip: Ipv4Addr,
    pub process: Process,
}

impl Container {
    pub fn start(node: &Node, subnet_file: &Path, ipam_dir: &Path, command: &[&str]) -> Self {
        let mut cmd = node.ns().command(shoal());
        cmd.env("SHOAL_LOG", QUIET_LOG)
            .args(["run", "--subnet-file"])
            .arg(subnet_file)
            .arg("--ipam-dir")
            .arg(ipam_dir)
            .arg("--")
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
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
    let output = node
        .ns()
        .command(shoal())
        .env("SHOAL_LOG", QUIET_LOG)
        .args(["run", "--subnet-file"])
        .arg(subnet_file)
        .arg("--ipam-dir")
        .arg(ipam_dir)
        .arg("--")
        .args(command)
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
