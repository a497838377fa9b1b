//! The multi-version key-value store: etcd's MVCC semantics, in memory, deterministic.
//!
//! Every key keeps its history as a list of versions ordered by revision `(main, sub)`; a
//! deletion is a tombstone version. A write transaction takes the next main revision and numbers
//! its changes with sub revisions; the store's revision only moves when something changed.
//! Compaction drops versions that are superseded at the compaction revision. The Raft state
//! machine owns one [`Mvcc`] and feeds it committed commands; watchers read its history.
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::error::EtcdError;
use crate::proto::etcdserverpb::{self as pb, compare, range_request, request_op, response_op};
use crate::proto::mvccpb;

/// etcd's limit on the operations in one transaction (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Version {
    main: i64,
    sub: i64,
    /// `None` is a tombstone.
    live: Option<Live>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Live {
    create_revision: i64,
    version: i64,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    lease: i64,
}

/// A lease as the replicated state knows it: its TTL and the keys attached to it. When it
/// expires is the leader's business (the lease clock in [`crate::member`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

/// One stored version of a key (etcd's `key` bucket row): a tombstone's `kv` holds only the key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRevision {
    pub main: i64,
    pub sub: i64,
    pub kv: mvccpb::KeyValue,
    pub tombstone: bool,
}

/// The result of a write: the response and the watch events it produced.
#[derive(Debug)]
pub struct Applied<T> {
    pub response: T,
    pub events: Vec<mvccpb::Event>,
}

/// The whole key-value state, serialized as is into Raft snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mvcc {
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    revision: i64,
    compact_revision: i64,
    leases: BTreeMap<i64, LeaseRecord>,
    /// The bytes every stored version takes as a row of etcd's `key` bucket ([`key_row_bytes`]).
    key_rows: u64,
}

impl Default for Mvcc {
    fn default() -> Self {
        Mvcc {
            keys: BTreeMap::new(),
            revision: 1,
            compact_revision: -1,
            leases: BTreeMap::new(),
            key_rows: 0,
        }
    }
}

/// bbolt's header of one leaf element (flags, position, key and value sizes).
const LEAF_ELEMENT: u64 = 16;
/// A `key` bucket row's key: the revision `main_sub` (8 + 1 + 8 bytes), plus `t` for a tombstone.
const REVISION_KEY: u64 = 17;
/// A `lease` bucket row: the 8-byte ID and a leasepb `Lease` of at most 22 bytes.
const LEASE_ROW: u64 = LEAF_ELEMENT + 8 + 22;

/// A protobuf field's bytes: a one-byte tag, then a length and `len` bytes (absent when empty).
fn bytes_field(len: usize) -> u64 {
    if len == 0 {
        return 0;
    }
    (1 + prost::encoding::encoded_len_varint(len as u64) + len) as u64
}

/// A protobuf int64 field's bytes (absent when 0).
fn int_field(value: i64) -> u64 {
    if value == 0 {
        return 0;
    }
    (1 + prost::encoding::encoded_len_varint(value as u64)) as u64
}

/// The bytes `version` of `key` takes as a row of etcd's `key` bucket: its revision key and its
/// mvccpb `KeyValue` (a tombstone's holds only the key), with bbolt's element header.
fn key_row_bytes(key: &[u8], version: &Version) -> u64 {
    let value = match &version.live {
        Some(live) => {
            bytes_field(key.len())
                + int_field(live.create_revision)
                + int_field(version.main)
                + int_field(live.version)
                + bytes_field(live.value.len())
                + int_field(live.lease)
        }
        None => bytes_field(key.len()) + 1,
    };
    LEAF_ELEMENT + REVISION_KEY + value
}

fn header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..Default::default()
    })
}

type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The keys `[key, range_end)` as etcd reads them: no `range_end` is the key alone, `"\0"` is
/// every key from `key` on.
fn key_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if range_end.is_empty() {
        return Some((Bound::Included(key), Bound::Included(key)));
    }
    if range_end == [0] {
        return Some((Bound::Included(key), Bound::Unbounded));
    }
    if range_end <= key {
        return None;
    }
    Some((Bound::Included(key), Bound::Excluded(range_end)))
}

