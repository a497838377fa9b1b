//! openraft's state machine: applies committed entries (once they are on this member's disk) to
//! the in-memory [`State`], feeds watchers and publishes the applied index; snapshots of the
//! state are kept in the redb data file ([`super::store`]).
use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, Membership, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::store::{DataFile, SNAPSHOT, SnapshotMark, io_err, read_meta, write_meta};
use crate::error::{EtcdError, StoreError};
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;
use crate::storage::alarms::Alarms;
use crate::storage::auth::{Access, AuthCommand, AuthReply, AuthStore, Requester};
use crate::storage::db_size::DbSize;
use crate::storage::durable::Durability;
use crate::storage::mvcc::Mvcc;
use crate::storage::quota;
use crate::storage::recent_events::RecentEvents;
use crate::storage::tokens::SimpleTokens;
use crate::types::{
    Command, Entry, LogId, MemberAttrs, MemberNode, Members, Outcome, Proto, StorageError,
    StoredMembership, TypeConfig,
};

/// The replicated state: the key-value store, the auth store and what members published about
/// themselves; beside it, this member's simple tokens (in memory only, as etcd's).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub mvcc: Mvcc,
    pub member_attrs: BTreeMap<u64, MemberAttrs>,
    pub auth: AuthStore,
    pub alarms: Alarms,
    #[serde(skip)]
    pub tokens: SimpleTokens,
}

impl State {
    /// Applies one command of log entry `index`; returns its outcome and the watch events it
    /// produced.
    pub fn apply(&mut self, index: u64, command: Command) -> (Outcome, Vec<mvccpb::Event>) {
        self.apply_by(index, None, command)
    }

    /// Applies `command` sent by `requester` (`None`: the cluster itself, unchecked).
    fn apply_by(
        &mut self,
        index: u64,
        requester: Option<&Requester>,
        command: Command,
    ) -> (Outcome, Vec<mvccpb::Event>) {
        // etcd's capped applier, outermost: with NOSPACE raised, nothing that takes space.
        if self.alarms.no_space() && quota::takes_space(&command) {
            return (Outcome::Error(EtcdError::NoSpace), Vec::new());
        }
        if let Some(requester) = requester
            && let Err(e) = self.check_write(requester, &command)
        {
            return (Outcome::Error(e), Vec::new());
        }
        let mvcc = &mut self.mvcc;
        let result = match command {
            Command::Put(req) => mvcc
                .put(req.message())
                .map(|a| (Outcome::Put(Proto(a.response)), a.events)),
            Command::DeleteRange(req) => {
                let a = mvcc.delete_range(req.message());
                Ok((Outcome::DeleteRange(Proto(a.response)), a.events))
            }
            Command::Txn(req) => mvcc
                .txn(req.message())
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
                    let (outcome, produced) = self.apply_by(index, requester, command);
                    outcomes.push(outcome);
                    events.extend(produced);
                }
                Ok((Outcome::Batch(outcomes), events))
            }
            Command::PublishMember { id, attrs } => {
                self.member_attrs.insert(id, attrs);
                Ok((Outcome::None, Vec::new()))
            }
            Command::AsUser { user, command } => {
                return self.apply_by(index, Some(&user), *command);
            }
            Command::Auth(command) => self
                .apply_auth(index, requester, command)
                .map(|reply| (Outcome::Auth(reply), Vec::new())),
            Command::Alarm(command) => {
                let alarms = self.alarms.apply(&command);
                let response = pb::AlarmResponse {
                    header: None,
                    alarms,
                };
                Ok((Outcome::Alarm(Proto(response)), Vec::new()))
            }
        };
        result.unwrap_or_else(|e: EtcdError| (Outcome::Error(e), Vec::new()))
    }

    /// Whether `requester` may make this write (etcd's `authApplierV3`): checked where the
    /// request enters and again when it is applied, against the auth revision it carries.
    pub fn check_write(&self, requester: &Requester, command: &Command) -> Result<(), EtcdError> {
        let auth = &self.auth;
        match command {
            Command::Put(req) => {
                let req = req.message();
                auth.check_put(requester, &req.key)?;
                // Attaching a lease needs write on the keys it holds (who revokes it deletes them).
                self.check_lease_keys(requester, req.lease)?;
                if req.prev_kv {
                    auth.check_range(requester, &req.key, &[], Access::Read)?;
                }
                Ok(())
            }
            Command::DeleteRange(req) => auth.check_delete(requester, req.message()),
            Command::Txn(req) => auth.check_txn(requester, req.message()),
            Command::LeaseRevoke { id } => self.check_lease_keys(requester, *id),
            _ => Ok(()),
        }
    }

    fn check_lease_keys(&self, requester: &Requester, lease: i64) -> Result<(), EtcdError> {
        let Some(record) = self.mvcc.lease(lease) else {
            return Ok(());
        };
        record
            .keys
            .iter()
            .try_for_each(|key| self.auth.check_put(requester, key))
    }

    /// Applies an auth command and keeps this member's tokens in step with it.
    fn apply_auth(
        &mut self,
        index: u64,
        requester: Option<&Requester>,
        command: AuthCommand,
    ) -> Result<AuthReply, EtcdError> {
        let token = match &command {
            AuthCommand::Authenticate { token_prefix, .. } => {
                Some(SimpleTokens::token(token_prefix, index))
            }
            _ => None,
        };
        let forget = match &command {
            AuthCommand::UserDelete { name } | AuthCommand::UserChangePassword { name, .. } => {
                Some(name.clone())
            }
            _ => None,
        };
        let disable = command == AuthCommand::Disable;
        let reply = self.auth.apply(requester, command)?;
        if disable {
            self.tokens.clear();
        }
        if let Some(name) = forget {
            self.tokens.invalidate_user(&name);
        }
        match (token, reply) {
            (Some(token), AuthReply::Authenticated(user)) => {
                self.tokens.assign(token.clone(), user);
                Ok(AuthReply::Token(token))
            }
            (_, reply) => Ok(reply),
        }
    }
}

