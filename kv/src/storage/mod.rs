//! The store's data: the MVCC key-value state, the Raft log on disk and how far it is durable,
//! and openraft's storage (vote, purge point, snapshots in redb; the state machine).
pub mod durable;
pub mod log;
pub mod mvcc;
pub mod records;
pub mod store;
