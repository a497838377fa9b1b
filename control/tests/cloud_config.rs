//! `shoal agent --config` with a CoreOS `#cloud-config`: the book's examples pass `--check`,
//! an invalid one fails naming its line and key, and the book's three nodes in network
//! namespaces come up from theirs: the store's members, fleet machines with their metadata,
//! overlay leases, files with their mode and owner, a `coreos.units` unit run by the
//! supervisor (and adopted by a restarted agent), and one warning naming the keys not honoured.
use std::{os::unix::fs::MetadataExt as _, path::Path, process::Command, time::Duration};

use shoal_harness::{AgentOptions, Agents, Cluster, Node, binaries, wait_for};

fn check(path: &Path) -> std::process::Output {
    Command::new(binaries::shoal())
        .args(["agent", "--check", "--config"])
        .arg(path)
        .output()
        .expect("run shoal agent --check")
}

#[test]
fn the_books_three_nodes_pass_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cloud-config");
    for (name, metadata) in [
        ("node1.yaml", "compute=web,rack=rack1"),
        ("node2.yaml", "compute=web,rack=rack2"),
        ("node3.yaml", "compute=db,rack=rack3"),
    ] {
        let out = check(&dir.join(name));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for expected in [
            "valid #cloud-config",
            metadata,
            "etcd2.service: the agent runs a member of the store in its place",
            "flannel's network config",
            "docker.service, drop-ins 40-flannel.conf",
            "every key is honoured",
        ] {
            assert!(stdout.contains(expected), "{name}: {expected}\n{stdout}");
        }
    }
}

#[test]
fn check_fails_on_an_invalid_cloud_config_naming_line_and_key() {
    let temp = tempfile::tempdir().expect("tempdir");
    let path = temp.path().join("bad.yaml");
    std::fs::write(
        &path,
        "#cloud-config\ncoreos:\n  units:\n    - name: hello.service\n      command: launch\n",
    )
    .expect("write");
    let out = check(&path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:5: coreos.units[0].command: `launch` is not start",
            path.display()
        )),
        "{stderr}"
    );
}

