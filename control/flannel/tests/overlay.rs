//! The overlay end to end in the namespace cluster harness, against a real etcd 3.4 running in
//! node 0: leases, containers on every node reaching each other, a joining node, deleted and
//! expired leases, a restart that keeps the subnet and an open TCP connection, a Docker-style
//! bridge from subnet.env.
mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{BpfPins, Container, Flannel, FlannelKeys, PREFIX, route_to, run_once};
use shoal_harness::{
    Cluster, Node, Process, StoreCluster, StoreKind,
    binaries::{self, QUIET_LOG},
    wait_for,
};

const HOST_GW: &str = r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}"#;
const VXLAN: &str = r#"{"Network": "10.6.0.0/16", "Backend": {"Type": "vxlan"}}"#;

struct Setup {
    // Drop order: processes (inside the cluster) go with the cluster, then the pins.
    cluster: Cluster,
    etcd: StoreCluster,
    dir: tempfile::TempDir,
    pins: BpfPins,
}

impl Setup {
    fn new(kind: StoreKind, nodes: usize, config: &str) -> Self {
        let cluster = Cluster::builder()
            .nodes(nodes)
            .containers_per_node(0)
            .container_supernet(None)
            .build()
            .expect("cluster");
        let etcd = common::store(kind)
            .in_namespace(cluster.node(0).ns(), cluster.node(0).underlay_ip())
            .start();
        if !config.is_empty() {
            etcd.put(&format!("{PREFIX}/config"), config);
        }
        Self {
            cluster,
            etcd,
            dir: tempfile::tempdir().expect("temp dir"),
            pins: BpfPins::new(),
        }
    }

    fn flannel(&self, index: usize, extra: &[&str]) -> Flannel {
        let pins = self.pins.path.to_string_lossy().into_owned();
        let mut args = vec!["--dataplane-pin-root", pins.as_str()];
        args.extend_from_slice(extra);
        Flannel::start(
            self.cluster.node(index),
            &self.etcd.endpoint(),
            self.dir.path(),
            &args,
        )
    }

    fn ipam(&self) -> std::path::PathBuf {
        self.dir.path().join("ipam")
    }

    fn container(&self, index: usize, flannel: &Flannel, command: &[&str]) -> Container {
        Container::start(
            self.cluster.node(index),
            &flannel.subnet_file,
            &self.ipam(),
            command,
        )
    }

    fn ping_from_container(
        &self,
        index: usize,
        flannel: &Flannel,
        target: std::net::Ipv4Addr,
    ) -> bool {
        run_once(
            self.cluster.node(index),
            &flannel.subnet_file,
            &self.ipam(),
            &["ping", "-c", "1", "-W", "2", &target.to_string()],
        )
    }
}

fn subnet_of(flannel: &Flannel) -> String {
    let (gateway, _) = flannel.wait_subnet();
    let net: ipnetwork::Ipv4Network = gateway.parse().expect("FLANNEL_SUBNET");
    format!("{}/{}", net.network(), net.prefix())
}

fn ping_from_node(node: &Node, target: std::net::Ipv4Addr) -> bool {
    node.output(
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "2", &target.to_string()],
    )
    .map(|output| output.status.success())
    .unwrap_or(false)
}

/// Routes, neighbours and links of a node, for failure messages.
fn node_state(node: &Node) -> String {
    let show = |args: &[&str]| node.ns().ip(args).unwrap_or_else(|err| err.to_string());
    format!(
        "== {} routes:\n{}neighbours:\n{}links:\n{}",
        node.name(),
        show(&["route"]),
        show(&["neigh"]),
        show(&["-br", "link"])
    )
}

/// The last lines of a flannel log, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "== {}:\n{}",
        path.display(),
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

/// Waits until every node routes to every other node's subnet.
fn wait_for_routes(setup: &Setup, flannels: &[Flannel]) {
    let subnets: Vec<String> = flannels.iter().map(subnet_of).collect();
    for from in 0..flannels.len() {
        for (to, subnet) in subnets.iter().enumerate().filter(|(to, _)| *to != from) {
            wait_for(
                &format!("n{from} to route to n{to}'s {subnet}"),
                Duration::from_secs(10),
                || Some(()).filter(|()| !route_to(setup.cluster.node(from), subnet).is_empty()),
            );
        }
    }
}

