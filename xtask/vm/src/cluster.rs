//! A cluster of shoal VMs: images prepared, a private network, one qemu per node, each node's
//! agent config shared in over 9p; followed until every node booted and its agent is ready.
use std::{
    collections::BTreeMap,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use shoal_harness::{Namespace, StoreAccess};

use crate::{
    Error, IoContext, Result, accel, build,
    config::{self, NodeLayout, Role},
    guest::{self, ExecOutput},
    image::{self, GuestKernel},
    netns,
    qemu::{self, Vm, VmConfig},
};

/// What the guests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestImage {
    /// Busybox in an initramfs; the init starts `shoal agent` itself (boots in seconds).
    #[default]
    Small,
    /// Debian with systemd as PID 1, provisioned by a `#cloud-config`
    /// ([`config::cloud_config_yaml`]) that `shoal install` puts in place for shoal.service
    /// (see [`crate::debian`]).
    Debian,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub image: GuestImage,
    pub nodes: usize,
    pub masters: usize,
    /// Metadata of node `i` (fleet's `key=value` pairs); missing entries get `rack=rack<i>`.
    pub metadata: Vec<BTreeMap<String, String>>,
    pub memory_mib: u32,
    /// How long booting every node may take (to the agent's start).
    pub boot_timeout: Duration,
    /// Which build of shoal the guests run (see [`build::shoal_binary`]).
    pub profile: build::Profile,
    /// A ready shoal binary to share in instead (static or dynamic).
    pub binary: Option<PathBuf>,
    /// TLS on every store port and auth, from a cluster PKI made for this cluster (each
    /// guest gets its node's certificates as /etc/shoal/pki); `false` for plain HTTP.
    pub secure: bool,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            image: GuestImage::Small,
            nodes: 3,
            masters: 3,
            metadata: Vec::new(),
            memory_mib: 512,
            boot_timeout: Duration::from_secs(90),
            profile: build::Profile::Release,
            binary: None,
            secure: true,
        }
    }
}

/// A step of bringing the cluster up, for progress lines.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Since [`VmCluster::up`] was called.
    pub elapsed: Duration,
    pub node: Option<String>,
    pub message: String,
}

/// A node of a running cluster.
#[derive(Debug)]
pub struct VmNode {
    pub layout: NodeLayout,
    vm: Option<Vm>,
    config: VmConfig,
}

impl VmNode {
    pub fn name(&self) -> &str {
        &self.layout.name
    }

    pub fn address(&self) -> Ipv4Addr {
        self.layout.address
    }

    /// qemu's pid, while the node is powered on.
    pub fn pid(&self) -> Option<u32> {
        self.vm.as_ref().map(Vm::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.vm.as_mut().is_some_and(Vm::running)
    }

    /// The guest's console log on the host.
    pub fn console_log(&self) -> &Path {
        &self.config.console_log
    }
}

/// What `vm-cluster down` needs to find a cluster started by another process.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterState {
    pub id: u32,
    pub owner_pid: u32,
    pub namespace: String,
    pub nodes: Vec<(String, Ipv4Addr, u32)>,
}

/// A running cluster. Dropping it kills every VM and removes the namespace with its bridge
/// and taps, and the cluster's state directory.
#[derive(Debug)]
pub struct VmCluster {
    id: u32,
    started: Instant,
    accel: accel::Choice,
    dir: PathBuf,
    // Field order matters: VMs go before the namespace that holds their taps.
    nodes: Vec<VmNode>,
    namespace: Namespace,
}

impl VmCluster {
    /// Boots the cluster, reporting each step to `progress`; returns once every node's agent
    /// has started (see [`Self::wait_ready`] for convergence).
    pub fn up(spec: &ClusterSpec, progress: &mut dyn FnMut(Progress)) -> Result<Self> {
        validate(spec)?;
        let started = Instant::now();
        let mut report = |node: Option<&str>, message: String| {
            progress(Progress {
                elapsed: started.elapsed(),
                node: node.map(str::to_string),
                message,
            })
        };
        let cache = crate::cache_dir();
        fs::create_dir_all(&cache).context(|| format!("creating {}", cache.display()))?;
        sweep()?;
        let binary = match &spec.binary {
            Some(binary) => binary.clone(),
            None => {
                report(
                    None,
                    format!(
                        "bringing shoal ({}) up to date (cargo build; minutes the first time)",
                        spec.profile.directory()
                    ),
                );
                build::shoal_binary(spec.profile)?
            }
        };
        report(None, format!("shoal binary {}", binary.display()));
        report(None, "preparing the guest kernel and initramfs".to_string());
        let kernel = GuestKernel::prepare(&cache)?;
        let (id, dir) = claim_cluster_dir(&cache)?;
        let booted = Self::boot(spec, id, &dir, &kernel, &binary, started, &mut report);
        if booted.is_err() {
            preserve_logs_and_remove(&dir, id);
        }
        booted
    }

