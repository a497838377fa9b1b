//! Clusters of shoal nodes on qemu VMs, for `cargo xtask vm-cluster` and the vm-tests.
//!
//! ```text
//! host ── network namespace shoal-vmc-<id> ───────────────────────────────────────────
//!          br0 10.97.<id>.1/24 (the host's foot in the cluster: etcdctl, fleetctl, HTTP)
//!           ├─ tap1 ── qemu n1: eth0 10.97.<id>.11  (kernel: Debian's, initramfs: busybox)
//!           ├─ tap2 ── qemu n2: eth0 10.97.<id>.12   9p share "shoal" (read-only): shoal,
//!           └─ tap3 ── qemu n3: eth0 10.97.<id>.13   nodes/<name>/agent.yaml, sysroot/ (etcdctl)
//! ```
//!
//! Flow: [`image::GuestKernel::prepare`] fetches Debian's kernel package once into
//! `target/vm/` and unpacks it (uncompressed vmlinux for a fast PVH boot, modules);
//! [`image::build_initramfs`] packs busybox, the modules the guest needs and the shell init
//! (`guest/init.sh`); [`accel::choose`] decides KVM versus TCG by a bounded test boot;
//! [`cluster::VmCluster::up`] builds the namespace, writes one agent YAML per node
//! ([`config::agent_yaml`]), starts every qemu inside the namespace and follows their serial
//! consoles; each guest runs a command server on port 7022 ([`guest::exec`]). Dropping the
//! cluster (or `vm-cluster down` from another process, through the state file under
//! `target/vm/clusters/`) kills every qemu and deletes the namespace, which takes the bridge
//! and taps with it. [`debian`] builds the full Debian image for `--image debian`.
//!
//! Invariants: every qemu runs inside the cluster's namespace, dies with the thread that
//! started it (`PR_SET_PDEATHSIG`), and every wait on a guest is bounded by a timeout. The
//! only addresses used are those of the private range the cluster creates.

pub mod accel;
pub mod build;
pub mod cluster;
pub mod config;
pub mod debian;
pub mod guest;
pub mod host;
pub mod image;
pub mod netns;
pub mod qemu;
pub mod signals;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use cluster::{ClusterSpec, GuestImage, Progress, VmCluster};
pub use shoal_harness::StoreAccess;

/// Errors of the VM tooling; each names the command, file or guest involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host command that could not start or failed (names the command line).
    #[error(transparent)]
    Command(#[from] shoal_harness::Error),
    /// The I/O error is part of the message (not a `source`), so it prints once wherever the
    /// error is printed (skip reasons, logs, a chore's error chain).
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
    #[error("{what} did not happen within {timeout:?}{detail}")]
    Timeout {
        what: String,
        timeout: Duration,
        detail: String,
    },
    #[error("guest {node}: {message}")]
    Guest { node: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("encoding {what}: {message}")]
    Encode { what: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a description to an I/O error.
pub(crate) trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            cause: source,
        })
    }
}

/// Root of the workspace (this crate lives at `xtask/vm`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("xtask/vm lives two levels below the workspace root")
        .to_path_buf()
}

/// Where images, kernels and cluster state are cached: `<workspace>/target/vm`.
pub fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("vm")
}

/// Host commands, with errors that name them.
pub(crate) use shoal_harness::command::{run, run_visible};

/// Whether a program is on PATH.
pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}