/// Containers on every node reach containers on every other node.
fn assert_full_mesh(setup: &Setup, flannels: &[Flannel]) {
    wait_for_routes(setup, flannels);
    let targets: Vec<Container> = flannels
        .iter()
        .enumerate()
        .map(|(index, flannel)| setup.container(index, flannel, &["sleep", "120"]))
        .collect();
    for (from, flannel) in flannels.iter().enumerate() {
        for (to, target) in targets.iter().enumerate().filter(|(to, _)| *to != from) {
            if !setup.ping_from_container(from, flannel, target.ip) {
                panic!(
                    "container on n{from} cannot reach {} on n{to}\n{}\n{}\n{}\n{}",
                    target.ip,
                    node_state(setup.cluster.node(from)),
                    node_state(setup.cluster.node(to)),
                    log_tail(&setup.dir.path().join(format!("n{from}.log"))),
                    log_tail(&setup.dir.path().join(format!("n{to}.log"))),
                );
            }
        }
    }
}

fn host_gw_cluster_lifecycle(kind: StoreKind) {
    let setup = Setup::new(kind, 4, HOST_GW);
    let flannels: Vec<Flannel> = (0..3).map(|index| setup.flannel(index, &[])).collect();
    let subnets: Vec<String> = flannels.iter().map(subnet_of).collect();
    let leases = setup.etcd.leases();
    assert_eq!(leases.len(), 3, "{leases:?}");
    for (key, value) in &leases {
        eprintln!("{key} {value}");
        assert!(value.contains(r#""BackendType":"host-gw""#), "{value}");
    }
    assert_ne!(subnets[0], subnets[1]);
    assert_full_mesh(&setup, &flannels);

    // A fourth node joins: every other node routes to it within 1 s of its lease.
    let fourth = setup.flannel(3, &[]);
    let subnet = subnet_of(&fourth);
    let joined = Instant::now();
    for index in 0..3 {
        wait_for("the new node's route", Duration::from_secs(1), || {
            Some(())
                .filter(|()| route_to(setup.cluster.node(index), &subnet).contains("via 10.99.0.4"))
        });
    }
    eprintln!(
        "4th node routed everywhere {:?} after its subnet.env appeared",
        joined.elapsed()
    );
    let newcomer = setup.container(3, &fourth, &["sleep", "60"]);
    for index in 0..3 {
        assert!(
            ping_from_node(setup.cluster.node(index), newcomer.ip),
            "n{index} cannot reach the new node"
        );
    }
    drop(newcomer);

    // A deleted lease disappears from every node's routes.
    drop(fourth);
    setup
        .etcd
        .ctl(&[
            "del",
            &format!("{PREFIX}/subnets/{}", subnet.replace('/', "-")),
        ])
        .expect("del");
    for index in 0..3 {
        wait_for(
            "the deleted lease's route to go",
            Duration::from_secs(5),
            || Some(()).filter(|()| route_to(setup.cluster.node(index), &subnet).is_empty()),
        );
    }
    let _ = subnets;
}

fn expired_lease_removes_routes_everywhere(kind: StoreKind) {
    let setup = Setup::new(kind, 3, HOST_GW);
    let flannels: Vec<Flannel> = (0..2).map(|index| setup.flannel(index, &[])).collect();
    // Node 2 holds a short lease, renewed every second while it runs.
    let mut short = setup.flannel(2, &["--subnet-lease-ttl", "3"]);
    let subnet = subnet_of(&short);
    for index in 0..2 {
        wait_for(
            "the short-lived node's route",
            Duration::from_secs(5),
            || Some(()).filter(|()| !route_to(setup.cluster.node(index), &subnet).is_empty()),
        );
    }
    // Renewals keep it alive past its TTL.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !route_to(setup.cluster.node(0), &subnet).is_empty(),
        "lease expired while renewed"
    );
    short.process.kill();
    let killed = Instant::now();
    for index in 0..2 {
        wait_for(
            "the expired lease's route to go",
            Duration::from_secs(10),
            || Some(()).filter(|()| route_to(setup.cluster.node(index), &subnet).is_empty()),
        );
    }
    eprintln!("routes removed {:?} after the node died", killed.elapsed());
    assert_eq!(setup.etcd.leases().len(), 2);
    drop(flannels);
}

fn restart_keeps_subnet_and_open_tcp_connection(kind: StoreKind) {
    let setup = Setup::new(kind, 2, HOST_GW);
    let mut first = setup.flannel(0, &[]);
    let second = setup.flannel(1, &[]);
    let subnet = subnet_of(&first);
    subnet_of(&second);
    let server = setup.container(0, &first, &["python3", "-c", ECHO_SERVER]);
    let client_log = setup.dir.path().join("client.log");
    let mut client_cmd = setup.cluster.node(1).ns().command(binaries::shoal());
    client_cmd
        .args(["run", "--subnet-file"])
        .arg(&second.subnet_file)
        .arg("--ipam-dir")
        .arg(setup.ipam())
        .args(["--", "python3", "-c", ECHO_CLIENT, &server.ip.to_string()])
        .stdout(std::fs::File::create(&client_log).expect("client log"));
    let mut client = Process::spawn("tcp client", &mut client_cmd);
    wait_for("the TCP connection", Duration::from_secs(20), || {
        let log = std::fs::read_to_string(&client_log).ok()?;
        log.contains("connected").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    first.process.stop();
    let restarted = setup.flannel(0, &[]);
    assert_eq!(
        subnet_of(&restarted),
        subnet,
        "the restarted node changed subnet"
    );
    assert_eq!(setup.etcd.leases().len(), 2);
    let status = wait_for("the TCP client to finish", Duration::from_secs(30), || {
        client.child.try_wait().ok().flatten()
    });
    let log = std::fs::read_to_string(&client_log).unwrap_or_default();
    assert!(
        status.success(),
        "the TCP connection broke across the restart: {log}"
    );
    assert!(log.contains("echoes"), "{log}");
    drop(server);
}

/// Three nodes on an encapsulating backend: lease format, MTU, and a full container mesh.
fn encapsulated_mesh(config: &str, extra: &[&str], lease_format: &str, mtu: u32) {
    let kind = StoreKind::Etcd;
    let setup = Setup::new(kind, 3, config);
    let flannels: Vec<Flannel> = (0..3).map(|index| setup.flannel(index, extra)).collect();
    for flannel in &flannels {
        assert_eq!(flannel.wait_subnet().1, mtu);
    }
    for (key, value) in setup.etcd.leases() {
        eprintln!("{key} {value}");
        assert!(value.contains(lease_format), "{value}");
    }
    assert_full_mesh(&setup, &flannels);
}

#[test]
fn vxlan_kernel_device_mesh() {
    encapsulated_mesh(
        VXLAN,
        &["--dataplane", "kernel"],
        r#""BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":""#,
        1450,
    );
}

#[test]
fn vxlan_ebpf_dataplane_mesh() {
    encapsulated_mesh(
        VXLAN,
        &["--dataplane", "ebpf"],
        r#""BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":""#,
        1450,
    );
}

#[test]
fn udp_ebpf_dataplane_mesh() {
    encapsulated_mesh(
        r#"{"Network": "10.7.0.0/16", "Backend": {"Type": "udp"}}"#,
        &["--dataplane", "ebpf"],
        r#""BackendType":"udp"}"#,
        1472,
    );
}

fn docker_style_bridge_from_subnet_env(kind: StoreKind) {
    let setup = Setup::new(kind, 2, HOST_GW);
    let flannels: Vec<Flannel> = (0..2)
        .map(|index| setup.flannel(index, &["--bridge", ""]))
        .collect();
    let workloads: Vec<DockerStyle> = flannels
        .iter()
        .enumerate()
        .map(|(index, flannel)| DockerStyle::new(&setup, index, &flannel.subnet_file))
        .collect();
    wait_for_routes(&setup, &flannels);
    let target = workloads[1].ip.clone();
    let output = workloads[0]
        .ns
        .output("ping", ["-c", "3", "-i", "0.2", "-W", "2", &target])
        .expect("ping");
    assert!(
        output.status.success(),
        "docker-style containers cannot talk: {output:?}"
    );
}

/// What Docker does with the options flannel writes for it beside subnet.env (`--bip`,
/// `--mtu`, as mk-docker-opts.sh): a bridge holding the `--bip` address with that MTU, and a
/// container behind a veth with the next address.
struct DockerStyle {
    ip: String,
    ns: shoal_harness::Namespace,
}

impl DockerStyle {
    fn new(setup: &Setup, index: usize, subnet_file: &Path) -> Self {
        let node = setup.cluster.node(index);
        let docker_file = shoal_flannel::docker_opts::path_beside(subnet_file);
        let options = wait_for("Docker's options", Duration::from_secs(20), || {
            std::fs::read_to_string(&docker_file).ok()
        });
        let combined = options
            .lines()
            .find_map(|line| line.strip_prefix("DOCKER_OPTS="))
            .expect("DOCKER_OPTS")
            .trim_matches('"')
            .to_string();
        let get = |flag: &str| {
            combined
                .split_whitespace()
                .find_map(|option| option.strip_prefix(&format!("--{flag}=")))
                .expect("option in DOCKER_OPTS")
                .to_string()
        };
        let gateway = get("bip");
        let mtu = get("mtu");
        assert_eq!(
            get("ip-masq"),
            "true",
            "flannel runs without --ip-masq here"
        );
        let net: ipnetwork::Ipv4Network = gateway.parse().expect("subnet");
        let ip = std::net::Ipv4Addr::from(u32::from(net.network()) + 2);
        let ns = shoal_harness::Namespace::create(format!(
            "shoal-{}x{}-dk{index}",
            std::process::id(),
            setup.cluster.run_id().replace('x', "y")
        ))
        .expect("container namespace");
        let node_ns = node.ns();
        node_ns
            .ip(["link", "add", "docker0", "mtu", &mtu, "type", "bridge"])
            .expect("bridge");
        node_ns
            .ip(["addr", "add", &gateway, "dev", "docker0"])
            .expect("bridge address");
        node_ns
            .ip(["link", "set", "docker0", "up"])
            .expect("bridge up");
        node_ns
            .ip([
                "link",
                "add",
                "vdk",
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])
            .expect("veth");
        node_ns
            .ip(["link", "set", "vdk", "master", "docker0", "up"])
            .expect("veth up");
        ns.ip([
            "addr",
            "add",
            &format!("{ip}/{}", net.prefix()),
            "dev",
            "eth0",
        ])
        .expect("address");
        ns.ip(["link", "set", "eth0", "up"]).expect("eth0 up");
        ns.ip(["route", "add", "default", "via", &net.ip().to_string()])
            .expect("default route");
        Self {
            ip: ip.to_string(),
            ns,
        }
    }
}

const ECHO_SERVER: &str = r#"
import socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 7777))
server.listen(1)
conn, _ = server.accept()
while True:
    data = conn.recv(64)
    if not data:
        break
    conn.sendall(data)
"#;

const ECHO_CLIENT: &str = r#"
import socket, sys, time
for attempt in range(100):
    try:
        sock = socket.create_connection((sys.argv[1], 7777), timeout=2)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("could not connect")
print("connected", flush=True)
sock.settimeout(2)
count = 0
end = time.time() + 8
while time.time() < end:
    sock.sendall(b"ping")
    if sock.recv(64) != b"ping":
        sys.exit("bad echo")
    count += 1
    time.sleep(0.05)
print(count, "echoes", flush=True)
"#;

/// The lifecycle tests, once against etcd 3.4 and once against shoal kv.
macro_rules! per_store {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $(#[test]
            fn $name() {
                super::$name(super::StoreKind::Etcd)
            })*
        }
        mod shoal_kv {
            $(#[test]
            fn $name() {
                super::$name(super::StoreKind::ShoalKv)
            })*
        }
    };
}