    fn boot(
        spec: &ClusterSpec,
        id: u32,
        dir: &Path,
        kernel: &GuestKernel,
        binary: &Path,
        started: Instant,
        report: &mut dyn FnMut(Option<&str>, String),
    ) -> Result<Self> {
        let cache = crate::cache_dir();
        let initramfs = dir.join("initramfs.cpio");
        image::build_initramfs(kernel, &initramfs)?;
        let disk = match spec.image {
            GuestImage::Small => None,
            GuestImage::Debian => {
                report(
                    None,
                    "preparing the Debian image (built once, then cached)".to_string(),
                );
                let disk = crate::debian::prepare_image(&cache, kernel)?;
                report(None, format!("Debian image {}", disk.display()));
                Some(disk)
            }
        };
        let choice = accel::choose(&cache, &kernel.vmlinux, &initramfs)?;
        report(
            None,
            format!(
                "kernel {}, accelerator {} ({})",
                kernel.version,
                choice.accel.name(),
                choice.reason
            ),
        );
        let layouts = layouts(spec, id)?;
        let share = prepare_share(dir, binary, &layouts, spec.image)?;
        let namespace = netns::create(id, layouts.len())?;
        let mut cluster = Self {
            id,
            started,
            accel: choice,
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            namespace,
        };
        for (index, layout) in layouts.into_iter().enumerate() {
            let mut config =
                cluster.vm_config(kernel, &initramfs, &share, &layout, index + 1, spec);
            if let Some(disk) = &disk {
                config.disk = Some(disk.clone());
                // apparmor=0: Debian's kernel enables AppArmor, but the image has no
                // apparmor_parser, without which Docker refuses to start containers.
                config.append = format!(
                    "{} net.ifnames=0 apparmor=0 systemd.show_status=false shoal.mode=root shoal.root={}",
                    config.append,
                    crate::debian::ROOT_DEVICE
                );
            }
            let vm = Vm::spawn(&config, cluster.namespace.command_for(&config))?;
            report(
                Some(&layout.name),
                format!(
                    "qemu started (pid {}, {} {}, console {})",
                    vm.pid(),
                    layout.address,
                    role_name(layout.role),
                    config.console_log.display()
                ),
            );
            cluster.nodes.push(VmNode {
                layout,
                vm: Some(vm),
                config,
            });
        }
        cluster.write_state()?;
        cluster.wait_booted(spec.boot_timeout, report)?;
        Ok(cluster)
    }

    fn vm_config(
        &self,
        kernel: &GuestKernel,
        initramfs: &Path,
        share: &Path,
        layout: &NodeLayout,
        index: usize,
        spec: &ClusterSpec,
    ) -> VmConfig {
        VmConfig {
            name: layout.name.clone(),
            accel: self.accel.accel,
            memory_mib: spec.memory_mib,
            cpus: 1,
            kernel: kernel.vmlinux.clone(),
            initramfs: initramfs.to_path_buf(),
            append: format!(
                "{} shoal.mode=cluster shoal.node={} shoal.ip={}/{}",
                qemu::kernel_args(),
                layout.name,
                layout.address,
                netns::SUBNET_PREFIX_LEN
            ),
            nic: Some(qemu::TapNic {
                tap: netns::tap_name(index),
                mac: mac_address(self.id, index),
            }),
            share: Some(share.to_path_buf()),
            disk: None,
            console_log: self.dir.join(format!("{}.console.log", layout.name)),
        }
    }

