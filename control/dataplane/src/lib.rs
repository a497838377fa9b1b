//! Userspace API of the eBPF overlay dataplane. The control plane calls this crate to load and
//! attach the programs, program routes and read counters.
//!
//! ```no_run
//! # fn main() -> Result<(), shoal_dataplane::Error> {
//! use shoal_dataplane::{Backend, Config, Dataplane, MacAddr, RouteTarget};
//! let config = Config::new("eth0", "10.99.0.1".parse().unwrap(), "10.244.1.0/24".parse().unwrap());
//! let mut dataplane = Dataplane::load_or_attach(config)?;
//! dataplane.set_route(
//!     "10.244.2.0/24".parse().unwrap(),
//!     RouteTarget {
//!         underlay_ip: "10.99.0.2".parse().unwrap(),
//!         vtep_mac: "02:00:00:00:00:02".parse().unwrap(),
//!         backend: Backend::Vxlan,
//!     },
//! )?;
//! println!("{:?}", dataplane.stats()?);
//! # Ok(()) }
//! ```
//!
//! Everything acts in the calling thread's network namespace (the interface is looked up there,
//! routes are installed there). Maps and links are pinned under `<pin_root>/<instance>/`, so a
//! new process calling [`Dataplane::load_or_attach`] with the same config takes over without
//! interrupting traffic: the maps (routes, counters) are reused and the new programs replace the
//! old ones atomically in the pinned links. Only [`Dataplane::detach`] removes the dataplane;
//! dropping a [`Dataplane`] leaves it running.
//!
//! The kernel's routes, neighbours, links and filters are reached through `shoal_netlink`'s
//! blocking facade: this API is synchronous (as aya's is), so each call that needs the kernel's
//! tables opens a netlink socket in the calling thread's namespace for its duration. Call it from
//! a plain thread, or from async code through `block_in_place`/`spawn_blocking`.
mod attach;
mod clsact;
mod config;
mod dataplane;
mod discover;
mod endpoints;
mod error;
mod interface;
mod mac;
mod pins;
mod routes;
mod stats;
mod workload_hooks;

pub use attach::AttachMode;
pub use config::{Config, DecapHook, TcAttach};
pub use dataplane::Dataplane;
pub use endpoints::{Endpoint, sync_pinned_endpoints};
pub use error::{Error, Result};
pub use mac::MacAddr;
pub use routes::RouteTarget;
pub use shoal_dataplane_common::{Backend, Counter, HOP_CACHE_NS};
pub use stats::{ProgramRuns, Stats, enable_program_stats, read_pinned_stats};

/// The eBPF object built from `dataplane-ebpf` by this crate's build script.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shoal-dataplane"));

/// Size of the embedded eBPF object (used by `shoal version`).
pub fn object_size() -> usize {
    EBPF_OBJECT.len()
}
