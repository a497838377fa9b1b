//! `net` suite: the packet path between containers on two harness nodes, side by side:
//!
//! - `host-gw`: plain routing, no encapsulation (the upper bound);
//! - `kernel-vxlan`: the kernel VXLAN device configured as flanneld's vxlan backend does (the
//!   reference);
//! - `shoal-vxlan` (the default hook: TC decapsulation with direct delivery on a veth underlay),
//!   `shoal-vxlan-xdp` (XDP decapsulation, GRO behind it) and `shoal-udp`: shoal's dataplane.
//! - `bridge:*` (host-gw, kernel-vxlan, shoal-vxlan): containers as Docker's docker0 and the CNI
//!   bridge plugin leave them. The harness already hangs containers off a bridge holding the
//!   gateway (a veth port each, the default route via the gateway, the MTU flannel's subnet.env
//!   gives); what those two add is br_netfilter on bridged frames (`bridge-nf-call-iptables` = 1),
//!   which the other layouts turn off;
//! - `nic:*`: the same on a "physical NIC" emulation: the underlay veths segment in software
//!   before sending (TSO/GSO off: frames on the wire are at most MTU-size, as a NIC's TSO makes
//!   them) and merge on receive (GRO on, as a NIC driver's NAPI does), so each frame crosses
//!   the receive path once, as it would from a real wire.
//!
//! Each configuration gets a fresh two-node cluster with one container per node and the workload
//! MTU its encapsulation allows; rounds interleave the configurations so background load hits
//! them alike, every other round in reverse order. Metrics: single-stream TCP (iperf3, client on
//! CPU 0 and server on CPU 1: left to the scheduler the same configuration ranged 10-16 Gbit/s
//! between rounds, pinned it stays within ~5%), and again left to the scheduler, as a container
//! runs, with the CPU time iperf3's client and server spend per KB received (their user and
//! system time, which includes the packet path's softirq work run in their context) and the
//! share of the test in which the scheduler kept both on one CPU; 64-byte
//! UDP packets per second delivered to the receiving container's UDP layer by two
//! saturating `sendmmsg` senders (one per CPU); UDP request/response latency p50/p99 (sockperf
//! ping-pong, one-way = RTT/2, pinned as iperf3 is); CPU time per delivered 64-byte packet (the
//! senders' user+system time plus the machine's softirq time during the flood); for shoal's
//! configurations, each program's runs per second and nanoseconds per run during the unpinned
//! TCP test (the kernel's BPF run statistics, on for the whole run: two clock reads per run of
//! every BPF program, in every configuration that has programs).
//! The bridge target's TCP ratios are also given as the median of per-round ratios, with each
//! round's ratio (a round measures both configurations minutes apart, under the same load).
//! Results: `target/bench/net.json`, a table on stdout and `target/bench/net.png`.
//! `SHOAL_NET_BENCH_ONLY=host-gw,shoal-vxlan` measures only the named configurations,
//! `SHOAL_NET_BENCH_ROUNDS` sets the rounds (default 3).
use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use shoal_dataplane::{Backend, Config, Dataplane, DecapHook, MacAddr, ProgramRuns, RouteTarget};
use shoal_harness::{Cluster, Namespace, Node, NsWorker, flannel_vxlan};

const SECONDS: u32 = 4;
const PIN_ROOT: &str = "/sys/fs/bpf/shoal-bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wiring {
    HostGw,
    KernelVxlan,
    Shoal(Backend, DecapHook),
}

/// How containers hang off their node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Containers {
    /// The harness's bridge with plain L2 switching (`bridge-nf-call-iptables` off).
    Bench,
    /// As Docker (docker0) and the CNI bridge plugin leave a node: the bridge holds the gateway,
    /// every container a veth port, and bridged frames pass br_netfilter
    /// (`bridge-nf-call-iptables` = 1, which both set).
    DockerBridge,
}

/// One configuration: how the nodes are wired, how containers hang off them, and whether the
/// underlay emulates a NIC.
#[derive(Clone, Copy, Debug)]
struct Layout {
    name: &'static str,
    wiring: Wiring,
    nic: bool,
    containers: Containers,
}

impl Layout {
    const fn new(name: &'static str, wiring: Wiring, nic: bool) -> Self {
        Self {
            name,
            wiring,
            nic,
            containers: Containers::Bench,
        }
    }

    const fn docker_bridge(name: &'static str, wiring: Wiring) -> Self {
        Self {
            name,
            wiring,
            nic: false,
            containers: Containers::DockerBridge,
        }
    }

    const ALL: [Layout; 12] = [
        Layout::new("host-gw", Wiring::HostGw, false),
        Layout::new("kernel-vxlan", Wiring::KernelVxlan, false),
        Layout::new(
            "shoal-vxlan",
            Wiring::Shoal(Backend::Vxlan, DecapHook::Auto),
            false,
        ),
        Layout::new(
            "shoal-vxlan-xdp",
            Wiring::Shoal(Backend::Vxlan, DecapHook::Xdp),
            false,
        ),
        Layout::new(
            "shoal-udp",
            Wiring::Shoal(Backend::Udp, DecapHook::Auto),
            false,
        ),
        Layout::new("nic:host-gw", Wiring::HostGw, true),
        Layout::new("nic:kernel-vxlan", Wiring::KernelVxlan, true),
        Layout::new(
            "nic:shoal-vxlan-xdp",
            Wiring::Shoal(Backend::Vxlan, DecapHook::Xdp),
            true,
        ),
        Layout::new(
            "nic:shoal-vxlan-tc",
            Wiring::Shoal(Backend::Vxlan, DecapHook::Tc),
            true,
        ),
        Layout::docker_bridge("bridge:host-gw", Wiring::HostGw),
        Layout::docker_bridge("bridge:kernel-vxlan", Wiring::KernelVxlan),
        Layout::docker_bridge(
            "bridge:shoal-vxlan",
            Wiring::Shoal(Backend::Vxlan, DecapHook::Auto),
        ),
    ];