    /// Waits for each node's boot markers in turn, reporting them as progress lines.
    fn wait_booted(
        &self,
        timeout: Duration,
        report: &mut dyn FnMut(Option<&str>, String),
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for node in &self.nodes {
            let Some(vm) = &node.vm else { continue };
            for (prefix, what) in [
                ("userspace", "kernel booted, init running"),
                ("network", "network up"),
                ("agent starting", "shoal agent starting"),
            ] {
                let left = deadline.saturating_duration_since(Instant::now());
                let marker = vm.wait_marker(prefix, left)?;
                report(
                    Some(node.name()),
                    format!("{what} ({:.1}s after qemu start)", marker.at.as_secs_f64()),
                );
            }
            if let Some(version) = vm
                .markers()
                .into_iter()
                .find(|m| m.text.starts_with("version: shoal"))
            {
                report(Some(node.name()), version.text);
            }
        }
        Ok(())
    }

    /// Waits until every running node's agent answers `GET /readyz` with 200 (store quorum,
    /// leases known, machine registered), reporting each node as it turns ready. Agents that
    /// exit are restarted by the guest (as shoal.service would be); the timeout error lists
    /// each pending node's last answer and how often its agent exited.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].vm.is_some())
            .collect();
        let mut last_answer: BTreeMap<usize, String> = BTreeMap::new();
        loop {
            pending.retain(|&index| match self.health(index, "/readyz") {
                Ok((200, _)) => {
                    progress(Progress {
                        elapsed: self.started.elapsed(),
                        node: Some(self.nodes[index].name().to_string()),
                        message: "agent ready (GET /readyz: 200)".to_string(),
                    });
                    false
                }
                Ok((status, body)) => {
                    last_answer.insert(index, format!("{status} {}", body.trim()));
                    true
                }
                Err(err) => {
                    last_answer.insert(index, err.to_string());
                    true
                }
            });
            if pending.is_empty() {
                return Ok(self.started.elapsed());
            }
            if Instant::now() >= deadline {
                let detail = pending
                    .iter()
                    .map(|&i| {
                        let node = &self.nodes[i];
                        let answer = last_answer.get(&i).map(String::as_str).unwrap_or("-");
                        let exits = node.agent_exits();
                        let last_exit = exits.last().map(String::as_str).unwrap_or("none");
                        format!(
                            "\n  {}: {answer} (agent exits: {}, last: {last_exit}; console {})",
                            node.name(),
                            exits.len(),
                            node.console_log().display()
                        )
                    })
                    .collect::<String>();
                return Err(Error::Timeout {
                    what: "every agent ready".to_string(),
                    timeout,
                    detail: format!("; last answers:{detail}"),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until `fleetctl list-machines`, run from the host side, lists every running node
    /// (the outside view of convergence, besides each agent's own readiness).
    pub fn wait_machines_listed(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        let wanted: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.vm.is_some())
            .map(|n| n.address().to_string())
            .collect();
        let mut listing = String::new();
        while Instant::now() < deadline {
            let mut cmd = self.host_command(self.dir.join("share").join("shoal"));
            cmd.arg("fleetctl")
                .args(self.store_access().fleetctl_args())
                .args(["list-machines", "--no-legend", "--full"]);
            listing = crate::run(&mut cmd).unwrap_or_else(|err| err.to_string());
            let listed = |ip: &String| listing.split_whitespace().any(|word| word == ip);
            if wanted.iter().all(listed) {
                return Ok(self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(Error::Timeout {
            what: format!("fleetctl list-machines listing {}", wanted.join(", ")),
            timeout,
            detail: format!("; last listing:\n{listing}"),
        })
    }

    /// `GET path` on node `index`'s agent health port, from the host side.
    pub fn health(&self, index: usize, path: &str) -> Result<(u16, String)> {
        let target = SocketAddr::from((self.nodes[index].address(), config::HEALTH_PORT));
        guest::http_get(self.namespace_name(), target, path, Duration::from_secs(2))
    }

    /// `GET path` on any address and port inside the cluster, from the host side.
    pub fn http_get(&self, target: SocketAddr, path: &str) -> Result<(u16, String)> {
        guest::http_get(self.namespace_name(), target, path, Duration::from_secs(5))
    }

    /// Runs `script` with `sh` inside node `index`'s guest.
    pub fn exec(&self, index: usize, script: &str, timeout: Duration) -> Result<ExecOutput> {
        guest::exec(
            self.namespace_name(),
            self.nodes[index].address(),
            script,
            timeout,
        )
    }

    /// Powers node `index` off (kills its qemu): the node disappears from the network at once,
    /// as when a machine loses power.
    pub fn power_off(&mut self, index: usize) {
        if let Some(mut vm) = self.nodes[index].vm.take() {
            vm.kill();
        }
    }

    /// A command that runs `program` on the host side of the cluster's network (inside its
    /// namespace), e.g. `etcdctl` or `shoal fleetctl`.
    pub fn host_command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        self.namespace.command(program)
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn namespace_name(&self) -> &str {
        self.namespace.name()
    }

    pub fn accel(&self) -> &accel::Choice {
        &self.accel
    }

    pub fn nodes(&self) -> &[VmNode] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [VmNode] {
        &mut self.nodes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Client URLs of the store (the masters), comma-separated, as etcdctl and fleetctl take
    /// them.
    pub fn store_endpoints(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.layout.role == Role::Master)
            .map(|n| n.layout.client_url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How a person on the host reaches the store: the masters' endpoints and, in a secure
    /// cluster, the CA and the `root` client certificate.
    pub fn store_access(&self) -> StoreAccess {
        let pki = self.dir.join(PKI_DIR);
        let secure = self.nodes.iter().any(|node| node.layout.secure);
        let file = |name: String| secure.then(|| pki.join(name));
        StoreAccess {
            endpoint: self.store_endpoints(),
            ca: file(shoal_pki::CA_CERT.to_string()),
            certificate: file(format!("{}.pem", shoal_pki::ROOT)),
            key: file(format!("{}-key.pem", shoal_pki::ROOT)),
        }
    }

    /// Milestones of every node's boot (marker text and time after its qemu started).
    pub fn boot_timings(&self) -> Vec<(String, Vec<qemu::Marker>)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.name().to_string(), n.vm.as_ref()?.markers())))
            .collect()
    }

    /// Returns the name of the first node whose qemu exited on its own, if any.
    pub fn exited_node(&mut self) -> Option<String> {
        self.nodes
            .iter_mut()
            .filter(|n| n.vm.is_some())
            .find_map(|n| (!n.is_running()).then(|| n.name().to_string()))
    }

    fn write_state(&self) -> Result<()> {
        let state = ClusterState {
            id: self.id,
            owner_pid: std::process::id(),
            namespace: self.namespace_name().to_string(),
            nodes: self
                .nodes
                .iter()
                .map(|n| {
                    let pid = n.vm.as_ref().map(Vm::pid).unwrap_or_default();
                    (n.name().to_string(), n.address(), pid)
                })
                .collect(),
        };
        let path = self.dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(&state).map_err(|err| Error::Encode {
            what: "the cluster state".to_string(),
            message: err.to_string(),
        })?;
        fs::write(&path, text).context(|| format!("writing {}", path.display()))
    }
}

impl VmNode {
    /// The guest's "agent exited ..." reports, oldest first.
    fn agent_exits(&self) -> Vec<String> {
        self.vm
            .as_ref()
            .map(|vm| {
                vm.markers()
                    .into_iter()
                    .filter(|m| m.text.starts_with("agent exited"))
                    .map(|m| m.text)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for VmCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut vm) = node.vm.take() {
                vm.kill();
            }
        }
        preserve_logs_and_remove(&self.dir, self.id);
        // The namespace (field) is deleted after this, with its bridge and taps.
    }
}

trait CommandFor {
    fn command_for(&self, config: &VmConfig) -> std::process::Command;
}

impl CommandFor for Namespace {
    /// qemu inside this namespace (`ip netns exec` execs it: same process, same pid).
    fn command_for(&self, config: &VmConfig) -> std::process::Command {
        let plain = config.command();
        let mut cmd = self.command(plain.get_program());
        cmd.args(plain.get_args());
        cmd
    }
}

const STATE_FILE: &str = "state.json";

fn validate(spec: &ClusterSpec) -> Result<()> {
    if spec.nodes == 0 || spec.nodes > 200 {
        return Err(Error::Invalid(format!(
            "--nodes {} is not in 1..=200",
            spec.nodes
        )));
    }
    if spec.masters == 0 || spec.masters > spec.nodes {
        return Err(Error::Invalid(format!(
            "--masters {} must be between 1 and the number of nodes ({})",
            spec.masters, spec.nodes
        )));
    }
    if !qemu::available() {
        return Err(Error::Invalid(format!(
            "{} or {} is missing (cargo xtask setup installs qemu-system-x86)",
            qemu::QEMU,
            qemu::QBOOT
        )));
    }
    Ok(())
}

fn layouts(spec: &ClusterSpec, id: u32) -> Result<Vec<NodeLayout>> {
    (1..=spec.nodes)
        .map(|index| {
            let mut metadata = spec.metadata.get(index - 1).cloned().unwrap_or_default();
            if metadata.is_empty() {
                metadata = config::parse_metadata(&format!("rack=rack{index}"))?;
            }
            Ok(NodeLayout {
                name: format!("n{index}"),
                address: netns::node_address(id, index),
                role: if index <= spec.masters {
                    Role::Master
                } else {
                    Role::Worker
                },
                metadata,
                secure: spec.secure,
                docker: spec.image == GuestImage::Debian,
            })
        })
        .collect()
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Master => "master",
        Role::Worker => "worker",
    }
}

/// A locally administered MAC carrying the cluster id and node index.
fn mac_address(id: u32, index: usize) -> String {
    format!("52:54:00:97:{:02x}:{:02x}", id % 256, index % 256)
}

/// Claims the lowest free cluster id by creating its directory under `cache/clusters`
/// (atomic, so parallel tests never share one) and returns it with the directory.
fn claim_cluster_dir(cache: &Path) -> Result<(u32, PathBuf)> {
    let clusters = cache.join("clusters");
    fs::create_dir_all(&clusters).context(|| format!("creating {}", clusters.display()))?;
    for id in 0..256 {
        let dir = clusters.join(id.to_string());
        if netns::exists(&netns::namespace_name(id)) {
            continue;
        }
        match fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(Error::Io {
                    context: format!("creating {}", dir.display()),
                    cause: source,
                });
            }
        }
    }
    Err(Error::Invalid(format!(
        "no free cluster id under {} (run `cargo xtask vm-cluster down`)",
        clusters.display()
    )))
}

/// The 9p share: the binary (with its shared libraries under `sysroot/` if it is dynamically
/// linked) and one directory per node holding its description: `agent.yaml`, or for the
/// Debian guest a `#cloud-config` (`cloud-config.yaml`).
fn prepare_share(
    dir: &Path,
    binary: &Path,
    layouts: &[NodeLayout],
    image: GuestImage,
) -> Result<PathBuf> {
    let pki = layouts
        .iter()
        .any(|layout| layout.secure)
        .then(|| issue_pki(dir, layouts))
        .transpose()?;
    let share = dir.join("share");
    let shared_binary = share.join("shoal");
    fs::create_dir_all(&share).context(|| format!("creating {}", share.display()))?;
    if fs::hard_link(binary, &shared_binary).is_err() {
        image::copy(binary, &shared_binary)?;
    }
    if build::is_dynamic(binary)? {
        share_libraries(&share, binary)?;
    }
    for tool in GUEST_HOST_TOOLS {
        if crate::have_program(tool) {
            share_host_tool(&share, tool)?;
        }
    }
    for layout in layouts {
        let node_dir = share.join("nodes").join(&layout.name);
        fs::create_dir_all(&node_dir).context(|| format!("creating {}", node_dir.display()))?;
        let cloud_config = image == GuestImage::Debian;
        let yaml = if cloud_config {
            config::cloud_config_yaml(layout, layouts)?
        } else {
            config::agent_yaml(layout, layouts)?
        };
        let path = node_dir.join(config::config_file_name(cloud_config));
        fs::write(&path, yaml).context(|| format!("writing {}", path.display()))?;
        if let Some(pki) = &pki {
            share_node_pki(
                &shoal_pki::node_dir(pki, &layout.name),
                &node_dir.join("pki"),
            )?;
        }
    }
    Ok(share)
}

/// The cluster's PKI (`shoal pki cluster`'s layout) in `<dir>/pki`, outside the share: the
/// CA key never reaches a guest.
fn issue_pki(dir: &Path, layouts: &[NodeLayout]) -> Result<PathBuf> {
    let pki = dir.join(PKI_DIR);
    let nodes: Vec<shoal_pki::ClusterNode> = layouts
        .iter()
        .enumerate()
        .map(|(index, layout)| shoal_pki::ClusterNode {
            name: layout.name.clone(),
            ip: layout.address.into(),
            member: layout.role == Role::Master,
            // Masters come first; the first sets up the store's users, no other node is root.
            admin: index == 0,
        })
        .collect();
    shoal_pki::issue_cluster(&pki, &nodes)
        .map_err(|err| Error::Invalid(format!("issuing the cluster's certificates: {err}")))?;
    Ok(pki)
}

/// Copies a node's certificates into its share directory (the guest installs them 0600).
fn share_node_pki(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).context(|| format!("reading {}", from.display()))? {
        let path = entry
            .context(|| format!("reading {}", from.display()))?
            .path();
        if let Some(name) = path.file_name() {
            let target = to.join(name);
            fs::copy(&path, &target).context(|| format!("copying to {}", target.display()))?;
        }
    }
    Ok(())
}