/// Whether `key` lies in the range `[start, range_end)` (same conventions as `key_bounds`).
pub fn key_in_range(key: &[u8], start: &[u8], range_end: &[u8]) -> bool {
    match key_bounds(start, range_end) {
        None => false,
        Some((_, Bound::Included(only))) => key == only,
        Some((_, Bound::Unbounded)) => key >= start,
        Some((_, Bound::Excluded(end))) => key >= start && key < end,
    }
}

fn to_kv(key: &[u8], version: &Version) -> Option<mvccpb::KeyValue> {
    let live = version.live.as_ref()?;
    Some(mvccpb::KeyValue {
        key: key.to_vec(),
        create_revision: live.create_revision,
        mod_revision: version.main,
        version: live.version,
        value: live.value.clone(),
        lease: live.lease,
    })
}

/// The version of a key visible at `rev`, if the key is live then.
fn visible_at(versions: &[Version], rev: i64) -> Option<&Version> {
    let idx = versions.partition_point(|v| v.main <= rev);
    let version = versions.get(idx.checked_sub(1)?)?;
    version.live.as_ref().map(|_| version)
}

impl Mvcc {
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    fn keys_in<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<Version>)> + 'a {
        key_bounds(key, range_end)
            .into_iter()
            .flat_map(move |bounds| self.keys.range::<[u8], _>(bounds))
    }

    /// The live key-values in a range at `rev`, in key order.
    fn live_at(&self, key: &[u8], range_end: &[u8], rev: i64) -> Vec<mvccpb::KeyValue> {
        self.keys_in(key, range_end)
            .filter_map(|(k, versions)| visible_at(versions, rev).and_then(|v| to_kv(k, v)))
            .collect()
    }

    fn check_readable(&self, requested: i64, current: i64) -> Result<i64, EtcdError> {
        if requested > current {
            return Err(EtcdError::FutureRevision);
        }
        let rev = if requested <= 0 { current } else { requested };
        if rev < self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        Ok(rev)
    }

    /// A Range at the current revision (what a client's Range reads).
    pub fn range(&self, req: &pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        self.range_at(req, self.revision)
    }

    fn range_at(
        &self,
        req: &pb::RangeRequest,
        current: i64,
    ) -> Result<pb::RangeResponse, EtcdError> {
        let rev = self.check_readable(req.revision, current)?;
        let mut kvs = self.live_at(&req.key, &req.range_end, rev);
        let count = kvs.len() as i64;
        kvs.retain(|kv| passes_revision_filters(req, kv));
        sort_kvs(req, &mut kvs);
        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.count_only {
            kvs.clear();
        }
        if req.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(pb::RangeResponse {
            header: header(current),
            kvs,
            more,
            count,
        })
    }

    /// Checks a Put against the current state, before anything is written.
    fn check_put(&self, req: &pb::PutRequest, rev: i64) -> Result<(), EtcdError> {
        if req.lease != 0 && !self.leases.contains_key(&req.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        if (req.ignore_value || req.ignore_lease)
            && self
                .keys
                .get(req.key.as_ref())
                .and_then(|v| visible_at(v, rev))
                .is_none()
        {
            return Err(EtcdError::KeyNotFound);
        }
        Ok(())
    }

    pub fn put(&mut self, req: &pb::PutRequest) -> Result<Applied<pb::PutResponse>, EtcdError> {
        self.check_put(req, self.revision)?;
        let mut writer = Writer::new(self);
        let mut response = writer.put(req);
        let (revision, events) = writer.finish();
        response.header = header(revision);
        Ok(Applied { response, events })
    }

    pub fn delete_range(
        &mut self,
        req: &pb::DeleteRangeRequest,
    ) -> Applied<pb::DeleteRangeResponse> {
        let mut writer = Writer::new(self);
        let mut response = writer.delete_range(req);
        let (revision, events) = writer.finish();
        response.header = header(revision);
        Applied { response, events }
    }

    pub fn txn(&mut self, req: &pb::TxnRequest) -> Result<Applied<pb::TxnResponse>, EtcdError> {
        let rev = self.revision;
        let succeeded = req.compare.iter().all(|c| self.compare(c, rev));
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        self.check_ops(ops, rev)?;
        let mut writer = Writer::new(self);
        let responses = writer.apply_ops(ops);
        let (revision, events) = writer.finish();
        Ok(Applied {
            response: pb::TxnResponse {
                header: header(revision),
                succeeded,
                responses,
            },
            events,
        })
    }

    /// etcd checks every request of the chosen branch (recursively) before applying any.
    fn check_ops(&self, ops: &[pb::RequestOp], rev: i64) -> Result<(), EtcdError> {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    self.check_readable(r.revision, rev)?;
                }
                Some(request_op::Request::RequestPut(p)) => self.check_put(p, rev)?,
                Some(request_op::Request::RequestTxn(t)) => {
                    let succeeded = t.compare.iter().all(|c| self.compare(c, rev));
                    self.check_ops(if succeeded { &t.success } else { &t.failure }, rev)?;
                }
                Some(request_op::Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    fn compare(&self, cmp: &pb::Compare, rev: i64) -> bool {
        let range_end: &[u8] = if cmp.range_end == [0] {
            &[0]
        } else {
            &cmp.range_end
        };
        let kvs = self.live_at(&cmp.key, range_end, rev);
        if kvs.is_empty() {
            if cmp.target == compare::CompareTarget::Value as i32 {
                return false;
            }
            return compare_kv(cmp, &mvccpb::KeyValue::default());
        }
        kvs.iter().all(|kv| compare_kv(cmp, kv))
    }

    pub fn compact(&mut self, rev: i64) -> Result<pb::CompactionResponse, EtcdError> {
        if rev <= self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        if rev > self.revision {
            return Err(EtcdError::FutureRevision);
        }
        let mut freed = 0;
        self.keys.retain(|key, versions| {
            let visible = versions.partition_point(|v| v.main <= rev);
            let keep_from = match visible.checked_sub(1).map(|i| (i, &versions[i])) {
                Some((i, v)) if v.live.is_some() => i,
                Some((i, _)) => i + 1,
                None => 0,
            };
            freed += versions
                .drain(..keep_from)
                .map(|v| key_row_bytes(key, &v))
                .sum::<u64>();
            // Give back what a long history took, or an overwritten key keeps its peak.
            if versions.capacity() > 2 * versions.len() + 4 {
                versions.shrink_to_fit();
            }
            !versions.is_empty()
        });
        self.key_rows -= freed;
        self.compact_revision = rev;
        Ok(pb::CompactionResponse {
            header: header(self.revision),
        })
    }

    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<pb::LeaseGrantResponse, EtcdError> {
        // Checked where it is applied too, as etcd's lessor does: nothing in the log holds more.
        validate::lease_ttl(ttl)?;
        if self.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExists);
        }
        self.leases.insert(
            id,
            LeaseRecord {
                ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(pb::LeaseGrantResponse {
            header: header(self.revision),
            id,
            ttl,
            error: String::new(),
        })
    }

    /// Revokes a lease: its keys are deleted in one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<Applied<pb::LeaseRevokeResponse>, EtcdError> {
        let record = self.leases.get(&id).ok_or(EtcdError::LeaseNotFound)?;
        let keys: Vec<Vec<u8>> = record.keys.iter().cloned().collect();
        let mut writer = Writer::new(self);
        for key in keys {
            writer.delete_range(&pb::DeleteRangeRequest {
                key,
                ..Default::default()
            });
        }
        let (revision, events) = writer.finish();
        self.leases.remove(&id);
        Ok(Applied {
            response: pb::LeaseRevokeResponse {
                header: header(revision),
            },
            events,
        })
    }

    pub fn lease(&self, id: i64) -> Option<&LeaseRecord> {
        self.leases.get(&id)
    }

    pub fn leases(&self) -> impl Iterator<Item = (&i64, &LeaseRecord)> {
        self.leases.iter()
    }

    /// Every event on keys in `[key, range_end)` with a revision of at least `from`, in
    /// revision order, each with the previous key-value when there was one.
    pub fn events_since(&self, key: &[u8], range_end: &[u8], from: i64) -> Vec<mvccpb::Event> {
        let mut found: Vec<((i64, i64), mvccpb::Event)> = Vec::new();
        for (k, versions) in self.keys_in(key, range_end) {
            let first = versions.partition_point(|v| v.main < from);
            for idx in first..versions.len() {
                let prev = idx.checked_sub(1).and_then(|p| to_kv(k, &versions[p]));
                found.push((
                    (versions[idx].main, versions[idx].sub),
                    event(k, &versions[idx], prev),
                ));
            }
        }
        found.sort_by_key(|(rev, _)| *rev);
        found.into_iter().map(|(_, e)| e).collect()
    }

    /// Every stored version in revision order, as etcd's `key` bucket holds them.
    pub fn history(&self) -> Vec<StoredRevision> {
        let mut history: Vec<StoredRevision> = self
            .keys
            .iter()
            .flat_map(|(key, versions)| {
                versions.iter().map(move |v| StoredRevision {
                    main: v.main,
                    sub: v.sub,
                    kv: to_kv(key, v).unwrap_or_else(|| mvccpb::KeyValue {
                        key: key.clone(),
                        ..Default::default()
                    }),
                    tombstone: v.live.is_none(),
                })
            })
            .collect();
        history.sort_by_key(|r| (r.main, r.sub));
        history
    }

    /// A store holding `history` (in any order), compacted at `compact_revision`, with the
    /// leases `lease_ttls` (id to TTL) holding the live keys attached to them.
    pub fn from_history(
        history: Vec<StoredRevision>,
        compact_revision: i64,
        lease_ttls: BTreeMap<i64, i64>,
    ) -> Mvcc {
        let mut mvcc = Mvcc {
            compact_revision,
            ..Mvcc::default()
        };
        for r in history {
            mvcc.revision = mvcc.revision.max(r.main);
            let live = (!r.tombstone).then_some(Live {
                create_revision: r.kv.create_revision,
                version: r.kv.version,
                value: r.kv.value,
                lease: r.kv.lease,
            });
            mvcc.keys.entry(r.kv.key).or_default().push(Version {
                main: r.main,
                sub: r.sub,
                live,
            });
        }
        mvcc.revision = mvcc.revision.max(compact_revision);
        mvcc.keys
            .values_mut()
            .for_each(|versions| versions.sort_by_key(|v| (v.main, v.sub)));
        mvcc.key_rows = mvcc
            .keys
            .iter()
            .flat_map(|(key, versions)| versions.iter().map(move |v| key_row_bytes(key, v)))
            .sum();
        for (id, ttl) in lease_ttls {
            mvcc.leases.insert(
                id,
                LeaseRecord {
                    ttl,
                    keys: BTreeSet::new(),
                },
            );
        }
        for (key, versions) in &mvcc.keys {
            let lease = versions
                .last()
                .and_then(|v| v.live.as_ref())
                .map(|l| l.lease);
            if let Some(record) = lease.and_then(|id| mvcc.leases.get_mut(&id)) {
                record.keys.insert(key.clone());
            }
        }
        mvcc
    }

    /// Number of key versions held.
    pub fn version_count(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    /// Number of keys with a version held, live or deleted (etcd's `keys_total`: its index).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The bytes the state takes as rows of etcd's `key` and `lease` buckets
    /// ([`crate::storage::db_size`]).
    pub fn row_bytes(&self) -> u64 {
        self.key_rows + self.leases.len() as u64 * LEASE_ROW
    }

    /// Gives back memory the history no longer uses (a defragment): what compaction left of
    /// each key's versions.
    pub fn shrink(&mut self) {
        self.keys.values_mut().for_each(Vec::shrink_to_fit);
    }
}

fn event(key: &[u8], version: &Version, prev_kv: Option<mvccpb::KeyValue>) -> mvccpb::Event {
    match to_kv(key, version) {
        Some(kv) => mvccpb::Event {
            r#type: mvccpb::event::EventType::Put as i32,
            kv: Some(kv),
            prev_kv,
        },
        None => mvccpb::Event {
            r#type: mvccpb::event::EventType::Delete as i32,
            kv: Some(mvccpb::KeyValue {
                key: key.to_vec(),
                mod_revision: version.main,
                ..Default::default()
            }),
            prev_kv,
        },
    }
}

fn passes_revision_filters(req: &pb::RangeRequest, kv: &mvccpb::KeyValue) -> bool {
    (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
        && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
        && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
}

fn sort_kvs(req: &pb::RangeRequest, kvs: &mut [mvccpb::KeyValue]) {
    use range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    if order == SortOrder::None || (order == SortOrder::Ascend && target == SortTarget::Key) {
        return;
    }
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

fn compare_kv(cmp: &pb::Compare, kv: &mvccpb::KeyValue) -> bool {
    use compare::{CompareResult, TargetUnion};
    use std::cmp::Ordering;
    let ordering = match &cmp.target_union {
        Some(TargetUnion::Version(v)) => kv.version.cmp(v),
        Some(TargetUnion::CreateRevision(v)) => kv.create_revision.cmp(v),
        Some(TargetUnion::ModRevision(v)) => kv.mod_revision.cmp(v),
        Some(TargetUnion::Value(v)) => kv.value.as_slice().cmp(v.as_slice()),
        Some(TargetUnion::Lease(v)) => kv.lease.cmp(v),
        None => return false,
    };
    match CompareResult::try_from(cmp.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => false,
    }
}

/// One write transaction: all its changes share the main revision `main`.
struct Writer<'a> {
    mvcc: &'a mut Mvcc,
    main: i64,
    sub: i64,
    events: Vec<mvccpb::Event>,
}

impl<'a> Writer<'a> {
    fn new(mvcc: &'a mut Mvcc) -> Self {
        let main = mvcc.revision + 1;
        Writer {
            mvcc,
            main,
            sub: 0,
            events: Vec::new(),
        }
    }

    /// Reads inside a transaction see its own earlier writes.
    fn read_rev(&self) -> i64 {
        if self.sub > 0 {
            self.main
        } else {
            self.main - 1
        }
    }

    fn current(&self, key: &[u8]) -> Option<mvccpb::KeyValue> {
        let versions = self.mvcc.keys.get(key)?;
        to_kv(key, visible_at(versions, self.read_rev())?)
    }

    fn push(&mut self, key: &[u8], live: Option<Live>, prev_kv: Option<mvccpb::KeyValue>) {
        let version = Version {
            main: self.main,
            sub: self.sub,
            live,
        };
        self.sub += 1;
        self.mvcc.key_rows += key_row_bytes(key, &version);
        self.events.push(event(key, &version, prev_kv));
        self.mvcc
            .keys
            .entry(key.to_vec())
            .or_default()
            .push(version);
    }

    fn detach(&mut self, key: &[u8], lease: i64) {
        if let Some(record) = self.mvcc.leases.get_mut(&lease) {
            record.keys.remove(key);
        }
    }

    fn put(&mut self, req: &pb::PutRequest) -> pb::PutResponse {
        let prev = self.current(&req.key);
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.to_vec(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (self.main, 1),
        };
        if let Some(p) = &prev
            && p.lease != 0
            && p.lease != lease
        {
            self.detach(&req.key, p.lease);
        }
        if lease != 0
            && let Some(record) = self.mvcc.leases.get_mut(&lease)
        {
            record.keys.insert(req.key.to_vec());
        }
        let live = Live {
            create_revision,
            version,
            value,
            lease,
        };
        self.push(&req.key, Some(live), prev.clone());
        pb::PutResponse {
            header: header(self.main),
            prev_kv: if req.prev_kv { prev } else { None },
        }
    }

    fn delete_range(&mut self, req: &pb::DeleteRangeRequest) -> pb::DeleteRangeResponse {
        let doomed = self.mvcc.live_at(&req.key, &req.range_end, self.read_rev());
        for kv in &doomed {
            if kv.lease != 0 {
                self.detach(&kv.key, kv.lease);
            }
            self.push(&kv.key, None, Some(kv.clone()));
        }
        pb::DeleteRangeResponse {
            header: header(self.read_rev()),
            deleted: doomed.len() as i64,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        }
    }

    fn apply_ops(&mut self, ops: &[pb::RequestOp]) -> Vec<pb::ResponseOp> {
        ops.iter()
            .filter_map(|op| op.request.as_ref())
            .map(|request| pb::ResponseOp {
                response: Some(self.apply_op(request)),
            })
            .collect()
    }

    fn apply_op(&mut self, request: &request_op::Request) -> response_op::Response {
        match request {
            request_op::Request::RequestRange(r) => {
                let rev = self.read_rev();
                // Checked beforehand by `check_ops`, so a failure here cannot happen; answer
                // empty rather than abort a half-applied transaction.
                let response = self.mvcc.range_at(r, rev).unwrap_or_default();
                response_op::Response::ResponseRange(response)
            }
            request_op::Request::RequestPut(p) => response_op::Response::ResponsePut(self.put(p)),
            request_op::Request::RequestDeleteRange(d) => {
                response_op::Response::ResponseDeleteRange(self.delete_range(d))
            }
            request_op::Request::RequestTxn(t) => {
                let rev = self.read_rev();
                let succeeded = t.compare.iter().all(|c| self.mvcc.compare(c, rev));
                let ops = if succeeded { &t.success } else { &t.failure };
                let responses = self.apply_ops(ops);
                response_op::Response::ResponseTxn(pb::TxnResponse {
                    header: header(self.read_rev()),
                    succeeded,
                    responses,
                })
            }
        }
    }

    /// Ends the transaction: the store's revision moves if anything changed.
    fn finish(self) -> (i64, Vec<mvccpb::Event>) {
        if self.sub > 0 {
            self.mvcc.revision = self.main;
        }
        (self.mvcc.revision, self.events)
    }
}

/// Checks done before a request is proposed (etcd's `v3rpc` request checks).
pub mod validate {
    use super::*;

    pub fn range(req: &pb::RangeRequest) -> Result<(), EtcdError> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        Ok(())
    }

    pub fn put(req: &pb::PutRequest) -> Result<(), EtcdError> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        if req.ignore_value && !req.value.is_empty() {
            return Err(EtcdError::ValueProvided);
        }
        if req.ignore_lease && req.lease != 0 {
            return Err(EtcdError::LeaseProvided);
        }
        Ok(())
    }

    pub fn delete_range(req: &pb::DeleteRangeRequest) -> Result<(), EtcdError> {
        if req.key.is_empty() {
            return Err(EtcdError::EmptyKey);
        }
        Ok(())
    }

    /// etcd's largest lease TTL (`MaxLeaseTTL`).
    pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

    pub fn lease_ttl(ttl: i64) -> Result<(), EtcdError> {
        if ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        Ok(())
    }

    pub fn txn(req: &pb::TxnRequest) -> Result<(), EtcdError> {
        let ops = req
            .compare
            .len()
            .max(req.success.len())
            .max(req.failure.len());
        if ops > MAX_TXN_OPS {
            return Err(EtcdError::TooManyOps);
        }
        for cmp in &req.compare {
            if cmp.key.is_empty() {
                return Err(EtcdError::EmptyKey);
            }
        }
        for branch in [&req.success, &req.failure] {
            check_branch(branch)?;
            check_no_overlap(branch)?;
        }
        Ok(())
    }

    fn check_branch(ops: &[pb::RequestOp]) -> Result<(), EtcdError> {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => range(r)?,
                Some(request_op::Request::RequestPut(p)) => put(p)?,
                Some(request_op::Request::RequestDeleteRange(d)) => delete_range(d)?,
                Some(request_op::Request::RequestTxn(t)) => txn(t)?,
                None => {}
            }
        }
        Ok(())
    }

    /// A branch may not write the same key twice (etcd's `checkIntervals`).
    fn check_no_overlap(ops: &[pb::RequestOp]) -> Result<(), EtcdError> {
        let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
        let mut deletes: Vec<(&[u8], &[u8])> = Vec::new();
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) if !puts.insert(p.key.as_ref()) => {
                    return Err(EtcdError::DuplicateKey);
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    deletes.push((&d.key, &d.range_end));
                }
                _ => {}
            }
        }
        let overlaps = puts.iter().any(|key| {
            deletes
                .iter()
                .any(|(start, end)| key_in_range(key, start, end))
        });
        if overlaps {
            return Err(EtcdError::DuplicateKey);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(m: &mut Mvcc, key: &str, value: &str) -> i64 {
        let applied = m
            .put(&pb::PutRequest {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                value: bytes::Bytes::copy_from_slice(value.as_bytes()),
                ..Default::default()
            })
            .expect("put");
        applied.response.header.expect("header").revision
    }

    #[test]
    fn revisions_versions_and_history_follow_etcd() {
        let mut m = Mvcc::default();
        assert_eq!(m.revision(), 1);
        assert_eq!(put(&mut m, "a", "1"), 2);
        assert_eq!(put(&mut m, "a", "2"), 3);
        let got = m
            .range(&pb::RangeRequest {
                key: "a".into(),
                ..Default::default()
            })
            .expect("range");
        let kv = &got.kvs[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        let old = m
            .range(&pb::RangeRequest {
                key: "a".into(),
                revision: 2,
                ..Default::default()
            })
            .expect("range at 2");
        assert_eq!(old.kvs[0].value, b"1");
        let deleted = m.delete_range(&pb::DeleteRangeRequest {
            key: "nothing".into(),
            ..Default::default()
        });
        assert_eq!(deleted.response.header.expect("header").revision, 3);
        m.compact(3).expect("compact");
        assert_eq!(
            m.range(&pb::RangeRequest {
                key: "a".into(),
                revision: 2,
                ..Default::default()
            }),
            Err(EtcdError::Compacted)
        );
        assert_eq!(m.events_since(b"a", b"", 3).len(), 1);
    }

    /// The rows' bytes as etcd's `key` bucket holds them, counted from scratch.
    fn rows_of(m: &Mvcc) -> u64 {
        use prost::Message;
        let keys: u64 = m
            .history()
            .iter()
            .map(|r| LEAF_ELEMENT + REVISION_KEY + r.kv.encoded_len() as u64 + r.tombstone as u64)
            .sum();
        keys + m.leases().count() as u64 * LEASE_ROW
    }

    #[test]
    fn row_bytes_follow_writes_deletes_leases_and_compactions_exactly() {
        let mut m = Mvcc::default();
        assert_eq!(m.row_bytes(), 0);
        m.lease_grant(5, 60).expect("grant");
        for i in 0..50 {
            put(&mut m, &format!("key{}", i % 7), &"v".repeat(i * 13));
        }
        m.put(&pb::PutRequest {
            key: "leased".into(),
            value: "x".into(),
            lease: 5,
            ..Default::default()
        })
        .expect("put with lease");
        m.delete_range(&pb::DeleteRangeRequest {
            key: "key0".into(),
            ..Default::default()
        });
        assert_eq!(m.row_bytes(), rows_of(&m));
        let before = m.row_bytes();
        m.compact(m.revision()).expect("compact");
        assert!(m.row_bytes() < before / 4, "compaction frees the history");
        assert_eq!(m.row_bytes(), rows_of(&m));
        let rebuilt = Mvcc::from_history(
            m.history(),
            m.compact_revision(),
            [(5, 60)].into_iter().collect(),
        );
        assert_eq!(rebuilt.row_bytes(), m.row_bytes());
    }
}
