//! The full Debian guest (`vm-cluster --image debian`): debootstrap minbase with systemd as
//! PID 1, so `shoal install` and fleet's systemd runtime run for real. One raw ext4 image,
//! built once without loop mounts (`mkfs.ext4 -d`) and shared by every VM with `snapshot=on`.
//! The busybox initramfs loads the disk modules and switches to it (`shoal.mode=root`); a
//! oneshot unit in the image then networks the node from the kernel command line, mounts the
//! 9p share and runs `shoal install --config` on the node's YAML.
use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    Error, IoContext, Result,
    image::{self, GUEST_MODULES, GuestKernel},
    run_visible,
};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Packages on top of minbase: the init system and what shoal and the tests use.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "kmod",
    "procps",
    "busybox",
    "etcd-client",
    // Containers on the overlay: Docker (with the docker.service drop-in `shoal install`
    // writes), the registry a fleet unit serves images from, podman with shoal as flannel's
    // CNI plugin.
    "docker.io",
    "docker-registry",
    "podman",
    "containernetworking-plugins",
    "iptables",
    // flannel's masquerade rules (`network.ip_masq`, on where Docker runs).
    "nftables",
];
/// Modules Docker and podman load on top of the overlay's: overlayfs for image layers,
/// bridge netfilter, and the nftables/xtables pieces of their NAT and filter rules.
const CONTAINER_MODULES: &[&str] = &[
    "overlay",
    "br_netfilter",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_masq",
    "nft_ct",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_conntrack",
    "xt_nat",
    "xt_tcpudp",
    "xt_comment",
    "xt_mark",
    "iptable_nat",
    "iptable_filter",
    "nf_conntrack_netlink",
];
/// The config of the cluster's registry unit (`docker-registry serve /etc/...`).
pub const REGISTRY_CONFIG: &str = "etc/docker/registry/cluster.yml";

fn registry_config() -> String {
    shoal_harness::registry::config_text(":5000", Path::new("/var/lib/docker-registry"))
}

/// Docker trusts the cluster's plain-HTTP registry (a unit on a node of the private range).
const DOCKER_DAEMON_JSON: &str = "{\n  \"insecure-registries\": [\"10.0.0.0/8\"]\n}\n";

const IMAGE_SIZE: &str = "3G";
/// The device the image appears as in the guest (the only virtio disk).
pub const ROOT_DEVICE: &str = "/dev/vda";

const SETUP_SCRIPT: &str = include_str!("../guest/debian-setup.sh");
const SETUP_UNIT: &str = include_str!("../guest/shoal-vm-setup.service");
const EXEC_UNIT: &str = include_str!("../guest/shoal-exec.service");
const EXEC_SCRIPT: &str = include_str!("../guest/exec.sh");
const SHOAL_DROP_IN: &str = include_str!("../guest/shoal-console.conf");

/// Returns the cached Debian image for `kernel`, building it first (about a minute, plus the
/// package downloads) if it is missing or its recipe changed.
pub fn prepare_image(cache: &Path, kernel: &GuestKernel) -> Result<PathBuf> {
    let dir = cache.join("debian");
    let image = dir.join(format!("{SUITE}-{:016x}.img", recipe_hash(kernel)));
    if image.is_file() {
        return Ok(image);
    }
    if !crate::have_program("debootstrap") {
        return Err(Error::Invalid(
            "debootstrap is missing (cargo xtask setup installs it)".to_string(),
        ));
    }
    fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
    let root = dir.join("rootfs.staging");
    if root.exists() {
        fs::remove_dir_all(&root).context(|| format!("removing {}", root.display()))?;
    }
    run_visible(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--merged-usr"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&root)
            .arg(MIRROR),
    )?;
    configure(&root, kernel)?;
    let partial = image.with_extension("partial");
    crate::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "shoal-root", "-d"])
            .arg(&root)
            .arg(&partial)
            .arg(IMAGE_SIZE),
    )?;
    fs::rename(&partial, &image).context(|| format!("renaming {}", partial.display()))?;
    fs::remove_dir_all(&root).context(|| format!("removing {}", root.display()))?;
    remove_other_images(&dir, &image);
    Ok(image)
}

/// Images of older recipes are only disk space (a VM that still uses one keeps it open).
fn remove_other_images(dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
        if path != keep
            && path.extension().is_some_and(|ext| ext == "img")
            && let Err(err) = fs::remove_file(&path)
        {
            tracing::warn!("removing the old image {}: {err}", path.display());
        }
    }
}

