//! etcd's backend quota (`--quota-backend-bytes`): what a write costs, which writes take space
//! (the ones a NOSPACE alarm refuses) and whether the store has room for one.
use crate::proto::etcdserverpb::{self as pb, request_op};
use crate::storage::db_size::DbSize;
use crate::types::Command;

/// etcd's default quota, 2 GiB (`DefaultQuotaBytes`; a quota of 0 means it).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// What etcd counts for a key-value beyond its key and value (`kvOverhead`).
const KV_OVERHEAD: u64 = 256;
/// What etcd counts for a lease (`leaseOverhead`).
const LEASE_OVERHEAD: u64 = 64;

/// A put's cost (etcd's `costPut`).
pub fn put_cost(put: &pb::PutRequest) -> u64 {
    KV_OVERHEAD + put.key.len() as u64 + put.value.len() as u64
}

/// A transaction's cost: its costlier branch's puts (etcd's `costTxn`, which looks at the puts
/// of each branch, not into nested transactions).
pub fn txn_cost(txn: &pb::TxnRequest) -> u64 {
    let branch = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(put)) => put_cost(put),
                _ => 0,
            })
            .sum()
    };
    branch(&txn.success).max(branch(&txn.failure))
}

/// A lease grant's cost.
pub fn lease_grant_cost() -> u64 {
    LEASE_OVERHEAD
}

/// Whether `command` takes space: what etcd's capped applier refuses while NOSPACE is raised
/// (puts, transactions with a put, lease grants).
pub fn takes_space(command: &Command) -> bool {
    match command {
        Command::Put(_) | Command::LeaseGrant { .. } => true,
        Command::Txn(txn) => txn_cost(txn.message()) > 0,
        _ => false,
    }
}

/// The quota of this member's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// `None`: no quota (a negative `--quota-backend-bytes`, as etcd).
    bytes: Option<u64>,
}

impl Quota {
    /// etcd's reading of `--quota-backend-bytes`: 0 is the default, negative is none.
    pub fn from_flag(bytes: i64) -> Quota {
        let bytes = match bytes {
            0 => Some(DEFAULT_QUOTA_BYTES),
            b if b < 0 => None,
            b => Some(b as u64),
        };
        Quota { bytes }
    }

    /// The quota in bytes (`etcd_server_quota_backend_bytes`; 0 with none).
    pub fn bytes(&self) -> u64 {
        self.bytes.unwrap_or_default()
    }

    /// Whether a write of `cost` fits (etcd's `backendQuota.Available`: size plus cost stays
    /// below the quota).
    pub fn available(&self, size: &DbSize, cost: u64) -> bool {
        self.bytes
            .is_none_or(|quota| size.size().saturating_add(cost) < quota)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ClientRequest;

    fn put(key: &str, value: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                value: bytes::Bytes::copy_from_slice(value.as_bytes()),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn costs_and_the_writes_that_take_space_are_etcds() {
        let txn = pb::TxnRequest {
            success: vec![put("a", "1234")],
            failure: vec![put("b", "1"), put("c", "1")],
            ..Default::default()
        };
        assert_eq!(txn_cost(&txn), 2 * (256 + 2));
        assert!(takes_space(&Command::Txn(ClientRequest::new(txn))));
        let reads_only = pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestRange(
                    pb::RangeRequest::default(),
                )),
            }],
            ..Default::default()
        };
        assert!(!takes_space(&Command::Txn(ClientRequest::new(reads_only))));
        assert!(takes_space(&Command::LeaseGrant { id: 1, ttl: 5 }));
        assert!(!takes_space(&Command::Compact(3)));
        assert!(!takes_space(&Command::LeaseRevoke { id: 1 }));
    }

    #[test]
    fn the_quota_flag_reads_as_etcds() {
        assert_eq!(Quota::from_flag(0).bytes(), DEFAULT_QUOTA_BYTES);
        let size = DbSize::default();
        assert!(Quota::from_flag(-1).available(&size, u64::MAX));
        let small = Quota::from_flag(size.size() as i64 + 100);
        assert!(small.available(&size, 99));
        assert!(!small.available(&size, 100));
    }
}
