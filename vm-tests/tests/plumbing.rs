//! The VM plumbing on its own, whatever state the agent is in: two nodes boot from the Debian
//! kernel and the busybox initramfs, run the shared shoal binary, reach each other and the host
//! over the cluster's private network, and everything is gone after the cluster is dropped.
use std::time::Duration;

use anyhow::{Result, ensure};
use shoal_vm::{ClusterSpec, VmCluster};
use shoal_vm_tests::{exclusive, namespace_exists, print_progress, skip};

#[test]
fn two_vms_boot_network_and_clean_up() -> Result<()> {
    if skip("two_vms_boot_network_and_clean_up") {
        return Ok(());
    }
    let _one_cluster_at_a_time = exclusive();
    let spec = ClusterSpec {
        nodes: 2,
        masters: 1,
        ..ClusterSpec::default()
    };
    let cluster = VmCluster::up(&spec, &mut print_progress)?;
    let namespace = cluster.namespace_name().to_string();
    let timeout = Duration::from_secs(30);

    let version = cluster.exec(0, "shoal version", timeout)?;
    ensure!(
        version.success() && version.output.starts_with("shoal "),
        "shoal version in the guest: {version:?}"
    );
    let peer = cluster.nodes()[1].address();
    let ping = cluster.exec(0, &format!("ping -c 3 -W 2 {peer}"), timeout)?;
    ensure!(ping.success(), "n1 cannot ping n2: {}", ping.output);
    let host = shoal_vm::netns::host_address(cluster.id());
    let ping = cluster.exec(1, &format!("ping -c 1 -W 2 {host}"), timeout)?;
    ensure!(
        ping.success(),
        "n2 cannot ping the host side: {}",
        ping.output
    );
    let mounts = cluster.exec(1, "grep ' /mnt/shoal 9p ' /proc/mounts", timeout)?;
    ensure!(
        mounts.output.contains("ro,"),
        "the share is not read-only: {}",
        mounts.output
    );
    let etcdctl = cluster.exec(0, "etcdctl version", timeout)?;
    ensure!(
        etcdctl.success(),
        "etcdctl in the guest: {}",
        etcdctl.output
    );
    let bpf = cluster.exec(0, "grep -c ' /sys/fs/bpf bpf ' /proc/mounts", timeout)?;
    ensure!(bpf.success(), "bpffs is not mounted in the guest");

    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid()).collect();
    drop(cluster);
    ensure!(
        !namespace_exists(&namespace),
        "namespace {namespace} left behind"
    );
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        ensure!(!status.contains("qemu"), "qemu {pid} left behind");
    }
    Ok(())
}