fn etcdctl(node: &Node, args: &[&str]) -> Option<String> {
    let out = node
        .ns()
        .command("etcdctl")
        .args([
            "--endpoints",
            "http://127.0.0.1:2379",
            "--command-timeout",
            "3s",
        ])
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kills the cloud-config units the supervisor left running (they outlive the agent, as
/// fleet's do), also when the test fails.
struct UnitsGuard(std::path::PathBuf);

impl Drop for UnitsGuard {
    fn drop(&mut self) {
        shoal_scheduler::agent::supervisor::kill_recorded_units(&self.0);
    }
}

/// The book's metadata of node `index`.
fn book_metadata(index: usize) -> String {
    let compute = if index == 2 { "db" } else { "web" };
    format!("compute={compute},rack=rack{}", index + 1)
}

/// The cloud-config of `node` in a three-node cluster: everything of the book's nodes, with
/// the paths and identity a network-namespace node needs under `shoal:`.
fn node_cloud_config(cluster: &Cluster, node: &Node, agents_dir: &Path) -> String {
    let ip = node.underlay_ip();
    let initial_cluster: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("node{}=http://{}:2380", n.index() + 1, n.underlay_ip()))
        .collect();
    format!(
        r#"#cloud-config
coreos:
  etcd2:
    name: node{number}
    initial-cluster: {initial_cluster}
    initial-cluster-state: new
    initial-cluster-token: cloud-config-test
    listen-client-urls: http://0.0.0.0:2379
    advertise-client-urls: http://{ip}:2379
    listen-peer-urls: http://{ip}:2380
    initial-advertise-peer-urls: http://{ip}:2380
  fleet:
    public-ip: {ip}
    metadata: {metadata}
    agent-ttl: 5s
  flannel:
    interface: eth0
    subnet-file: {dir}/subnet.env
  update:
    reboot-strategy: off
  units:
    - name: etcd2.service
      command: start
    - name: fleet.service
      command: start
    - name: flanneld.service
      command: start
      drop-ins:
        - name: 50-network-config.conf
          content: |
            [Service]
            ExecStartPre=/usr/bin/etcdctl set /coreos.com/network/config '{{ "Network": "10.244.0.0/16", "Backend": {{ "Type": "vxlan" }} }}'
    - name: hello.service
      command: start
      content: |
        [Service]
        ExecStart=/bin/sh -c 'echo "hello from $COREOS_PUBLIC_IPV4" > {dir}/hello.out; exec sleep 600'
write_files:
  - path: {dir}/files/motd
    permissions: '0640'
    owner: nobody:nogroup
    content: |
      written by cloud-config
  - path: {dir}/files/encoded
    encoding: b64
    permissions: 0600
    content: aGVsbG8K
shoal:
  machine_id: {machine_id}
  data_dir: {dir}/data
  health:
    listen: 0.0.0.0:9901
  network:
    bpf_pin_root: {pins}
"#,
        number = node.index() + 1,
        initial_cluster = initial_cluster.join(","),
        metadata = book_metadata(node.index()),
        dir = Agents::node_dir_in(agents_dir, node.index()).display(),
        pins = Agents::pin_root_in(agents_dir, node.index()).display(),
        machine_id = Agents::machine_id(node),
    )
}

#[test]
fn the_books_nodes_come_up_from_cloud_configs() {
    let cluster = Cluster::builder()
        .nodes(3)
        .container_supernet(None)
        .build()
        .expect("cluster");
    let temp = tempfile::tempdir().expect("tempdir");
    let node = cluster.node(0);
    let dir = Agents::node_dir_in(temp.path(), 0);
    let configs: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|node| node_cloud_config(&cluster, node, temp.path()))
        .collect();
    let _units: Vec<UnitsGuard> = (0..3)
        .map(|index| UnitsGuard(Agents::node_dir_in(temp.path(), index).join("data/cloud-config")))
        .collect();
    let options = AgentOptions::new(binaries::shoal(), temp.path());
    let mut agents = Agents::start_with_configs(&cluster, options, configs).expect("start");

    let ready = agents
        .wait_ready(&cluster, Duration::from_secs(30), |_, _| {})
        .unwrap_or_else(|err| panic!("{err}\n{}", agents.logs()));
    eprintln!("3 cloud-config nodes ready after {ready:?}");

    let members = etcdctl(node, &["member", "list"]).expect("member list");
    assert_eq!(members.lines().count(), 3, "{members}");
    let leases = etcdctl(
        node,
        &[
            "get",
            "--prefix",
            "--keys-only",
            "/coreos.com/network/subnets/",
        ],
    )
    .expect("leases");
    assert_eq!(
        leases.lines().filter(|l| !l.is_empty()).count(),
        3,
        "one lease per node: {leases}"
    );
    let subnet_env = std::fs::read_to_string(dir.join("subnet.env")).expect("subnet.env");
    assert!(
        subnet_env.contains("FLANNEL_SUBNET=10.244."),
        "{subnet_env}"
    );

    let machines = node
        .ns()
        .command(binaries::shoal())
        .args(["fleetctl", "list-machines", "--no-legend"])
        .output()
        .expect("fleetctl");
    let machines = String::from_utf8_lossy(&machines.stdout);
    for node in cluster.nodes() {
        let line = machines
            .lines()
            .find(|line| line.contains(&node.underlay_ip().to_string()))
            .unwrap_or_else(|| panic!("{} not listed:\n{machines}", node.name()));
        assert!(line.contains(&book_metadata(node.index())), "{machines}");
    }

    let motd = dir.join("files/motd");
    let meta = std::fs::metadata(&motd).expect("motd written");
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("nobody");
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .ok()
        .flatten()
        .expect("nogroup");
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(
        (meta.uid(), meta.gid()),
        (nobody.uid.as_raw(), nogroup.gid.as_raw())
    );
    assert_eq!(
        std::fs::read_to_string(&motd).expect("read"),
        "written by cloud-config\n"
    );
    let encoded = dir.join("files/encoded");
    assert_eq!(std::fs::read(&encoded).expect("encoded"), b"hello\n");
    assert_eq!(
        std::fs::metadata(&encoded).expect("meta").mode() & 0o7777,
        0o600
    );

    let hello = wait_for("hello.service's output", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("hello.out")).ok()
    });
    assert_eq!(hello.trim(), format!("hello from {}", node.underlay_ip()));

    let log = std::fs::read_to_string(dir.join("agent.log")).expect("agent log");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("cloud-config keys not honoured"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("coreos.update (OS updates"),
        "{}",
        warnings[0]
    );

    // A restarted agent adopts the unit instead of starting it a second time.
    let run_record = dir.join("data/cloud-config/units/hello.service/run.json");
    let pid = || {
        let text = std::fs::read_to_string(&run_record).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["pid"].as_u64()
    };
    let before = pid().expect("hello.service's run record");
    agents.restart(&cluster, 0).expect("restart node1's agent");
    agents
        .wait_ready(&cluster, Duration::from_secs(30), |_, _| {})
        .unwrap_or_else(|err| panic!("{err}\n{}", agents.logs()));
    wait_for("the unit adopted", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("agent.log"))
            .ok()?
            .matches("cloud-config: unit loaded into the built-in supervisor")
            .nth(1)
            .map(|_| ())
    });
    assert_eq!(pid(), Some(before), "the same process runs hello.service");
}
