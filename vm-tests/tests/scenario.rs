//! The scenario the CoreOS book walks through (issue #7), end to end on a three-node
//! vm-cluster: metadata-driven placement, a Global unit, a web workload reached over the
//! overlay from another node, a sidekick announcing it in the store under a lease, failover
//! of the web unit when its node loses power, and the store surviving a master down.
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use shoal_vm::{ClusterSpec, config::parse_metadata};
use shoal_vm_tests::{Scenario, exclusive, skip, wait_until};

const HELLO: &str = "[Unit]
Description=hello on every machine

[Service]
ExecStart=/bin/sh -c 'while true; do echo hello from $(hostname); sleep 5; done'

[X-Fleet]
Global=true
";

/// A web server in a container on the overlay (see [`WEB_SH`]).
const WEB: &str = "[Unit]
Description=web server on the overlay

[Service]
ExecStart=/bin/sh /run/scenario/web.sh
ExecStopPost=/bin/rm -f /run/web.ip

[X-Fleet]
MachineMetadata=compute=web
Conflicts=web.service
";

/// The web container: leaves its overlay address in /run/web.ip for the sidekick and serves a
/// page naming the node, so the client can tell which one answered.
const WEB_SH: &str = r#"mkdir -p /run/www
hostname > /run/www/index.html
exec shoal run --name web -- /bin/sh -c '
ip -o -4 addr show dev eth0 | awk "{print \$4}" | cut -d/ -f1 > /run/web.ip
exec httpd -f -p 80 -h /run/www'
"#;

const DB: &str = "[Unit]
Description=database stand-in

[Service]
ExecStart=/bin/sh -c 'while true; do sleep 5; done'

[X-Fleet]
MachineMetadata=compute=db
";

/// The sidekick: announces the web container's address under /services/web/<node> with a
/// 10 s lease kept alive while it runs; removes it when stopped. A store error (a request timed
/// out on a busy TCG guest) ends it with an error, and fleet restarts it, as a real sidekick.
const SIDEKICK: &str = "[Unit]
Description=announce web
BindsTo=web.service
After=web.service

[Service]
ExecStart=/bin/sh /run/scenario/announce.sh
ExecStop=/bin/sh /run/scenario/unannounce.sh
Restart=on-failure
RestartSec=2

[X-Fleet]
MachineOf=web.service
";

fn announce_sh(endpoints: &str) -> String {
    format!(
        r#"set -e
export ETCDCTL_API=3
while [ ! -s /run/web.ip ]; do sleep 1; done
granted=$(etcdctl --endpoints {endpoints} lease grant 10)
lease=$(echo "$granted" | cut -d" " -f2)
[ -n "$lease" ]
etcdctl --endpoints {endpoints} put --lease="$lease" "/services/web/$(hostname)" "$(cat /run/web.ip)"
exec etcdctl --endpoints {endpoints} lease keep-alive "$lease"
"#
    )
}

fn unannounce_sh(endpoints: &str) -> String {
    format!("ETCDCTL_API=3 etcdctl --endpoints {endpoints} del \"/services/web/$(hostname)\"\n")
}

