//! The overlay control plane (`shoal flannel`), compatible with flanneld's flags, environment
//! and store layout. The library entry point is [`Overlay::run`] with an [`OverlayConfig`].
//!
//! Code map: [`config`] parses `<prefix>/config`; [`registry`] is the store through the etcd v3
//! API; [`lease`] is flannel's lease format and subnet choice; [`acquire`] takes and renews
//! this node's lease; [`sync`] follows every lease (list + [`watch`], flannel's own watch
//! stream, + resync) into a
//! [`backend::Backend`] (`host-gw`, `vxlan`) that programs the kernel through
//! [`shoal_netlink`]; [`subnet_env`], [`docker_opts`] (Docker's options from it, as
//! mk-docker-opts.sh; [`mk_docker_opts`] is its command), [`ipmasq`] and [`healthz`] are the node-facing outputs;
//! [`ipam`] hands out workload addresses for `shoal run`; [`cli`] is `shoal flannel`'s flags.
pub mod acquire;
pub mod backend;
pub mod cli;
pub mod config;
pub mod docker_opts;
pub mod healthz;
pub mod iface;
pub mod ipam;
pub mod ipmasq;
pub mod lease;
pub mod mk_docker_opts;
pub mod overlay;
pub mod registry;
pub mod subnet_env;
pub mod sync;
pub mod watch;

pub use backend::DataplaneKind;
pub use overlay::{DEFAULT_BRIDGE, DEFAULT_PIN_ROOT, Overlay, OverlayConfig};
