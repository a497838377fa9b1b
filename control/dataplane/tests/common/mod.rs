//! Shared setup of the dataplane integration tests: a dataplane running inside a harness node.
#![allow(dead_code)]

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
};

use ipnetwork::Ipv4Network;
use shoal_dataplane::{
    Backend, Config, Counter, Dataplane, DecapHook, Endpoint, MacAddr, ProgramRuns, RouteTarget,
    Stats, TcAttach,
};
use shoal_harness::{Cluster, Node, NsWorker, Process};

/// Where test instances pin: a directory of their own, removed by `detach`.
pub const TEST_PIN_ROOT: &str = "/sys/fs/bpf/shoal-tests";

/// A dataplane attached to a node's `eth0`, driven from a thread inside the node.
pub struct NodeDataplane {
    worker: NsWorker,
    dataplane: Option<Dataplane>,
    pub config: Config,
}

impl NodeDataplane {
    /// Attaches shoal's dataplane to `node` with a pin directory unique to this test run.
    pub fn attach(cluster: &Cluster, node: &Node, decap_hook: DecapHook) -> Self {
        Self::attach_with(cluster, node, decap_hook, TcAttach::Auto)
    }

    /// The same, with the TC programs attached as `tc_attach` says.
    pub fn attach_with(
        cluster: &Cluster,
        node: &Node,
        decap_hook: DecapHook,
        tc_attach: TcAttach,
    ) -> Self {
        let worker = NsWorker::spawn(node.ns()).expect("entering the node");
        let subnet = node.container_subnet().expect("node has a subnet");
        let mut config = Config::new("eth0", node.underlay_ip(), subnet);
        config.pin_root = TEST_PIN_ROOT.into();
        config.instance = format!("{}-{}", cluster.run_id(), node.name());
        config.decap_hook = decap_hook;
        config.tc_attach = tc_attach;
        config.route_source = Some(Ipv4Addr::from(u32::from(subnet.network()) + 1));
        let mut this = Self {
            worker,
            dataplane: None,
            config,
        };
        this.reattach();
        this
    }

    /// Loads again as a restarted process would (pinned maps and links taken over).
    pub fn reattach(&mut self) {
        let config = self.config.clone();
        let dataplane = self
            .worker
            .run(move || Dataplane::load_or_attach(config))
            .unwrap_or_else(|err| panic!("attaching the dataplane: {err}"));
        self.dataplane = Some(dataplane);
    }

    /// Drops the handle without detaching (what a crashing agent does).
    pub fn forget(&mut self) {
        self.dataplane = None;
    }

    pub fn vtep_mac(&self) -> MacAddr {
        self.dp().vtep_mac()
    }

    pub fn overlay_mtu(&self, backend: Backend) -> u32 {
        self.dp().overlay_mtu(backend)
    }

    pub fn set_route(&mut self, subnet: Ipv4Network, target: RouteTarget) {
        let mut dataplane = self.dataplane.take().expect("attached");
        let (dataplane, result) = self.worker.run(move || {
            let result = dataplane.set_route(subnet, target);
            (dataplane, result)
        });
        self.dataplane = Some(dataplane);
        result.unwrap_or_else(|err| panic!("setting route {subnet}: {err}"));
    }

    pub fn remove_route(&mut self, subnet: Ipv4Network) {
        let mut dataplane = self.dataplane.take().expect("attached");
        let (dataplane, result) = self.worker.run(move || {
            let result = dataplane.remove_route(subnet);
            (dataplane, result)
        });
        self.dataplane = Some(dataplane);
        result.unwrap_or_else(|err| panic!("removing route {subnet}: {err}"));
    }

    /// Registers the node's workloads for direct delivery; returns how many.
    pub fn sync_endpoints(&mut self) -> usize {
        let mut dataplane = self.dataplane.take().expect("attached");
        let (dataplane, result) = self.worker.run(move || {
            let result = dataplane.sync_endpoints();
            (dataplane, result)
        });
        self.dataplane = Some(dataplane);
        result.unwrap_or_else(|err| panic!("syncing endpoints: {err}"))
    }

    /// Takes one workload's registration out of the endpoints map.
    pub fn remove_endpoint(&mut self, address: std::net::Ipv4Addr) {
        let mut dataplane = self.dataplane.take().expect("attached");
        let (dataplane, result) = self.worker.run(move || {
            let result = dataplane.remove_endpoint(address);
            (dataplane, result)
        });
        self.dataplane = Some(dataplane);
        result.unwrap_or_else(|err| panic!("removing endpoint {address}: {err}"));
    }