    fn workload_mtu(self) -> u32 {
        match self.wiring {
            Wiring::HostGw => 1500,
            Wiring::KernelVxlan => 1450,
            Wiring::Shoal(backend, _) => 1500 - backend.overhead(),
        }
    }
}

/// One configuration's measurements in one round.
#[derive(Clone, Debug, Default, Serialize)]
struct Sample {
    /// iperf3 client and server pinned to one CPU each.
    tcp_gbps: f64,
    /// Left to the scheduler.
    tcp_unpinned_gbps: f64,
    /// CPU time of the iperf3 client and server per KB received, pinned and unpinned: their
    /// user and system time, which includes the softirq work (both nodes' packet path) run in
    /// their context. Noise moves it less than the rate: a busy machine takes CPU away from
    /// iperf3 but adds little to what each byte costs.
    tcp_cpu_ns_per_kb: f64,
    tcp_unpinned_cpu_ns_per_kb: f64,
    /// Share of the unpinned test's samples (every 100 ms) in which the scheduler had the iperf3
    /// client and server on the same CPU: a data packet's whole path runs on the sender's CPU,
    /// so this is what decides whether the test runs on one CPU or two.
    tcp_unpinned_same_cpu: f64,
    udp64_pps: f64,
    latency_p50_us: f64,
    latency_p99_us: f64,
    cpu_ns_per_packet: f64,
    /// shoal's programs during the unpinned TCP test (both nodes): the noise-resistant part of
    /// the comparison, what the dataplane costs per packet. Empty for the other wirings.
    programs_unpinned_tcp: Vec<ProgramCost>,
}

/// One program's runs during a test, on both nodes together.
#[derive(Clone, Debug, Default, Serialize)]
struct ProgramCost {
    program: String,
    runs_per_second: f64,
    ns_per_run: f64,
}

impl ProgramCost {
    /// The programs' runs between two readings of every node's dataplane, per program name.
    fn between(before: &[ProgramRuns], after: &[ProgramRuns], seconds: f64) -> Vec<ProgramCost> {
        let mut totals: Vec<ProgramRuns> = Vec::new();
        for (late, early) in after.iter().zip(before) {
            let delta = late.since(early);
            match totals
                .iter_mut()
                .find(|total| total.program == delta.program)
            {
                Some(total) => {
                    total.runs += delta.runs;
                    total.run_time += delta.run_time;
                }
                None => totals.push(delta),
            }
        }
        totals
            .iter()
            .filter(|total| total.runs > 0)
            .map(|total| ProgramCost {
                program: total.program.clone(),
                runs_per_second: total.runs as f64 / seconds,
                ns_per_run: total.ns_per_run(),
            })
            .collect()
    }
}

#[derive(Debug, Serialize)]
struct ConfigResult {
    name: String,
    /// Median over rounds of each metric.
    median: Sample,
    rounds: Vec<Sample>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    seconds_per_test: u32,
    configs: Vec<ConfigResult>,
    ratios: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
struct Ratio {
    what: String,
    value: f64,
    target: Option<String>,
    met: Option<bool>,
    /// For a median of per-round ratios: each round's ratio, in round order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rounds: Vec<f64>,
}

/// A dataplane living in a node, driven from a thread inside it; detached on drop.
struct NodeDataplane {
    worker: NsWorker,
    dataplane: Option<Dataplane>,
}

impl NodeDataplane {
    fn attach(cluster: &Cluster, node: &Node, hook: DecapHook) -> anyhow::Result<Self> {
        let worker = NsWorker::spawn(node.ns())?;
        let subnet = node.container_subnet().context("node without subnet")?;
        let mut config = Config::new("eth0", node.underlay_ip(), subnet);
        config.pin_root = PIN_ROOT.into();
        config.instance = format!("{}-{}", cluster.run_id(), node.name());
        config.decap_hook = hook;
        config.route_source = Some(Ipv4Addr::from(u32::from(subnet.network()) + 1));
        let dataplane = worker.run(move || Dataplane::load_or_attach(config))?;
        Ok(Self {
            worker,
            dataplane: Some(dataplane),
        })
    }

    /// The kernel's run counts and times of this node's programs (see [`shoal_dataplane::enable_program_stats`]).
    fn program_runs(&self) -> anyhow::Result<Vec<ProgramRuns>> {
        Ok(self
            .dataplane
            .as_ref()
            .context("detached")?
            .program_runs()?)
    }

    fn vtep_mac(&self) -> MacAddr {
        self.dataplane
            .as_ref()
            .map(Dataplane::vtep_mac)
            .unwrap_or(MacAddr([0; 6]))
    }

    fn set_route(&mut self, peer: &Node, target: RouteTarget) -> anyhow::Result<()> {
        let mut dataplane = self.dataplane.take().context("detached")?;
        let subnet = peer.container_subnet().context("peer without subnet")?;
        let (dataplane, result) = self.worker.run(move || {
            let result = dataplane.set_route(subnet, target);
            (dataplane, result)
        });
        self.dataplane = Some(dataplane);
        Ok(result?)
    }

