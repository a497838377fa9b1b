//! The tokio runtime every shoal process runs on.
//!
//! One difference from tokio's defaults: when tokio is built with `--cfg tokio_unstable` (as
//! `.cargo/config.toml` does), a woken task waits its turn instead of jumping the queue through
//! the worker's LIFO slot. The LIFO slot runs a task right after the one that woke it, which
//! makes hyper's connection task write each response or watch event on its own the moment its
//! stream produced it; in turn order, the streams of a connection first queue their frames and
//! the connection writes them together. Measured with `cargo xtask bench kv` (1,000 watchers):
//! watch fan-out 160k events/s with the LIFO slot, 200-220k without; puts unchanged.

/// A multi-threaded runtime builder with shoal's scheduling; `workers: None` means one per core.
pub fn multi_thread(workers: Option<usize>) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder
}