per_store!(
    host_gw_cluster_lifecycle,
    expired_lease_removes_routes_everywhere,
    restart_keeps_subnet_and_open_tcp_connection,
    docker_style_bridge_from_subnet_env,
);

#[test]
fn ip_masq_and_healthz() {
    let setup = Setup::new(StoreKind::Etcd, 3, HOST_GW);
    let masq = setup.flannel(0, &["--ip-masq", "--healthz-port", "8471"]);
    // Node 1 runs no overlay: it has no route back to overlay addresses.
    let plain = setup.flannel(2, &[]);
    masq.wait_subnet();
    plain.wait_subnet();
    let env = std::fs::read_to_string(&masq.subnet_file).expect("subnet.env");
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    let docker_file = shoal_flannel::docker_opts::path_beside(&masq.subnet_file);
    let docker = std::fs::read_to_string(&docker_file).expect("Docker's options");
    assert!(
        docker.contains("DOCKER_OPT_IPMASQ=\"--ip-masq=false\""),
        "flannel masquerades, Docker must not: {docker}"
    );
    let rules = setup
        .cluster
        .node(0)
        .exec("nft", &["list", "table", "ip", "shoal-flannel"])
        .expect("nft list");
    assert!(rules.contains("masquerade"), "{rules}");
    let health = setup
        .cluster
        .node(0)
        .exec("python3", &["-c", HEALTH_CHECK])
        .expect("health check");
    assert_eq!(health.trim(), "200 ok");
    // Loopback only unless --healthz-ip says otherwise.
    let underlay = format!("{}:8471", setup.cluster.node(0).underlay_ip());
    let outside = setup
        .cluster
        .node(1)
        .exec("python3", &["-c", CONNECT, &underlay]);
    assert_eq!(outside.expect("connect attempt").trim(), "refused");
    // Overlay -> outside is masqueraded: node 1 answers although it cannot route to overlay.
    assert!(
        setup.ping_from_container(0, &masq, setup.cluster.node(1).underlay_ip()),
        "overlay traffic to the outside was not masqueraded"
    );
    // Overlay -> overlay keeps the container's own source address.
    let server = setup.container(2, &plain, &["python3", "-c", PEER_ADDRESS_SERVER]);
    assert!(
        run_once(
            setup.cluster.node(0),
            &masq.subnet_file,
            &setup.ipam(),
            &["python3", "-c", PEER_ADDRESS_CLIENT, &server.ip.to_string()],
        ),
        "overlay-internal traffic was masqueraded"
    );
}

