//! Docker and podman containers on the overlay, as a CoreOS cluster ran them: three `shoal
//! agent` nodes (shoal kv, flannel on the eBPF dataplane, fleet's built-in supervisor) in
//! network namespaces, each with a /run of its own. Nodes 1 and 2 run Debian's dockerd, started
//! with the `DOCKER_OPTS` flannel wrote beside subnet.env (what the `docker.service` drop-in
//! passes); node 1 also runs Debian's docker-registry, into which the images built from
//! Debian's packages (nginx, redis, busybox) are pushed, and podman with shoal as flannel's
//! CNI plugin beside its Docker: both on `docker0`, Docker in the lower half of the lease
//! (`--fixed-cidr`), CNI containers in the upper half.
//!
//! Shown: containers get addresses in their node's lease; a busybox container fetches nginx's
//! page from a container on the other node, and redis-cli talks to redis there; the traffic
//! crosses the underlay as VXLAN (a capture) and is delivered straight into Docker's veth
//! (the dataplane's counters); a podman container reaches Docker's nginx; the book's nginx
//! unit (`ExecStartPre=-/usr/bin/docker kill`, `docker pull`, `docker run -p
//! ${COREOS_PUBLIC_IPV4}:8080:80`, `ExecStop=docker stop`) runs under fleet, its output in
//! `fleetctl journal`, and stopping it stops the container.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ipnetwork::Ipv4Network;
use shoal_dataplane::Counter;
use shoal_harness::{
    AgentOptions, Agents, Cluster,
    binaries::{self, QUIET_LOG},
    docker::{self, Dockerd},
    images::{self, ImageRecipe},
    registry::Registry,
    wait_for,
};

/// The book's web unit, unchanged but for the registry its image comes from.
fn nginx_unit(image: &str) -> String {
    format!(
        "[Unit]\n\
         Description=nginx web server in a Docker container\n\n\
         [Service]\n\
         TimeoutStartSec=0\n\
         ExecStartPre=-/usr/bin/docker kill nginx\n\
         ExecStartPre=-/usr/bin/docker rm nginx\n\
         ExecStartPre=/usr/bin/docker pull {image}\n\
         ExecStart=/usr/bin/docker run --name nginx -p ${{COREOS_PUBLIC_IPV4}}:8080:80 {image}\n\
         ExecStop=/usr/bin/docker stop nginx\n\n\
         [X-Fleet]\n\
         MachineMetadata=rack=rack2\n"
    )
}