    /// Registers the node's containers for direct delivery (as an agent does periodically).
    fn sync_endpoints(&mut self) -> anyhow::Result<usize> {
        let mut dataplane = self.dataplane.take().context("detached")?;
        let (dataplane, result) = self.worker.run(move || {
            let result = dataplane.sync_endpoints();
            (dataplane, result)
        });
        self.dataplane = Some(dataplane);
        Ok(result?)
    }
}

impl Drop for NodeDataplane {
    fn drop(&mut self) {
        if let Some(dataplane) = self.dataplane.take()
            && let Err(err) = self.worker.run(move || dataplane.detach())
        {
            eprintln!(
                "detaching the benchmark dataplane: {:#}",
                anyhow::Error::from(err)
            );
        }
    }
}

/// A two-node cluster wired as `layout`; everything is removed on drop.
struct Testbed {
    // Dataplanes detach before the cluster's namespaces go.
    dataplanes: Vec<NodeDataplane>,
    cluster: Cluster,
}

impl Testbed {
    fn build(layout: Layout) -> anyhow::Result<Self> {
        let cluster = Cluster::builder().nodes(2).containers_per_node(1).build()?;
        // Plain L2 switching and bridging everywhere, as on a physical network.
        cluster
            .switch()
            .sysctl("net.bridge.bridge-nf-call-iptables", "0")?;
        let bridge_netfilter = match layout.containers {
            Containers::Bench => "0",
            Containers::DockerBridge => "1",
        };
        for node in cluster.nodes() {
            node.ns()
                .sysctl("net.bridge.bridge-nf-call-iptables", bridge_netfilter)?;
        }
        let dataplanes = match layout.wiring {
            Wiring::HostGw => {
                cluster.install_host_gw_routes()?;
                Vec::new()
            }
            Wiring::KernelVxlan => {
                wire_kernel_vxlan(&cluster)?;
                Vec::new()
            }
            Wiring::Shoal(backend, hook) => wire_shoal(&cluster, backend, hook)?,
        };
        for node in cluster.nodes() {
            flannel_vxlan::set_workload_mtu(node, layout.workload_mtu())?;
            if layout.nic {
                flannel_vxlan::emulate_physical_nic(&cluster, node)?;
            }
        }
        Ok(Self {
            dataplanes,
            cluster,
        })
    }

    /// First packets both ways (neighbours resolved, caches filled), then the workloads
    /// registered for direct delivery where shoal runs.
    fn warm_up(&mut self) -> anyhow::Result<()> {
        let server = self.server_ip()?.to_string();
        let _ = self
            .client()
            .output("ping", ["-c", "2", "-i", "0.2", &server]);
        for dataplane in &mut self.dataplanes {
            dataplane.sync_endpoints()?;
        }
        Ok(())
    }

    /// Every node's program runs, in one list (empty without shoal's dataplane).
    fn program_runs(&self) -> anyhow::Result<Vec<ProgramRuns>> {
        let mut runs = Vec::new();
        for dataplane in &self.dataplanes {
            runs.extend(dataplane.program_runs()?);
        }
        Ok(runs)
    }

    fn client(&self) -> &Namespace {
        self.cluster.node(0).container(0).ns()
    }

    fn server(&self) -> &Namespace {
        self.cluster.node(1).container(0).ns()
    }

    fn server_ip(&self) -> anyhow::Result<Ipv4Addr> {
        self.cluster
            .node(1)
            .container(0)
            .ip()
            .context("server container has no address")
    }
}

fn wire_kernel_vxlan(cluster: &Cluster) -> anyhow::Result<()> {
    let leases = cluster
        .nodes()
        .iter()
        .map(flannel_vxlan::create_device)
        .collect::<Result<Vec<_>, _>>()?;
    for node in cluster.nodes() {
        for (index, lease) in leases.iter().enumerate() {
            if index != node.index() {
                flannel_vxlan::add_peer(node, lease)?;
            }
        }
    }
    Ok(())
}

fn wire_shoal(
    cluster: &Cluster,
    backend: Backend,
    hook: DecapHook,
) -> anyhow::Result<Vec<NodeDataplane>> {
    let mut dataplanes = cluster
        .nodes()
        .iter()
        .map(|node| NodeDataplane::attach(cluster, node, hook))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let macs: Vec<MacAddr> = dataplanes.iter().map(NodeDataplane::vtep_mac).collect();
    for (index, dataplane) in dataplanes.iter_mut().enumerate() {
        for peer in cluster.nodes().iter().filter(|peer| peer.index() != index) {
            dataplane.set_route(
                peer,
                RouteTarget {
                    underlay_ip: peer.underlay_ip(),
                    vtep_mac: macs[peer.index()],
                    backend,
                },
            )?;
        }
    }
    Ok(dataplanes)
}

/// A server process in a namespace, killed on drop.
struct Server(Child);

impl Server {
    fn start(ns: &Namespace, program: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut cmd = ns.command(program);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        let child = ns.spawn(&mut cmd)?;
        std::thread::sleep(Duration::from_millis(400));
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the iperf3 client; its JSON report and the share of samples (every 100 ms) in which it
/// ran on the same CPU as `server` (the server process's id).
fn iperf3_client(
    ns: &Namespace,
    args: &[&str],
    server: u32,
) -> anyhow::Result<(serde_json::Value, f64)> {
    let mut cmd = ns.command("iperf3");
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = ns.spawn(&mut cmd)?;
    let mut stdout = child.stdout.take().context("iperf3 stdout")?;
    // Read while sampling, so a long report cannot fill the pipe and stall the client.
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut text).map(|_| text)
    });
    let (mut samples, mut same) = (0u32, 0u32);
    while child.try_wait()?.is_none() {
        if let (Some(a), Some(b)) = (cpu_of(child.id()), cpu_of(server)) {
            samples += 1;
            same += u32::from(a == b);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("iperf3 reader panicked"))?
        .context("reading iperf3's report")?;
    let json: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("iperf3 {args:?} printed no JSON"))?;
    if let Some(error) = json.get("error") {
        bail!("iperf3 {args:?}: {error}");
    }
    Ok((json, f64::from(same) / f64::from(samples.max(1))))
}