const HEALTH_CHECK: &str = r#"
import urllib.request
with urllib.request.urlopen("http://127.0.0.1:8471/healthz", timeout=5) as response:
    print(response.status, response.read().decode().strip())
"#;

const CONNECT: &str = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
try:
    socket.create_connection((host, int(port)), timeout=5)
    print("connected")
except ConnectionRefusedError:
    print("refused")
"#;

const PEER_ADDRESS_SERVER: &str = r#"
import socket
server = socket.socket()
server.bind(("0.0.0.0", 7778))
server.listen(1)
conn, (peer, _) = server.accept()
conn.sendall(peer.encode())
conn.close()
"#;

const PEER_ADDRESS_CLIENT: &str = r#"
import os, socket, sys, time
for attempt in range(50):
    try:
        sock = socket.create_connection((sys.argv[1], 7778), timeout=2)
        break
    except OSError:
        time.sleep(0.1)
seen = sock.recv(64).decode()
mine = os.environ["SHOAL_IP"]
sys.exit(0 if seen == mine else "server saw %s, container is %s" % (seen, mine))
"#;

/// Leases no node may route: the whole address space (would replace the default route),
/// another network, and the underlay's own subnet. Each is ignored with a warning, from the
/// first list and from the watch, while a good lease written after them is routed.
#[test]
fn bogus_leases_never_become_routes() {
    // A network around the underlay (10.99.0.0/24), leases handed out away from it.
    let config = r#"{"Network": "10.0.0.0/8", "SubnetMin": "10.5.0.0", "SubnetMax": "10.5.255.0",
        "Backend": {"Type": "host-gw"}}"#;
    let setup = Setup::new(StoreKind::Etcd, 2, config);
    let lease = |subnet: &str| {
        let value = r#"{"PublicIP":"10.99.0.77","BackendType":"host-gw"}"#;
        setup.etcd.put(&format!("{PREFIX}/subnets/{subnet}"), value);
    };
    let node = setup.cluster.node(0);
    let default_route = route_to(node, "0.0.0.0/0");
    lease("0.0.0.0-0");
    let flannels: Vec<Flannel> = (0..2).map(|index| setup.flannel(index, &[])).collect();
    wait_for_routes(&setup, &flannels);
    lease("192.168.7.0-24");
    lease("10.99.0.0-25");
    lease("10.5.200.0-24");
    wait_for("the good lease's route", Duration::from_secs(5), || {
        Some(()).filter(|()| !route_to(node, "10.5.200.0/24").is_empty())
    });
    assert_eq!(
        route_to(node, "0.0.0.0/0"),
        default_route,
        "{}",
        node_state(node)
    );
    assert_eq!(route_to(node, "192.168.7.0/24"), "");
    assert_eq!(route_to(node, "10.99.0.0/25"), "");
    let log = std::fs::read_to_string(setup.dir.path().join("n0.log")).expect("flannel log");
    for warning in [
        "ignoring a lease outside the network 10.0.0.0/8 subnet=0.0.0.0/0",
        "ignoring a lease outside the network 10.0.0.0/8 subnet=192.168.7.0/24",
        "ignoring a lease overlapping the underlay subnet 10.99.0.0/24 subnet=10.99.0.0/25",
    ] {
        assert!(log.contains(warning), "no {warning:?} in\n{log}");
    }
}

