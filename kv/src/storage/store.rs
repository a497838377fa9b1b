//! Durable storage for openraft: the Raft log in segment files of our own
//! ([`crate::storage::log`]), the vote, purge point and snapshots in one redb file (every write
//! fsync'd before openraft hears it is done). The state machine ([`super::state_machine`]) lives
//! in memory and is rebuilt on start from the last snapshot plus the log.
//!
//! Every stored record carries a format version and a CRC-32 of its bytes ([`super::records`]),
//! so a damaged file is reported as damaged instead of being read as wrong data.
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::storage::durable::{Durability, Durable, Flusher, SharedLog};
use crate::storage::log::LogFile;
use crate::storage::records::{decode, encode, unseal};
use crate::types::{Entry, LogId, StorageError, TypeConfig};

/// Where earlier versions kept the Raft log; read once to move it to [`LogFile`].
const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("raft_log");
/// The Raft log's directory inside the data dir.
const LOG_DIR: &str = "raft-log";
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";
pub(super) const SNAPSHOT: &str = "snapshot";

/// The redb data file, and where it is (for errors naming it).
#[derive(Debug)]
pub struct DataFile {
    db: Database,
    path: PathBuf,
}

impl std::ops::Deref for DataFile {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Opens (or creates) the data file and checks that what it holds is readable.
pub fn open_database(dir: &Path) -> Result<Arc<DataFile>, StoreError> {
    super::private_dir(dir)?;
    let path = dir.join("shoal-kv.redb");
    super::private_file(&path)?;
    let db = Database::create(&path).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(META)?;
    txn.commit()?;
    let db = Arc::new(DataFile { db, path });
    verify(&db)?;
    Ok(db)
}

/// Reads every record once so damage is found at start, not when the data is needed.
fn verify(db: &DataFile) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    for row in log.iter()? {
        let (index, bytes) = row?;
        let entry: Entry = decode_legacy_entry(db, index.value(), bytes.value())?;
        if entry.log_id.index != index.value() {
            return Err(StoreError::Damaged(format!(
                "raft log entry {} claims index {}",
                index.value(),
                entry.log_id.index
            )));
        }
    }
    let meta = txn.open_table(META)?;
    for row in meta.iter()? {
        let (key, bytes) = row?;
        unseal(
            bytes.value(),
            &db.path,
            &format!("record {:?}", key.value()),
        )?;
    }
    Ok(())
}

/// An entry of the redb `raft_log` table earlier versions kept the log in.
fn decode_legacy_entry(db: &DataFile, index: u64, sealed: &[u8]) -> Result<Entry, StoreError> {
    decode(sealed, &db.path, &format!("raft log entry {index}"))
}

pub(super) fn read_meta<T: for<'de> Deserialize<'de>>(
    db: &DataFile,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(META)?;
    let Some(bytes) = table.get(key)? else {
        return Ok(None);
    };
    Ok(Some(decode(bytes.value(), &db.path, key)?))
}

pub(super) fn write_meta<T: Serialize>(
    db: &DataFile,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = encode(value)?;
    let txn = db.begin_write()?;
    txn.open_table(META)?.insert(key, bytes.as_slice())?;
    txn.commit()?;
    Ok(())
}

/// How far the snapshot on disk reaches (its last log index), shared by the state machine
/// (which moves it once a snapshot it built or installed is stored) and the log store (whose
/// purge waits for it).
#[derive(Debug, Clone)]
pub struct SnapshotMark {
    upto: Arc<tokio::sync::watch::Sender<u64>>,
}