/// The CPU process `pid` last ran on (field 39 of `/proc/<pid>/stat`), if it still exists.
fn cpu_of(pid: u32) -> Option<u32> {
    let stat = crate::leases::proc_stat(pid)?;
    crate::leases::stat_field(&stat, 39)?.parse().ok()
}

const PORT: &str = "5201";

/// What one iperf3 run measured.
struct TcpRun {
    gbps: f64,
    /// Client and server CPU nanoseconds per KB received.
    cpu_ns_per_kb: f64,
    /// Share of samples with client and server on the same CPU.
    same_cpu: f64,
}

/// Single-stream TCP; `pinned`: client on CPU 0, server on CPU 1.
fn measure_tcp(bed: &Testbed, pinned: bool) -> anyhow::Result<TcpRun> {
    let server = Server::start(bed.server(), "iperf3", &["-s", "-1", "-p", PORT])?;
    let ip = bed.server_ip()?.to_string();
    let seconds = SECONDS.to_string();
    let mut args = vec!["-c", &ip, "-p", PORT, "-t", &seconds, "-J"];
    if pinned {
        args.extend(["-A", "0,1"]);
    }
    let (json, same_cpu) = iperf3_client(bed.client(), &args, server.0.id())?;
    let received = &json["end"]["sum_received"];
    let number = |value: &serde_json::Value, what: &str| {
        value
            .as_f64()
            .with_context(|| format!("iperf3 reported no {what}"))
    };
    let bps = number(&received["bits_per_second"], "received rate")?;
    let bytes = number(&received["bytes"], "received bytes")?;
    let seconds = number(&received["seconds"], "test duration")?;
    // Each side's user + system time as a percentage of the test's wall-clock time.
    let cpu = &json["end"]["cpu_utilization_percent"];
    let cpu_percent =
        number(&cpu["host_total"], "client CPU")? + number(&cpu["remote_total"], "server CPU")?;
    let cpu_ns = cpu_percent / 100.0 * seconds * 1e9;
    Ok(TcpRun {
        gbps: bps / 1e9,
        cpu_ns_per_kb: cpu_ns / (bytes.max(1.0) / 1024.0),
        same_cpu,
    })
}

/// Machine-wide softirq time in seconds (from /proc/stat).
fn softirq_seconds() -> anyhow::Result<f64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let softirq: f64 = line
        .split_whitespace()
        .nth(7)
        .context("no softirq column in /proc/stat")?
        .parse()
        .context("softirq column")?;
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(softirq / ticks)
}

/// User + system CPU seconds of the calling thread.
fn thread_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills a plain C struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to our struct.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

const FLOOD_PORT: u16 = 9000;
const FLOOD_BATCH: usize = 64;
const FLOOD_PAYLOAD: usize = 64;

/// Sends 64-byte datagrams to `target` in `sendmmsg` batches until `deadline`, from the calling
/// thread's namespace. Returns the datagrams sent and the thread's CPU seconds.
fn flood(target: SocketAddrV4, deadline: Instant) -> anyhow::Result<(u64, f64)> {
    let cpu_before = thread_cpu_seconds();
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding the flood socket")?;
    socket
        .connect(target)
        .context("connecting the flood socket")?;
    let payload = [0x5au8; FLOOD_PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: mmsghdr is a plain C struct; all-zero is valid (no name, no control data).
    let mut messages: [libc::mmsghdr; FLOOD_BATCH] = unsafe { std::mem::zeroed() };
    for message in &mut messages {
        message.msg_hdr.msg_iov = &mut iov;
        message.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0u64;
    while Instant::now() < deadline {
        // SAFETY: every message points at `iov`, which points at `payload`; all outlive the call.
        let rc = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                FLOOD_BATCH as u32,
                0,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED) => continue,
                _ => return Err(err).context("sendmmsg"),
            }
        }
        sent += rc as u64;
    }
    Ok((sent, thread_cpu_seconds() - cpu_before))
}

/// Datagrams that reached the UDP layer of the calling thread's namespace: delivered to a socket
/// or dropped there for a full receive buffer (`/proc/net/snmp`).
fn udp_datagrams_arrived() -> anyhow::Result<u64> {
    let snmp = fs::read_to_string("/proc/thread-self/net/snmp").context("reading snmp")?;
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let field = |wanted: &str| -> anyhow::Result<u64> {
        let index = names
            .split_whitespace()
            .position(|name| name == wanted)
            .with_context(|| format!("no Udp {wanted}"))?;
        values
            .split_whitespace()
            .nth(index)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("Udp {wanted} value"))
    };
    Ok(field("InDatagrams")? + field("RcvbufErrors")?)
}

