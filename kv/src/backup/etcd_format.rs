//! The replicated state in etcd 3.4's backend layout (`mvcc/kvstore.go`, `lease/lessor.go`,
//! `auth/store.go`): the buckets etcd keeps in bbolt, with etcd's keys and protobuf values, and
//! back. Also etcd's snapshot trailer (the SHA-256 of the database after it) and etcd's hashes
//! of the state (`HashByRev` for HashKV; every bucket for Hash). Alarms travel in etcd's `alarm`
//! bucket, both ways.
use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bbolt::{self, Bucket, Database};
use crate::proto::etcdserverpb::{AlarmMember, AlarmType};
use crate::proto::{authpb, mvccpb};
use crate::storage::alarms::{AlarmCommand, Alarms};
use crate::storage::auth::{Access, AuthStore, Permission};
use crate::storage::mvcc::{Mvcc, StoredRevision};
use crate::storage::state_machine::State;

const KEY: &[u8] = b"key";
const META: &[u8] = b"meta";
const LEASE: &[u8] = b"lease";
const AUTH: &[u8] = b"auth";
const AUTH_USERS: &[u8] = b"authUsers";
const AUTH_ROLES: &[u8] = b"authRoles";
const CLUSTER: &[u8] = b"cluster";
const MEMBERS: &[u8] = b"members";
const MEMBERS_REMOVED: &[u8] = b"members_removed";
const ALARM: &[u8] = b"alarm";

const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
const CLUSTER_VERSION: &[u8] = b"clusterVersion";
/// The cluster version a snapshot declares (the API level shoal serves).
const VERSION: &[u8] = b"3.4.0";

/// A revision's key: `{main}_{sub}` big-endian, `t` appended for a tombstone.
const REVISION_BYTES: usize = 17;
const TOMBSTONE: u8 = b't';
const SHA256_BYTES: usize = 32;

/// Why a snapshot file cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    Bolt(#[from] bbolt::BoltError),
    #[error(
        "snapshot has no SHA-256 trailer (damaged or cut short); --skip-hash-check restores a copied db file"
    )]
    MissingHash,
    #[error("snapshot SHA-256 mismatch: the file is damaged")]
    HashMismatch,
    #[error("the auth store's shape changed: update backup::etcd_format's AuthImage")]
    AuthShape(#[source] bincode::Error),
    #[error("bucket {bucket:?}, key {key:?}: {what}")]
    BadRecord {
        bucket: &'static str,
        key: String,
        what: String,
    },
}

