//! `shoal agent` on every node of a [`Cluster`]: the platform on one machine. Used by
//! `cargo xtask up` and by the end-to-end tests in `control/tests`, so both run the same
//! layout: every node a master of the store (up to three; the rest are workers), metadata
//! `compute=web|db`, `rack=rackN`, the overlay on VXLAN over `eth0`. Secure by default: a PKI
//! from `shoal pki cluster`'s logic in `<dir>/pki`, each node's agent given its own directory
//! (TLS on every store port, client certificates, auth with the `root`, `flannel` and `fleet`
//! users).
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{Cluster, Error, Node, Result};

/// Port of every agent's health endpoint (inside its own node namespace).
pub const HEALTH_PORT: u16 = 9901;
/// Store client port of every master (inside its own node namespace).
pub const CLIENT_PORT: u16 = 2379;
/// flannel network the agents configure.
pub const OVERLAY_NETWORK: &str = "10.244.0.0/16";

/// How to start the agents.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The `shoal` binary.
    pub shoal: PathBuf,
    /// Where configs, data and logs go (one directory per node).
    pub dir: PathBuf,
    /// How many nodes (the first ones) are masters of the store.
    pub masters: usize,
    /// fleet's agent TTL.
    pub agent_ttl: Duration,
    /// `SHOAL_LOG` for the agents.
    pub log_filter: String,
    /// TLS and auth from a cluster PKI (`pki` in every agent's YAML); `false` for plain HTTP
    /// and no auth.
    pub secure: bool,
    /// Give each agent a /run of its own (`<node dir>/run`, bind-mounted in a mount namespace
    /// of its own), as each machine has: units find that node's `/run/docker.sock` there.
    pub private_run: bool,
    /// flannel masquerades traffic leaving the overlay (`network.ip_masq`), as CoreOS ran it;
    /// Docker's options then say `--ip-masq=false`.
    pub ip_masq: bool,
    /// The agents' own workload bridge (`shoal0`, for `shoal run`); `false` leaves the subnet's
    /// gateway to Docker's `docker0`.
    pub workload_bridge: bool,
}

impl AgentOptions {
    pub fn new(shoal: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> Self {
        Self {
            shoal: shoal.into(),
            dir: dir.into(),
            masters: 3,
            agent_ttl: Duration::from_secs(30),
            log_filter: "info,openraft=warn,netlink_packet_route=error".into(),
            secure: true,
            private_run: false,
            ip_masq: false,
            workload_bridge: true,
        }
    }
}

/// One running agent per node; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Agents {
    options: AgentOptions,
    children: Vec<Option<Child>>,
    /// A bpffs of our own for the dataplane's pins: `ip netns exec` gives each agent a mount
    /// namespace with a fresh /sys, whose bpffs would vanish (and detach the dataplane) when
    /// the agent exits. This one lives in our mount namespace until the agents are dropped.
    bpffs: Option<Bpffs>,
    /// Each node's config file as given (a test's own YAML or cloud-config), instead of the
    /// layout's.
    configs: Option<Vec<String>>,
}

impl Agents {
    /// Writes every node's config and starts its agent.
    pub fn start(cluster: &Cluster, options: AgentOptions) -> Result<Self> {
        let bpffs = Bpffs::mount(&options.dir.join("bpffs"))?;
        let mut agents = Self {
            children: Vec::new(),
            options,
            bpffs: Some(bpffs),
            configs: None,
        };
        if let Some(pki) = agents.pki_dir() {
            let nodes: Vec<shoal_pki::ClusterNode> = cluster
                .nodes()
                .iter()
                .map(|node| shoal_pki::ClusterNode {
                    name: node_name(node),
                    ip: node.underlay_ip().into(),
                    member: node.index() < agents.options.masters,
                    // The first master sets up the store's users; no other node is root.
                    admin: node.index() == 0,
                })
                .collect();
            shoal_pki::issue_cluster(&pki, &nodes).map_err(|err| {
                Error::Layout(format!("issuing the cluster's certificates: {err}"))
            })?;
        }
        for node in cluster.nodes() {
            let child = agents.spawn(cluster, node)?;
            agents.children.push(Some(child));
        }
        Ok(agents)
    }