/// Changes to the files put into the image, or another kernel, make a new image.
fn recipe_hash(kernel: &GuestKernel) -> u64 {
    let mut hasher = DefaultHasher::new();
    (
        SUITE,
        PACKAGES,
        GUEST_MODULES,
        CONTAINER_MODULES,
        &kernel.version,
    )
        .hash(&mut hasher);
    (DOCKER_DAEMON_JSON, registry_config()).hash(&mut hasher);
    (
        SETUP_SCRIPT,
        SETUP_UNIT,
        EXEC_UNIT,
        EXEC_SCRIPT,
        SHOAL_DROP_IN,
    )
        .hash(&mut hasher);
    hasher.finish()
}

/// Puts the guest modules, the setup and command-server units in the unpacked root.
fn configure(root: &Path, kernel: &GuestKernel) -> Result<()> {
    let modules = root.join("usr/lib/modules").join(&kernel.version);
    let mut wanted = GUEST_MODULES.to_vec();
    wanted.extend_from_slice(CONTAINER_MODULES);
    for module in kernel.module_closure(&wanted)? {
        image::copy_module(&kernel.modules_dir().join(&module), &modules.join(&module))?;
    }
    for index in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let source = kernel.modules_dir().join(index);
        if source.is_file() {
            image::copy(&source, &modules.join(index))?;
        }
    }
    crate::run(
        Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&kernel.version),
    )?;
    image::write_executable(&root.join("usr/local/sbin/shoal-vm-setup"), SETUP_SCRIPT)?;
    image::write_executable(&root.join("usr/local/sbin/shoal-exec"), EXEC_SCRIPT)?;
    let units = root.join("etc/systemd/system");
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants).context(|| format!("creating {}", wants.display()))?;
    for (name, text) in [
        ("shoal-vm-setup.service", SETUP_UNIT),
        ("shoal-exec.service", EXEC_UNIT),
    ] {
        let unit = units.join(name);
        fs::write(&unit, text).context(|| format!("writing {}", unit.display()))?;
        let link = wants.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("/etc/systemd/system/{name}"), &link)
                .context(|| format!("linking {}", link.display()))?;
        }
    }
    let drop_in = units.join("shoal.service.d");
    fs::create_dir_all(&drop_in).context(|| format!("creating {}", drop_in.display()))?;
    write(
        root,
        "etc/systemd/system/shoal.service.d/vm-console.conf",
        SHOAL_DROP_IN,
    )?;
    // An empty machine-id: every boot of the shared image gets its own (fleet tells machines
    // apart by it); no getty on the console the host follows.
    write(root, "etc/machine-id", "")?;
    // systemd would copy this one (written while the packages were installed) into the empty
    // /etc/machine-id, and every VM would be the same machine to fleet.
    let dbus_id = root.join("var/lib/dbus/machine-id");
    if dbus_id.is_file() && !dbus_id.is_symlink() {
        fs::remove_file(&dbus_id).context(|| format!("removing {}", dbus_id.display()))?;
    }
    write(root, "etc/hostname", "shoal\n")?;
    fs::create_dir_all(root.join("etc/docker")).context(|| "creating etc/docker".to_string())?;
    write(root, "etc/docker/daemon.json", DOCKER_DAEMON_JSON)?;
    // The cluster's registry runs as a fleet unit with this config (plain HTTP on :5000, no
    // auth); Debian's own docker-registry.service, whose config asks for an htpasswd file,
    // stays off so the port is the unit's.
    fs::create_dir_all(root.join("etc/docker/registry"))
        .context(|| "creating etc/docker/registry".to_string())?;
    write(root, REGISTRY_CONFIG, &registry_config())?;
    let debian_registry = units.join("docker-registry.service");
    if !debian_registry.is_symlink() {
        std::os::unix::fs::symlink("/dev/null", &debian_registry)
            .context(|| format!("masking {}", debian_registry.display()))?;
    }

    let getty = units.join("serial-getty@ttyS0.service");
    if !getty.exists() {
        std::os::unix::fs::symlink("/dev/null", &getty)
            .context(|| format!("masking {}", getty.display()))?;
    }
    Ok(())
}

fn write(root: &Path, relative: &str, text: &str) -> Result<()> {
    let path = root.join(relative);
    fs::write(&path, text).context(|| format!("writing {}", path.display()))
}