fn bad(bucket: &'static str, key: &[u8], what: impl ToString) -> FormatError {
    FormatError::BadRecord {
        bucket,
        key: String::from_utf8_lossy(key).into_owned(),
        what: what.to_string(),
    }
}

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, Message)]
struct LeasePb {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

fn revision_key(r: &StoredRevision) -> Vec<u8> {
    let mut key = Vec::with_capacity(REVISION_BYTES + 1);
    key.extend_from_slice(&r.main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&r.sub.to_be_bytes());
    if r.tombstone {
        key.push(TOMBSTONE);
    }
    key
}

fn revision_bytes(main: i64) -> Vec<u8> {
    revision_key(&StoredRevision {
        main,
        sub: 0,
        kv: mvccpb::KeyValue::default(),
        tombstone: false,
    })
}

fn parse_revision(key: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match key.len() {
        REVISION_BYTES => false,
        n if n == REVISION_BYTES + 1 && key[REVISION_BYTES] == TOMBSTONE => true,
        _ => return None,
    };
    let main = i64::from_be_bytes(key[0..8].try_into().ok()?);
    let sub = i64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

/// The state as etcd 3.4's buckets; `consistent_index` is the Raft index it reflects.
pub fn export(state: &State, consistent_index: u64) -> Result<Database, FormatError> {
    let mut db = Database::new();
    db.insert(KEY.to_vec(), key_bucket(&state.mvcc.history()));
    let mut meta = Bucket::new();
    meta.insert(
        CONSISTENT_INDEX.to_vec(),
        consistent_index.to_be_bytes().to_vec(),
    );
    let compact = state.mvcc.compact_revision();
    if compact > 0 {
        for name in [SCHEDULED_COMPACT, FINISHED_COMPACT] {
            meta.insert(name.to_vec(), revision_bytes(compact));
        }
    }
    db.insert(META.to_vec(), meta);
    db.insert(LEASE.to_vec(), lease_bucket(&state.mvcc));
    let (auth, users, roles) = auth_buckets(&state.auth)?;
    db.insert(AUTH.to_vec(), auth);
    db.insert(AUTH_USERS.to_vec(), users);
    db.insert(AUTH_ROLES.to_vec(), roles);
    db.insert(
        CLUSTER.to_vec(),
        [(CLUSTER_VERSION.to_vec(), VERSION.to_vec())]
            .into_iter()
            .collect(),
    );
    // Membership is the new cluster's (a restore replaces it, as etcd's does).
    for empty in [MEMBERS, MEMBERS_REMOVED] {
        db.insert(empty.to_vec(), Bucket::new());
    }
    db.insert(ALARM.to_vec(), alarm_bucket(&state.alarms));
    Ok(db)
}

/// etcd's `alarm` bucket: each alarm's `AlarmMember` as a key, with no value.
fn alarm_bucket(alarms: &Alarms) -> Bucket {
    alarms
        .get(AlarmType::None as i32)
        .iter()
        .map(|alarm| (alarm.encode_to_vec(), Vec::new()))
        .collect()
}

/// The alarms of an `alarm` bucket (a restore keeps them, as etcd's does).
fn import_alarms(bucket: &Bucket) -> Result<Alarms, FormatError> {
    let mut alarms = Alarms::default();
    for key in bucket.keys() {
        let alarm = AlarmMember::decode(key.as_slice()).map_err(|e| bad("alarm", key, e))?;
        alarms.apply(&AlarmCommand::Activate {
            member: alarm.member_id,
            alarm: alarm.alarm,
        });
    }
    Ok(alarms)
}

fn key_bucket(history: &[StoredRevision]) -> Bucket {
    history
        .iter()
        .map(|r| (revision_key(r), r.kv.encode_to_vec()))
        .collect()
}

fn lease_bucket(mvcc: &Mvcc) -> Bucket {
    mvcc.leases()
        .map(|(id, record)| {
            let lease = LeasePb {
                id: *id,
                ttl: record.ttl,
                remaining_ttl: 0,
            };
            (id.to_be_bytes().to_vec(), lease.encode_to_vec())
        })
        .collect()
}

/// [`AuthStore`]'s serialized shape: its fields are its own, so the conversion goes through
/// serde (a test checks the two stay in step).
#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthImage {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, UserImage>,
    roles: BTreeMap<String, Vec<Permission>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UserImage {
    password: Option<String>,
    no_password: bool,
    roles: BTreeSet<String>,
}

fn auth_image(auth: &AuthStore) -> Result<AuthImage, FormatError> {
    let bytes = bincode::serialize(auth).map_err(FormatError::AuthShape)?;
    bincode::deserialize(&bytes).map_err(FormatError::AuthShape)
}

fn access_type(access: Access) -> authpb::permission::Type {
    match access {
        Access::Read => authpb::permission::Type::Read,
        Access::Write => authpb::permission::Type::Write,
        Access::ReadWrite => authpb::permission::Type::Readwrite,
    }
}

fn auth_buckets(auth: &AuthStore) -> Result<(Bucket, Bucket, Bucket), FormatError> {
    let image = auth_image(auth)?;
    let mut state = Bucket::new();
    state.insert(AUTH_ENABLED.to_vec(), vec![u8::from(image.enabled)]);
    state.insert(
        AUTH_REVISION.to_vec(),
        image.revision.to_be_bytes().to_vec(),
    );
    let users = image
        .users
        .iter()
        .map(|(name, user)| {
            let pb = authpb::User {
                name: name.clone().into_bytes(),
                password: user.password.clone().unwrap_or_default().into_bytes(),
                roles: user.roles.iter().cloned().collect(),
                options: user
                    .no_password
                    .then_some(authpb::UserAddOptions { no_password: true }),
            };
            (name.clone().into_bytes(), pb.encode_to_vec())
        })
        .collect();
    let roles = image
        .roles
        .iter()
        .map(|(name, permissions)| {
            let pb = authpb::Role {
                name: name.clone().into_bytes(),
                key_permission: permissions
                    .iter()
                    .map(|p| authpb::Permission {
                        perm_type: access_type(p.access) as i32,
                        key: p.key.clone(),
                        range_end: p.range_end.clone(),
                    })
                    .collect(),
            };
            (name.clone().into_bytes(), pb.encode_to_vec())
        })
        .collect();
    Ok((state, users, roles))
}

/// A snapshot as etcd streams it: the bbolt database followed by its SHA-256.
pub fn snapshot(state: &State, consistent_index: u64) -> Result<Vec<u8>, FormatError> {
    let mut file = bbolt::write(&export(state, consistent_index)?);
    let digest = Sha256::digest(&file);
    file.extend_from_slice(&digest);
    Ok(file)
}

/// The database part of a snapshot file, its trailer checked unless `skip_hash_check` (etcd's
/// rule: a file whose size is 32 past a multiple of 512 carries the SHA-256 of the rest).
pub fn database_of(file: &[u8], skip_hash_check: bool) -> Result<&[u8], FormatError> {
    let has_hash = file.len() % 512 == SHA256_BYTES;
    if !has_hash {
        return if skip_hash_check {
            Ok(file)
        } else {
            Err(FormatError::MissingHash)
        };
    }
    let (db, trailer) = file.split_at(file.len() - SHA256_BYTES);
    if !skip_hash_check && Sha256::digest(db).as_slice() != trailer {
        return Err(FormatError::HashMismatch);
    }
    Ok(db)
}

/// The replicated state a snapshot file holds.
pub fn import(file: &[u8], skip_hash_check: bool) -> Result<State, FormatError> {
    let db = bbolt::read(database_of(file, skip_hash_check)?)?;
    let empty = Bucket::new();
    let bucket = |name: &[u8]| db.get(name).unwrap_or(&empty);
    let history = bucket(KEY)
        .iter()
        .map(|(k, v)| {
            let (main, sub, tombstone) =
                parse_revision(k).ok_or_else(|| bad("key", k, "not a revision"))?;
            let kv = mvccpb::KeyValue::decode(v.as_slice()).map_err(|e| bad("key", k, e))?;
            Ok(StoredRevision {
                main,
                sub,
                kv,
                tombstone,
            })
        })
        .collect::<Result<Vec<_>, FormatError>>()?;
    let meta = bucket(META);
    let compacted = |name: &[u8]| -> Result<i64, FormatError> {
        meta.get(name).map_or(Ok(-1), |v| {
            parse_revision(v)
                .map(|(main, _, _)| main)
                .ok_or_else(|| bad("meta", name, "not a revision"))
        })
    };
    let (finished, scheduled) = (compacted(FINISHED_COMPACT)?, compacted(SCHEDULED_COMPACT)?);
    let leases = bucket(LEASE)
        .iter()
        .map(|(k, v)| {
            let lease = LeasePb::decode(v.as_slice()).map_err(|e| bad("lease", k, e))?;
            Ok((lease.id, lease.ttl))
        })
        .collect::<Result<BTreeMap<i64, i64>, FormatError>>()?;
    let mut mvcc = Mvcc::from_history(history, finished, leases);
    if scheduled > finished {
        // etcd finishes an interrupted compaction when it opens the database.
        mvcc.compact(scheduled)
            .map_err(|e| bad("meta", SCHEDULED_COMPACT, e))?;
    }
    Ok(State {
        mvcc,
        auth: import_auth(bucket(AUTH), bucket(AUTH_USERS), bucket(AUTH_ROLES))?,
        alarms: import_alarms(bucket(ALARM))?,
        ..State::default()
    })
}

fn import_auth(state: &Bucket, users: &Bucket, roles: &Bucket) -> Result<AuthStore, FormatError> {
    let revision = match state.get(AUTH_REVISION) {
        Some(v) => u64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| bad("auth", AUTH_REVISION, "not 8 bytes"))?,
        ),
        None => 0,
    };
    let mut image = AuthImage {
        enabled: state
            .get(AUTH_ENABLED)
            .is_some_and(|v| v.first() == Some(&1)),
        revision,
        ..AuthImage::default()
    };
    for (k, v) in users {
        let user = authpb::User::decode(v.as_slice()).map_err(|e| bad("authUsers", k, e))?;
        let no_password = user.options.is_some_and(|o| o.no_password);
        let password = (!user.password.is_empty())
            .then(|| String::from_utf8(user.password))
            .transpose()
            .map_err(|e| bad("authUsers", k, e))?;
        image.users.insert(
            String::from_utf8_lossy(&user.name).into_owned(),
            UserImage {
                password,
                no_password,
                roles: user.roles.into_iter().collect(),
            },
        );
    }
    for (k, v) in roles {
        let role = authpb::Role::decode(v.as_slice()).map_err(|e| bad("authRoles", k, e))?;
        let mut permissions: Vec<Permission> = role
            .key_permission
            .into_iter()
            .map(|p| Permission {
                access: match authpb::permission::Type::try_from(p.perm_type) {
                    Ok(authpb::permission::Type::Write) => Access::Write,
                    Ok(authpb::permission::Type::Readwrite) => Access::ReadWrite,
                    _ => Access::Read,
                },
                key: p.key,
                range_end: p.range_end,
            })
            .collect();
        permissions.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
        image.roles.insert(
            String::from_utf8_lossy(&role.name).into_owned(),
            permissions,
        );
    }
    let bytes = bincode::serialize(&image).map_err(FormatError::AuthShape)?;
    bincode::deserialize(&bytes).map_err(FormatError::AuthShape)
}