/// Everything the test runs, dropped in this order: containers and daemons before the
/// registry, the agents and the namespaces they live in.
struct Setup {
    dockerds: Vec<Dockerd>,
    registry: Registry,
    agents: Agents,
    cluster: Cluster,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        for program in [
            docker::DOCKERD,
            docker::DOCKER,
            shoal_harness::registry::REGISTRY_BINARY,
        ] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: `cargo xtask setup` installs docker.io and docker-registry"
            );
        }
        let cluster = Cluster::builder()
            .nodes(3)
            .container_supernet(None)
            .build()
            .expect("cluster");
        // In memory: the daemons' unpacked layers and the registry's blobs (several hundred MB)
        // took longer to delete from a busy disk than the test takes to run.
        let dir = tempfile::tempdir_in("/dev/shm").expect("temp dir");
        let mut options = AgentOptions::new(binaries::shoal(), dir.path().join("agents"));
        options.masters = 1;
        options.private_run = true;
        options.ip_masq = true;
        options.workload_bridge = false;
        options.log_filter = QUIET_LOG.to_string();
        let agents = Agents::start(&cluster, options).expect("agents");
        agents
            .wait_ready(&cluster, Duration::from_secs(60), |_, _| {})
            .unwrap_or_else(|err| panic!("{err}\n{}", agents.logs()));
        let registry = Registry::start(
            cluster.node(0).ns(),
            cluster.node(0).underlay_ip(),
            &dir.path().join("registry"),
        )
        .expect("registry");
        let dockerds = (0..2)
            .map(|index| {
                let options_file = agents.node_dir(index).join("docker");
                let options = docker::options_from_file(&options_file).expect("DOCKER_OPTS");
                eprintln!("node {} DOCKER_OPTS: {}", index + 1, options.join(" "));
                assert!(
                    options.iter().any(|option| option == "--ip-masq=false"),
                    "flannel masquerades, so Docker must not: {options:?}"
                );
                Dockerd::start(
                    cluster.node(index).ns().name(),
                    &dir.path().join(format!("docker{}", index + 1)),
                    &agents.run_dir(index).join("docker.sock"),
                    &options,
                    &[registry.address()],
                )
                .expect("dockerd")
            })
            .collect();
        Self {
            dockerds,
            registry,
            agents,
            cluster,
            dir,
        }
    }

    /// The node's lease, from its subnet.env.
    fn lease(&self, index: usize) -> Ipv4Network {
        let path = self.agents.node_dir(index).join("subnet.env");
        let text = std::fs::read_to_string(&path).expect("subnet.env");
        let subnet = text
            .lines()
            .find_map(|line| line.strip_prefix("FLANNEL_SUBNET="))
            .expect("FLANNEL_SUBNET");
        let gateway: Ipv4Network = subnet.parse().expect("a subnet");
        Ipv4Network::new(gateway.network(), gateway.prefix()).expect("prefix")
    }

    /// Imports every image into node 1's daemon and pushes it to the registry.
    fn publish_images(&self) {
        for recipe in images::ALL {
            let tarball = images::rootfs(&recipe).expect("image root");
            let name = self.registry.image(recipe.name);
            let started = Instant::now();
            self.dockerds[0]
                .import(&tarball, &name, recipe.changes)
                .expect("docker import");
            self.dockerds[0].docker(&["push", &name]).expect("push");
            eprintln!(
                "imported and pushed {name} in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
    }

    fn image(&self, recipe: &ImageRecipe) -> String {
        self.registry.image(recipe.name)
    }

    fn fleetctl(&self, args: &[&str]) -> String {
        let node = self.cluster.node(0);
        let out = node
            .ns()
            .command(binaries::shoal())
            .arg("fleetctl")
            .args(self.agents.access(node).fleetctl_args())
            .args(args)
            .output()
            .expect("fleetctl");
        assert!(
            out.status.success(),
            "fleetctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pinned dataplane of node `index` (`<bpffs>/node<N>/eth0-ns<inode>`).
    fn pins(&self, index: usize) -> PathBuf {
        let root = self
            .dir
            .path()
            .join("agents/bpffs")
            .join(format!("node{}", index + 1));
        std::fs::read_dir(&root)
            .expect("pin root")
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("eth0-ns"))
            })
            .expect("the dataplane's pins")
    }

    /// Routes, addresses, Docker's iptables rules and the dataplane's counters of nodes 1 and 2.
    fn diagnostics(&self) -> String {
        let mut text = String::new();
        for index in 0..2 {
            let ns = self.cluster.node(index).ns();
            let show = |program: &str, args: &[&str]| {
                ns.output(program, args)
                    .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                    .unwrap_or_else(|err| err.to_string())
            };
            text.push_str(&format!(
                "== node {}\n{}{}{}counters {:?}\n",
                index + 1,
                show("ip", &["-4", "-br", "addr"]),
                show("ip", &["-4", "route"]),
                show("iptables-save", &[]),
                shoal_dataplane::read_pinned_stats(&self.pins(index)),
            ));
        }
        text
    }

    fn direct_deliveries(&self, index: usize) -> u64 {
        shoal_dataplane::read_pinned_stats(&self.pins(index))
            .expect("counters")
            .get(Counter::DeliverDirectPackets)
    }
}