/// 64-byte UDP from two saturating senders (one per CPU) into a bound, unread socket in the
/// server container: datagrams per second that reached the container's UDP layer, and CPU
/// nanoseconds (senders' user+system, machine softirq) per such datagram.
fn measure_udp64(bed: &Testbed) -> anyhow::Result<(f64, f64)> {
    let receiver = NsWorker::spawn(bed.server())?;
    let _socket = receiver
        .run(|| UdpSocket::bind(("0.0.0.0", FLOOD_PORT)))
        .context("binding the flood receiver")?;
    let senders = [
        NsWorker::spawn(bed.client())?,
        NsWorker::spawn(bed.client())?,
    ];
    let target = SocketAddrV4::new(bed.server_ip()?, FLOOD_PORT);
    let arrived_before = receiver.run(udp_datagrams_arrived)?;
    let softirq_before = softirq_seconds()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(u64::from(SECONDS));
    let results: Vec<anyhow::Result<(u64, f64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = senders
            .iter()
            .map(|sender| scope.spawn(move || sender.run(move || flood(target, deadline))))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| bail!("a sender panicked")))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    // Let queued packets land before counting.
    std::thread::sleep(Duration::from_millis(100));
    let arrived = receiver.run(udp_datagrams_arrived)? - arrived_before;
    let mut cpu = softirq_seconds()? - softirq_before;
    for result in results {
        cpu += result?.1;
    }
    let arrived = arrived.max(1) as f64;
    Ok((arrived / elapsed, cpu * 1e9 / arrived))
}

