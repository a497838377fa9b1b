//! fleet on a 3-node harness cluster: etcd 3.4 in node 0's namespace, `shoal-fleet fleetd`
//! processes in every node (each with its own address on the underlay), fleetctl run as a
//! process. Prints the fleetctl session it drives.

mod common;

use std::{
    path::PathBuf,
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use shoal_harness::{Cluster, Node, StoreCluster, StoreKind};
use shoal_scheduler::agent::supervisor::kill_recorded_units;

const BIN: &str = env!("CARGO_BIN_EXE_shoal-fleet");

struct Daemon {
    child: Option<Child>,
    data_dir: PathBuf,
}

impl Daemon {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        kill_recorded_units(&self.data_dir);
    }
}

struct Fleet {
    daemons: Vec<Daemon>,
    store: Option<StoreCluster>,
    endpoint: String,
    _dirs: tempfile::TempDir,
    cluster: Cluster,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.daemons.clear();
        self.store = None;
    }
}

fn spawn_in(node: &Node, args: &[String]) -> Child {
    node.ns()
        .command(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning shoal-fleet in a node")
}

impl Fleet {
    fn start() -> Self {
        let cluster = Cluster::builder()
            .nodes(3)
            .container_supernet(None)
            .build()
            .expect("harness cluster");
        let dirs = tempfile::tempdir().expect("temp dir");
        let store_ip = cluster.node(0).underlay_ip();
        let store = StoreCluster::in_namespace(StoreKind::Etcd, cluster.node(0).ns(), store_ip);
        let mut fleet = Self {
            daemons: Vec::new(),
            endpoint: store.client_url(0),
            store: Some(store),
            _dirs: dirs,
            cluster,
        };
        let metadata = [
            "rack=rack1,compute=web",
            "rack=rack2,compute=web",
            "rack=rack3,compute=db",
        ];
        for (index, meta) in metadata.iter().enumerate() {
            let data_dir = fleet._dirs.path().join(format!("node{index}"));
            let args: Vec<String> = [
                "fleetd",
                "--etcd-servers",
                &fleet.endpoint,
                "--machine-id",
                &common::machine_id(index),
                "--metadata",
                meta,
                "--agent-ttl",
                "3s",
                "--data-dir",
                &data_dir.display().to_string(),
                "--unit-runtime",
                "supervisor",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let child = spawn_in(fleet.cluster.node(index), &args);
            fleet.daemons.push(Daemon {
                child: Some(child),
                data_dir,
            });
        }
        fleet
    }

    /// Runs fleetctl in node 0 and returns its output.
    fn fleetctl(&self, args: &[&str]) -> Output {
        let mut full = vec!["fleetctl", "--endpoint", &self.endpoint];
        full.extend_from_slice(args);
        let output = self
            .cluster
            .node(0)
            .ns()
            .command(BIN)
            .args(&full)
            .env("RUST_LOG", "warn")
            .output()
            .expect("running fleetctl");
        println!("$ fleetctl {}", args.join(" "));
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        output
    }

    fn fleetctl_ok(&self, args: &[&str]) -> String {
        let output = self.fleetctl(args);
        assert!(output.status.success(), "fleetctl {args:?} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `fleetctl journal -f` for `duration` and returns what it printed.
    fn follow_journal(&self, unit: &str, duration: Duration) -> String {
        let mut child = self
            .cluster
            .node(0)
            .ns()
            .command(BIN)
            .args([
                "fleetctl",
                "--endpoint",
                &self.endpoint,
                "journal",
                "-f",
                "--lines",
                "1",
                unit,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("fleetctl journal -f");
        std::thread::sleep(duration);
        let _ = child.kill();
        let output = child.wait_with_output().expect("journal -f output");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        println!("$ fleetctl journal -f --lines 1 {unit}   # for {duration:?}");
        print!("{text}");
        text
    }

    fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        args: &[&str],
        test: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let output = self
                .cluster
                .node(0)
                .ns()
                .command(BIN)
                .arg("fleetctl")
                .args(["--endpoint", &self.endpoint])
                .args(args)
                .output()
                .expect("fleetctl");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() && test(&stdout) {
                return stdout;
            }
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}; last output:\n{stdout}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

#[test]
fn fleetctl_session_on_three_harness_nodes() {
    let fleet = Fleet::start();
    let machines = fleet.wait_for(
        "3 machines",
        Duration::from_secs(30),
        &["list-machines", "--no-legend"],
        |out| out.lines().count() == 3,
    );
    for ip in ["10.99.0.1", "10.99.0.2", "10.99.0.3"] {
        assert!(machines.contains(ip), "{ip} missing from\n{machines}");
    }
    fleet.fleetctl_ok(&["list-machines"]);

    let units = tempfile::tempdir().expect("temp dir");
    let hello = units.path().join("hello.service");
    std::fs::write(
        &hello,
        "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sh -c 'while true; do echo Hello from $(hostname -I); sleep 1; done'\n\n\
         [X-Fleet]\nMachineMetadata=compute=web\n",
    )
    .expect("unit file");
    let hello = hello.display().to_string();
    fleet.fleetctl_ok(&["submit", &hello]);
    fleet.fleetctl_ok(&["list-unit-files"]);
    let started = fleet.fleetctl_ok(&["start", "--block-attempts", "60", "hello.service"]);
    assert!(
        started.contains("Unit hello.service launched on"),
        "{started}"
    );
    let units_table = fleet.fleetctl_ok(&["list-units"]);
    let first_ip = if units_table.contains("10.99.0.1") {
        "10.99.0.1"
    } else {
        "10.99.0.2"
    };
    assert!(
        units_table.contains("active") && units_table.contains("running"),
        "{units_table}"
    );
    assert!(
        !units_table.contains("10.99.0.3"),
        "web unit on the db node:\n{units_table}"
    );
    fleet.wait_for(
        "output in the journal",
        Duration::from_secs(15),
        &["journal", "hello.service"],
        |out| out.contains("Hello from"),
    );
    fleet.fleetctl_ok(&["journal", "--lines", "3", "hello.service"]);
    let followed = fleet.follow_journal("hello.service", Duration::from_millis(3500));
    assert!(
        followed.matches("Hello from").count() >= 3,
        "journal -f printed:\n{followed}"
    );
    fleet.fleetctl_ok(&["status", "hello.service"]);

    // Kill the node running hello.service: it moves to the other web node.
    let victim = if first_ip == "10.99.0.1" { 0 } else { 1 };
    let survivor_ip = if victim == 0 {
        "10.99.0.2"
    } else {
        "10.99.0.1"
    };
    println!("# kill -9 fleetd on node {victim} ({first_ip})");
    let mut fleet = fleet;
    fleet.daemons[victim].kill();
    let killed_at = Instant::now();
    fleet.wait_for(
        "hello.service to move",
        Duration::from_secs(20),
        &["list-units", "--no-legend"],
        |out| out.contains(survivor_ip) && out.contains("running") && !out.contains(first_ip),
    );
    println!(
        "# moved {:.1} s after the kill (TTL 3 s)",
        killed_at.elapsed().as_secs_f64()
    );
    fleet.fleetctl_ok(&["list-machines"]);
    fleet.fleetctl_ok(&["list-units"]);
    // An instance started from a local template file, its specifiers expanded.
    let template = units.path().join("echo@.service");
    std::fs::write(
        &template,
        "[Service]\nExecStart=/bin/sh -c 'echo instance %i of %p; exec sleep 600'\n[X-Fleet]\nMachineMetadata=compute=db\n",
    )
    .expect("template file");
    let instance = units.path().join("echo@7.service").display().to_string();
    let started = fleet.fleetctl_ok(&["start", "--block-attempts", "60", &instance]);
    assert!(
        started.contains("Unit echo@7.service launched on 12020202.../10.99.0.3"),
        "{started}"
    );
    fleet.wait_for(
        "instance output",
        Duration::from_secs(15),
        &["journal", "echo@7.service"],
        |out| out.contains("instance 7 of echo"),
    );
    fleet.fleetctl_ok(&["list-unit-files", "--fields", "unit,dstate,state,target"]);
    fleet.fleetctl_ok(&["destroy", "hello.service", "echo@7.service"]);
    fleet.wait_for(
        "no units",
        Duration::from_secs(15),
        &["list-units", "--no-legend"],
        |out| out.trim().is_empty(),
    );
}
