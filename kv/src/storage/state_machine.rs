//! openraft's state machine: applies committed entries (once they are on this member's disk) to
//! the in-memory [`State`], feeds watchers and publishes the applied index; snapshots of the
//! state are kept in the redb data file ([`super::store`]).
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::store::{DataFile, SNAPSHOT, io_err, read_meta, write_meta};
use crate::error::{EtcdError, StoreError};
use crate::proto::mvccpb;
use crate::storage::durable::Durability;
use crate::storage::mvcc::Mvcc;
use crate::types::{
    Command, Entry, LogId, MemberAttrs, MemberNode, Outcome, Proto, StorageError, StoredMembership,
    TypeConfig,
};

/// The replicated state: the key-value store and what members published about themselves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub mvcc: Mvcc,
    pub member_attrs: BTreeMap<u64, MemberAttrs>,
}

impl State {
    /// Applies one command; returns its outcome and the watch events it produced.
    pub fn apply(&mut self, command: Command) -> (Outcome, Vec<mvccpb::Event>) {
        let mvcc = &mut self.mvcc;
        let result = match command {
            Command::Put(req) => mvcc
                .put(&req.0)
                .map(|a| (Outcome::Put(Proto(a.response)), a.events)),
            Command::DeleteRange(req) => {
                let a = mvcc.delete_range(&req.0);
                Ok((Outcome::DeleteRange(Proto(a.response)), a.events))
            }
            Command::Txn(req) => mvcc
                .txn(&req.0)
                .map(|a| (Outcome::Txn(Proto(a.response)), a.events)),
            Command::Compact(rev) => mvcc
                .compact(rev)
                .map(|r| (Outcome::Compact(Proto(r)), Vec::new())),
            Command::LeaseGrant { id, ttl } => mvcc
                .lease_grant(id, ttl)
                .map(|r| (Outcome::LeaseGrant(Proto(r)), Vec::new())),
            Command::LeaseRevoke { id } => mvcc
                .lease_revoke(id)
                .map(|a| (Outcome::LeaseRevoke(Proto(a.response)), a.events)),
            Command::Batch(commands) => {
                let mut outcomes = Vec::with_capacity(commands.len());
                let mut events = Vec::new();
                for command in commands {
                    let (outcome, produced) = self.apply(command);
                    outcomes.push(outcome);
                    events.extend(produced);
                }
                Ok((Outcome::Batch(outcomes), events))
            }
            Command::PublishMember { id, attrs } => {
                self.member_attrs.insert(id, attrs);
                Ok((Outcome::None, Vec::new()))
            }
        };
        result.unwrap_or_else(|e: EtcdError| (Outcome::Error(e), Vec::new()))
    }
}

/// What watchers hear from the state machine.
#[derive(Debug, Clone)]
pub enum Feed {
    /// Events applied, in revision order.
    Events(Arc<Vec<mvccpb::Event>>),
    /// The state was replaced by a snapshot: re-read history from the store.
    Resync,
}

/// The state machine's state, shared with the servers that read it.
#[derive(Debug)]
pub struct Shared {
    pub state: RwLock<State>,
    pub feed: broadcast::Sender<Feed>,
    /// The last log index applied to `state`.
    pub applied: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A snapshot as stored: openraft's metadata and the encoded [`State`].
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, MemberNode>,
    data: Vec<u8>,
}

/// The state machine: applies committed entries to the shared [`State`].
pub struct StateMachine {
    shared: Arc<Shared>,
    db: Arc<DataFile>,
    /// Entries are applied only once they are on this member's disk.
    durability: Durability,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshots_built: u64,
}

impl StateMachine {
    /// Starts from the last stored snapshot, if any; applies what `durability` says is on disk.
    pub fn open(
        db: Arc<DataFile>,
        shared: Arc<Shared>,
        durability: Durability,
    ) -> Result<Self, StoreError> {
        let mut machine = StateMachine {
            shared,
            db,
            durability,
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshots_built: 0,
        };
        if let Some(stored) = read_meta::<StoredSnapshot>(&machine.db, SNAPSHOT)? {
            let state: State = bincode::deserialize(&stored.data)?;
            *machine.shared.write() = state;
            machine.last_applied = stored.meta.last_log_id;
            machine.publish_applied();
            machine.last_membership = stored.meta.last_membership;
        }
        Ok(machine)
    }

    /// Tells requests waiting for their write to be applied how far the state has got.
    fn publish_applied(&self) {
        let index = self.last_applied.map(|l| l.index).unwrap_or_default();
        self.shared.applied.send_replace(index);
    }

    fn stored_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let stored: Option<StoredSnapshot> = read_meta(&self.db, SNAPSHOT)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Builds a snapshot of the state at the moment it is called.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    db: Arc<DataFile>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshot_id: String,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = {
            let state = self.shared.read();
            bincode::serialize(&*state)
                .map_err(|e| StorageIOError::read_state_machine(&io_err(e)))?
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write_meta(&self.db, SNAPSHOT, &stored)
            .map_err(|e| StorageIOError::write_snapshot(None, &io_err(e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let Some(last) = entries.last().map(|e| e.log_id) {
            let t = std::time::Instant::now();
            self.durability
                .wait_for(last.index)
                .await
                .map_err(|why| StorageIOError::apply(last, &io_err(why)))?;
            crate::profile::record("sm.wait_durable", t);
        }
        let t = std::time::Instant::now();
        let mut outcomes = Vec::new();
        let mut events = Vec::new();
        {
            let mut state = self.shared.write();
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => Outcome::None,
                    EntryPayload::Membership(membership) => {
                        self.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        Outcome::None
                    }
                    EntryPayload::Normal(command) => {
                        let (outcome, produced) = state.apply(command);
                        events.extend(produced);
                        outcome
                    }
                };
                outcomes.push(outcome);
            }
        }
        if !events.is_empty() {
            // No receiver just means no watcher.
            let _ = self.shared.feed.send(Feed::Events(Arc::new(events)));
        }
        self.publish_applied();
        crate::profile::record("sm.apply", t);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        let last = self.last_applied.map(|l| l.index).unwrap_or_default();
        SnapshotBuilder {
            shared: self.shared.clone(),
            db: self.db.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: format!("{last}-{}", self.snapshots_built),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: State = bincode::deserialize(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &io_err(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write_meta(&self.db, SNAPSHOT, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io_err(e)))?;
        *self.shared.write() = state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.publish_applied();
        let _ = self.shared.feed.send(Feed::Resync);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.stored_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &io_err(e)).into())
    }
}