/// The cluster PKI's directory below a cluster's directory.
const PKI_DIR: &str = "pki";

/// Where the consoles of cluster `id` are kept once it is gone (those of the run before in
/// `<dir>.previous`).
pub fn logs_dir(id: u32) -> PathBuf {
    crate::cache_dir()
        .join("logs")
        .join(format!("cluster-{id}"))
}

/// Keeps the console logs of a finished cluster under [`logs_dir`] and removes its directory
/// (share, initramfs, state), which frees its id.
fn preserve_logs_and_remove(dir: &Path, id: u32) {
    let logs = logs_dir(id);
    // The run before stays as `<logs>.previous` (a retried test's failed attempt).
    let previous = logs.with_extension("previous");
    let _ = fs::remove_dir_all(&previous);
    let _ = fs::rename(&logs, &previous);
    if let Err(err) = fs::create_dir_all(&logs) {
        tracing::warn!("creating {}: {err}", logs.display());
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.to_string_lossy().ends_with(".log") {
            let _ = fs::copy(&path, logs.join(entry.file_name()));
        }
    }
    if let Err(err) = fs::remove_dir_all(dir) {
        tracing::warn!("removing {}: {err}", dir.display());
    }
}

/// Host programs the guests get (with their shared libraries and loader) under the share's
/// `sysroot/`, which the guest init links into place: etcdctl, for units and tests that talk
/// to the store from inside a node; iproute2's `ip` and `tc` and `nft`, which shoal runs
/// (busybox's `ip` lacks `neigh replace` and the rest).
const GUEST_HOST_TOOLS: &[&str] = &["etcdctl", "ip", "tc", "nft"];