/// sockperf UDP ping-pong with 64-byte messages: one-way latency p50 and p99 in microseconds.
fn measure_latency(bed: &Testbed) -> anyhow::Result<(f64, f64)> {
    let ip = bed.server_ip()?.to_string();
    // Pinned as iperf3 is (client CPU 0, server CPU 1).
    let _server = Server::start(
        bed.server(),
        "taskset",
        &["-c", "1", "sockperf", "sr", "-i", &ip, "-p", "11111"],
    )?;
    let seconds = SECONDS.to_string();
    let args = [
        "-c", "0", "sockperf", "pp", "-i", &ip, "-p", "11111", "-m", "64", "-t", &seconds,
    ];
    // On a busy machine the server may not listen yet after Server::start's wait: the client
    // then hears nothing, and is run again.
    let mut text = String::new();
    for _attempt in 0..3 {
        let output = bed.client().output("taskset", args)?;
        text = String::from_utf8_lossy(&output.stdout).to_string();
        if !text.contains("No messages were received") {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let percentile = |which: &str| -> anyhow::Result<f64> {
        text.lines()
            .find(|line| line.contains(&format!("percentile {which}")))
            .and_then(|line| line.rsplit('=').next())
            .and_then(|value| value.trim().parse().ok())
            .with_context(|| format!("sockperf printed no {which} percentile: {text}"))
    };
    Ok((percentile("50.000")?, percentile("99.000")?))
}

fn measure(layout: Layout) -> anyhow::Result<Sample> {
    let name = layout.name;
    let mut bed = Testbed::build(layout).with_context(|| format!("building {name}"))?;
    bed.warm_up()
        .with_context(|| format!("warming up {name}"))?;
    let pinned = measure_tcp(&bed, true).with_context(|| format!("TCP on {name}"))?;
    let runs_before = bed.program_runs()?;
    let started = Instant::now();
    let unpinned = measure_tcp(&bed, false).with_context(|| format!("unpinned TCP on {name}"))?;
    let programs_unpinned_tcp = ProgramCost::between(
        &runs_before,
        &bed.program_runs()?,
        started.elapsed().as_secs_f64(),
    );
    let (udp64_pps, cpu_ns_per_packet) =
        measure_udp64(&bed).with_context(|| format!("UDP on {name}"))?;
    let (latency_p50_us, latency_p99_us) =
        measure_latency(&bed).with_context(|| format!("latency on {name}"))?;
    Ok(Sample {
        tcp_gbps: pinned.gbps,
        tcp_unpinned_gbps: unpinned.gbps,
        tcp_cpu_ns_per_kb: pinned.cpu_ns_per_kb,
        tcp_unpinned_cpu_ns_per_kb: unpinned.cpu_ns_per_kb,
        tcp_unpinned_same_cpu: unpinned.same_cpu,
        udp64_pps,
        latency_p50_us,
        latency_p99_us,
        cpu_ns_per_packet,
        programs_unpinned_tcp,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn median_sample(rounds: &[Sample]) -> Sample {
    let of = |metric: fn(&Sample) -> f64| median(rounds.iter().map(metric).collect());
    Sample {
        tcp_gbps: of(|s| s.tcp_gbps),
        tcp_unpinned_gbps: of(|s| s.tcp_unpinned_gbps),
        tcp_cpu_ns_per_kb: of(|s| s.tcp_cpu_ns_per_kb),
        tcp_unpinned_cpu_ns_per_kb: of(|s| s.tcp_unpinned_cpu_ns_per_kb),
        tcp_unpinned_same_cpu: of(|s| s.tcp_unpinned_same_cpu),
        udp64_pps: of(|s| s.udp64_pps),
        latency_p50_us: of(|s| s.latency_p50_us),
        latency_p99_us: of(|s| s.latency_p99_us),
        cpu_ns_per_packet: of(|s| s.cpu_ns_per_packet),
        programs_unpinned_tcp: median_program_costs(rounds),
    }
}

/// Per program, the median over rounds of its runs per second and nanoseconds per run.
fn median_program_costs(rounds: &[Sample]) -> Vec<ProgramCost> {
    let mut names: Vec<&str> = Vec::new();
    for sample in rounds {
        for cost in &sample.programs_unpinned_tcp {
            if !names.contains(&cost.program.as_str()) {
                names.push(&cost.program);
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            let of = |metric: fn(&ProgramCost) -> f64| {
                median(
                    rounds
                        .iter()
                        .flat_map(|sample| &sample.programs_unpinned_tcp)
                        .filter(|cost| cost.program == name)
                        .map(metric)
                        .collect(),
                )
            };
            ProgramCost {
                program: name.to_string(),
                runs_per_second: of(|c| c.runs_per_second),
                ns_per_run: of(|c| c.ns_per_run),
            }
        })
        .collect()
}

fn ratio(what: &str, value: f64, target: Option<(&str, bool)>) -> Ratio {
    Ratio {
        what: what.to_string(),
        value,
        target: target.map(|(text, _)| text.to_string()),
        met: target.map(|(_, met)| met),
        rounds: Vec::new(),
    }
}

/// The median over rounds of `a`'s metric over `b`'s in the same round. Rounds interleave the
/// configurations (every other one reversed), so a round's two figures were taken minutes
/// apart under the same background load; the ratio of the column medians can pair one
/// configuration's good round with the other's bad one.
fn per_round_ratio(
    what: &str,
    a: &ConfigResult,
    b: &ConfigResult,
    metric: fn(&Sample) -> f64,
) -> Ratio {
    let rounds: Vec<f64> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .map(|(x, y)| metric(x) / metric(y))
        .collect();
    Ratio {
        value: median(rounds.clone()),
        rounds,
        ..ratio(what, 0.0, None)
    }
}

/// The issue's targets (shoal-vxlan against kernel-vxlan and host-gw on the veth underlay),
/// then the comparisons that explain them: the same on the NIC emulation, XDP against TC.
fn ratios(configs: &[ConfigResult]) -> Vec<Ratio> {
    let find = |name: &str| {
        configs
            .iter()
            .find(|config| config.name == name)
            .map(|config| &config.median)
    };
    let mut list = Vec::new();
    if let (Some(s), Some(k), Some(h)) =
        (find("shoal-vxlan"), find("kernel-vxlan"), find("host-gw"))
    {
        list.extend(target_ratios("", s, k, h));
    }
    if let (Some(s), Some(k), Some(h)) = (
        find("nic:shoal-vxlan-xdp"),
        find("nic:kernel-vxlan"),
        find("nic:host-gw"),
    ) {
        list.extend(target_ratios("nic: ", s, k, h));
    }
    list.extend(bridge_ratios(&find));
    list.extend(bridge_per_round_ratios(configs));
    let pairs = [
        ("shoal-vxlan-xdp", "kernel-vxlan"),
        ("shoal-vxlan-xdp", "shoal-vxlan"),
        ("shoal-udp", "kernel-vxlan"),
        ("nic:shoal-vxlan-tc", "nic:kernel-vxlan"),
        ("nic:shoal-vxlan-xdp", "nic:shoal-vxlan-tc"),
    ];
    for (a, b) in pairs {
        if let (Some(x), Some(y)) = (find(a), find(b)) {
            list.push(ratio(
                &format!("{a} / {b} TCP throughput"),
                x.tcp_gbps / y.tcp_gbps,
                None,
            ));
            list.push(ratio(
                &format!("{a} / {b} 64-byte UDP pps"),
                x.udp64_pps / y.udp64_pps,
                None,
            ));
        }
    }
    list
}

/// Containers on a Docker-style bridge: shoal against host-gw (target: at least even, pinned and
/// unpinned) and against kernel VXLAN.
fn bridge_ratios<'a>(find: &dyn Fn(&str) -> Option<&'a Sample>) -> Vec<Ratio> {
    let (Some(s), Some(h)) = (find("bridge:shoal-vxlan"), find("bridge:host-gw")) else {
        return Vec::new();
    };
    let pinned = s.tcp_gbps / h.tcp_gbps;
    let unpinned = s.tcp_unpinned_gbps / h.tcp_unpinned_gbps;
    let mut list = vec![
        ratio(
            "bridge: shoal-vxlan / host-gw TCP throughput (pinned)",
            pinned,
            Some((">= 1.0", pinned >= 1.0)),
        ),
        ratio(
            "bridge: shoal-vxlan / host-gw TCP throughput (unpinned)",
            unpinned,
            Some((">= 1.0", unpinned >= 1.0)),
        ),
    ];
    // A run of only the two target configurations has no kernel VXLAN to compare with.
    if let Some(k) = find("bridge:kernel-vxlan") {
        list.extend([
            ratio(
                "bridge: shoal-vxlan / kernel-vxlan TCP throughput (pinned)",
                s.tcp_gbps / k.tcp_gbps,
                None,
            ),
            ratio(
                "bridge: shoal-vxlan / kernel-vxlan TCP throughput (unpinned)",
                s.tcp_unpinned_gbps / k.tcp_unpinned_gbps,
                None,
            ),
        ]);
    }
    list.extend([
        ratio(
            "bridge: shoal-vxlan / host-gw TCP CPU per KB (pinned)",
            s.tcp_cpu_ns_per_kb / h.tcp_cpu_ns_per_kb,
            None,
        ),
        ratio(
            "bridge: shoal-vxlan / host-gw TCP CPU per KB (unpinned)",
            s.tcp_unpinned_cpu_ns_per_kb / h.tcp_unpinned_cpu_ns_per_kb,
            None,
        ),
        ratio(
            "bridge: shoal-vxlan / host-gw 64-byte UDP pps",
            s.udp64_pps / h.udp64_pps,
            None,
        ),
        ratio(
            "bridge: shoal-vxlan / host-gw latency p50",
            s.latency_p50_us / h.latency_p50_us,
            None,
        ),
    ]);
    list
}

/// The bridge target's TCP ratios again, as the median of per-round ratios (beside the ratio of
/// medians above, which stays the target's figure).
fn bridge_per_round_ratios(configs: &[ConfigResult]) -> Vec<Ratio> {
    let find = |name: &str| configs.iter().find(|config| config.name == name);
    let (Some(s), Some(h)) = (find("bridge:shoal-vxlan"), find("bridge:host-gw")) else {
        return Vec::new();
    };
    vec![
        per_round_ratio(
            "bridge: shoal-vxlan / host-gw TCP (pinned), median of round ratios",
            s,
            h,
            |sample| sample.tcp_gbps,
        ),
        per_round_ratio(
            "bridge: shoal-vxlan / host-gw TCP (unpinned), median of round ratios",
            s,
            h,
            |sample| sample.tcp_unpinned_gbps,
        ),
    ]
}

/// The four targets of issue #3 for one underlay (`prefix` names it), plus CPU per packet.
fn target_ratios(prefix: &str, s: &Sample, k: &Sample, h: &Sample) -> Vec<Ratio> {
    let tcp_vs_kernel = s.tcp_gbps / k.tcp_gbps;
    let pps_vs_kernel = s.udp64_pps / k.udp64_pps;
    let p50_vs_kernel = s.latency_p50_us / k.latency_p50_us;
    let tcp_vs_host_gw = s.tcp_gbps / h.tcp_gbps;
    vec![
        ratio(
            &format!("{prefix}shoal-vxlan / kernel-vxlan TCP throughput"),
            tcp_vs_kernel,
            Some((">= 1.0", tcp_vs_kernel >= 1.0)),
        ),
        ratio(
            &format!("{prefix}shoal-vxlan / kernel-vxlan 64-byte UDP pps"),
            pps_vs_kernel,
            Some((">= 1.5", pps_vs_kernel >= 1.5)),
        ),
        ratio(
            &format!("{prefix}shoal-vxlan / kernel-vxlan latency p50"),
            p50_vs_kernel,
            Some(("<= 1.0", p50_vs_kernel <= 1.0)),
        ),
        ratio(
            &format!("{prefix}shoal-vxlan / host-gw TCP throughput"),
            tcp_vs_host_gw,
            Some((">= 0.9", tcp_vs_host_gw >= 0.9)),
        ),
        ratio(
            &format!("{prefix}shoal-vxlan / kernel-vxlan CPU per packet"),
            s.cpu_ns_per_packet / k.cpu_ns_per_packet,
            None,
        ),
    ]
}

/// The results table: each configuration's medians, every round's TCP rates and latencies,
/// then the ratios against the targets.
fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<20} {:>10} {:>10} {:>14} {:>10} {:>10} {:>12} {:>11} {:>11}",
        "config",
        "TCP Gbit/s",
        "unpinned",
        "UDP64 pkt/s",
        "p50 us",
        "p99 us",
        "CPU ns/pkt",
        "TCP ns/KB",
        "unpinned"
    );
    for config in &report.configs {
        let m = &config.median;
        let _ = writeln!(
            out,
            "{:<20} {:>10.2} {:>10.2} {:>14.0} {:>10.1} {:>10.1} {:>12.0} {:>11.0} {:>11.0}",
            config.name,
            m.tcp_gbps,
            m.tcp_unpinned_gbps,
            m.udp64_pps,
            m.latency_p50_us,
            m.latency_p99_us,
            m.cpu_ns_per_packet,
            m.tcp_cpu_ns_per_kb,
            m.tcp_unpinned_cpu_ns_per_kb
        );
    }
    let _ = writeln!(
        out,
        "\nevery round: TCP Gbit/s pinned / unpinned, TCP CPU ns/KB pinned / unpinned, \
         unpinned client and server on one CPU (% of samples), p50 us"
    );
    for config in &report.configs {
        let rounds: Vec<String> = config
            .rounds
            .iter()
            .map(|s| {
                format!(
                    "{:.2}/{:.2} {:.0}/{:.0} {:.0}% {:.1}",
                    s.tcp_gbps,
                    s.tcp_unpinned_gbps,
                    s.tcp_cpu_ns_per_kb,
                    s.tcp_unpinned_cpu_ns_per_kb,
                    s.tcp_unpinned_same_cpu * 100.0,
                    s.latency_p50_us
                )
            })
            .collect();
        let _ = writeln!(out, "{:<20} {}", config.name, rounds.join(" | "));
    }
    let with_programs: Vec<&ConfigResult> = report
        .configs
        .iter()
        .filter(|config| !config.median.programs_unpinned_tcp.is_empty())
        .collect();
    if !with_programs.is_empty() {
        let _ = writeln!(
            out,
            "\nshoal's programs during unpinned TCP (both nodes; median of rounds):"
        );
        for config in with_programs {
            for cost in &config.median.programs_unpinned_tcp {
                let _ = writeln!(
                    out,
                    "{:<20} {:<18} {:>10.0} runs/s {:>7.0} ns/run",
                    config.name, cost.program, cost.runs_per_second, cost.ns_per_run
                );
            }
        }
    }
    out.push('\n');
    for ratio in &report.ratios {
        let verdict = match (ratio.met, &ratio.target) {
            (Some(true), Some(target)) => format!("target {target}: met"),
            (Some(false), Some(target)) => format!("target {target}: NOT met"),
            _ => String::new(),
        };
        let _ = writeln!(out, "{:<70} {:>6.2}  {verdict}", ratio.what, ratio.value);
        if !ratio.rounds.is_empty() {
            let rounds: Vec<String> = ratio.rounds.iter().map(|r| format!("{r:.2}")).collect();
            let _ = writeln!(out, "{:<70} {}", "    per round", rounds.join(", "));
        }
    }
    out
}

const CHART: &str = r##"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
report = json.load(open(sys.argv[1]))
names = [c["name"] for c in report["configs"]]
metrics = [
    ("tcp_gbps", "TCP single stream, pinned (Gbit/s)"),
    ("tcp_unpinned_gbps", "TCP single stream, unpinned (Gbit/s)"),
    ("udp64_pps", "64-byte UDP delivered (pkt/s)"),
    ("latency_p50_us", "UDP ping-pong p50 (us, one way)"),
    ("latency_p99_us", "UDP ping-pong p99 (us, one way)"),
    ("cpu_ns_per_packet", "CPU per 64-byte packet (ns)"),
    ("tcp_unpinned_cpu_ns_per_kb", "TCP unpinned, iperf3 CPU per KB (ns)"),
]
fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 5))
colors = ["#888888", "#d62728", "#1f77b4", "#6baed6", "#2ca02c",
          "#bbbbbb", "#ff9896", "#9ecae1", "#c6dbef",
          "#555555", "#a50f15", "#08519c"]