/// What watchers hear from the state machine.
#[derive(Debug, Clone)]
pub enum Feed {
    /// Events applied, in revision order.
    Events(Arc<EventBatch>),
    /// The state was replaced by a snapshot: re-read history from the store.
    Resync,
}

/// The events of one apply, and their wire encodings once a watch stream asked for them: made
/// once for every stream that sends them instead of once per stream.
#[derive(Debug)]
pub struct EventBatch {
    pub events: Vec<mvccpb::Event>,
    /// Per event, as the watch service encodes it (`api::watch`).
    pub encoded: std::sync::OnceLock<Vec<[bytes::Bytes; 2]>>,
}

impl EventBatch {
    pub fn new(events: Vec<mvccpb::Event>) -> Self {
        Self {
            events,
            encoded: std::sync::OnceLock::new(),
        }
    }
}

/// The state machine's state, shared with the servers that read it.
#[derive(Debug)]
pub struct Shared {
    pub state: RwLock<State>,
    pub feed: broadcast::Sender<Feed>,
    /// The last log index applied to `state`.
    pub applied: tokio::sync::watch::Sender<u64>,
    /// The state's size as etcd's database, updated as entries apply.
    pub db_size: DbSize,
    /// The latest applies' events, for watchers catching up; changed only under `state`'s
    /// write lock (lock `state` first, then this).
    pub recent: RwLock<RecentEvents>,
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

    /// Replaces the replicated state (a snapshot), keeping this member's tokens.
    fn replace(&self, mut state: State) {
        let mut current = self.write();
        state.tokens = current.tokens.clone();
        self.db_size.reset(state.mvcc.row_bytes());
        self.recent_events_mut().reset(state.mvcc.revision());
        *current = state;
    }

    /// The latest applies' events, to read. Lock the state first.
    pub fn recent_events(&self) -> std::sync::RwLockReadGuard<'_, RecentEvents> {
        self.recent
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The latest applies' events, to change along with the state, whose write lock is held.
    fn recent_events_mut(&self) -> std::sync::RwLockWriteGuard<'_, RecentEvents> {
        self.recent
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives back what the state no longer uses, and counts the database as rewritten: etcd's
    /// defragment. The state is locked meanwhile, as etcd's defragment blocks its backend.
    pub fn defragment(&self) {
        let mut state = self.write();
        state.mvcc.shrink();
        self.db_size.reset(state.mvcc.row_bytes());
    }
}

