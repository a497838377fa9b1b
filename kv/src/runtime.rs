//! The tokio runtimes a shoal process runs on: the process's own ([`multi_thread`]), and each
//! store member's Raft core ([`Core`]).
//!
//! One difference from tokio's defaults on the process's runtime: when tokio is built with
//! `--cfg tokio_unstable` (as `.cargo/config.toml` does), a woken task waits its turn instead of
//! jumping the queue through the worker's LIFO slot. The LIFO slot runs a task right after the
//! one that woke it, which makes hyper's connection task write each response or watch event on
//! its own the moment its stream produced it; in turn order, the streams of a connection first
//! queue their frames and the connection writes them together. Measured with `cargo xtask bench
//! kv` (1,000 watchers): watch fan-out 160k events/s with the LIFO slot, 200-220k without; puts
//! unchanged.
//!
//! Turn order has a price: a task woken behind a fan-out waits for every watch stream woken
//! before it. A member's write path (Raft, its log, replication, the peer server, applying, the
//! write batcher) therefore runs on threads of its own, the [`Core`] runtime, so that the OS
//! scheduler, not the client runtime's queue, shares the CPU between writes and watch delivery:
//! a thread that slept (Raft waiting for its next message) runs soon after it is woken, while a
//! fan-out's hundreds of stream tasks queue only on the client runtime.

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

/// Threads of a member's [`Core`] runtime. Its tasks mostly wait (for a peer's message, the
/// disk, a client's write), so two are enough to keep an apply from delaying a heartbeat.
const CORE_WORKERS: usize = 2;

/// A store member's Raft core runtime: Raft, its storage, the peer server and the member's own
/// tasks run here, apart from the client-facing servers. Its tasks keep tokio's LIFO slot (a
/// message handed from task to task runs at once: its chains are short and latency-bound).
/// Stopped when dropped, without waiting for its tasks (which may be dropped from async code).
#[derive(Debug)]
pub struct Core {
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Core {
    /// A core runtime whose threads are named `name`.
    pub fn new(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(CORE_WORKERS)
            .thread_name(name)
            .build()?;
        Ok(Core {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_core_runtime_runs_its_tasks_on_its_own_threads_and_may_be_dropped_in_async_code() {
        let core = Core::new("kv-core-test").unwrap();
        let thread = core
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .unwrap();
        assert_eq!(thread.as_deref(), Some("kv-core-test"));
        let pending = core.handle().spawn(std::future::pending::<()>());
        drop(core);
        assert!(pending.await.unwrap_err().is_cancelled());
    }
}
