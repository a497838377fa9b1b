//! fleetd started as CoreOS's fleet.service started it (fleet 1.0's `-underscore_names`,
//! `FLEET_*` variables, a fleet.conf) against a store with auth enabled (etcd 3.4, shoal kv): the store user and
//! password reach the store client, the precedence is flag > environment > file, and fleetctl
//! without credentials is refused with etcd's reason.

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use shoal_harness::{Process, StoreCluster, StoreKind, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-fleet");
const MACHINE_ID: &str = "c0ffee00c0ffee00c0ffee00c0ffee00";

fn fleetctl(endpoint: &str, credentials: &[&str]) -> Output {
    Command::new(BIN)
        .args(["fleetctl", "--endpoint", endpoint, "--request-timeout", "2"])
        .args(credentials)
        .args(["list-machines", "--full", "--fields", "machine,ip,metadata"])
        .env_remove("FLEETCTL_ETCD_USERNAME")
        .env_remove("FLEETCTL_ETCD_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("running fleetctl")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn against_etcd_with_auth() {
    fleetd_with_fleet_spellings_and_credentials(StoreKind::Etcd);
}

#[test]
fn against_shoal_kv_with_auth() {
    fleetd_with_fleet_spellings_and_credentials(StoreKind::ShoalKv);
}

fn fleetd_with_fleet_spellings_and_credentials(kind: StoreKind) {
    let etcd = StoreCluster::start(kind, 1);
    let endpoint = etcd.client_url(0);
    etcd.ctl(&["user", "add", "root:pw"]).expect("user add");
    etcd.ctl(&["auth", "enable"]).expect("auth enable");

    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("fleet.conf");
    let conf_text = format!(
        "etcd_servers=[\"{endpoint}\"]\nmetadata=\"source=file\"\npublic_ip=\"10.9.9.9\"\n\
         etcd_password=wrong\n"
    );
    std::fs::write(&conf, conf_text).expect("write fleet.conf");
    let data_dir = dir.path().join("data");
    let _fleetd = Process::spawn(
        "fleetd",
        Command::new(BIN)
            .arg("fleetd")
            .arg(format!("-config={}", conf.display()))
            .args(["-public_ip", "10.1.2.3", "-agent_ttl=5s"])
            .arg(format!("-machine_id={MACHINE_ID}"))
            .arg(format!("-data_dir={}", data_dir.display()))
            .arg("-unit_runtime=supervisor")
            .env("FLEET_ETCD_USERNAME", "root")
            .env("FLEET_ETCD_PASSWORD", "pw")
            .env("FLEET_METADATA", "source=env")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    );

    let with_password = ["--etcd-username", "root", "--etcd-password", "pw"];
    let listed = wait_for("fleetd's machine listed", Duration::from_secs(20), || {
        let output = fleetctl(&endpoint, &with_password);
        let listing = text(&output);
        (output.status.success() && listing.contains(MACHINE_ID)).then_some(listing)
    });
    assert!(listed.contains("10.1.2.3"), "the flag wins: {listed}");
    assert!(
        listed.contains("source=env"),
        "the environment wins over the file: {listed}"
    );

    let refused = fleetctl(&endpoint, &[]);
    assert!(
        !refused.status.success(),
        "no credentials: {}",
        text(&refused)
    );
    assert!(
        text(&refused).contains("user name is empty"),
        "etcd's reason: {}",
        text(&refused)
    );
    let wrong = fleetctl(
        &endpoint,
        &["--etcd-username", "root", "--etcd-password", "nope"],
    );
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("authentication failed"),
        "etcd's reason: {}",
        text(&wrong)
    );
}