for ax, (key, title) in zip(axes, metrics):
    values = [c["median"][key] for c in report["configs"]]
    ax.bar(names, values, color=colors[: len(names)])
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
fig.suptitle("shoal net benchmark (median of rounds; " + report["machine"] + ")", fontsize=9)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
"##;

fn write_outputs(report: &Report) -> anyhow::Result<()> {
    crate::results::write_outputs("net", report, CHART)
}

/// Runs the suite; `rounds` interleaved rounds over every configuration (default 3).
pub fn run(rounds: usize) -> anyhow::Result<String> {
    let rounds = rounds.max(1);
    let layouts = layouts_from_env();
    // The programs' run counts and times, reported per configuration (two clock reads per run
    // of every BPF program, the same in every configuration that has programs).
    let _program_stats = shoal_dataplane::enable_program_stats()
        .map_err(anyhow::Error::from)
        .inspect_err(|err| eprintln!("no BPF run statistics: {err:#}"))
        .ok();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); layouts.len()];
    for round in 0..rounds {
        // Every other round runs the configurations in reverse, so none always runs first or
        // last (the machine's load drifts within a round).
        let mut order: Vec<usize> = (0..layouts.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let layout = layouts[index];
            let sample = measure(layout)?;
            eprintln!(
                "round {round} {:<20} {sample:?} load {:.2}",
                layout.name,
                load_average()
            );
            samples[index].push(sample);
        }
    }
    let configs: Vec<ConfigResult> = layouts
        .iter()
        .zip(samples)
        .map(|(layout, rounds)| ConfigResult {
            name: layout.name.to_string(),
            median: median_sample(&rounds),
            rounds,
        })
        .collect();
    let report = Report {
        machine: crate::results::host(),
        seconds_per_test: SECONDS,
        ratios: ratios(&configs),
        configs,
    };
    write_outputs(&report)?;
    Ok(table(&report))
}

