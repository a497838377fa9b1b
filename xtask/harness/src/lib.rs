//! A cluster of shoal nodes on one machine, built from network namespaces.
//!
//! ```text
//!            switch namespace  <run>-sw:  bridge "br0" (the shared L2 underlay segment)
//!              |            |            |
//!         eth0 (10.99.0.1)  eth0 (.2)    eth0 (.3)      <- node namespaces <run>-n0, -n1, -n2
//!           |   cbr0 (10.244.1.1/24, optional container bridge)
//!           |     \__ veth -> container namespace <run>-n0-c0, eth0 10.244.1.2
//! ```
//!
//! Every name carries a run id made of this process's pid and a counter, so tests run in
//! parallel. Everything is removed when the [`Cluster`] is dropped, also when a test panics; a
//! run that was killed is cleaned up by [`sweep`], which every new cluster calls first.
//! Traffic only ever goes to addresses inside namespaces the harness created.
//!
//! Beside the namespaces, the one set of test fixtures the workspace's tests and benchmarks
//! share: a store cluster ([`StoreCluster`], etcd 3.4 or shoal kv), a process guard
//! ([`Process`]), free ports, `wait_for`/`wait_until`, and where the workspace's binaries are
//! ([`binaries`]). For consistency tests: a store cluster with a namespace per member
//! ([`isolation`]), packet drops between them ([`firewall`]) and a catalogue of faults to inject
//! into it and heal ([`nemesis`]).

pub mod agents;
pub mod binaries;
mod cluster;
pub mod command;
pub mod docker;
pub mod firewall;
pub mod flannel_vxlan;
pub mod images;
pub mod isolation;
pub mod nemesis;
mod netns;
mod ns_worker;
mod ports;
mod process;
pub mod registry;
pub mod store;
mod wait;

pub use agents::{AgentOptions, Agents, StoreAccess};
pub use cluster::{Cluster, ClusterBuilder, Container, Node};
pub use netns::{Namespace, sweep};
pub use ns_worker::NsWorker;
pub use ports::{free_port, free_ports};
pub use process::Process;
pub use store::{
    ClusterTls, ListedMember, MemberSpec, MemberStatus, StoreCluster, StoreClusterBuilder,
    StoreKind,
};
pub use wait::{wait_for, wait_until};

/// Errors of the harness; each names the command or namespace involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The I/O error is part of the message (not a `source`), so it prints once wherever the
    /// error is printed: in panics and logs of tests as in a chore's error chain.
    #[error("running {command}: {cause}")]
    Spawn {
        command: String,
        cause: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("invalid cluster layout: {0}")]
    Layout(String),
    #[error("cargo build left no {}", .0.display())]
    Missing(std::path::PathBuf),
    #[error("nftables {0}")]
    Firewall(String),
    /// A fault could not be injected or healed; the message names it.
    #[error("{0}")]
    Fault(String),
    /// A file or directory the harness reads or writes; the cause is part of the message.
    #[error("{}: {cause}", path.display())]
    Io {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    /// A fixture (an image, a daemon, a registry) that could not be made or did not come up;
    /// says why and where its log is.
    #[error("{0}")]
    Fixture(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            cause,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