/// Puts the scripts the units run under /run/scenario on every node.
fn install_scripts(scenario: &Scenario, endpoints: &str) -> Result<()> {
    let scripts = [
        ("web.sh", WEB_SH.to_string()),
        ("announce.sh", announce_sh(endpoints)),
        ("unannounce.sh", unannounce_sh(endpoints)),
    ];
    for index in 0..scenario.cluster.nodes().len() {
        for (name, text) in &scripts {
            let script = format!(
                "mkdir -p /run/scenario\ncat > /run/scenario/{name} <<'SCRIPT'\n{text}SCRIPT\n"
            );
            scenario.in_node(index, &script)?;
        }
    }
    Ok(())
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

#[test]
fn coreos_book_scenario() -> Result<()> {
    if skip("coreos_book_scenario") {
        return Ok(());
    }
    let _one_cluster_at_a_time = exclusive();
    let spec = ClusterSpec {
        nodes: 3,
        masters: 3,
        metadata: book_metadata()?,
        // The book's units call etcdctl inside the guests without certificates.
        secure: false,
        ..ClusterSpec::default()
    };
    let mut scenario = Scenario::boot(&spec)?;
    let converged = scenario
        .cluster
        .wait_ready(
            Duration::from_secs(120),
            &mut shoal_vm_tests::print_progress,
        )
        .context("waiting for every agent's /readyz")?;
    println!(
        "converged {:.1}s after boot started",
        converged.as_secs_f64()
    );

    every_machine_listed(&scenario)?;
    let endpoints = scenario.cluster.store_endpoints();
    let health = scenario.etcdctl(&endpoints, &["endpoint", "health"])?;
    println!("{health}");
    let status = scenario.etcdctl(&endpoints, &["endpoint", "status", "-w", "table"])?;
    println!("{status}");
    ensure!(
        status.matches(" true |").count() == 1,
        "not exactly one member reports itself leader:\n{status}"
    );

    install_scripts(&scenario, &endpoints)?;

    step("a Global hello unit runs on all three nodes");
    let hello = scenario.unit("hello.service", HELLO)?;
    scenario.fleetctl(&["start", path(&hello)?])?;
    scenario.wait_unit_running("hello.service", Duration::from_secs(60), |ips| {
        ips.len() == 3
    })?;

    step("a web unit lands on a web node, a db unit on the db node");
    let web = scenario.unit("web.service", WEB)?;
    let db = scenario.unit("db.service", DB)?;
    let side = scenario.unit("web-announce.service", SIDEKICK)?;
    scenario.fleetctl(&["start", path(&web)?, path(&db)?, path(&side)?])?;
    let db_node = scenario.cluster.nodes()[2].address().to_string();
    scenario.wait_unit_running("db.service", Duration::from_secs(60), |ips| {
        ips == [db_node.clone()]
    })?;
    let web_ips = scenario.wait_unit_running("web.service", Duration::from_secs(60), |ips| {
        ips.len() == 1 && ips[0] != db_node
    })?;
    let first_web = scenario
        .node_with_ip(&web_ips[0])
        .context("web runs on an unknown machine")?;

    step("the sidekick announces the web container's overlay address under a lease");
    let announced = announced_address(&scenario, &endpoints, first_web)?;
    step("a client in a container on the db node reaches the web page over the overlay");
    let page = fetch_over_overlay(&scenario, 2, &announced)?;
    ensure!(
        page.trim() == scenario.node_name(first_web),
        "the page came from {page:?}, expected {}",
        scenario.node_name(first_web)
    );

    step("the web node loses power: web moves to the other web node within the TTL");
    scenario.power_off(first_web);
    // Only a machine that is one of ours counts: while the dead machine's keys expire,
    // list-units can show a row whose machine column holds no address of a node.
    let moved = scenario.wait_unit_running("web.service", Duration::from_secs(90), |ips| {
        ips.len() == 1
            && ips[0] != db_node
            && ips[0] != web_ips[0]
            && scenario.node_with_ip(&ips[0]).is_some()
    })?;
    let second_web = scenario
        .node_with_ip(&moved[0])
        .context("web moved to an unknown machine")?;
    let endpoints = scenario.endpoints().to_string();
    let announced = announced_address(&scenario, &endpoints, second_web)?;
    let page = fetch_over_overlay(&scenario, 2, &announced)?;
    ensure!(
        page.trim() == scenario.node_name(second_web),
        "after failover the page came from {page:?}"
    );

    step("the web unit stops: the sidekick removes its announcement");
    scenario.fleetctl(&["stop", "web.service"])?;
    let key = format!("/services/web/{}", scenario.node_name(second_web));
    wait_until("the announcement removed", Duration::from_secs(30), || {
        let value = scenario.etcdctl(&endpoints, &["get", &key, "--print-value-only"])?;
        Ok(value.trim().is_empty().then_some(()))
    })?;

    step("with one master down (the first web node) the store keeps serving");
    let alive: Vec<String> = scenario
        .cluster
        .nodes()
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != first_web)
        .map(|(_, node)| format!("http://{}:2379", node.address()))
        .collect();
    let alive = alive.join(",");
    scenario.etcdctl(
        &alive,
        &["put", "/scenario/one-master-down", "still-serving"],
    )?;
    let value = scenario.etcdctl(
        &alive,
        &["get", "/scenario/one-master-down", "--print-value-only"],
    )?;
    ensure!(value.trim() == "still-serving", "read back {value:?}");
    Ok(())
}

