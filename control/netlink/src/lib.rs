//! Kernel networking through rtnetlink: links, addresses, routes, neighbours, the bridge
//! forwarding database, and the qdiscs and filters of traffic control. One [`Netlink`]
//! connection works in the network namespace of the thread that opened it; every failure is a
//! [`NetlinkError`] whose variant tells "not found" and "already exists" apart by errno.
//!
//! The requests are async (rtnetlink runs on tokio). Synchronous callers, such as the eBPF
//! dataplane whose API is blocking because aya's is, use [`block_on`]: it runs the request on a
//! current-thread runtime of the calling thread, so the socket is opened in that thread's network
//! namespace (as an `ip` subprocess forked from it would be) and no runtime has to be threaded
//! through the caller. It must not be called from async code: tokio panics when a runtime is
//! started inside another; async callers wrap the blocking call in `block_in_place` or
//! `spawn_blocking` (as flannel's eBPF backend does) or use [`Netlink`] directly.
mod address;
mod blocking;
mod error;
mod link;
mod neighbour;
mod route;
mod traffic_control;

pub use blocking::block_on;
pub use error::{NetlinkError, Result};
pub use link::{LinkInfo, VxlanDevice};
pub use neighbour::{FdbEntry, Neighbour};
pub use route::{InstalledRoute, OverlayRoute, ROUTE_PROTOCOL, Route};
pub use rtnetlink::packet_route::neighbour::NeighbourState;
pub use traffic_control::{BpfFilter, TcDirection};

use rtnetlink::Handle;

/// An rtnetlink connection, bound to the network namespace it was opened in.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the current thread's network namespace; its task runs on the
    /// current tokio runtime.
    pub fn open() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }
}