#[test]
fn missing_config_is_awaited_and_invalid_config_explained() {
    let setup = Setup::new(StoreKind::Etcd, 1, "");
    let mut waiting = setup.flannel(0, &[]);
    let log = setup.dir.path().join("n0.log");
    wait_for("the wait to be logged", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("waiting for the network config")
            .then_some(())
    });
    assert!(
        matches!(waiting.process.child.try_wait(), Ok(None)),
        "flannel exited while waiting for its config"
    );
    setup.etcd.put(&format!("{PREFIX}/config"), HOST_GW);
    waiting.wait_subnet();
    waiting.process.stop();

    setup.etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network": "10.5.0.0/16", "SubnetLen": 31}"#,
    );
    let mut invalid = setup.flannel(0, &[]);
    let status = wait_for(
        "flannel to reject the config",
        Duration::from_secs(10),
        || invalid.process.child.try_wait().ok().flatten(),
    );
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("SubnetLen /31 is too long: it must be at most /30"),
        "{text}"
    );
}

#[test]
fn vxlan_direct_routing_routes_same_segment_peers_directly() {
    for dataplane in ["ebpf", "kernel"] {
        let setup = Setup::new(
            StoreKind::Etcd,
            2,
            r#"{"Network": "10.8.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}"#,
        );
        let flannels: Vec<Flannel> = (0..2)
            .map(|index| setup.flannel(index, &["--dataplane", dataplane]))
            .collect();
        let peer_subnet = subnet_of(&flannels[1]);
        subnet_of(&flannels[0]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let route = loop {
            let route = route_to(setup.cluster.node(0), &peer_subnet);
            if route.contains("via 10.99.0.2") {
                break route;
            }
            assert!(
                Instant::now() < deadline,
                "{dataplane}: no direct route to {peer_subnet}: {route:?}\n{}",
                log_tail(&setup.dir.path().join("n0.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!route.contains("onlink"), "{dataplane}: {route}");
        assert_full_mesh(&setup, &flannels);
    }
}

#[test]
fn shoal_run_names_namespaces_and_never_shares_addresses() {
    let setup = Setup::new(StoreKind::Etcd, 1, HOST_GW);
    let flannel = setup.flannel(0, &[]);
    flannel.wait_subnet();
    // Started together, held together: every address is different.
    let containers: Vec<Container> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| setup.container(0, &flannel, &["sleep", "30"])))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("container thread"))
            .collect()
    });
    let addresses: std::collections::HashSet<_> = containers.iter().map(|c| c.ip).collect();
    assert_eq!(addresses.len(), containers.len(), "{addresses:?}");
    // A named container's namespace is reachable by name while it runs; inside it, eth0 holds
    // the printed address with the overlay MTU.
    let output = setup
        .cluster
        .node(0)
        .ns()
        .command(binaries::shoal())
        .env("SHOAL_LOG", QUIET_LOG)
        .args(["run", "--name", "named-ct", "--subnet-file"])
        .arg(&flannel.subnet_file)
        .arg("--ipam-dir")
        .arg(setup.ipam())
        .args([
            "--", "ip", "netns", "exec", "named-ct", "ip", "-br", "-4", "addr", "show", "eth0",
        ])
        .output()
        .expect("shoal run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = stdout.lines().next().unwrap_or_default();
    assert!(stdout.contains(&format!("{printed}/24")), "{stdout}");
    // Released on exit: the next container reuses the lowest free address.
    drop(containers);
    let again = setup.container(0, &flannel, &["true"]);
    let lowest = std::net::Ipv4Addr::from(u32::from(again.ip) & 0xffff_ff00 | 2);
    assert_eq!(again.ip, lowest);
}
