//! shoal as flannel's CNI plugin against Debian's real `bridge` and `host-local` plugins: a
//! node namespace (where the bridge goes) and a container namespace, both created here and
//! deleted on drop. ADD puts the container on the node's subnet with the overlay's MTU and a
//! route to the network, CHECK accepts the result, DEL removes it and stays idempotent; bad
//! configs and a missing subnet.env give CNI error objects.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::{Value, json};
use shoal_harness::{Namespace, binaries};

const DEBIAN_PLUGINS: &str = "/usr/lib/cni";

struct Setup {
    node: Namespace,
    container: Namespace,
    dir: tempfile::TempDir,
    plugin: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let id = std::process::id();
        let node = Namespace::create(format!("shoal-{id}-cninode")).expect("node namespace");
        let container = Namespace::create(format!("shoal-{id}-cnictr")).expect("container ns");
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let plugin = bin.join("flannel");
        std::os::unix::fs::symlink(binaries::shoal(), &plugin).expect("flannel symlink");
        std::fs::write(
            dir.path().join("subnet.env"),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n",
        )
        .expect("subnet.env");
        Self {
            node,
            container,
            dir,
            plugin,
        }
    }

    fn config(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "shoal-overlay",
            "type": "flannel",
            "subnetFile": self.dir.path().join("subnet.env"),
            "dataDir": self.dir.path().join("data"),
            "ipam": { "dataDir": self.dir.path().join("ipam") },
        })
    }

    /// Runs the plugin (as `flannel`) inside the node namespace.
    fn cni(&self, command: &str, container_id: &str, config: &Value) -> Output {
        let cni_path = format!(
            "{}:{DEBIAN_PLUGINS}",
            self.plugin.parent().expect("bin dir").display()
        );
        let mut plugin = self.node.command(&self.plugin);
        plugin
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env(
                "CNI_NETNS",
                format!("/var/run/netns/{}", self.container.name()),
            )
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni_path);
        with_stdin(&mut plugin, &config.to_string())
    }

    fn container_addresses(&self) -> String {
        self.container
            .ip(["-4", "-o", "addr", "show"])
            .expect("ip addr")
    }
}

/// Runs `command` with `stdin` as its input; its output, whatever its exit.
fn with_stdin(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing the config");
    child.wait_with_output().expect("plugin output")
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "{err}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn error_code(output: &Output) -> u64 {
    assert!(!output.status.success(), "should fail: {output:?}");
    json_of(output)["code"]
        .as_u64()
        .expect("an error object with a code")
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: stdout {} stderr {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn add_check_del_through_debians_bridge_and_host_local() {
    assert!(
        Path::new(DEBIAN_PLUGINS).join("bridge").exists(),
        "containernetworking-plugins is needed (apt-get install containernetworking-plugins)"
    );
    let setup = Setup::new();
    let config = setup.config();

    let added = setup.cni("ADD", "ctr1", &config);
    assert_success(&added, "ADD");
    let result = json_of(&added);
    assert_eq!(result["cniVersion"], "1.0.0");
    let address = result["ips"][0]["address"].as_str().expect("an address");
    assert!(
        address.starts_with("10.244.7.") && address.ends_with("/24"),
        "{result}"
    );
    assert_eq!(result["ips"][0]["gateway"], "10.244.7.1");
    let ip = address.trim_end_matches("/24");
    assert!(
        setup.container_addresses().contains(address),
        "{}",
        setup.container_addresses()
    );
    let link = setup.container.ip(["link", "show", "eth0"]).expect("eth0");
    assert!(link.contains("mtu 1400"), "the overlay's MTU: {link}");
    let routes = setup.container.ip(["-4", "route"]).expect("routes");
    assert!(
        routes.contains("10.244.0.0/16 via 10.244.7.1"),
        "route to the network: {routes}"
    );
    let ping = setup
        .container
        .output("ping", ["-c", "1", "-W", "2", "10.244.7.1"])
        .expect("ping");
    assert!(
        ping.status.success(),
        "the container reaches its gateway: {ping:?}"
    );
    assert!(
        setup.dir.path().join("data/ctr1").is_file(),
        "delegate config kept"
    );
    assert!(
        setup
            .dir
            .path()
            .join("ipam/shoal-overlay")
            .join(ip)
            .exists()
    );

    let mut with_prev = config.clone();
    with_prev["prevResult"] = result.clone();
    assert_success(&setup.cni("CHECK", "ctr1", &with_prev), "CHECK");
    setup
        .container
        .ip(["addr", "flush", "dev", "eth0"])
        .expect("flush");
    let broken = setup.cni("CHECK", "ctr1", &with_prev);
    error_code(&broken);
    let reason = json_of(&broken)["msg"].to_string();
    assert!(
        reason.contains(ip),
        "bridge's own reason passed on: {reason}"
    );

    // The lease moved: DEL still uses the config ctr1 was added with.
    std::fs::remove_file(setup.dir.path().join("subnet.env")).expect("remove subnet.env");
    assert_success(&setup.cni("DEL", "ctr1", &config), "DEL");
    assert!(!setup.container_addresses().contains(address));
    assert!(
        setup.container.ip(["link", "show", "eth0"]).is_err(),
        "eth0 gone"
    );
    assert!(!setup.dir.path().join("data/ctr1").exists());
    assert!(
        !setup
            .dir
            .path()
            .join("ipam/shoal-overlay")
            .join(ip)
            .exists(),
        "address freed"
    );
    assert_success(&setup.cni("DEL", "ctr1", &config), "DEL again");

    assert_eq!(
        error_code(&setup.cni("ADD", "ctr2", &config)),
        11,
        "no subnet.env yet"
    );
    let mut named = config.clone();
    named["delegate"] = json!({"name": "mine"});
    assert_eq!(error_code(&setup.cni("ADD", "ctr2", &named)), 7);
    assert_eq!(
        error_code(&setup.cni("CHECK", "ctr2", &with_prev)),
        3,
        "never added"
    );
}

#[test]
fn version_and_undecodable_config_as_shoal_cni() {
    let run = |command: &str, stdin: &str| {
        with_stdin(
            Command::new(binaries::shoal())
                .arg("cni")
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", "c")
                .env("CNI_NETNS", "/var/run/netns/none")
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", DEBIAN_PLUGINS),
            stdin,
        )
    };
    let version = run("VERSION", r#"{"cniVersion":"1.0.0"}"#);
    assert!(version.status.success());
    let info = json_of(&version);
    assert_eq!(info["cniVersion"], "1.0.0");
    assert!(
        info["supportedVersions"]
            .as_array()
            .expect("list")
            .contains(&json!("0.4.0"))
    );
    assert_eq!(error_code(&run("ADD", "{not json")), 6);
    assert_eq!(
        error_code(&run("ADD", r#"{"cniVersion":"2.0.0","name":"n"}"#)),
        1
    );
}