/// etcd 3.4's HashKV (`HashByRev`): CRC-32C over the `key` bucket's rows up to `rev`, leaving
/// out rows at or below the compaction point that compaction at `rev` would drop.
pub fn hash_kv(mvcc: &Mvcc, rev: i64) -> u32 {
    let compact = mvcc.compact_revision();
    let history = mvcc.history();
    let mut latest: BTreeMap<&[u8], &StoredRevision> = BTreeMap::new();
    for r in history.iter().filter(|r| r.main <= rev) {
        latest.insert(&r.kv.key, r);
    }
    let keep: BTreeSet<(i64, i64)> = latest
        .values()
        .filter(|r| !r.tombstone)
        .map(|r| (r.main, r.sub))
        .collect();
    let mut crc = crc32c::crc32c(KEY);
    for r in history.iter().filter(|r| r.main <= rev) {
        let dropped = r.main <= compact && !keep.is_empty() && !keep.contains(&(r.main, r.sub));
        if dropped || (r.main == compact && r.tombstone) {
            continue;
        }
        crc = crc32c::crc32c_append(crc, &revision_key(r));
        crc = crc32c::crc32c_append(crc, &r.kv.encode_to_vec());
    }
    crc
}

/// etcd's Hash: CRC-32C over every bucket's name, keys and values, but the Raft index (which
/// differs between members that applied the same state).
pub fn hash(state: &State) -> Result<u32, FormatError> {
    let mut db = export(state, 0)?;
    if let Some(meta) = db.get_mut(META) {
        meta.remove(CONSISTENT_INDEX);
    }
    Ok(buckets_hash(&db))
}

