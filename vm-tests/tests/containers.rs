//! The CoreOS book's container workflow on three Debian guests (systemd as PID 1, Docker
//! configured by the `docker.service` drop-in `shoal install` writes): the cluster's registry
//! as a fleet unit on a master, images built here from Debian's packages and pushed into it, a
//! Global busybox unit, nginx on a web node (`-p ${COREOS_PUBLIC_IPV4}:8080:80`) reached on
//! the node's address and, over the overlay, from a container on the db node, redis on the db
//! node reached from a container on a web node, a sidekick announcing nginx's container
//! address, a podman container (shoal as flannel's CNI plugin, beside Docker on `docker0`)
//! reaching nginx on another node, and nginx moving to the other web node when its node loses
//! power. The guests are provisioned by `#cloud-config` (`coreos.units` starts docker.service
//! with flannel's drop-in through the guest's systemd); a capture on the cluster's bridge shows
//! container-to-container traffic crossing as VXLAN.
//!
//! Under TCG this takes minutes (the guests unpack the images), so it is the long form: it runs
//! with `SHOAL_VM_CONTAINERS=1` (and wherever the VM tests run), and says SKIPPED otherwise.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use shoal_harness::{docker::Dockerd, images};
use shoal_vm::{ClusterSpec, GuestImage, config::parse_metadata};
use shoal_vm_tests::{Scenario, exclusive, skip, wait_until};

/// Set to `1` to run this scenario.
const ENABLE_ENV: &str = "SHOAL_VM_CONTAINERS";

fn registry_unit() -> String {
    "[Unit]\n\
     Description=the cluster's image registry (distribution 2.8)\n\n\
     [Service]\n\
     ExecStart=/usr/bin/docker-registry serve /etc/docker/registry/cluster.yml\n\n\
     [X-Fleet]\n\
     MachineMetadata=rack=rack1\n"
        .to_string()
}

fn hello_unit(registry: &str) -> String {
    format!(
        "[Unit]\n\
         Description=hello from a busybox container on every machine\n\
         After=docker.service\n\
         Requires=docker.service\n\n\
         [Service]\n\
         TimeoutStartSec=0\n\
         ExecStartPre=-/usr/bin/docker kill hello\n\
         ExecStartPre=-/usr/bin/docker rm hello\n\
         ExecStartPre=/usr/bin/docker pull {registry}/busybox\n\
         ExecStart=/usr/bin/docker run --name hello {registry}/busybox /bin/sh -c \"while true; do echo Hello World; sleep 5; done\"\n\
         ExecStop=/usr/bin/docker stop hello\n\n\
         [X-Fleet]\n\
         Global=true\n"
    )
}

fn nginx_unit(registry: &str) -> String {
    format!(
        "[Unit]\n\
         Description=nginx web server\n\
         After=docker.service\n\
         Requires=docker.service\n\n\
         [Service]\n\
         TimeoutStartSec=0\n\
         EnvironmentFile=-/etc/environment\n\
         ExecStartPre=-/usr/bin/docker kill nginx\n\
         ExecStartPre=-/usr/bin/docker rm nginx\n\
         ExecStartPre=/usr/bin/docker pull {registry}/nginx\n\
         ExecStart=/usr/bin/docker run --name nginx -p ${{COREOS_PUBLIC_IPV4}}:8080:80 {registry}/nginx\n\
         ExecStop=/usr/bin/docker stop nginx\n\n\
         [X-Fleet]\n\
         MachineMetadata=compute=web\n\
         Conflicts=nginxweb.service\n"
    )
}

fn redis_unit(registry: &str) -> String {
    format!(
        "[Unit]\n\
         Description=redis on the db node\n\
         After=docker.service\n\
         Requires=docker.service\n\n\
         [Service]\n\
         TimeoutStartSec=0\n\
         ExecStartPre=-/usr/bin/docker kill redis\n\
         ExecStartPre=-/usr/bin/docker rm redis\n\
         ExecStartPre=/usr/bin/docker pull {registry}/redis\n\
         ExecStart=/usr/bin/docker run --name redis {registry}/redis\n\
         ExecStop=/usr/bin/docker stop redis\n\n\
         [X-Fleet]\n\
         MachineMetadata=compute=db\n"
    )
}

