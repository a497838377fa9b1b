//! What the traffic did: every operation with its call and return times, its request and what
//! came back, and what every watch delivered. Plain data, no I/O: the checkers read it and the
//! report serializes it.
use serde::{Deserialize, Serialize};

/// Nanoseconds since the run started (a monotonic clock).
pub type Nanos = u64;
/// A lease ID, chosen by the client so histories name leases before the store answers.
pub type LeaseId = i64;

/// One client request and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Which client issued it (a client issues one request at a time).
    pub client: usize,
    pub call: Nanos,
    /// When the answer arrived, or when the client gave up on it.
    pub ret: Nanos,
    pub request: Request,
    pub outcome: Outcome,
}

impl Operation {
    /// Every key the request may read or change, and `lease/<id>` for every lease it names:
    /// what ties operations into one partition of the linearizability check.
    pub fn items(&self) -> Vec<String> {
        let mut items: Vec<String> = self.request.keys().into_iter().map(String::from).collect();
        items.extend(self.request.lease().map(lease_item));
        items.sort();
        items.dedup();
        items
    }

    /// The latest time the request can have taken effect: its return if the store answered,
    /// else never known (it may still be in flight).
    pub fn latest(&self) -> Nanos {
        if self.answered() {
            self.ret.max(self.call)
        } else {
            Nanos::MAX
        }
    }

    /// Whether the store answered (the outcome is known).
    pub fn answered(&self) -> bool {
        matches!(self.outcome, Outcome::Done(_))
    }
}

fn lease_item(id: LeaseId) -> String {
    format!("lease/{id}")
}

/// A request, as the model reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A single-key range. Serializable ones may be answered from a stale member.
    Get {
        key: String,
        serializable: bool,
    },
    Put {
        key: String,
        value: String,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
    Txn(Txn),
    LeaseGrant {
        id: LeaseId,
        ttl: i64,
    },
    LeaseRevoke {
        id: LeaseId,
    },
}

impl Request {
    /// Every key the request may read or change.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys = Vec::new();
        match self {
            Request::Get { key, .. } | Request::Put { key, .. } | Request::Delete { key } => {
                keys.push(key.as_str())
            }
            Request::Txn(txn) => {
                keys.extend(txn.compares.iter().map(|c| c.key.as_str()));
                for op in txn.success.iter().chain(&txn.failure) {
                    match op {
                        TxnOp::Put { key, .. } | TxnOp::Delete { key } => keys.push(key.as_str()),
                    }
                }
            }
            Request::LeaseGrant { .. } | Request::LeaseRevoke { .. } => {}
        }
        keys
    }

    /// The lease the request names, if any.
    pub fn lease(&self) -> Option<LeaseId> {
        match self {
            Request::Put { lease, .. } => *lease,
            Request::LeaseGrant { id, .. } | Request::LeaseRevoke { id } => Some(*id),
            _ => None,
        }
    }

    /// A short name for counts in the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Get {
                serializable: false,
                ..
            } => "get",
            Request::Get {
                serializable: true, ..
            } => "get-serializable",
            Request::Put { lease: None, .. } => "put",
            Request::Put { lease: Some(_), .. } => "put-with-lease",
            Request::Delete { .. } => "delete",
            Request::Txn(_) => "txn",
            Request::LeaseGrant { .. } => "lease-grant",
            Request::LeaseRevoke { .. } => "lease-revoke",
        }
    }
}

/// A transaction: if every compare holds, `success` runs, else `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// A compare on one key (etcd's `=` only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's value equals this (a missing key never does).
    Value(String),
    /// The key's mod revision equals this (0: the key does not exist).
    ModRevision(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put { key: String, value: String },
    Delete { key: String },
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The store answered.
    Done(Response),
    /// An error or a timeout: the request may or may not have taken effect.
    Unknown(String),
}

/// A store's answer; `revision` is the response header's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Get {
        revision: i64,
        kv: Option<KeyValue>,
    },
    Put {
        revision: i64,
    },
    Delete {
        revision: i64,
        deleted: i64,
    },
    Txn {
        revision: i64,
        succeeded: bool,
    },
    LeaseGrant,
    LeaseRevoke {
        revision: i64,
    },
    /// A definite refusal: a put with a lease, or a revoke, of a lease that does not exist.
    LeaseNotFound,
}

impl Response {
    /// The response header's revision (`None` for answers without one).
    pub fn revision(&self) -> Option<i64> {
        match self {
            Response::Get { revision, .. }
            | Response::Put { revision }
            | Response::Delete { revision, .. }
            | Response::Txn { revision, .. }
            | Response::LeaseRevoke { revision } => Some(*revision),
            Response::LeaseGrant | Response::LeaseNotFound => None,
        }
    }
}

/// A key as a read returns it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyValue {
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// 0: no lease.
    pub lease: LeaseId,
}

/// What one watch delivered, response by response, until it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchLog {
    /// The prefix it watched.
    pub prefix: String,
    /// The revision it started from.
    pub start_revision: i64,
    /// The revision it was meant to reach (0: none).
    pub end_revision: i64,
    pub responses: Vec<WatchResponse>,
}

impl WatchLog {
    /// Every event, in delivery order.
    pub fn events(&self) -> impl Iterator<Item = &WatchEvent> {
        self.responses.iter().flat_map(|r| r.events.iter())
    }

    /// The highest revision an event carried, or `start_revision - 1` without events.
    pub fn last_revision(&self) -> i64 {
        self.events()
            .map(|e| e.mod_revision)
            .max()
            .unwrap_or(self.start_revision - 1)
    }
}

/// One watch response carrying events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    pub revision: i64,
    pub events: Vec<WatchEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub key: String,
    /// `None`: a delete.
    pub value: Option<String>,
    /// For a delete, the revision of the delete.
    pub mod_revision: i64,
}

/// Everything one round recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub operations: Vec<Operation>,
    pub watches: Vec<WatchLog>,
    /// Watches reopened from a revision the first one saw, paired by prefix with the first.
    pub resumed: Vec<WatchLog>,
}