fn buckets_hash(db: &Database) -> u32 {
    db.iter().fold(0, |crc, (name, bucket)| {
        bucket
            .iter()
            .fold(crc32c::crc32c_append(crc, name), |crc, (k, v)| {
                crc32c::crc32c_append(crc32c::crc32c_append(crc, k), v)
            })
    })
}

/// What `etcdctl snapshot status` reports about a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// CRC-32C over every bucket's name, keys and values.
    pub hash: u32,
    /// The revision of the last row of the `key` bucket.
    pub revision: i64,
    pub total_keys: usize,
    pub total_size: usize,
}

/// etcdctl's `snapshot status` of a snapshot file (the trailer, if any, is not checked).
pub fn status(file: &[u8]) -> Result<SnapshotStatus, FormatError> {
    let bytes = database_of(file, true)?;
    let db = bbolt::read(bytes)?;
    let revision = db
        .get(KEY)
        .and_then(|b| b.keys().next_back())
        .and_then(|k| parse_revision(k))
        .map_or(0, |(main, _, _)| main);
    Ok(SnapshotStatus {
        hash: buckets_hash(&db),
        revision,
        total_keys: db.values().map(Bucket::len).sum(),
        total_size: bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb as pb;
    use crate::storage::auth::AuthCommand;
    use crate::types::{ClientRequest, Command};

    fn put(state: &mut State, key: &str, value: &str, lease: i64) {
        let req = pb::PutRequest {
            key: bytes::Bytes::copy_from_slice(key.as_bytes()),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            lease,
            ..Default::default()
        };
        state.apply(0, Command::Put(ClientRequest::new(req)));
    }

    fn sample() -> State {
        let mut state = State::default();
        state.apply(0, Command::LeaseGrant { id: 7, ttl: 60 });
        put(&mut state, "a", "1", 0);
        put(&mut state, "b", "2", 7);
        put(&mut state, "a", "3", 0);
        state.apply(
            0,
            Command::DeleteRange(ClientRequest::new(pb::DeleteRangeRequest {
                key: b"b".to_vec(),
                ..Default::default()
            })),
        );
        put(&mut state, "c", "4", 7);
        state.apply(0, Command::Compact(3));
        for command in [
            AuthCommand::UserAdd {
                name: "root".into(),
                password_hash: Some("$2a$04$hash".into()),
            },
            AuthCommand::UserAdd {
                name: "app".into(),
                password_hash: None,
            },
            AuthCommand::RoleAdd {
                name: "reader".into(),
            },
            AuthCommand::RoleGrantPermission {
                name: "reader".into(),
                permission: Permission {
                    access: Access::ReadWrite,
                    key: b"a".to_vec(),
                    range_end: b"z".to_vec(),
                },
            },
            AuthCommand::UserGrantRole {
                user: "app".into(),
                role: "reader".into(),
            },
        ] {
            state.apply(0, Command::Auth(command));
        }
        state.apply(
            0,
            Command::Alarm(AlarmCommand::Activate {
                member: 0xabc,
                alarm: AlarmType::Nospace as i32,
            }),
        );
        state
    }

    #[test]
    fn a_snapshot_restores_the_same_state() {
        let state = sample();
        let file = snapshot(&state, 42).expect("snapshot");
        let restored = import(&file, false).expect("import");
        assert_eq!(restored.mvcc.history(), state.mvcc.history());
        assert_eq!(restored.mvcc.revision(), state.mvcc.revision());
        assert_eq!(restored.mvcc.compact_revision(), 3);
        assert_eq!(restored.mvcc.lease(7).expect("lease").ttl, 60);
        assert_eq!(
            restored.mvcc.lease(7).expect("lease").keys,
            [b"c".to_vec()].into_iter().collect()
        );
        assert_eq!(
            bincode::serialize(&restored.auth).expect("auth"),
            bincode::serialize(&state.auth).expect("auth")
        );
        assert_eq!(restored.alarms, state.alarms);
        assert!(restored.alarms.no_space());
        assert_eq!(hash(&restored).expect("hash"), hash(&state).expect("hash"));
        assert_eq!(
            hash_kv(&restored.mvcc, restored.mvcc.revision()),
            hash_kv(&state.mvcc, state.mvcc.revision())
        );
    }

    #[test]
    fn a_damaged_or_cut_snapshot_is_refused() {
        let mut file = snapshot(&sample(), 1).expect("snapshot");
        file[5000] ^= 1;
        assert!(matches!(
            import(&file, false),
            Err(FormatError::HashMismatch)
        ));
        file.truncate(file.len() - 100);
        assert!(matches!(
            import(&file, false),
            Err(FormatError::MissingHash)
        ));
    }
}