impl Drop for Setup {
    /// The daemons stop side by side (each removes its containers first); the rest goes in
    /// field order.
    fn drop(&mut self) {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for daemon in &mut self.dockerds {
                scope.spawn(|| daemon.stop());
            }
        });
        eprintln!(
            "dockerds stopped in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// tcpdump on the underlay switch, decoding UDP 8472 as VXLAN; stopped on drop.
struct Capture {
    child: Child,
    file: PathBuf,
    /// Held open: tcpdump reports its counts there on exit (a closed pipe would kill it).
    _stderr: Option<BufReader<std::process::ChildStderr>>,
}

impl Capture {
    fn start(cluster: &Cluster, dir: &Path) -> Self {
        let file = dir.join("underlay.pcap");
        let child = cluster
            .switch()
            .command("tcpdump")
            .args(["-i", "br0", "--immediate-mode", "-U", "-s", "256", "-w"])
            .arg(&file)
            .args(["udp", "port", "8472"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // tcpdump says "listening on br0" once it captures.
        let mut capture = Self {
            child,
            file,
            _stderr: None,
        };
        let mut stderr = BufReader::new(capture.child.stderr.take().expect("piped stderr"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("tcpdump's first line");
        assert!(line.contains("listening on"), "tcpdump: {line}");
        capture._stderr = Some(stderr);
        capture
    }

    /// Stops the capture and returns its packets decoded as VXLAN, one line each.
    fn lines(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = Command::new("tcpdump")
            .args(["-nn", "-T", "vxlan", "-r"])
            .arg(&self.file)
            .output()
            .expect("tcpdump -r");
        assert!(
            out.status.success(),
            "tcpdump -r: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        packets(&String::from_utf8_lossy(&out.stdout))
    }
}

/// tcpdump prints a VXLAN packet's outer and inner headers on two lines: one line per packet.
fn packets(text: &str) -> Vec<String> {
    let mut packets: Vec<String> = Vec::new();
    for line in text.lines() {
        let starts_packet = line.as_bytes().first().is_some_and(u8::is_ascii_digit)
            && line.as_bytes().get(2) == Some(&b':');
        match packets.last_mut() {
            Some(packet) if !starts_packet => {
                packet.push_str(" | ");
                packet.push_str(line.trim());
            }
            _ => packets.push(line.to_string()),
        }
    }
    packets
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node where podman runs beside Docker (node 1).
const PODMAN_NODE: usize = 0;

fn in_lease(ip: &str, lease: Ipv4Network) -> bool {
    ip.parse().is_ok_and(|ip| lease.contains(ip))
}

#[test]
fn docker_and_podman_containers_talk_over_the_overlay_and_fleet_runs_the_books_docker_unit() {
    let started = Instant::now();
    let setup = Setup::new();
    let lap = |what: &str| eprintln!("[{:5.1}s] {what}", started.elapsed().as_secs_f64());
    lap("agents ready, registry and two dockerds up");
    let (lease1, lease2) = (setup.lease(0), setup.lease(1));
    setup.publish_images();
    lap("images published");

    // Node 2: nginx and redis in Docker containers on docker0, in node 2's lease.
    let (web, db) = (&setup.dockerds[1], &setup.dockerds[0]);
    let (nginx, redis, busybox) = (
        setup.image(&images::NGINX),
        setup.image(&images::REDIS),
        setup.image(&images::BUSYBOX),
    );
    web.docker(&["run", "-d", "--name", "web", &nginx])
        .expect("nginx container");
    web.docker(&["run", "-d", "--name", "kv", &redis])
        .expect("redis container");
    let nginx_ip = web.container_ip("web").expect("nginx address");
    let redis_ip = web.container_ip("kv").expect("redis address");
    assert!(in_lease(&nginx_ip, lease2), "{nginx_ip} outside {lease2}");
    assert!(in_lease(&redis_ip, lease2), "{redis_ip} outside {lease2}");
    let bridge = setup
        .cluster
        .node(1)
        .ns()
        .ip(["-4", "-o", "addr", "show", "docker0"]);
    eprintln!("node 2 docker0: {}", bridge.expect("docker0").trim());

    // Node 1: a busybox client container in node 1's lease.
    db.docker(&["run", "-d", "--name", "client", &busybox, "sleep", "600"])
        .expect("busybox container");
    let client_ip = db.container_ip("client").expect("client address");
    assert!(in_lease(&client_ip, lease1), "{client_ip} outside {lease1}");
    lap(&format!(
        "containers up: nginx {nginx_ip}, redis {redis_ip} on node 2, busybox {client_ip} on node 1"
    ));

    let fetch = || {
        db.output(&[
            "exec",
            "client",
            // busybox 1.35's wget crashes on its own -T; busybox's timeout bounds it instead.
            "timeout",
            "5",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{nginx_ip}/"),
        ])
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let capture = Capture::start(&setup.cluster, setup.dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = wait_for(
        "nginx's page over the overlay",
        Duration::from_secs(30),
        || {
            assert!(
                Instant::now() < deadline,
                "no page from nginx at {nginx_ip}:\n{}",
                setup.diagnostics()
            );
            fetch()
        },
    );
    assert!(page.contains("Welcome to nginx!"), "{page}");
    let lines = capture.lines();
    let crossing: Vec<&String> = lines
        .iter()
        .filter(|line| {
            line.contains("VXLAN")
                && line.contains(&format!("{client_ip}."))
                && line.contains(&format!("{nginx_ip}.80"))
        })
        .collect();
    eprintln!(
        "underlay capture ({} packets), container to container:",
        lines.len()
    );
    for line in crossing.iter().take(4) {
        eprintln!("  {line}");
    }
    assert!(
        crossing.len() >= 2,
        "no VXLAN packets between the containers on the underlay: {lines:#?}"
    );

    // The first packets to nginx went through the kernel (its neighbour entry did not exist
    // yet); once the agent's endpoint sync has registered the container, they go straight in.
    let direct_before = setup.direct_deliveries(1);
    let direct_after = wait_for(
        "direct delivery into nginx's veth",
        Duration::from_secs(20),
        || {
            fetch()?;
            let now = setup.direct_deliveries(1);
            (now > direct_before).then_some(now)
        },
    );
    eprintln!("node 2 deliver_direct_packets: {direct_before} -> {direct_after}");
    lap("busybox on node 1 fetched nginx's page on node 2; VXLAN on the underlay");

    let cli = |args: &[&str]| {
        let mut argv = vec!["run", "--rm", redis.as_str(), "redis-cli", "-h", &redis_ip];
        argv.extend_from_slice(args);
        db.docker(&argv).expect("redis-cli").trim().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "book", "coreos"]), "OK");
    assert_eq!(cli(&["GET", "book"]), "coreos");
    lap("redis-cli in a container on node 1: PING, SET, GET against redis on node 2");

    podman_container_reaches_docker_nginx(&setup, &busybox, &nginx_ip, &client_ip);
    lap("podman container (CNI) beside Docker on node 1 fetched nginx's page on node 2");

    fleet_runs_the_books_nginx_unit(&setup, &nginx);
    lap("fleet ran and stopped the book's nginx unit");
    eprintln!("{}", web.docker(&["ps", "-a"]).unwrap_or_default());
}

/// podman on node 1, beside Docker, its container attached by shoal as flannel's CNI plugin
/// (a conflist in a CNI config dir of the test's, `flannel` a symlink to shoal): on Docker's
/// `docker0` (no second bridge claims the gateway), with an address in the upper half of the
/// lease while Docker's `client_ip` is in the lower half; it pulls busybox from the registry and
/// fetches nginx's page from Docker's container on node 2.
fn podman_container_reaches_docker_nginx(
    setup: &Setup,
    busybox: &str,
    nginx_ip: &str,
    client_ip: &str,
) {
    let dir = setup.dir.path().join("podman");
    let (bin, conf_dir) = (dir.join("cni-bin"), dir.join("cni-conf"));
    for path in [&bin, &conf_dir] {
        std::fs::create_dir_all(path).expect("podman dirs");
    }
    std::os::unix::fs::symlink(binaries::shoal(), bin.join("flannel")).expect("flannel link");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "shoal-overlay",
        "plugins": [{
            "type": "flannel",
            "subnetFile": setup.agents.node_dir(PODMAN_NODE).join("subnet.env"),
            "dataDir": dir.join("flannel-data"),
            "ipam": { "dataDir": dir.join("ipam") },
        }],
    });
    std::fs::write(conf_dir.join("10-shoal.conflist"), conflist.to_string()).expect("conflist");
    let containers_conf = dir.join("containers.conf");
    std::fs::write(
        &containers_conf,
        format!(
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
             network_config_dir = \"{}\"\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n",
            bin.display(),
            conf_dir.display()
        ),
    )
    .expect("containers.conf");
    let node = setup.cluster.node(PODMAN_NODE);
    let podman = |args: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", node.ns().name()))
            .arg("podman")
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("runroot"))
            .args(args)
            .env("CONTAINERS_CONF", &containers_conf)
            .output()
            .expect("podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    podman(&["pull", "--tls-verify=false", busybox]);
    let script =
        format!("ip -o -4 addr show dev eth0; sleep 3; timeout 5 wget -q -O - http://{nginx_ip}/");
    let (runner, ports) = std::thread::scope(|scope| {
        let runner = scope.spawn(|| {
            podman(&[
                "run",
                "--rm",
                "--network",
                "shoal-overlay",
                busybox,
                "sh",
                "-c",
                &script,
            ])
        });
        // While it runs: the bridge ports of docker0 (Docker's client container and podman's).
        let ports = wait_for("podman's veth on docker0", Duration::from_secs(30), || {
            let ports = node
                .ns()
                .ip(["-o", "link", "show", "master", "docker0"])
                .ok()?;
            (ports.lines().count() >= 2).then_some(ports)
        });
        (runner.join().expect("podman run"), ports)
    });
    let output = runner;
    eprintln!("node 1 docker0 ports:\n{}", ports.trim_end());
    let lease = setup.lease(PODMAN_NODE);
    let address = output
        .split_whitespace()
        .find_map(|word| word.split_once('/').map(|(ip, _)| ip.to_string()))
        .filter(|ip| in_lease(ip, lease));
    eprintln!(
        "podman container on node 1: {} (Docker's client: {client_ip})",
        output.lines().next().unwrap_or_default()
    );
    let address =
        address.unwrap_or_else(|| panic!("the podman container is not in {lease}: {output}"));
    let upper_half = |ip: &str| -> bool {
        let ip: std::net::Ipv4Addr = ip.parse().expect("an address");
        u32::from(ip) - u32::from(lease.network()) >= lease.size() / 2
    };
    assert!(
        upper_half(&address),
        "podman's {address} not in the upper half of {lease}"
    );
    assert!(
        !upper_half(client_ip),
        "Docker's {client_ip} not in the lower half of {lease}"
    );
    let links = node
        .ns()
        .ip(["-o", "link", "show", "type", "bridge"])
        .expect("bridges");
    assert!(
        !links.contains("cni0"),
        "a second bridge for the lease: {links}"
    );
    assert!(output.contains("Welcome to nginx!"), "{output}");
    // --rm ran the plugin's DEL: the container's address is free again.
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("ipam/shoal-overlay"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "addresses still held: {leftovers:?}");
    podman(&["rmi", "-a", "-f"]);
}

/// The book's nginx unit under fleet's built-in supervisor on node 2 (`rack=rack2`).
fn fleet_runs_the_books_nginx_unit(setup: &Setup, nginx: &str) {
    let web = &setup.dockerds[1];
    web.docker(&["rm", "-f", "web"])
        .expect("rm the test's nginx");
    let unit = setup.dir.path().join("nginx.service");
    std::fs::write(&unit, nginx_unit(nginx)).expect("unit file");
    setup.fleetctl(&["start", unit.to_str().expect("utf-8 path")]);
    let public = setup.cluster.node(1).underlay_ip();
    let url = format!("http://{public}:8080/");
    let client = setup.cluster.node(0);
    let page = wait_for(
        "the unit's nginx on COREOS_PUBLIC_IPV4:8080",
        Duration::from_secs(60),
        || {
            let out = client.output("curl", &["-sf", "-m", "2", &url]).ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    );
    assert!(page.contains("Welcome to nginx!"), "{page}");
    let listing = setup.fleetctl(&["list-units"]);
    eprintln!("{listing}");
    assert!(
        listing.contains("nginx.service") && listing.contains("running"),
        "{listing}"
    );
    let ps = web.docker(&[
        "ps",
        "--filter",
        "name=^nginx$",
        "--format",
        "{{.Names}} {{.Ports}}",
    ]);
    let ps = ps.expect("docker ps");
    eprintln!("docker ps on node 2: {}", ps.trim());
    assert!(ps.contains(&format!("{public}:8080->80/tcp")), "{ps}");
    let journal = wait_for(
        "nginx's access log in the journal",
        Duration::from_secs(20),
        || {
            let journal = setup.fleetctl(&["journal", "--lines", "20", "nginx.service"]);
            journal.contains("GET / HTTP/1.1\" 200").then_some(journal)
        },
    );
    eprintln!("fleetctl journal nginx.service:\n{journal}");

    setup.fleetctl(&["stop", "nginx.service"]);
    wait_for(
        "the nginx container stopped",
        Duration::from_secs(30),
        || {
            let running = web.docker(&["ps", "-q", "--filter", "name=^nginx$"]).ok()?;
            running.trim().is_empty().then_some(())
        },
    );
    let state = web
        .docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "nginx",
        ])
        .expect("inspect");
    eprintln!("after fleetctl stop: nginx container {}", state.trim());
    assert!(state.starts_with("exited"), "{state}");
}