/// Where a data dir restored from a backup records the cluster it was restored for.
const RESTORED_FOR: &str = "restored_for_cluster";

/// Seeds a new member's data file with a restored state, as the Raft snapshot every member of
/// the new cluster starts from: at index 0 with the new cluster's members, what initializing the
/// cluster would have written (etcd's restore likewise writes a snapshot with the new members).
/// Raft then never replays a log without the restored state to a member that joins later: the
/// log before the snapshot is gone, so a newcomer is sent the snapshot.
pub fn write_restored(
    db: &DataFile,
    state: &State,
    members: Members,
    cluster_id: u64,
) -> Result<(), StoreError> {
    let log_id = LogId::new(openraft::CommittedLeaderId::default(), 0);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), Membership::from(members)),
        snapshot_id: "restored".to_string(),
    };
    let stored = StoredSnapshot {
        meta,
        data: bincode::serialize(state)?,
    };
    write_meta(db, SNAPSHOT, &stored)?;
    write_meta(db, RESTORED_FOR, &cluster_id)
}

/// The cluster a data file was restored for, if it was restored from a backup.
pub fn restored_cluster(db: &DataFile) -> Result<Option<u64>, StoreError> {
    read_meta(db, RESTORED_FOR)
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
    /// Moved once a snapshot is stored (the log's purges wait for it).
    snapshot_mark: SnapshotMark,
}

