//! How far the Raft log is on this member's disk, and the leader's background flusher.
//!
//! Raft lets a leader write an entry to its own disk in parallel with sending it to the
//! followers (Ongaro's thesis, §10.2.1; etcd does the same): a follower acknowledges an entry
//! only once it is on its disk, but the leader's own copy only has to be on disk before anyone
//! can observe that the entry is committed. openraft 0.9 waits for the leader's append to be
//! durable before it replicates, so two fsyncs happen one after the other on every write. shoal's
//! log store therefore tells openraft that the leader's own appends are done once they are
//! written (in the page cache: a crash of the process keeps them, only a crash of the machine
//! can lose them), and this module keeps the promise that early answer would otherwise break:
//!
//! - the [`Flusher`] fsyncs those appends on its own thread, taking whatever was written
//!   meanwhile along in the same fsync;
//! - the state machine applies an entry only once it is on this member's disk
//!   ([`Durability::wait_for`]), so no client is answered and no read sees the entry before;
//! - followers hear that an entry is committed only once it is on the leader's disk
//!   ([`crate::storage::store::CommitClamp`]), so no follower applies an entry a machine crash of the
//!   leader could take back.
//!
//! So before anything observes a committed entry it is on the disks of a majority, as Raft
//! requires; an entry lost with the leader's page cache was never observed by anyone. Followers'
//! appends stay synchronous: their acknowledgement is the leader's evidence.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::StoreError;
use crate::storage::log::{LogFile, sync_data};

/// How far the log is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durable {
    /// Every entry up to this index.
    Upto(u64),
    /// An fsync failed: nothing more may be acknowledged.
    Failed(String),
}

/// Why the log is not durable up to an index a waiter asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurabilityError {
    /// An fsync failed (its message, as [`Durable::Failed`] keeps it).
    #[error("{0}")]
    SyncFailed(String),
    #[error("the raft log was closed")]
    Closed,
}

/// The durable index, shared by the log store (which moves it), the state machine (which waits
/// for it) and the network (which clamps the commit index to it).
#[derive(Debug, Clone)]
pub struct Durability {
    tx: Arc<watch::Sender<Durable>>,
    /// Set when a follower was told less than the leader's commit index: the next flush then
    /// asks for a heartbeat to carry the rest.
    clamped: Arc<AtomicBool>,
}