/// The sidekick: nginx's container address under /services/web/<host> with a 20 s lease kept
/// alive while it runs.
fn sidekick_unit(endpoints: &str) -> String {
    format!(
        "[Unit]\n\
         Description=announce nginx\n\
         BindsTo=nginxweb.service\n\
         After=nginxweb.service\n\n\
         [Service]\n\
         Environment=ETCDCTL_API=3\n\
         ExecStart=/bin/sh -c 'until ip=$(docker inspect -f \"{{{{.NetworkSettings.IPAddress}}}}\" nginx) && [ -n \"$ip\" ]; do sleep 1; done; \
lease=$(etcdctl --endpoints {endpoints} lease grant 20 | cut -d\" \" -f2); \
etcdctl --endpoints {endpoints} put --lease=$lease /services/web/$(hostname) $ip && \
exec etcdctl --endpoints {endpoints} lease keep-alive $lease'\n\
         ExecStop=/bin/sh -c 'etcdctl --endpoints {endpoints} del /services/web/$(hostname)'\n\
         Restart=on-failure\n\
         RestartSec=2\n\n\
         [X-Fleet]\n\
         MachineOf=nginxweb.service\n"
    )
}

fn book_metadata() -> Result<Vec<BTreeMap<String, String>>> {
    [
        "compute=web,rack=rack1",
        "compute=web,rack=rack2",
        "compute=db,rack=rack3",
    ]
    .iter()
    .map(|text| parse_metadata(text).map_err(Into::into))
    .collect()
}

/// Prints each step with the time since the last one and since the start.
struct Steps {
    start: Instant,
    last: Instant,
}

impl Steps {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
        }
    }

    fn done(&mut self, what: &str) {
        let now = Instant::now();
        println!(
            "[{:6.1}s +{:5.1}s] {what}",
            (now - self.start).as_secs_f64(),
            (now - self.last).as_secs_f64()
        );
        self.last = now;
    }
}

