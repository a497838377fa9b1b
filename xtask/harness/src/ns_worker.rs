//! A thread that lives inside a network namespace and runs jobs there: for in-process code that
//! must act in a node (netlink, `if_nametoindex`, BPF attach, child processes), without
//! `ip netns exec`'s private mount namespace (which hides the host's bpffs).
use std::{fs::File, os::fd::AsRawFd, sync::mpsc, thread::JoinHandle};

use crate::{Error, Namespace, Result};

type Job = Box<dyn FnOnce() + Send>;

/// A worker thread in a namespace; dropped, it finishes its queue and exits.
#[derive(Debug)]
pub struct NsWorker {
    namespace: String,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl NsWorker {
    /// Starts a thread that enters `ns` (its network namespace only) and waits for jobs.
    pub fn spawn(ns: &Namespace) -> Result<Self> {
        let path = format!("/var/run/netns/{}", ns.name());
        let handle = File::open(&path).map_err(|source| Error::Spawn {
            command: format!("open {path}"),
            cause: source,
        })?;
        let (entered_tx, entered_rx) = mpsc::channel::<std::io::Result<()>>();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(format!("ns-{}", ns.name()))
            .spawn(move || {
                // SAFETY: setns(2) on a namespace file we hold open; affects this thread only.
                let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
                let entered = if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                };
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if !ok {
                    return;
                }
                for job in jobs_rx {
                    job();
                }
            })
            .map_err(|source| Error::Spawn {
                command: format!("thread for {}", ns.name()),
                cause: source,
            })?;
        let entered = entered_rx.recv().unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "namespace thread exited before entering",
            ))
        });
        entered.map_err(|source| Error::Spawn {
            command: format!("setns into {path}"),
            cause: source,
        })?;
        Ok(Self {
            namespace: ns.name().to_string(),
            jobs: Some(jobs_tx),
            thread: Some(thread),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Runs `job` inside the namespace and returns its result. A job that panics re-panics here.
    pub fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let (result_tx, result_rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            let _ = result_tx.send(result);
        });
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job).is_ok());
        assert_eq!(sent, Some(true), "worker of {} is gone", self.namespace);
        match result_rx.recv() {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("worker of {} died", self.namespace),
        }
    }
}

impl Drop for NsWorker {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
