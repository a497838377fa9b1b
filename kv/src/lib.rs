//! shoal's key-value store: a Raft-replicated (openraft) MVCC store that speaks the etcd v3 gRPC
//! API, so `etcdctl` and the `etcd-client` crate work against it.

pub mod cli;
