//! `cargo xtask setup`: make a fresh Debian 12 machine able to build, test and benchmark shoal.
//! Idempotent; when everything is present it only checks (well under 5 s).
//!
//! What and why (see ../shared/notes/ebpf-toolchain.md for the eBPF toolchain):
//! - rustc-web, cargo-web, rust-web-src, llvm-22-dev: Debian's rustc 1.96 with its sources, which
//!   `-Z build-std=core` needs for the BPF target; rustup cannot fetch `rust-src` here.
//! - bpf-linker 0.13 built against LLVM 22 (the LLVM of that rustc).
//! - the `bpf` rustup toolchain: a link to Debian's rustc in /usr, used by aya-build.
//! - peers and tools for tests and benchmarks: etcd, iperf3, sockperf, tshark, qemu...
//! - containers on the overlay: docker.io (dockerd, containerd, runc and the 20.10 client at
//!   /usr/bin/docker), podman (its CNI backend), docker-registry (distribution 2.8, the
//!   cluster's image registry); the images themselves are built from Debian's packages by the
//!   harness (`shoal_harness::images`).
use std::process::Command;

use anyhow::{Context, Result};

use crate::steps::Steps;

/// Debian packages the build, tests and benchmarks need.
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "iproute2",
    "iputils-ping",
    "netcat-openbsd",
    "socat",
    "ethtool",
    "kmod",
    "cpio",
    "etcd-server",
    "etcd-client",
    "iperf3",
    "sockperf",
    "tshark",
    "tcpdump",
    "qemu-system-x86",
    "busybox-static",
    "debootstrap",
    "e2fsprogs",
    "xz-utils",
    "zstd",
    "protobuf-compiler",
    "libprotobuf-dev",
    "python3-matplotlib",
    "nftables",
    "containernetworking-plugins",
    "openssl",
    "docker.io",
    "podman",
    "docker-registry",
    "curl",
    // jemalloc (tikv-jemalloc-sys) is compiled from C for the store's allocator.
    "make",
    "gcc",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";
const BPF_TOOLCHAIN: &str = "bpf";

pub fn run() -> Result<()> {
    let steps = Steps::new("setup")?;
    install_debian_packages(&steps)?;
    install_bpf_linker(&steps)?;
    link_bpf_toolchain(&steps)?;
    install_nextest(&steps)
}

fn install_nextest(steps: &Steps) -> Result<()> {
    let present = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if present {
        steps.skip("cargo-nextest present");
        return Ok(());
    }
    steps.run(
        "installing cargo-nextest (cargo install)",
        Command::new("cargo").args(["install", "cargo-nextest", "--locked"]),
    )
}

fn install_debian_packages(steps: &Steps) -> Result<()> {
    let missing = missing_debian_packages()?;
    if missing.is_empty() {
        steps.skip("Debian packages present");
        return Ok(());
    }
    steps.run(
        "updating apt's package lists",
        Command::new("apt-get").arg("update").arg("-q"),
    )?;
    steps.run(
        &format!("installing Debian packages: {}", missing.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn missing_debian_packages() -> Result<Vec<String>> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Status}\n"])
        .args(DEBIAN_PACKAGES)
        .output()
        .context("running dpkg-query")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.strip_suffix(" installed"))
        .collect();
    Ok(DEBIAN_PACKAGES
        .iter()
        .filter(|package| !installed.contains(package))
        .map(|package| package.to_string())
        .collect())
}

fn install_bpf_linker(steps: &Steps) -> Result<()> {
    let present = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION));
    if present {
        steps.skip(&format!("bpf-linker {BPF_LINKER_VERSION} present"));
        return Ok(());
    }
    let path = format!(
        "/usr/lib/llvm-{LLVM_MAJOR}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    steps.run(
        &format!("building bpf-linker {BPF_LINKER_VERSION} for LLVM {LLVM_MAJOR} (cargo install)"),
        Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--no-default-features"])
            .args(["--version", BPF_LINKER_VERSION])
            .args(["--features", &format!("llvm-{LLVM_MAJOR}")])
            .env("PATH", path),
    )
}

fn link_bpf_toolchain(steps: &Steps) -> Result<()> {
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup toolchain list")?;
    let listed = String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some(BPF_TOOLCHAIN));
    if listed {
        steps.skip(&format!("rustup toolchain `{BPF_TOOLCHAIN}` present"));
        return Ok(());
    }
    steps.run(
        &format!("linking rustup toolchain `{BPF_TOOLCHAIN}` to Debian's rustc in /usr"),
        Command::new("rustup").args(["toolchain", "link", BPF_TOOLCHAIN, "/usr"]),
    )
}
