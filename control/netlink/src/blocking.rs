//! Runs kernel requests for synchronous callers (see the crate docs for when this is safe).
use std::future::Future;

use crate::{Netlink, NetlinkError, Result};

/// Opens a connection in the calling thread's network namespace and drives `request` with it
/// to completion on a current-thread runtime of this thread.
///
/// # Panics
///
/// Inside an async context (a tokio worker thread outside `block_in_place`), as tokio does
/// when a runtime is started there.
pub fn block_on<T, F>(request: impl FnOnce(Netlink) -> F) -> Result<T>
where
    F: Future<Output = Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetlinkError::Runtime)?;
    runtime.block_on(async move { request(Netlink::open()?).await })
}