/// How long a purge waits for the snapshot that covers it (a failed install stops Raft first).
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl SnapshotMark {
    pub fn new() -> Self {
        SnapshotMark {
            upto: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// A snapshot up to `index` is on disk.
    pub fn stored(&self, index: u64) {
        self.upto.send_if_modified(|upto| {
            let moved = index > *upto;
            *upto = (*upto).max(index);
            moved
        });
    }

    /// Waits until the snapshot on disk reaches `index`.
    async fn covers(&self, index: u64) -> Result<(), io::Error> {
        let mut rx = self.upto.subscribe();
        match tokio::time::timeout(PURGE_WAIT, rx.wait_for(|upto| *upto >= index)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(io::Error::other("the state machine is gone")),
            Err(_) => Err(io::Error::other(format!(
                "no snapshot up to index {index} was stored within {PURGE_WAIT:?}"
            ))),
        }
    }
}

impl Default for SnapshotMark {
    fn default() -> Self {
        Self::new()
    }
}

/// An error as openraft's storage errors take it: an `io::Error` with the whole chain as text.
pub(super) fn io_err(e: impl std::error::Error) -> io::Error {
    io::Error::other(crate::error::chain(&e))
}

/// The Raft log ([`LogFile`]), plus the vote and purge point in redb. Readers are served from
/// an in-memory copy of the unpurged log. A follower's appends are fdatasync'd in the caller
/// (openraft's core task) before it hears they are done; the leader's own appends are synced by
/// the [`Flusher`] in parallel with replication ([`crate::storage::durable`] says why that is safe).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DataFile>,
    entries: Arc<RwLock<BTreeMap<u64, Entry>>>,
    last_purged: Arc<RwLock<Option<LogId>>>,
    log: Arc<Mutex<SharedLog>>,
    /// This member's Raft node ID.
    id: u64,
    /// The last vote saved or read: tells the leader's own appends from replicated ones.
    vote: Arc<Mutex<Option<Vote<u64>>>>,
    durability: Durability,
    flusher: Flusher,
    snapshot: SnapshotMark,
}

impl LogStore {
    /// Opens the log under `dir` for member `id`; entries an older version kept in redb move to
    /// the log file.
    pub fn new(db: Arc<DataFile>, dir: &Path, id: u64) -> Result<Self, StoreError> {
        let last_purged: Option<LogId> = read_meta(&db, LAST_PURGED)?;
        let (mut file, loaded) = LogFile::open(&dir.join(LOG_DIR), last_purged.map(|l| l.index))?;
        let legacy = take_legacy_entries(&db, last_purged)?;
        let mut entries: BTreeMap<u64, Entry> =
            loaded.into_iter().map(|e| (e.log_id.index, e)).collect();
        if !legacy.is_empty() {
            if !entries.is_empty() {
                return Err(StoreError::Damaged(
                    "raft log entries both in the log file and in the redb file".to_string(),
                ));
            }
            file.append(&legacy)?;
            entries = legacy.into_iter().map(|e| (e.log_id.index, e)).collect();
            clear_legacy_entries(&db)?;
        }
        let on_disk = file
            .last_index()
            .or(last_purged.map(|p| p.index))
            .unwrap_or_default();
        let durability = Durability::new(on_disk);
        let log = Arc::new(Mutex::new(SharedLog {
            file,
            generation: 0,
        }));
        let flusher = Flusher::start(&log, durability.clone())?;
        #[cfg(feature = "failpoints")]
        crate::failpoints::register_log(&log);
        Ok(LogStore {
            db,
            entries: Arc::new(RwLock::new(entries)),
            last_purged: Arc::new(RwLock::new(last_purged)),
            log,
            id,
            vote: Arc::new(Mutex::new(None)),
            durability,
            flusher,
            snapshot: SnapshotMark::new(),
        })
    }

    /// How far the snapshot on disk reaches: the state machine moves it, purges wait for it.
    pub fn snapshot_mark(&self) -> SnapshotMark {
        self.snapshot.clone()
    }

    /// How far this log is on disk.
    pub fn durability(&self) -> Durability {
        self.durability.clone()
    }

    /// What the network uses to keep followers' commit index behind this log's disk.
    pub fn commit_clamp(&self) -> CommitClamp {
        CommitClamp {
            durability: self.durability.clone(),
            entries: self.entries.clone(),
            last_purged: self.last_purged.clone(),
        }
    }

    fn cached(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    fn log(&self) -> std::sync::MutexGuard<'_, SharedLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember_vote(&self, vote: Option<Vote<u64>>) {
        *self.vote.lock().unwrap_or_else(|p| p.into_inner()) = vote;
    }

    /// Whether `entries` are this member's own, appended while it leads (and not entries of an
    /// earlier term of its own that a later leader sends back).
    fn appended_as_leader(&self, entries: &[Entry]) -> bool {
        let vote = *self.vote.lock().unwrap_or_else(|p| p.into_inner());
        vote.is_some_and(|vote| {
            vote.committed
                && vote.leader_id.node_id == self.id
                && entries.iter().all(|e| e.log_id.leader_id == vote.leader_id)
        })
    }
}

/// Keeps the commit index the leader sends followers at or below what its own log has on disk
/// (see [`crate::storage::durable`]).
#[derive(Clone, Debug)]
pub struct CommitClamp {
    durability: Durability,
    entries: Arc<RwLock<BTreeMap<u64, Entry>>>,
    last_purged: Arc<RwLock<Option<LogId>>>,
}

impl CommitClamp {
    /// `committed`, or the newest log ID before it that is on disk here.
    pub fn clamp(&self, committed: Option<LogId>) -> Option<LogId> {
        let committed = committed?;
        let upto = match self.durability.current() {
            Durable::Upto(upto) => upto,
            Durable::Failed(_) => 0,
        };
        if committed.index <= upto {
            return Some(committed);
        }
        self.durability.note_clamped();
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get(&upto) {
            return Some(entry.log_id);
        }
        let purged = *self.last_purged.read().unwrap_or_else(|p| p.into_inner());
        purged.filter(|p| p.index <= upto)
    }
}

/// The log entries an earlier version stored in redb, after the purge point.
fn take_legacy_entries(
    db: &DataFile,
    last_purged: Option<LogId>,
) -> Result<Vec<Entry>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(LOG)?;
    let mut entries = Vec::new();
    for row in table.iter()? {
        let (index, bytes) = row?;
        let entry: Entry = decode_legacy_entry(db, index.value(), bytes.value())?;
        if last_purged.is_none_or(|p| entry.log_id.index > p.index) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

fn clear_legacy_entries(db: &DataFile) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?.retain(|_, _| false)?;
    txn.commit()?;
    Ok(())
}

fn write_error(e: StoreError) -> StorageError {
    StorageIOError::write_logs(&io_err(e)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        Ok(entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

// The commit index is not stored (openraft's `save_committed` stays a no-op): writing it from
// Raft's core task would wait for the log writer's fsync on every commit. After a restart the
// entries are re-applied once a leader commits again.
impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = *self.last_purged.read().unwrap_or_else(|p| p.into_inner());
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let last = entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        write_meta(&self.db, VOTE, vote)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&io_err(e))))?;
        self.remember_vote(Some(*vote));
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        let vote = read_meta(&self.db, VOTE)
            .map_err(|e| StorageError::from(StorageIOError::read_vote(&io_err(e))))?;
        self.remember_vote(vote);
        Ok(vote)
    }

    // The failpoint returns openraft's (large) error type, which the trait dictates.
    #[cfg_attr(feature = "failpoints", allow(clippy::result_large_err))]
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        fail::fail_point!("raftlog::power_loss", |_| crate::failpoints::power_loss());
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id.index) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let own = self.appended_as_leader(&entries);
        let t = std::time::Instant::now();
        let written = {
            let mut log = self.log();
            let written = if own {
                log.file.write(&entries)
            } else {
                log.file.append(&entries)
            };
            if written.is_ok() && !own {
                self.durability.set(last);
            }
            written
        };
        crate::profile::record(if own { "log.write" } else { "log.append" }, t);
        if written.is_ok() {
            let mut cached = self.cached();
            for entry in entries {
                cached.insert(entry.log_id.index, entry);
            }
        }
        if own {
            self.flusher.request();
        }
        let flushed = written.as_ref().map(|_| ()).map_err(io_err);
        callback.log_io_completed(flushed);
        written.map_err(write_error)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.cached().split_off(&log_id.index);
        let mut log = self.log();
        // The cut syncs what stays, so everything left is on disk. (Cutting from index 0 leaves
        // an empty log, which `Durability` counts as 0, as it does when it opens one.)
        if log.file.truncate(log_id.index).map_err(write_error)? {
            log.generation += 1;
            self.durability.set(log_id.index.saturating_sub(1));
        }
        Ok(())
    }

    // The failpoint returns openraft's (large) error type, which the trait dictates.
    #[cfg_attr(feature = "failpoints", allow(clippy::result_large_err))]
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // openraft purges right after it hands a snapshot received from the leader to the state
        // machine, which installs it concurrently. A purge point on disk beyond the stored
        // snapshot is a log that starts after anything this member holds: after a crash in
        // between, openraft refuses to start. So the purge waits for the snapshot.
        self.snapshot
            .covers(log_id.index)
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))?;
        fail::fail_point!("raftlog::purge", |_| Err(write_error(StoreError::Io(
            io::Error::other("failpoint raftlog::purge")
        ))));
        // The purge point is durable before entries go, so a restart never reads a gap.
        write_meta(&self.db, LAST_PURGED, &log_id).map_err(write_error)?;
        {
            let mut cached = self.cached();
            let kept = cached.split_off(&(log_id.index + 1));
            *cached = kept;
        }
        *self.last_purged.write().unwrap_or_else(|p| p.into_inner()) = Some(log_id);
        self.log().file.purge(log_id.index).map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::records::FORMAT_VERSION;
    use crate::types::test_entry;

    fn entry(index: u64) -> Entry {
        test_entry(index, 1)
    }

    #[tokio::test]
    async fn a_log_kept_in_redb_by_an_older_version_moves_to_the_log_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_database(dir.path()).expect("open");
        {
            let txn = db.begin_write().expect("txn");
            {
                let mut log = txn.open_table(LOG).expect("table");
                for index in 1..=3 {
                    let bytes = encode(&entry(index)).expect("encode");
                    log.insert(index, bytes.as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let mut store = LogStore::new(db.clone(), dir.path(), 1).expect("log store");
        let moved = store.try_get_log_entries(..).await.expect("entries");
        assert_eq!(
            moved.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(take_legacy_entries(&db, None).expect("legacy").is_empty());
        drop(store);
        let mut reopened = LogStore::new(db, dir.path(), 1).expect("reopen");
        let state = reopened.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
    }

    #[test]
    fn a_record_of_another_format_version_stops_the_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_database(dir.path()).expect("open");
        let payload = bincode::serialize(&LogId::default()).expect("payload");
        let bumped = crate::storage::records::seal_as(FORMAT_VERSION + 1, &payload);
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("table")
            .insert(LAST_PURGED, bumped.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
        drop(db);
        let error = open_database(dir.path()).expect_err("must fail");
        assert_eq!(
            error.to_string(),
            format!(
                "data file {} has format version {}, this shoal reads {FORMAT_VERSION}",
                dir.path().join("shoal-kv.redb").display(),
                FORMAT_VERSION + 1
            )
        );
    }
}