    /// The same through the pinned map only, as a task beside the handle's owner does.
    pub fn sync_pinned_endpoints(&self) -> usize {
        let (pin_dir, subnet) = (self.config.pin_dir(), self.config.local_subnet);
        self.worker
            .run(move || shoal_dataplane::sync_pinned_endpoints(&pin_dir, subnet))
            .unwrap_or_else(|err| panic!("syncing pinned endpoints: {err}"))
    }

    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.dp().endpoints().expect("reading endpoints")
    }

    pub fn stats(&self) -> Stats {
        self.dp().stats().expect("reading counters")
    }

    pub fn count(&self, counter: Counter) -> u64 {
        self.stats().get(counter)
    }

    /// Runs of the named program so far (counted while BPF run statistics are on).
    pub fn program_runs(&self, program: &str) -> ProgramRuns {
        self.dp()
            .program_runs()
            .expect("reading program runs")
            .into_iter()
            .find(|runs| runs.program == program)
            .unwrap_or_else(|| panic!("no program {program} loaded"))
    }

    fn dp(&self) -> &Dataplane {
        self.dataplane.as_ref().expect("attached")
    }
}

impl Drop for NodeDataplane {
    fn drop(&mut self) {
        if let Some(dataplane) = self.dataplane.take() {
            let result = self.worker.run(move || dataplane.detach());
            if let Err(err) = result {
                eprintln!("detaching the dataplane: {err}");
            }
        }
    }
}

/// Routes every other node's subnet through `dataplanes[i]` with `backend`.
pub fn mesh(cluster: &Cluster, dataplanes: &mut [NodeDataplane], backend: Backend) {
    let macs: Vec<MacAddr> = dataplanes.iter().map(NodeDataplane::vtep_mac).collect();
    for (index, dataplane) in dataplanes.iter_mut().enumerate() {
        for (peer_index, peer) in cluster.nodes().iter().enumerate() {
            if peer_index == index {
                continue;
            }
            dataplane.set_route(
                peer.container_subnet().expect("subnet"),
                RouteTarget {
                    underlay_ip: peer.underlay_ip(),
                    vtep_mac: macs[peer_index],
                    backend,
                },
            );
        }
    }
}

/// A two-node cluster with one container per node.
pub fn two_nodes() -> Cluster {
    Cluster::builder()
        .nodes(2)
        .containers_per_node(1)
        .build()
        .expect("building the cluster")
}

/// Pings `to` from `from` (a container or node namespace), `count` packets of `size` bytes.
pub fn ping(ns: &shoal_harness::Namespace, to: Ipv4Addr, size: usize, count: u32) -> bool {
    let output = ns
        .output(
            "ping",
            [
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                "-s",
                &size.to_string(),
                "-M",
                "do",
                &to.to_string(),
            ],
        )
        .expect("running ping");
    output.status.success()
}

static PORT: AtomicU32 = AtomicU32::new(0);

/// A TCP/UDP port for test servers, distinct per test in this process.
pub fn test_port() -> u16 {
    20000 + (std::process::id() % 1000) as u16 * 10 + PORT.fetch_add(1, Ordering::Relaxed) as u16
}

/// An `iperf3 -s -1` in a namespace, stopped on drop.
pub struct Iperf3Server {
    _process: Process,
    pub port: u16,
}