    /// Starts node `i`'s agent with `configs[i]` as its config file (written to its
    /// `agent.yaml`), e.g. a cloud-config; plain HTTP, no PKI. Paths for it:
    /// [`Agents::node_dir_in`], [`Agents::pin_root_in`], [`Agents::machine_id`].
    pub fn start_with_configs(
        cluster: &Cluster,
        mut options: AgentOptions,
        configs: Vec<String>,
    ) -> Result<Self> {
        if configs.len() != cluster.nodes().len() {
            return Err(Error::Layout(format!(
                "{} configs for {} nodes",
                configs.len(),
                cluster.nodes().len()
            )));
        }
        options.secure = false;
        let bpffs = Bpffs::mount(&options.dir.join("bpffs"))?;
        let mut agents = Self {
            children: Vec::new(),
            options,
            bpffs: Some(bpffs),
            configs: Some(configs),
        };
        for node in cluster.nodes() {
            let child = agents.spawn(cluster, node)?;
            agents.children.push(Some(child));
        }
        Ok(agents)
    }

    /// The directory of node `index`: `agent.yaml`, `agent.log`, `subnet.env`, `data/`.
    pub fn node_dir(&self, index: usize) -> PathBuf {
        Self::node_dir_in(&self.options.dir, index)
    }

    /// [`Agents::node_dir`] of agents started with `AgentOptions::dir` `dir`.
    pub fn node_dir_in(dir: &Path, index: usize) -> PathBuf {
        dir.join(format!("node{}", index + 1))
    }

    /// Where node `index`'s dataplane pins its maps (`network.bpf_pin_root`): in the bpffs the
    /// agents of `dir` share.
    pub fn pin_root_in(dir: &Path, index: usize) -> PathBuf {
        dir.join("bpffs").join(format!("node{}", index + 1))
    }

    /// The machine ID the layout gives `node` (`machine_id`): nodes share /etc/machine-id.
    pub fn machine_id(node: &Node) -> String {
        machine_id(node.ns().name())
    }

    /// What node `index`'s agent and units see as /run when [`AgentOptions::private_run`].
    pub fn run_dir(&self, index: usize) -> PathBuf {
        self.node_dir(index).join("run")
    }

    /// The cluster's PKI directory (`shoal pki cluster`'s layout), if it is secure.
    pub fn pki_dir(&self) -> Option<PathBuf> {
        self.options.secure.then(|| self.options.dir.join("pki"))
    }

    /// How a person reaches the store: `https://` with the CA and the `root` client
    /// certificate in a secure cluster, else `http://`.
    pub fn access(&self, node: &Node) -> StoreAccess {
        match self.pki_dir() {
            Some(pki) => StoreAccess {
                endpoint: format!("https://{}:{CLIENT_PORT}", node.underlay_ip()),
                ca: Some(pki.join(shoal_pki::CA_CERT)),
                certificate: Some(pki.join(format!("{}.pem", shoal_pki::ROOT))),
                key: Some(pki.join(format!("{}-key.pem", shoal_pki::ROOT))),
            },
            None => StoreAccess {
                endpoint: format!("http://{}:{CLIENT_PORT}", node.underlay_ip()),
                ca: None,
                certificate: None,
                key: None,
            },
        }
    }