/// Copies host program `name` and its shared libraries under `share/sysroot`, at their host
/// paths.
fn share_host_tool(share: &Path, name: &str) -> Result<()> {
    let program = crate::run(std::process::Command::new("which").arg(name))?;
    let program = PathBuf::from(program.trim());
    share_libraries(share, &program)?;
    share_at_host_path(share, &program)
}

/// Copies every file `ldd` lists for `program` (its libraries and the loader) under
/// `share/sysroot`, at their host paths; the guest init links them into place. The guests run
/// the host's own libraries: the busybox guest has none, the Debian guest is the same release.
fn share_libraries(share: &Path, program: &Path) -> Result<()> {
    let listing = crate::run(std::process::Command::new("ldd").arg(program))?;
    for library in ldd_paths(&listing) {
        share_at_host_path(share, &library)?;
    }
    Ok(())
}

fn share_at_host_path(share: &Path, file: &Path) -> Result<()> {
    let relative = file.strip_prefix("/").unwrap_or(file);
    let target = share.join("sysroot").join(relative);
    if target.exists() {
        return Ok(());
    }
    image::copy(file, &target)
}

/// The absolute paths in `ldd` output (`libc.so.6 => /lib/.../libc.so.6 (0x...)`, and the
/// loader's own line).
fn ldd_paths(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Every cluster recorded under the cache, with its state if it has one.
fn recorded_clusters(cache: &Path) -> Vec<(PathBuf, Option<ClusterState>)> {
    let Ok(entries) = fs::read_dir(cache.join("clusters")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_dir())
        .map(|dir| {
            let state = fs::read_to_string(dir.join(STATE_FILE))
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok());
            (dir, state)
        })
        .collect()
}

fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes clusters whose owning process is gone (a killed run): their namespace (and any
/// process left in it) and their directory. Returns how many it removed.
pub fn sweep() -> Result<usize> {
    let mut removed = 0;
    for (dir, state) in recorded_clusters(&crate::cache_dir()) {
        let id: Option<u32> = dir
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.parse().ok());
        let owner_alive = state.as_ref().is_some_and(|s| process_alive(s.owner_pid));
        if owner_alive || state.is_none() && recently_claimed(&dir) {
            continue;
        }
        if let Some(id) = id {
            let namespace = netns::namespace_name(id);
            if netns::exists(&namespace) {
                netns::remove(&namespace)?;
            }
        }
        fs::remove_dir_all(&dir).context(|| format!("removing {}", dir.display()))?;
        removed += 1;
    }
    Ok(removed)
}

/// A directory without state is a cluster still being set up, unless it is old.
fn recently_claimed(dir: &Path) -> bool {
    fs::metadata(dir)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|age| age < Duration::from_secs(600))
}

/// `vm-cluster down`: asks each running cluster's owner to stop (SIGTERM; it then removes
/// everything itself), waits for it, and removes what is left of clusters whose owner is gone.
/// Returns the ids it stopped.
pub fn down_all(wait: Duration) -> Result<Vec<u32>> {
    let mut stopped = Vec::new();
    for (dir, state) in recorded_clusters(&crate::cache_dir()) {
        let Some(state) = state else { continue };
        if process_alive(state.owner_pid) && state.owner_pid != std::process::id() {
            let pid = i32::try_from(state.owner_pid)
                .map_err(|_| Error::Invalid(format!("pid {} out of range", state.owner_pid)))?;
            // SAFETY: kill(2) with a pid from our own state file; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + wait;
            while dir.join(STATE_FILE).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if netns::exists(&state.namespace) {
            netns::remove(&state.namespace)?;
        }
        if dir.exists() {
            fs::remove_dir_all(&dir).context(|| format!("removing {}", dir.display()))?;
        }
        stopped.push(state.id);
    }
    sweep()?;
    Ok(stopped)
}

/// The namespace and address of node `name` in a running cluster (the first one that has it).
pub fn find_node(name: &str) -> Result<Option<(String, Ipv4Addr)>> {
    Ok(recorded_clusters(&crate::cache_dir())
        .into_iter()
        .filter_map(|(_, state)| state)
        .filter(|state| process_alive(state.owner_pid))
        .find_map(|state| {
            let (_, address, _) = state.nodes.iter().find(|(node, _, _)| node == name)?;
            Some((state.namespace.clone(), *address))
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_come_first_and_nodes_get_default_racks() {
        let spec = ClusterSpec {
            nodes: 4,
            masters: 3,
            metadata: vec![config::parse_metadata("compute=web").expect("valid")],
            ..ClusterSpec::default()
        };
        let nodes = layouts(&spec, 2).expect("layouts");
        let roles: Vec<Role> = nodes.iter().map(|n| n.role).collect();
        assert_eq!(
            roles,
            [Role::Master, Role::Master, Role::Master, Role::Worker]
        );
        assert_eq!(nodes[0].metadata["compute"], "web");
        assert_eq!(nodes[3].metadata["rack"], "rack4");
        assert_eq!(nodes[3].address, Ipv4Addr::new(10, 97, 2, 14));
        assert_eq!(nodes[1].name, "n2");
    }

    #[test]
    fn impossible_layouts_are_refused() {
        let no_masters = ClusterSpec {
            masters: 0,
            ..ClusterSpec::default()
        };
        assert!(validate(&no_masters).is_err());
        let too_many_masters = ClusterSpec {
            nodes: 2,
            masters: 3,
            ..ClusterSpec::default()
        };
        assert!(validate(&too_many_masters).is_err());
    }

    #[test]
    fn ldd_listings_give_libraries_and_the_loader() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(listing),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn macs_are_local_and_distinct_per_cluster_and_node() {
        assert_eq!(mac_address(1, 2), "52:54:00:97:01:02");
        assert_ne!(mac_address(1, 2), mac_address(2, 1));
    }

    #[test]
    fn store_endpoints_name_only_masters() {
        let spec = ClusterSpec {
            nodes: 3,
            masters: 1,
            ..ClusterSpec::default()
        };
        let nodes = layouts(&spec, 0).expect("layouts");
        let masters: Vec<String> = nodes
            .iter()
            .filter(|n| n.role == Role::Master)
            .map(NodeLayout::client_url)
            .collect();
        assert_eq!(masters, ["https://10.97.0.11:2379"], "secure by default");
    }
}
