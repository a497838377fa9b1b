//! The CoreOS book's container workflow on three Debian guests (systemd as PID 1, Docker
//! configured by the `docker.service` drop-in `shoal install` writes): the cluster's registry
//! as a fleet unit on a master, images built here from Debian's packages and pushed into it, a
//! Global busybox unit, nginx on a web node (`-p ${COREOS_PUBLIC_IPV4}:8080:80`) reached on
//! the node's address and, over the overlay, from a container on the db node, redis on the db
//! node reached from a container on a web node, a sidekick announcing nginx's container
//! address, and nginx moving to the other web node when its node loses power.
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
        boot_timeout: Duration::from_secs(300),
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
    let page = scenario.in_node(
        2,
        &format!("docker run --rm {registry}/busybox wget -q -O - http://{announced}/"),
    )?;
    ensure!(page.contains("Welcome to nginx!"), "{page}");
    steps.done("a container on the db node fetched nginx's page over the overlay");

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