/// The machine's 1-minute load average (0 where /proc/loadavg cannot be read).
fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Whether `SHOAL_NET_BENCH_ONLY` picks some configurations rather than all.
pub fn is_subset() -> bool {
    layouts_from_env().len() < Layout::ALL.len()
}

/// The configurations named in `SHOAL_NET_BENCH_ONLY` (comma-separated, for profiling and quick
/// comparisons), or all of them.
fn layouts_from_env() -> Vec<Layout> {
    let Ok(only) = std::env::var("SHOAL_NET_BENCH_ONLY") else {
        return Layout::ALL.to_vec();
    };
    let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
    Layout::ALL
        .into_iter()
        .filter(|layout| wanted.contains(&layout.name))
        .collect()
}

/// Rounds from `SHOAL_NET_BENCH_ROUNDS` (default 3).
pub fn rounds_from_env() -> usize {
    std::env::var("SHOAL_NET_BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, unpinned: &[f64]) -> ConfigResult {
        let rounds: Vec<Sample> = unpinned
            .iter()
            .map(|&gbps| Sample {
                tcp_unpinned_gbps: gbps,
                ..Sample::default()
            })
            .collect();
        ConfigResult {
            name: name.to_string(),
            median: median_sample(&rounds),
            rounds,
        }
    }

    #[test]
    fn per_round_ratio_pairs_each_round_and_takes_the_median() {
        // One bad round of shoal's (12.94) beside host-gw's steady ones: the ratio of the column
        // medians is below 1, while shoal is even or ahead in two rounds of three.
        let shoal = config("bridge:shoal-vxlan", &[12.94, 16.10, 15.92]);
        let host_gw = config("bridge:host-gw", &[16.10, 16.12, 16.19]);
        let ratio = per_round_ratio("unpinned", &shoal, &host_gw, |s| s.tcp_unpinned_gbps);
        let rounds: Vec<String> = ratio.rounds.iter().map(|r| format!("{r:.3}")).collect();
        assert_eq!(rounds, ["0.804", "0.999", "0.983"]);
        assert!((ratio.value - 15.92 / 16.19).abs() < 1e-12);
        let of_medians = shoal.median.tcp_unpinned_gbps / host_gw.median.tcp_unpinned_gbps;
        assert!((of_medians - 15.92 / 16.12).abs() < 1e-12);
    }

    #[test]
    fn bridge_ratios_need_no_kernel_vxlan() {
        let configs = [
            config("bridge:host-gw", &[10.0]),
            config("bridge:shoal-vxlan", &[11.0]),
        ];
        let find = |name: &str| {
            configs
                .iter()
                .find(|config| config.name == name)
                .map(|config| &config.median)
        };
        let list = bridge_ratios(&find);
        assert_eq!(
            list[1].what,
            "bridge: shoal-vxlan / host-gw TCP throughput (unpinned)"
        );
        assert!((list[1].value - 1.1).abs() < 1e-12);
        assert!(!list.iter().any(|ratio| ratio.what.contains("kernel-vxlan")));
    }
}