impl Durability {
    pub fn new(upto: u64) -> Self {
        Durability {
            tx: Arc::new(watch::channel(Durable::Upto(upto)).0),
            clamped: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn current(&self) -> Durable {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Durable> {
        self.tx.subscribe()
    }

    /// Everything up to `index` is on disk and nothing after it exists.
    pub fn set(&self, index: u64) {
        self.tx.send_if_modified(|durable| {
            let changed =
                !matches!(durable, Durable::Failed(_)) && *durable != Durable::Upto(index);
            if changed {
                *durable = Durable::Upto(index);
            }
            changed
        });
    }

    /// A flush reached `index` (entries after it may exist, unsynced).
    fn advance(&self, index: u64) {
        self.tx.send_if_modified(|durable| match durable {
            Durable::Upto(upto) if *upto < index => {
                *upto = index;
                true
            }
            _ => false,
        });
    }

    fn fail(&self, why: String) {
        self.tx.send_replace(Durable::Failed(why));
    }

    /// Waits until the log is on disk up to `index`; the fsync error if one failed.
    pub async fn wait_for(&self, index: u64) -> Result<(), DurabilityError> {
        let mut rx = self.tx.subscribe();
        let reached = rx
            .wait_for(|d| {
                matches!(d, Durable::Failed(_)) || matches!(d, Durable::Upto(u) if *u >= index)
            })
            .await
            .map_err(|_| DurabilityError::Closed)?;
        match &*reached {
            Durable::Failed(why) => Err(DurabilityError::SyncFailed(why.clone())),
            Durable::Upto(_) => Ok(()),
        }
    }

    pub fn note_clamped(&self) {
        self.clamped.store(true, Ordering::Relaxed);
    }

    /// Whether a follower was told less than the commit index since the last call.
    pub fn take_clamped(&self) -> bool {
        self.clamped.swap(false, Ordering::Relaxed)
    }
}

/// The log file as the log store and the flusher share it. `generation` changes when entries
/// are cut off, so a flush that started before does not vouch for what replaced them.
pub struct SharedLog {
    pub file: LogFile,
    pub generation: u64,
}

/// Syncs the leader's appends on a thread of its own; see the module comment.
#[derive(Clone)]
pub struct Flusher {
    requested: Arc<(Mutex<bool>, Condvar)>,
}

impl Flusher {
    /// Starts the thread; it ends when the log is dropped.
    pub fn start(log: &Arc<Mutex<SharedLog>>, durability: Durability) -> std::io::Result<Self> {
        let requested = Arc::new((Mutex::new(false), Condvar::new()));
        let flusher = Flusher {
            requested: requested.clone(),
        };
        let log = Arc::downgrade(log);
        std::thread::Builder::new()
            .name("kv-log-flusher".to_string())
            .spawn(move || run(&log, &requested, &durability))?;
        Ok(flusher)
    }

    /// Asks for everything written so far to be synced.
    pub fn request(&self) {
        let (flag, wake) = &*self.requested;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        wake.notify_one();
    }
}

fn run(log: &Weak<Mutex<SharedLog>>, requested: &(Mutex<bool>, Condvar), durability: &Durability) {
    let (flag, wake) = requested;
    loop {
        {
            let mut pending = flag.lock().unwrap_or_else(|p| p.into_inner());
            while !*pending {
                let (guard, _) = wake
                    .wait_timeout(pending, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner());
                pending = guard;
                if log.strong_count() == 0 {
                    return;
                }
            }
            *pending = false;
        }
        let Some(log) = log.upgrade() else {
            return;
        };
        if let Err(error) = flush(&log, durability) {
            let why = crate::error::chain(&error);
            tracing::error!("syncing the raft log: {why}");
            durability.fail(why);
            return;
        }
    }
}

/// One fsync of what is written, outside the lock; published unless entries were cut off
/// meanwhile (the cut itself syncs).
fn flush(log: &Mutex<SharedLog>, durability: &Durability) -> Result<(), StoreError> {
    let mut pending = PendingFlush::take(log)?;
    pending.sync()?;
    pending.publish(log, durability);
    Ok(())
}

/// What one flush covers: the log as it was when the flush began.
struct PendingFlush {
    handle: Option<std::fs::File>,
    last: Option<u64>,
    generation: u64,
    /// Where the log was written up to ([`LogFile::write_position`]).
    position: (Option<u64>, u64),
    /// Whether the sync reached the disk (see [`sync_data`]).
    synced: bool,
}

impl PendingFlush {
    fn take(log: &Mutex<SharedLog>) -> Result<Self, StoreError> {
        let shared = log.lock().unwrap_or_else(|p| p.into_inner());
        Ok(PendingFlush {
            handle: shared.file.sync_handle()?,
            last: shared.file.last_index(),
            generation: shared.generation,
            position: shared.file.write_position(),
            synced: false,
        })
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if let Some(file) = &self.handle {
            let t = std::time::Instant::now();
            self.synced = sync_data(file)?;
            crate::profile::record("log.flush", t);
        }
        Ok(())
    }

    fn publish(self, log: &Mutex<SharedLog>, durability: &Durability) {
        let mut shared = log.lock().unwrap_or_else(|p| p.into_inner());
        if shared.generation != self.generation {
            return;
        }
        if self.synced {
            shared.file.mark_synced(self.position);
        }
        if let Some(last) = self.last {
            durability.advance(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, test_entry};

    fn entry(index: u64) -> Entry {
        test_entry(index, 1)
    }

    fn shared_log(dir: &std::path::Path) -> Arc<Mutex<SharedLog>> {
        let (file, _) = LogFile::open(dir, None).expect("open log");
        Arc::new(Mutex::new(SharedLog {
            file,
            generation: 0,
        }))
    }

    #[tokio::test]
    async fn a_written_entry_counts_as_durable_only_after_the_flusher_synced_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = shared_log(dir.path());
        let durability = Durability::new(0);
        let flusher = Flusher::start(&log, durability.clone()).expect("flusher");
        {
            let mut shared = log.lock().expect("lock");
            shared.file.write(&[entry(1), entry(2)]).expect("write");
        }
        assert_eq!(durability.current(), Durable::Upto(0));
        flusher.request();
        tokio::time::timeout(Duration::from_secs(5), durability.wait_for(2))
            .await
            .expect("the flusher syncs within seconds")
            .expect("no fsync error");
        assert_eq!(durability.current(), Durable::Upto(2));
    }

    #[tokio::test]
    async fn a_flush_that_raced_a_truncation_does_not_vouch_for_the_replaced_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = shared_log(dir.path());
        let durability = Durability::new(0);
        {
            let mut shared = log.lock().expect("lock");
            shared
                .file
                .write(&[entry(1), entry(2), entry(3)])
                .expect("write");
        }
        let mut raced = PendingFlush::take(&log).expect("begin flush");
        {
            let mut shared = log.lock().expect("lock");
            shared.file.truncate(2).expect("truncate");
            shared.file.write(&[entry(2)]).expect("write replacement");
            shared.generation += 1;
        }
        raced.sync().expect("sync");
        raced.publish(&log, &durability);
        assert_eq!(durability.current(), Durable::Upto(0));
        flush(&log, &durability).expect("flush");
        assert_eq!(durability.current(), Durable::Upto(2));
    }

    #[tokio::test]
    async fn a_failed_sync_stops_every_waiter_with_its_error() {
        let durability = Durability::new(1);
        let waiter = tokio::spawn({
            let durability = durability.clone();
            async move { durability.wait_for(5).await }
        });
        durability.fail("disk gone".to_string());
        let outcome = waiter.await.expect("join");
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Err("disk gone".to_string())
        );
        durability.set(9);
        assert_eq!(
            durability.current(),
            Durable::Failed("disk gone".to_string())
        );
    }
}