fn step(text: &str) {
    println!("--- {text}");
}

fn path(file: &std::path::Path) -> Result<&str> {
    file.to_str().context("unit path is not UTF-8")
}

fn every_machine_listed(scenario: &Scenario) -> Result<()> {
    let wanted = [
        "compute=web,rack=rack1",
        "compute=web,rack=rack2",
        "compute=db,rack=rack3",
    ];
    let listing = wait_until(
        "every machine in list-machines",
        Duration::from_secs(60),
        || {
            let listing = scenario.fleetctl(&["list-machines", "--no-legend", "--full"])?;
            Ok(wanted
                .iter()
                .all(|metadata| listing.contains(metadata))
                .then_some(listing))
        },
    )?;
    println!("{listing}");
    Ok(())
}

/// Waits for the sidekick's key of node `index` and returns the address it holds; checks the
/// key is attached to a lease. On a timeout the error carries the units' output on that node.
fn announced_address(scenario: &Scenario, endpoints: &str, index: usize) -> Result<String> {
    let key = format!("/services/web/{}", scenario.node_name(index));
    let address = wait_until("the web announcement", Duration::from_secs(60), || {
        let value = scenario.etcdctl(endpoints, &["get", &key, "--print-value-only"])?;
        Ok((!value.trim().is_empty()).then(|| value.trim().to_string()))
    })
    .with_context(|| unit_output(scenario, index, &["web.service", "web-announce.service"]))?;
    let listing = scenario.etcdctl(endpoints, &["get", &key, "-w", "json"])?;
    if !listing.contains("\"lease\"") {
        bail!("{key} is not under a lease: {listing}");
    }
    ensure!(
        address.starts_with("10.244."),
        "announced {address:?} is not an overlay address"
    );
    Ok(address)
}

/// The last lines fleet's supervisor kept of each unit's output on node `index`.
fn unit_output(scenario: &Scenario, index: usize, units: &[&str]) -> String {
    units
        .iter()
        .map(|unit| {
            let script = format!("tail -n 20 /var/lib/shoal/fleet/units/{unit}/output.log");
            let output = scenario
                .in_node(index, &script)
                .unwrap_or_else(|err| format!("{err:#}"));
            format!("{unit} on {}:\n{output}", scenario.node_name(index))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An HTTP GET of `http://address/` from a fresh container on node `client`; the body.
/// (With nc: busybox's static wget crashes in these guests under TCG.)
fn fetch_over_overlay(scenario: &Scenario, client: usize, address: &str) -> Result<String> {
    wait_until(
        "the web page over the overlay",
        Duration::from_secs(30),
        || {
            let script = format!(
                "shoal run --name client -- sh -c \"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {address} 80\""
            );
            let reply = scenario.in_node(client, &script)?;
            let (head, body) = reply
                .split_once("\r\n\r\n")
                .with_context(|| format!("no HTTP answer from {address}: {reply:?}"))?;
            ensure!(head.contains(" 200 "), "{address} answered {head:?}");
            Ok(Some(body.to_string()))
        },
    )
}