impl Iperf3Server {
    pub fn start(ns: &shoal_harness::Namespace) -> Self {
        let port = test_port();
        let mut cmd = ns.command("iperf3");
        cmd.args(["-s", "-1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = ns.spawn(&mut cmd).expect("starting iperf3 server");
        std::thread::sleep(std::time::Duration::from_millis(300));
        Self {
            _process: Process::adopt("iperf3 server", child),
            port,
        }
    }
}

/// Result of one iperf3 client run.
#[derive(Debug)]
pub struct Iperf3Result {
    pub bits_per_second: f64,
    pub bytes: u64,
    /// UDP only.
    pub lost_percent: f64,
    pub json: serde_json::Value,
}

/// Runs an iperf3 client from `ns` to `server`; panics with iperf3's error on failure.
pub fn iperf3(
    ns: &shoal_harness::Namespace,
    server: Ipv4Addr,
    port: u16,
    extra: &[&str],
) -> Iperf3Result {
    let mut args = vec![
        "-c".to_string(),
        server.to_string(),
        "-p".to_string(),
        port.to_string(),
        "-J".to_string(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let output = ns.output("iperf3", &args).expect("running iperf3");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("iperf3 printed no JSON ({err}): {output:?}"));
    if let Some(error) = json.get("error") {
        panic!("iperf3 -c {server} {extra:?} failed: {error}");
    }
    let end = &json["end"];
    let received = if end.get("sum_received").is_some() {
        &end["sum_received"]
    } else {
        &end["sum"]
    };
    Iperf3Result {
        bits_per_second: received["bits_per_second"].as_f64().unwrap_or(0.0),
        bytes: received["bytes"].as_u64().unwrap_or(0),
        lost_percent: end["sum"]["lost_percent"].as_f64().unwrap_or(0.0),
        json,
    }
}

/// TCP for `seconds` from `client` to `server`, through a fresh server; returns bits/s.
pub fn tcp_transfer(
    client: &shoal_harness::Namespace,
    server_ns: &shoal_harness::Namespace,
    server_ip: Ipv4Addr,
    seconds: u32,
) -> Iperf3Result {
    let server = Iperf3Server::start(server_ns);
    iperf3(
        client,
        server_ip,
        server.port,
        &["-t", &seconds.to_string()],
    )
}

/// UDP at 20 Mbit/s for one second; returns the result (loss in `lost_percent`: datagrams the
/// client sent that never reached the server namespace's UDP layer).
///
/// iperf3's own loss figure also counts datagrams the server socket dropped for a full buffer
/// and those still in flight when the test ends, which a loaded machine makes common: neither
/// says anything about the dataplane.
pub fn udp_transfer(
    client: &shoal_harness::Namespace,
    server_ns: &shoal_harness::Namespace,
    server_ip: Ipv4Addr,
) -> Iperf3Result {
    let server = Iperf3Server::start(server_ns);
    let arrived_before = udp_arrivals(server_ns);
    let mut result = iperf3(
        client,
        server_ip,
        server.port,
        &["-u", "-b", "20M", "-t", "1", "-l", "1200"],
    );
    // Let the last datagrams land.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let arrived = udp_arrivals(server_ns).saturating_sub(arrived_before);
    let sent = result.json["end"]["sum"]["packets"].as_u64().unwrap_or(0);
    result.lost_percent = if sent == 0 {
        100.0
    } else {
        sent.saturating_sub(arrived) as f64 * 100.0 / sent as f64
    };
    result
}

/// UDP datagrams that reached the UDP layer of `ns`: delivered to a socket, or dropped there
/// for a full receive buffer.
pub fn udp_arrivals(ns: &shoal_harness::Namespace) -> u64 {
    let snmp = ns
        .exec("cat", ["/proc/net/snmp"])
        .expect("reading /proc/net/snmp");
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
    let (names, values) = (
        udp.next().expect("Udp names"),
        udp.next().expect("Udp values"),
    );
    let field = |wanted: &str| -> u64 {
        let index = names
            .split_whitespace()
            .position(|name| name == wanted)
            .unwrap_or_else(|| panic!("no Udp {wanted} in /proc/net/snmp"));
        values
            .split_whitespace()
            .nth(index)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no Udp {wanted} value"))
    };
    field("InDatagrams") + field("RcvbufErrors")
}

/// A packet capture with tcpdump on an interface of a namespace, into a temporary file.
pub struct Capture {
    tcpdump: Process,
    dir: tempfile::TempDir,
}

impl Capture {
    pub fn start(ns: &shoal_harness::Namespace, interface: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("capture.pcap");
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-i", interface, "-U", "-s", "256", "-w"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = ns.spawn(&mut cmd).expect("starting tcpdump");
        std::thread::sleep(std::time::Duration::from_millis(800));
        Self {
            tcpdump: Process::adopt("tcpdump", child),
            dir,
        }
    }

    /// Stops the capture and returns the path of the pcap file (valid while `self` lives).
    pub fn stop(&mut self) -> std::path::PathBuf {
        std::thread::sleep(std::time::Duration::from_millis(300));
        // SIGTERM lets tcpdump flush its buffer.
        self.tcpdump.stop();
        self.dir.path().join("capture.pcap")
    }

    /// Runs tshark on the capture with VXLAN decoding on 8472 and every checksum verified, and
    /// returns how many frames match `filter`.
    pub fn count(&self, filter: &str) -> usize {
        self.fields(filter, &["frame.number"]).lines().count()
    }

    /// tshark's `-T fields` output for the frames matching `filter`.
    pub fn fields(&self, filter: &str, fields: &[&str]) -> String {
        let file = self.dir.path().join("capture.pcap");
        let output = std::process::Command::new("tshark")
            .arg("-r")
            .arg(&file)
            .args([
                "-d",
                "udp.port==8472,vxlan",
                "-o",
                "ip.check_checksum:TRUE",
                "-o",
                "udp.check_checksum:TRUE",
                "-o",
                "tcp.check_checksum:TRUE",
                "-Y",
                filter,
                "-T",
                "fields",
            ])
            .args(fields.iter().flat_map(|field| ["-e", field]))
            .output()
            .expect("running tshark");
        assert!(output.status.success(), "tshark: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// Turns off checksum offload in every container and on every node's underlay, so packets carry
/// real checksums on the wire (veth would otherwise hide checksum bugs: a partial checksum left
/// for offload looks bad in a capture, and a wrong one is never noticed).
pub fn checksum_offload_off(cluster: &Cluster) {
    for node in cluster.nodes() {
        node.exec("ethtool", &["-K", "eth0", "tx", "off"])
            .expect("ethtool -K eth0 tx off");
        for container in node.containers() {
            container
                .exec("ethtool", &["-K", "eth0", "tx", "off"])
                .expect("ethtool -K eth0 tx off");
        }
    }
}