    /// The YAML config of node `node` in `cluster`.
    pub fn config_for(&self, cluster: &Cluster, node: &Node) -> String {
        let dir = self.node_dir(node.index());
        let masters: Vec<&Node> = cluster.nodes().iter().take(self.options.masters).collect();
        let is_master = node.index() < self.options.masters;
        let scheme = if self.options.secure { "https" } else { "http" };
        let pki = match self.pki_dir() {
            Some(pki) => format!(
                "pki: {}\n",
                shoal_pki::node_dir(&pki, &node_name(node)).display()
            ),
            None => String::new(),
        };
        let store = if is_master {
            let initial: Vec<String> = masters
                .iter()
                .map(|m| format!("{}={scheme}://{}:2380", node_name(m), m.underlay_ip()))
                .collect();
            format!("store:\n  initial_cluster: {}\n", initial.join(","))
        } else {
            let endpoints: Vec<String> = masters
                .iter()
                .map(|m| format!("{scheme}://{}:{CLIENT_PORT}", m.underlay_ip()))
                .collect();
            format!(
                "role: worker\nstore:\n  endpoints: [{}]\n",
                endpoints.join(", ")
            )
        };
        let compute = if node.index() % 3 == 2 { "db" } else { "web" };
        format!(
            "#shoal-config\n\
             name: node{number}\n\
             machine_id: {machine_id}\n\
             metadata: {{ compute: {compute}, rack: rack{number} }}\n\
             public_ip: {ip}\n\
             iface: eth0\n\
             data_dir: {dir}/data\n\
             {pki}\
             {store}\
             network:\n  subnet_file: {dir}/subnet.env\n  bpf_pin_root: {pins}\n  \
             ip_masq: {ip_masq}\n  \
             {bridge}\
             config: {{ Network: {OVERLAY_NETWORK}, Backend: {{ Type: vxlan }} }}\n\
             fleet:\n  agent_ttl: {ttl}s\n\
             health:\n  listen: 0.0.0.0:{HEALTH_PORT}\n",
            number = node.index() + 1,
            machine_id = machine_id(node.ns().name()),
            ip = node.underlay_ip(),
            dir = dir.display(),
            pins = Self::pin_root_in(&self.options.dir, node.index()).display(),
            ttl = self.options.agent_ttl.as_secs().max(1),
            ip_masq = self.options.ip_masq,
            bridge = if self.options.workload_bridge {
                ""
            } else {
                "bridge: \"\"\n  "
            },
        )
    }

