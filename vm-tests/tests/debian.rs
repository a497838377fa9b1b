//! The full Debian guest (systemd as PID 1): `shoal install` puts the binary, the config and
//! shoal.service in place and starts it; once the agent is ready, fleet runs a unit through
//! the node's systemd.
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use shoal_vm::{ClusterSpec, GuestImage};
use shoal_vm_tests::{Scenario, exclusive, print_progress, skip, wait_until};

const PROBE_UNIT: &str = "[Unit]
Description=a unit fleet hands to systemd

[Service]
ExecStart=/bin/sh -c 'while true; do sleep 5; done'
";

#[test]
fn debian_guest_runs_shoal_install_and_fleet_units_under_systemd() -> Result<()> {
    if skip("debian_guest_runs_shoal_install_and_fleet_units_under_systemd") {
        return Ok(());
    }
    let _one_cluster_at_a_time = exclusive();
    let spec = ClusterSpec {
        image: GuestImage::Debian,
        nodes: 1,
        masters: 1,
        boot_timeout: Duration::from_secs(180),
        ..ClusterSpec::default()
    };
    let mut scenario = Scenario::boot(&spec)?;

    let init = scenario.in_node(0, "cat /proc/1/comm")?;
    ensure!(init.trim() == "systemd", "PID 1 is {init:?}, not systemd");
    let enabled = scenario.in_node(0, "systemctl is-enabled shoal.service")?;
    ensure!(enabled.trim() == "enabled", "shoal.service is {enabled:?}");
    scenario
        .in_node(0, "cmp /usr/local/bin/shoal /mnt/shoal/shoal")
        .context("the installed binary differs from the shared one")?;
    scenario
        .in_node(
            0,
            "cmp /etc/shoal/agent.yaml /mnt/shoal/nodes/n1/cloud-config.yaml",
        )
        .context("the installed config differs from the node's")?;

    scenario
        .cluster
        .wait_ready(Duration::from_secs(120), &mut print_progress)
        .context("waiting for the agent installed as shoal.service")?;
    let unit = scenario.unit("probe.service", PROBE_UNIT)?;
    scenario.fleetctl(&["start", unit.to_str().context("unit path is not UTF-8")?])?;
    wait_until(
        "probe.service active in the node's systemd",
        Duration::from_secs(60),
        || {
            let state = scenario.cluster.exec(
                0,
                "systemctl is-active probe.service",
                Duration::from_secs(20),
            )?;
            Ok((state.output.trim() == "active").then_some(()))
        },
    )?;
    Ok(())
}