impl StateMachine {
    /// Starts from the last stored snapshot, if any; applies what `durability` says is on disk;
    /// tells `snapshot_mark` how far each stored snapshot reaches.
    pub fn open(
        db: Arc<DataFile>,
        shared: Arc<Shared>,
        durability: Durability,
        snapshot_mark: SnapshotMark,
    ) -> Result<Self, StoreError> {
        let mut machine = StateMachine {
            shared,
            db,
            durability,
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshots_built: 0,
            snapshot_mark,
        };
        if let Some(stored) = read_meta::<StoredSnapshot>(&machine.db, SNAPSHOT)? {
            if let Some(last) = stored.meta.last_log_id {
                machine.snapshot_mark.stored(last.index);
            }
            let state: State = bincode::deserialize(&stored.data)?;
            machine.shared.replace(state);
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

/// Stores a snapshot of the state as it was when the builder was made: openraft runs
/// [`RaftSnapshotBuilder::build_snapshot`] in a task of its own while the state machine goes on
/// applying, so the state is encoded when the builder is made, between two applies, and the
/// snapshot holds exactly the entries up to its `last_log_id` (no entry is applied twice after
/// a restart or an InstallSnapshot).
pub struct SnapshotBuilder {
    db: Arc<DataFile>,
    /// The encoded state at `last_applied`, or why it could not be encoded.
    data: Result<Vec<u8>, String>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshot_id: String,
    snapshot_mark: SnapshotMark,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    // The failpoint returns openraft's (large) error type, which the trait dictates.
    #[cfg_attr(feature = "failpoints", allow(clippy::result_large_err))]
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        fail::fail_point!("snapshot::build", |_| Err(StorageIOError::write_snapshot(
            None,
            &io_err(std::io::Error::other("failpoint snapshot::build"))
        )
        .into()));
        let data = std::mem::replace(&mut self.data, Err("snapshot already built".to_string()))
            .map_err(|e| StorageIOError::read_state_machine(&io::Error::other(e)))?;
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
        if let Some(last) = self.last_applied {
            self.snapshot_mark.stored(last.index);
        }
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
        let batch = {
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
                        let (outcome, produced) = state.apply(entry.log_id.index, command);
                        events.extend(produced);
                        outcome
                    }
                };
                outcomes.push(outcome);
            }
            self.shared.db_size.observe(state.mvcc.row_bytes());
            // Kept with the state it came from, so history and state always agree.
            (!events.is_empty()).then(|| {
                let batch = Arc::new(EventBatch::new(events));
                self.shared.recent_events_mut().push(batch.clone());
                batch
            })
        };
        if let Some(batch) = batch {
            // No receiver just means no watcher.
            let _ = self.shared.feed.send(Feed::Events(batch));
        }
        self.publish_applied();
        crate::profile::record("sm.apply", t);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        let last = self.last_applied.map(|l| l.index).unwrap_or_default();
        let data = bincode::serialize(&*self.shared.read()).map_err(|e| e.to_string());
        SnapshotBuilder {
            db: self.db.clone(),
            data,
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id: format!("{last}-{}", self.snapshots_built),
            snapshot_mark: self.snapshot_mark.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    // The failpoint returns openraft's (large) error type, which the trait dictates.
    #[cfg_attr(feature = "failpoints", allow(clippy::result_large_err))]
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        fail::fail_point!("snapshot::install", |_| Err(
            StorageIOError::write_snapshot(
                Some(meta.signature()),
                &io_err(std::io::Error::other("failpoint snapshot::install"))
            )
            .into()
        ));
        let data = snapshot.into_inner();
        let state: State = bincode::deserialize(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &io_err(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write_meta(&self.db, SNAPSHOT, &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io_err(e)))?;
        if let Some(last) = meta.last_log_id {
            self.snapshot_mark.stored(last.index);
        }
        self.shared.replace(state);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb as pb;
    use crate::storage::auth::{Permission, ROOT};
    use crate::types::ClientRequest;

    fn auth(state: &mut State, index: u64, command: AuthCommand) -> Outcome {
        state.apply(index, Command::Auth(command)).0
    }

    fn put_as(state: &mut State, user: Requester, key: &str) -> Outcome {
        let put = pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        };
        let command = Command::AsUser {
            user,
            command: Box::new(Command::Put(ClientRequest::new(put))),
        };
        state.apply(0, command).0
    }

    /// Auth on; `alice` may write `a` through role `app`.
    fn state_with_alice() -> State {
        let mut state = State::default();
        let user = |name: &str| AuthCommand::UserAdd {
            name: name.to_string(),
            password_hash: Some("hash".to_string()),
        };
        let commands = [
            user(ROOT),
            user("alice"),
            AuthCommand::UserGrantRole {
                user: ROOT.to_string(),
                role: ROOT.to_string(),
            },
            AuthCommand::RoleAdd {
                name: "app".to_string(),
            },
            AuthCommand::RoleGrantPermission {
                name: "app".to_string(),
                permission: Permission {
                    access: Access::Write,
                    key: b"a".to_vec(),
                    range_end: Vec::new(),
                },
            },
            AuthCommand::UserGrantRole {
                user: "alice".to_string(),
                role: "app".to_string(),
            },
            AuthCommand::Enable,
        ];
        for command in commands {
            assert!(matches!(auth(&mut state, 1, command), Outcome::Auth(_)));
        }
        state
    }

    #[test]
    fn a_write_is_checked_again_when_applied() {
        let mut state = state_with_alice();
        let alice = Requester {
            name: "alice".to_string(),
            revision: state.auth.revision(),
        };
        assert!(matches!(
            put_as(&mut state, alice.clone(), "a"),
            Outcome::Put(_)
        ));
        assert!(matches!(
            put_as(&mut state, alice.clone(), "b"),
            Outcome::Error(EtcdError::PermissionDenied)
        ));
        // The permission goes between the check where the put entered and its apply.
        let revoke = AuthCommand::RoleRevokePermission {
            role: "app".to_string(),
            key: b"a".to_vec(),
            range_end: Vec::new(),
        };
        assert!(matches!(auth(&mut state, 2, revoke), Outcome::Auth(_)));
        assert!(matches!(
            put_as(&mut state, alice, "a"),
            Outcome::Error(EtcdError::AuthOldRevision)
        ));
        assert!(matches!(
            put_as(&mut state, Requester::default(), "a"),
            Outcome::Error(EtcdError::UserEmpty)
        ));
        assert_eq!(state.mvcc.revision(), 2, "only the permitted put wrote");
    }

    #[test]
    fn a_snapshot_carries_the_auth_store_and_a_member_keeps_its_tokens() {
        let state = state_with_alice();
        state.tokens.assign("t.1".to_string(), "alice".to_string());
        let restored: State =
            bincode::deserialize(&bincode::serialize(&state).expect("encode")).expect("decode");
        assert!(restored.auth.is_enabled());
        assert_eq!(restored.auth.revision(), state.auth.revision());
        assert!(restored.auth.has_role("alice", "app"));
        assert_eq!(
            restored.tokens.user_of("t.1"),
            None,
            "tokens are not replicated"
        );
        let shared = Shared {
            state: RwLock::new(state),
            feed: broadcast::channel(1).0,
            applied: tokio::sync::watch::channel(0).0,
            db_size: DbSize::default(),
            recent: Default::default(),
        };
        shared.replace(restored);
        assert_eq!(
            shared.read().tokens.user_of("t.1").as_deref(),
            Some("alice")
        );
    }

    fn put_entry(index: u64, key: &str) -> Entry {
        let put = pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: bytes::Bytes::from_static(b"v"),
            ..Default::default()
        };
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Put(ClientRequest::new(put))),
        }
    }

    /// openraft builds a snapshot in a task of its own while the state machine goes on
    /// applying: what the builder holds must be the state at its `last_log_id`, or a restart
    /// or an InstallSnapshot would apply the entries after it a second time.
    #[tokio::test]
    async fn a_snapshot_holds_exactly_the_state_at_its_last_log_id_while_applies_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::store::open_database(dir.path()).expect("open");
        let shared = Arc::new(Shared {
            state: RwLock::new(State::default()),
            feed: broadcast::channel(16).0,
            applied: tokio::sync::watch::channel(0).0,
            db_size: DbSize::default(),
            recent: Default::default(),
        });
        let mut machine = StateMachine::open(
            db.clone(),
            shared,
            Durability::new(u64::MAX),
            SnapshotMark::new(),
        )
        .expect("machine");
        machine
            .apply((1..=3).map(|i| put_entry(i, "a")))
            .await
            .expect("apply");
        let mut builder = machine.get_snapshot_builder().await;
        // openraft's state machine worker goes on applying before the builder task runs.
        machine.apply([put_entry(4, "a")]).await.expect("apply");
        let snapshot = builder.build_snapshot().await.expect("build");
        let state: State = bincode::deserialize(snapshot.snapshot.get_ref()).expect("decode");
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(3));
        assert_eq!(
            state.mvcc.revision(),
            4,
            "three puts after revision 1: the fourth entry must not be in the snapshot"
        );
        let reopened = StateMachine::open(
            db,
            Arc::new(Shared {
                state: RwLock::new(State::default()),
                feed: broadcast::channel(16).0,
                applied: tokio::sync::watch::channel(0).0,
                db_size: DbSize::default(),
                recent: Default::default(),
            }),
            Durability::new(u64::MAX),
            SnapshotMark::new(),
        )
        .expect("reopen");
        assert_eq!(reopened.shared.read().mvcc.revision(), 4);
    }

    #[test]
    fn authenticate_assigns_a_token_named_by_its_log_index() {
        let mut state = state_with_alice();
        let command = AuthCommand::Authenticate {
            name: "alice".to_string(),
            token_prefix: "prefix".to_string(),
        };
        let Outcome::Auth(AuthReply::Token(token)) = auth(&mut state, 42, command) else {
            panic!("no token");
        };
        assert_eq!(token, "prefix.42");
        assert_eq!(state.tokens.user_of(&token).as_deref(), Some("alice"));
        let change = AuthCommand::UserChangePassword {
            name: "alice".to_string(),
            password_hash: "new".to_string(),
        };
        auth(&mut state, 43, change);
        assert_eq!(
            state.tokens.user_of(&token),
            None,
            "a new password ends old tokens"
        );
    }
}
