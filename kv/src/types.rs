//! What travels through the Raft log: store commands and their outcomes, and openraft's type
//! configuration.
use std::collections::BTreeMap;
use std::io::Cursor;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::EtcdError;
use crate::proto::etcdserverpb as pb;
use crate::storage::auth::{AuthCommand, AuthReply, Requester};

/// A protobuf message carried inside a serde structure as its protobuf encoding.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Proto<T>(pub T);

impl<T: prost::Message> Serialize for Proto<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de, T: prost::Message + Default> Deserialize<'de> for Proto<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        T::decode(bytes.as_slice())
            .map(Proto)
            .map_err(serde::de::Error::custom)
    }
}

/// A state change, proposed through Raft and applied by every member in log order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Put(Proto<pb::PutRequest>),
    DeleteRange(Proto<pb::DeleteRangeRequest>),
    Txn(Proto<pb::TxnRequest>),
    Compact(i64),
    /// The leader picks the ID of a lease granted with ID 0, so every member agrees.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// Writes that queued up together, applied in order as consecutive revisions.
    Batch(Vec<Command>),
    /// A member announces its name and client URLs once it runs.
    PublishMember {
        id: u64,
        attrs: MemberAttrs,
    },
    /// A client's request and who sent it (etcd's request header): the apply checks its
    /// permissions. Commands not wrapped come from the cluster itself (lease expiry).
    AsUser {
        user: Requester,
        command: Box<Command>,
    },
    /// A change to users, roles, permissions or auth itself (or a read of them).
    Auth(AuthCommand),
}

/// What applying a [`Command`] produced; errors are deterministic, so they are outcomes too.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub enum Outcome {
    /// Blank and membership entries.
    #[default]
    None,
    Put(Proto<pb::PutResponse>),
    DeleteRange(Proto<pb::DeleteRangeResponse>),
    Txn(Proto<pb::TxnResponse>),
    Compact(Proto<pb::CompactionResponse>),
    LeaseGrant(Proto<pb::LeaseGrantResponse>),
    LeaseRevoke(Proto<pb::LeaseRevokeResponse>),
    Batch(Vec<Outcome>),
    Error(EtcdError),
    Auth(AuthReply),
}

/// A member's name and client URLs (its peer URLs live in the Raft membership).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// A member as Raft knows it: how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// shoal kv's openraft configuration.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, MemberNode>;
pub type Members = BTreeMap<u64, MemberNode>;

/// A log entry of `term` (leader 1) at `index`, for tests of the log and its stores.
#[cfg(test)]
pub(crate) fn test_entry(index: u64, term: u64) -> Entry {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
        payload: openraft::EntryPayload::Normal(Command::Compact(index as i64)),
    }
}
