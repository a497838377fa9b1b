//! etcd's client-visible errors: the gRPC codes and the exact messages etcd 3.4 sends
//! (`etcdserver/api/v3rpc/rpctypes`), so clients that match on them keep working.
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

/// An error the store reports to a client. Raised deterministically by the state machine (so it
/// travels through the Raft log as an outcome) or by the server before proposing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: {0}")]
    Internal(String),
    /// A write while a NOSPACE alarm is active, or one that would take the store past its quota.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
}

impl EtcdError {
    fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge | PeerUrlExists => Code::InvalidArgument,
            Compacted | FutureRevision => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExists | MemberExists => Code::FailedPrecondition,
            LeaseTtlTooLarge => Code::OutOfRange,
            MemberNotLearner
            | NotEnoughStartedMembers
            | LearnerNotReady
            | NotLeader
            | BadLeaderTransferee => Code::FailedPrecondition,
            NoLeader | Timeout | Unhealthy | LeaderTransferTimeout => Code::Unavailable,
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
            | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted
            | AuthNotEnabled => Code::FailedPrecondition,
            UserEmpty | RoleEmpty | AuthFailed | InvalidAuthMgmt | AuthOldRevision
            | PermissionNotGiven => Code::InvalidArgument,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            Internal(_) => Code::Internal,
            NoSpace => Code::ResourceExhausted,
        }
    }
}

impl EtcdError {
    /// The error as grpc-go prints a status (`rpc error: code = ... desc = ...`): the text
    /// etcd 3.4 puts in the cancel reason of a watch refused by auth, which clients match on.
    pub fn grpc_go_text(&self) -> String {
        format!("rpc error: code = {:?} desc = {self}", self.code())
    }
}

impl From<EtcdError> for Status {
    fn from(error: EtcdError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

/// Errors of the store's machinery (disk, Raft, peers), as opposed to client errors. A variant
/// with a `source` does not repeat it in its message: printed with its chain ([`chain`], or
/// anyhow's `{:#}` at the top), each cause appears once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the data file {path}")]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("data file is damaged: {0}")]
    Damaged(String),
    #[error("data file {path} has format version {found}, this shoal reads {expected}")]
    UnknownFormat {
        path: String,
        found: u32,
        expected: u32,
    },
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("encoding")]
    Encoding(#[from] bincode::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("TLS")]
    Tls(#[from] crate::tls::TlsError),
    #[error("i/o")]
    Io(#[from] std::io::Error),
}

/// An error and its causes on one line, `error: cause: root cause` (what anyhow prints with
/// `{:#}`), for the places that must keep an error as text: openraft's storage errors, the
/// durability state, log lines.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

macro_rules! engine_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Engine(e.to_string()) }
        }
    )*};
}
engine_errors!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