    fn spawn(&self, cluster: &Cluster, node: &Node) -> Result<Child> {
        let dir = self.node_dir(node.index());
        std::fs::create_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
        let config = dir.join("agent.yaml");
        let text = match &self.configs {
            Some(configs) => configs[node.index()].clone(),
            None => self.config_for(cluster, node),
        };
        std::fs::write(&config, text).map_err(|source| io_error(&config, source))?;
        let log_path = dir.join("agent.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| io_error(&log_path, source))?;
        let mut cmd = if self.options.private_run {
            let run = self.run_dir(node.index());
            std::fs::create_dir_all(&run).map_err(|source| io_error(&run, source))?;
            let mut cmd = node.ns().command("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg("mount --bind \"$0\" /run && exec \"$@\"")
                .arg(&run)
                .arg(&self.options.shoal);
            cmd
        } else {
            node.ns().command(&self.options.shoal)
        };
        node.ns().spawn(
            cmd.args(["agent", "--config"])
                .arg(&config)
                .env("SHOAL_LOG", &self.options.log_filter)
                .stdout(Stdio::null())
                .stderr(log),
        )
    }

    /// Whether node `node`'s agent reports ready (store quorum, lease, machine registered).
    pub fn is_ready(node: &Node) -> bool {
        node.output(
            "curl",
            &[
                "-sf",
                "-m",
                "1",
                &format!("http://127.0.0.1:{HEALTH_PORT}/readyz"),
            ],
        )
        .is_ok_and(|out| out.status.success())
    }

    /// Waits until every node is ready, calling `progress` when a node becomes ready.
    pub fn wait_ready(
        &self,
        cluster: &Cluster,
        timeout: Duration,
        mut progress: impl FnMut(&Node, Duration),
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut pending: Vec<&Node> = cluster.nodes().iter().collect();
        while !pending.is_empty() {
            pending.retain(|node| {
                let ready = Self::is_ready(node);
                if ready {
                    progress(node, start.elapsed());
                }
                !ready
            });
            if start.elapsed() > timeout && !pending.is_empty() {
                let names: Vec<&str> = pending.iter().map(|node| node.name()).collect();
                return Err(Error::Layout(format!(
                    "agents on {names:?} not ready after {timeout:?}; logs in {}",
                    self.options.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(start.elapsed())
    }

    /// Starts node `index`'s agent again (after [`Agents::stop`] or [`Agents::kill`]), with the
    /// same config and data.
    pub fn restart(&mut self, cluster: &Cluster, index: usize) -> Result<()> {
        self.kill(index);
        let child = self.spawn(cluster, cluster.node(index))?;
        if let Some(slot) = self.children.get_mut(index) {
            *slot = Some(child);
        }
        Ok(())
    }

    /// Stops node `index`'s agent gracefully (SIGTERM) and waits up to 10 s for it to exit.
    pub fn stop(&mut self, index: usize) -> bool {
        let Some(mut child) = self.children.get_mut(index).and_then(Option::take) else {
            return false;
        };
        terminate(&child);
        reap_by(&mut child, Instant::now() + Duration::from_secs(10))
            .is_some_and(|status| status.success())
    }

    /// Kills node `index`'s agent at once (SIGKILL), as a power-off would.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children.get_mut(index).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The logs of every agent, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.children.len())
            .map(|index| {
                let path = self.node_dir(index).join("agent.log");
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                format!("==== {} ====\n{text}", path.display())
            })
            .collect()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.children.iter().flatten().for_each(terminate);
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in self.children.iter_mut().flatten() {
            reap_by(child, deadline);
        }
        self.bpffs.take();
    }
}

/// The agent name of `node`: `node1`, `node2`, ...
fn node_name(node: &Node) -> String {
    format!("node{}", node.index() + 1)
}

/// Where and how to reach a cluster's store from a node (etcdctl's and fleetctl's flags).
#[derive(Debug, Clone)]
pub struct StoreAccess {
    pub endpoint: String,
    pub ca: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl StoreAccess {
    /// etcdctl's `--endpoints`, `--cacert`, `--cert`, `--key`.
    pub fn etcdctl_args(&self) -> Vec<String> {
        self.args(["--endpoints", "--cacert", "--cert", "--key"])
    }

    /// fleetctl's `--endpoint`, `--ca-file`, `--cert-file`, `--key-file`.
    pub fn fleetctl_args(&self) -> Vec<String> {
        self.args(["--endpoint", "--ca-file", "--cert-file", "--key-file"])
    }

    fn args(&self, flags: [&str; 4]) -> Vec<String> {
        let mut args = vec![flags[0].to_string(), self.endpoint.clone()];
        for (flag, path) in flags[1..]
            .iter()
            .zip([&self.ca, &self.certificate, &self.key])
        {
            if let Some(path) = path {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
        }
        args
    }
}

/// Asks an agent to stop gracefully (SIGTERM).
fn terminate(child: &Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// Waits for `child` to exit until `deadline`, then kills it. Its exit status if it exited by
/// itself in time.
fn reap_by(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A bpffs mounted on a directory, unmounted (lazily) on drop.
#[derive(Debug)]
struct Bpffs {
    path: PathBuf,
}

impl Bpffs {
    fn mount(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|source| io_error(path, source))?;
        let target = c_path(path)?;
        let fstype = c"bpf";
        // SAFETY: mount(2) with valid NUL-terminated strings and no data.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io_error(path, std::io::Error::last_os_error()));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Ok(target) = c_path(&self.path) {
            // SAFETY: umount2(2) with a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn c_path(path: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Layout(format!("{} has a NUL byte", path.display())))
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Spawn {
        command: format!("writing {}", path.display()),
        cause: source,
    }
}

/// A machine ID for the node in namespace `namespace`: 32 hex digits, as /etc/machine-id holds,
/// that differ from the first digit on (`fleetctl list-machines` shows the first 8), stable
/// for the namespace name.
fn machine_id(namespace: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        (namespace, salt).hash(&mut hasher);
        hasher.finish()
    };
    format!("{:016x}{:016x}", half(0), half(1))
}
