//! What travels through the Raft log: store commands and their outcomes, and openraft's type
//! configuration.
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::EtcdError;
use crate::proto::etcdserverpb as pb;
use crate::storage::alarms::AlarmCommand;
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

/// A client's request inside a [`Command`], with its protobuf encoding made at most once and
/// shared by every clone: openraft clones an entry for each follower, and the log record, each
/// follower's AppendEntries and a forwarded write all carry the same bytes. One decoded from a
/// peer or the log keeps the bytes it came from, and its `Bytes` fields (a put's key and value)
/// are slices of them.
pub struct ClientRequest<T>(Arc<Encoded<T>>);

struct Encoded<T> {
    message: T,
    encoding: OnceLock<Bytes>,
}

impl<T> ClientRequest<T> {
    pub fn new(message: T) -> Self {
        Self(Arc::new(Encoded {
            message,
            encoding: OnceLock::new(),
        }))
    }

    pub fn message(&self) -> &T {
        &self.0.message
    }
}

impl<T: prost::Message + Default> ClientRequest<T> {
    /// A request that arrived in a buffer it must not keep alive (a client's gRPC body: the
    /// `Bytes` fields of a message decoded from it are slices of the connection's whole receive
    /// buffer), encoded now and decoded again from its own encoding, so that what the log's
    /// entries keep in memory is that encoding and nothing around it.
    pub fn detached(message: T) -> Self {
        let encoding = Bytes::from(message.encode_to_vec());
        // Decoding what was just encoded fails only if the encoding were wrong: keep the
        // message then, whose fields are as good, only on a larger buffer.
        let message = T::decode(encoding.clone()).unwrap_or(message);
        Self(Arc::new(Encoded {
            message,
            encoding: OnceLock::from(encoding),
        }))
    }
}

impl<T: prost::Message> ClientRequest<T> {
    /// The message's protobuf encoding, made on first use.
    pub fn encoding(&self) -> &Bytes {
        self.0
            .encoding
            .get_or_init(|| Bytes::from(self.0.message.encode_to_vec()))
    }
}

impl<T> Clone for ClientRequest<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ClientRequest<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.message().fmt(f)
    }
}

impl<T: PartialEq> PartialEq for ClientRequest<T> {
    fn eq(&self, other: &Self) -> bool {
        self.message() == other.message()
    }
}

impl<T: Default> Default for ClientRequest<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: prost::Message> Serialize for ClientRequest<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.encoding())
    }
}

impl<'de, T: prost::Message + Default> Deserialize<'de> for ClientRequest<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = Bytes::from(serde_bytes::ByteBuf::deserialize(deserializer)?.into_vec());
        // Decoded from `Bytes`, its `Bytes` fields are slices of the encoding, not copies.
        let message = T::decode(bytes.clone()).map_err(serde::de::Error::custom)?;
        Ok(Self(Arc::new(Encoded {
            message,
            encoding: OnceLock::from(bytes),
        })))
    }
}