#[test]
fn books_docker_units_registry_sidekick_and_failover_on_debian_guests() -> Result<()> {
    let name = "books_docker_units_registry_sidekick_and_failover_on_debian_guests";
    if std::env::var(ENABLE_ENV).as_deref() != Ok("1") {
        println!("SKIPPED {name}: the long form; set {ENABLE_ENV}=1");
        return Ok(());
    }
    if skip(name) {
        return Ok(());
    }
    let _one_cluster_at_a_time = exclusive();
    let mut steps = Steps::new();
    let tarballs: Vec<_> = images::ALL
        .iter()
        .map(|recipe| images::rootfs(recipe).map(|tarball| (recipe, tarball)))
        .collect::<Result<_, _>>()?;
    steps.done("image roots built or found in the cache");
    let spec = ClusterSpec {
        image: GuestImage::Debian,
        nodes: 3,
        masters: 3,
        metadata: book_metadata()?,
        memory_mib: 1024,
        // Under TCG on a shared 2-core machine a Debian boot took up to 150 s per node.
        boot_timeout: Duration::from_secs(600),
        secure: false,
        ..ClusterSpec::default()
    };
    let mut scenario = Scenario::boot(&spec)?;
    scenario
        .cluster
        .wait_ready(
            Duration::from_secs(240),
            &mut shoal_vm_tests::print_progress,
        )
        .context("waiting for every agent's /readyz")?;
    steps.done("three Debian guests booted, agents ready");
    for index in 0..3 {
        let docker = docker_on_the_lease(&scenario, index)?;
        println!("{}: {docker}", scenario.node_name(index));
    }
    steps.done("cloud-config's docker.service (systemd, flannel's drop-in) on every lease");
    let endpoints = scenario.cluster.store_endpoints();
    let node_ip = |index: usize| scenario.cluster.nodes()[index].address().to_string();
    let registry = format!("{}:5000", node_ip(0));

    let unit = scenario.unit("registry.service", &registry_unit())?;
    start(&scenario, &[&unit])?;
    wait_until("the registry serving", Duration::from_secs(120), || {
        let out = scenario
            .cluster
            .host_command("curl")
            .args(["-sf", "-m", "3", &format!("http://{registry}/v2/")])
            .output()?;
        Ok(out.status.success().then_some(()))
    })?;
    steps.done("registry.service serving on n1:5000");

    let dir = tempfile::tempdir_in("/dev/shm")?;
    let pusher = Dockerd::start(
        scenario.cluster.namespace_name(),
        dir.path(),
        &dir.path().join("docker.sock"),
        // It only pushes: no bridge, and no iptables rules, whose FORWARD policy of DROP
        // would cut the VMs' bridged traffic in the cluster's namespace.
        &["--iptables=false".to_string(), "--bridge=none".to_string()],
        &[&registry],
    )?;
    for (recipe, tarball) in &tarballs {
        let image = format!("{registry}/{}", recipe.name);
        pusher.import(tarball, &image, recipe.changes)?;
        pusher.docker(&["push", &image])?;
    }
    drop(pusher);
    steps.done("busybox, nginx and redis pushed into the cluster's registry");

    let hello = scenario.unit("helloglobal.service", &hello_unit(&registry))?;
    start(&scenario, &[&hello])?;
    scenario.wait_unit_running("helloglobal.service", Duration::from_secs(300), |ips| {
        ips.len() == 3
    })?;
    wait_until(
        "Hello World in every node's container",
        Duration::from_secs(120),
        || {
            for index in 0..3 {
                let logs = scenario.in_node(index, "docker logs --tail 1 hello 2>&1")?;
                if !logs.contains("Hello World") {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )?;
    steps.done("helloglobal.service: a busybox container on all three");

    let web = scenario.unit("nginxweb.service", &nginx_unit(&registry))?;
    let db = scenario.unit("nginxdb.service", &redis_unit(&registry))?;
    let side = scenario.unit("nginxweb-announce.service", &sidekick_unit(&endpoints))?;
    start(&scenario, &[&web, &db, &side])?;
    let db_ip = node_ip(2);
    scenario.wait_unit_running("nginxdb.service", Duration::from_secs(400), |ips| {
        ips == [db_ip.clone()]
    })?;
    let web_ips =
        scenario.wait_unit_running("nginxweb.service", Duration::from_secs(400), |ips| {
            ips.len() == 1 && ips[0] != db_ip
        })?;
    let first_web = scenario
        .node_with_ip(&web_ips[0])
        .context("nginx on an unknown machine")?;
    steps.done(&format!(
        "nginxweb.service on {}, nginxdb.service on n3",
        scenario.node_name(first_web)
    ));
    println!("{}", scenario.fleetctl(&["list-units"])?);
    for index in 0..3 {
        println!(
            "docker ps on {}:\n{}",
            scenario.node_name(index),
            scenario.in_node(
                index,
                "docker ps --format '{{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}'"
            )?
        );
    }

    let page = public_page(&scenario, &web_ips[0])?;
    ensure!(page.contains("Welcome to nginx!"), "{page}");
    steps.done("nginx answers on COREOS_PUBLIC_IPV4:8080");

    let announced = announced(&scenario, &endpoints, first_web)?;
    steps.done(&format!("the sidekick announced nginx at {announced}"));
    let capture = VxlanCapture::start(&scenario)?;
    let page = scenario.in_node(
        2,
        &format!("docker run --rm {registry}/busybox wget -q -O - http://{announced}/"),
    )?;
    ensure!(page.contains("Welcome to nginx!"), "{page}");
    let packets = capture.stop()?;
    let crossing: Vec<&String> = packets
        .iter()
        .filter(|line| line.contains("VXLAN") && line.contains(&format!("{announced}.80")))
        .collect();
    println!(
        "capture on the cluster's bridge ({} VXLAN packets), to and from nginx's container:",
        packets.len()
    );
    for line in crossing.iter().take(6) {
        println!("  {line}");
    }
    ensure!(
        crossing.len() >= 2,
        "no VXLAN packets to nginx's container on the bridge: {packets:#?}"
    );
    steps.done("a container on the db node fetched nginx's page over the overlay (VXLAN)");

    let redis_ip = scenario
        .in_node(
            2,
            "docker inspect -f '{{.NetworkSettings.IPAddress}}' redis",
        )?
        .trim()
        .to_string();
    let pong = scenario.in_node(
        first_web,
        &format!(
            "docker run --rm {registry}/busybox sh -c \"printf 'PING\\r\\n' | nc -w 3 {redis_ip} 6379\""
        ),
    )?;
    ensure!(pong.contains("+PONG"), "redis answered {pong:?}");
    steps.done(&format!(
        "a container on {} talked to redis ({redis_ip}) on the db node",
        scenario.node_name(first_web)
    ));

    let podman = podman_fetches(&scenario, 2, &registry, &announced)?;
    steps.done(&format!(
        "a podman container (CNI, on docker0 beside redis) on the db node fetched nginx's page: {podman}"
    ));

    scenario.power_off(first_web);
    let endpoints = scenario.endpoints().to_string();
    let moved =
        scenario.wait_unit_running("nginxweb.service", Duration::from_secs(400), |ips| {
            ips.len() == 1
                && ips[0] != db_ip
                && ips[0] != web_ips[0]
                && scenario.node_with_ip(&ips[0]).is_some()
        })?;
    let second_web = scenario
        .node_with_ip(&moved[0])
        .context("nginx moved to an unknown machine")?;
    steps.done(&format!(
        "web node powered off: nginx back on {}",
        scenario.node_name(second_web)
    ));
    let announced = self::announced(&scenario, &endpoints, second_web)?;
    let page = public_page(&scenario, &moved[0])?;
    ensure!(page.contains("Welcome to nginx!"), "{page}");
    steps.done(&format!(
        "announced anew at {announced}, answering on :8080"
    ));
    println!("{}", scenario.fleetctl(&["list-units"])?);
    Ok(())
}

/// `fleetctl start`, retried: under TCG a store member can miss fleetctl's 3 s deadline.
fn start(scenario: &Scenario, units: &[&std::path::Path]) -> Result<()> {
    let paths = units
        .iter()
        .map(|unit| path(unit))
        .collect::<Result<Vec<_>>>()?;
    let mut args = vec!["start"];
    args.extend(paths);
    wait_until("fleetctl start", Duration::from_secs(60), || {
        scenario.fleetctl(&args).map(|_| Some(()))
    })
}

fn path(file: &std::path::Path) -> Result<&str> {
    file.to_str().context("unit path is not UTF-8")
}

fn public_page(scenario: &Scenario, ip: &str) -> Result<String> {
    wait_until("nginx on :8080", Duration::from_secs(120), || {
        let out = scenario
            .cluster
            .host_command("curl")
            .args(["-sf", "-m", "5", &format!("http://{ip}:8080/")])
            .output()?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })
}

fn announced(scenario: &Scenario, endpoints: &str, index: usize) -> Result<String> {
    let key = format!("/services/web/{}", scenario.node_name(index));
    wait_until("nginx's announcement", Duration::from_secs(120), || {
        let value = scenario.etcdctl(endpoints, &["get", &key, "--print-value-only"])?;
        Ok(value
            .trim()
            .starts_with("10.244.")
            .then(|| value.trim().to_string()))
    })
}

/// Docker on node `index` as the cloud-config's `coreos.units` started it through systemd:
/// active, with flannel's drop-in, its bridge on the node's lease, its addresses in the lower
/// half (`--fixed-cidr`). Returns a line saying so.
fn docker_on_the_lease(scenario: &Scenario, index: usize) -> Result<String> {
    wait_until(
        "docker.service on the lease",
        Duration::from_secs(300),
        || {
            let out = scenario.cluster.exec(
                index,
                "systemctl is-active docker.service; \
             systemctl show -p DropInPaths --value docker.service; \
             ip -o -4 addr show dev docker0 | awk '{print $4}'; ps -o args= -C dockerd",
                Duration::from_secs(30),
            )?;
            let lines: Vec<&str> = out.output.lines().map(str::trim).collect();
            let ready = lines.first() == Some(&"active")
                && lines.iter().any(|line| line.contains("40-flannel.conf"))
                && lines.iter().any(|line| line.starts_with("10.244."))
                && lines
                    .iter()
                    .any(|line| line.contains("--fixed-cidr=10.244."));
            Ok(ready.then(|| lines.join(" | ")))
        },
    )
}

/// podman on node `index` (which also runs Docker) runs a busybox container through shoal as
/// flannel's CNI plugin (`/opt/cni/bin/flannel`, which `shoal install` links) and fetches
/// nginx's page at `nginx`; returns the container's address, which must be in the upper half
/// of the node's lease (Docker's `--fixed-cidr` has the lower half).
fn podman_fetches(
    scenario: &Scenario,
    index: usize,
    registry: &str,
    nginx: &str,
) -> Result<String> {
    let conflist =
        r#"{"cniVersion":"1.0.0","name":"shoal-overlay","plugins":[{"type":"flannel"}]}"#;
    let script = format!(
        "mkdir -p /etc/cni/net.d && echo '{conflist}' > /etc/cni/net.d/10-shoal.conflist && \
         podman --network-backend cni pull -q --tls-verify=false {registry}/busybox >/dev/null && \
         podman --network-backend cni run --rm --network shoal-overlay \
           --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 {registry}/busybox \
           sh -c 'ip -o -4 addr show dev eth0; timeout 10 wget -q -O - http://{nginx}/'"
    );
    let out = scenario
        .cluster
        .exec(index, &script, Duration::from_secs(240))
        .context("podman run")?;
    ensure!(
        out.success(),
        "podman on {}: {}",
        scenario.node_name(index),
        out.output
    );
    ensure!(out.output.contains("Welcome to nginx!"), "{}", out.output);
    let address = out
        .output
        .split_whitespace()
        .find_map(|word| {
            word.strip_suffix("/24")
                .filter(|ip| ip.starts_with("10.244."))
        })
        .context("the podman container's address")?
        .to_string();
    let last: u8 = address
        .rsplit('.')
        .next()
        .and_then(|octet| octet.parse().ok())
        .context("an IPv4 address")?;
    ensure!(
        last >= 128,
        "podman's {address} is not in the upper half of the lease"
    );
    Ok(address)
}

/// tcpdump on the cluster's bridge (the host side of every VM's tap), VXLAN only.
struct VxlanCapture {
    child: std::process::Child,
    /// Held open: tcpdump reports its counts there on exit (a closed pipe would kill it).
    _stderr: std::io::BufReader<std::process::ChildStderr>,
}

impl VxlanCapture {
    fn start(scenario: &Scenario) -> Result<Self> {
        use std::io::BufRead;
        let mut child = scenario
            .cluster
            .host_command("tcpdump")
            .args(["-i", shoal_vm::netns::BRIDGE, "-nn", "-l", "-T", "vxlan"])
            .args(["-s", "256", "udp", "port", "8472"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        let mut stderr = std::io::BufReader::new(child.stderr.take().context("tcpdump's stderr")?);
        // "verbose output suppressed ..." comes first when printing, then "listening on".
        let mut said = String::new();
        for _ in 0..3 {
            if stderr.read_line(&mut said)? == 0 || said.contains("listening on") {
                break;
            }
        }
        ensure!(said.contains("listening on"), "tcpdump: {said}");
        Ok(Self {
            child,
            _stderr: stderr,
        })
    }

    /// Stops the capture; its packets, one line each (outer and inner headers joined).
    fn stop(self) -> Result<Vec<String>> {
        std::thread::sleep(Duration::from_millis(500));
        std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .context("stopping tcpdump")?;
        let output = self.child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut packets: Vec<String> = Vec::new();
        for line in text.lines() {
            match packets.last_mut() {
                Some(last) if !line.as_bytes().first().is_some_and(u8::is_ascii_digit) => {
                    last.push(' ');
                    last.push_str(line.trim());
                }
                _ => packets.push(line.to_string()),
            }
        }
        Ok(packets)
    }
}