/// A state change, proposed through Raft and applied by every member in log order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Put(ClientRequest<pb::PutRequest>),
    DeleteRange(ClientRequest<pb::DeleteRangeRequest>),
    Txn(ClientRequest<pb::TxnRequest>),
    Compact(i64),
    /// The leader picks the ID of a lease granted with ID 0, so every member agrees.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// Writes that queued up together, applied in order as consecutive revisions: a follower's
    /// forwarded batch may travel in the leader's, no deeper ([`MAX_NESTING`]).
    Batch(#[serde(deserialize_with = "nested_at_most")] Vec<Command>),
    /// A member announces its name and client URLs once it runs.
    PublishMember {
        id: u64,
        attrs: MemberAttrs,
    },
    /// A client's request and who sent it (etcd's request header): the apply checks its
    /// permissions. Commands not wrapped come from the cluster itself (lease expiry).
    AsUser {
        user: Requester,
        #[serde(deserialize_with = "nested_at_most")]
        command: Box<Command>,
    },
    /// A change to users, roles, permissions or auth itself (or a read of them).
    Auth(AuthCommand),
    /// An alarm raised or cleared (etcd's `AlarmRequest` ACTIVATE and DEACTIVATE).
    Alarm(AlarmCommand),
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
    Batch(#[serde(deserialize_with = "nested_at_most")] Vec<Outcome>),
    Error(EtcdError),
    Auth(AuthReply),
    Alarm(Proto<pb::AlarmResponse>),
}

/// How deep commands nest: a client's request ([`Command::AsUser`]) in a follower's batch inside
/// the leader's.
pub const MAX_NESTING: u8 = 3;

thread_local! {
    /// The nested commands the deserializer of this thread is inside.
    static BATCH_DEPTH: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Deserializes what a batch or a user's request holds unless it is nested deeper than
/// [`MAX_NESTING`], refused before it is read: decoding recurses once per level, and a frame of
/// nested commands would otherwise overflow the stack.
fn nested_at_most<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    /// Leaves the batch when its items are read, or failed to be.
    struct Inside(u8);
    impl Drop for Inside {
        fn drop(&mut self) {
            BATCH_DEPTH.set(self.0);
        }
    }
    let depth = BATCH_DEPTH.get();
    if depth >= MAX_NESTING {
        return Err(serde::de::Error::custom(format!(
            "commands nested more than {MAX_NESTING} deep"
        )));
    }
    let _inside = Inside(depth);
    BATCH_DEPTH.set(depth + 1);
    T::deserialize(deserializer)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Command {
        (0..depth).fold(Command::Compact(1), |inner, _| Command::Batch(vec![inner]))
    }

    fn as_user(command: Command) -> Command {
        Command::AsUser {
            user: Requester::default(),
            command: Box::new(command),
        }
    }

    /// Whether `inner` lies within `outer`'s bytes (a slice of it, not a copy).
    fn within(inner: &[u8], outer: &[u8]) -> bool {
        let range = outer.as_ptr_range();
        range.contains(&inner.as_ptr()) && inner.as_ptr_range().end <= range.end
    }

    #[test]
    fn a_put_from_a_client_keeps_only_its_own_encoding_not_the_buffer_it_arrived_in() {
        let body = bytes::Bytes::from(vec![7u8; 8192]);
        let put = pb::PutRequest {
            key: body.slice(10..20),
            value: body.slice(100..1124),
            ..Default::default()
        };
        let request = ClientRequest::detached(put.clone());
        assert_eq!(request.message(), &put);
        let encoding = request.encoding().clone();
        assert!(within(&request.message().key, &encoding));
        assert!(within(&request.message().value, &encoding));
        assert!(!within(&request.message().value, &body));
    }

    #[test]
    fn a_put_decoded_from_a_peer_or_the_log_is_a_slice_of_its_encoding() {
        let put = pb::PutRequest {
            key: bytes::Bytes::from_static(b"key"),
            value: vec![1u8; 1024].into(),
            ..Default::default()
        };
        let command = Command::Put(ClientRequest::new(put.clone()));
        let bytes = bincode::serialize(&command).expect("encode");
        let Command::Put(decoded) = bincode::deserialize::<Command>(&bytes).expect("decode") else {
            unreachable!("a put was encoded")
        };
        assert_eq!(decoded.message(), &put);
        assert!(within(&decoded.message().value, decoded.encoding()));
        assert!(within(&decoded.message().key, decoded.encoding()));
    }

    #[test]
    fn a_request_in_two_batches_decodes_and_nothing_deeper_does() {
        let request_in_batches = bincode::serialize(&nested(2)).expect("encode");
        let request_in_batches = {
            let Command::Batch(mut outer) =
                bincode::deserialize::<Command>(&request_in_batches).expect("two batches decode")
            else {
                unreachable!("nested() makes batches")
            };
            let Some(Command::Batch(inner)) = outer.pop() else {
                unreachable!("nested() makes batches")
            };
            Command::Batch(vec![Command::Batch(
                inner.into_iter().map(as_user).collect(),
            )])
        };
        let three = bincode::serialize(&request_in_batches).expect("encode");
        assert!(bincode::deserialize::<Command>(&three).is_ok());
        let four = bincode::serialize(&nested(4)).expect("encode");
        let refused = bincode::deserialize::<Command>(&four).expect_err("four deep");
        assert!(refused.to_string().contains("nested"), "{refused}");
        // Refusing left nothing behind: the next decode starts at depth 0.
        assert!(bincode::deserialize::<Command>(&three).is_ok());
    }

    #[test]
    fn a_million_nested_requests_are_refused_without_recursing_into_them() {
        let mut request = as_user(Command::Compact(1));
        for _ in 0..4 {
            request = as_user(request);
        }
        let bytes = bincode::serialize(&request).expect("encode");
        assert!(bincode::deserialize::<Command>(&bytes).is_err());
        // Each level: the AsUser variant index (u32), an empty name (u64 length 0), revision 0.
        let mut bytes = Vec::new();
        let tag = bincode::serialize(&as_user(Command::Compact(1))).expect("encode");
        for _ in 0..1_000_000 {
            bytes.extend(&tag[..4 + 8 + 8]);
        }
        assert!(bincode::deserialize::<Command>(&bytes).is_err());
    }

    #[test]
    fn a_million_nested_batches_are_refused_without_recursing_into_them() {
        // Each level: the Batch variant index (u32) and a vector length (u64) of 1.
        let batch_tag = bincode::serialize(&Command::Batch(Vec::new())).expect("encode");
        let mut bytes = Vec::new();
        for _ in 0..1_000_000 {
            bytes.extend(&batch_tag[..4]);
            bytes.extend(1u64.to_le_bytes());
        }
        assert!(bincode::deserialize::<Command>(&bytes).is_err());
    }
}
