//! The store's data: the MVCC key-value state ([`mvcc`]), users, roles and permissions
//! ([`auth`]) with this member's simple tokens ([`tokens`]), the Raft log on disk ([`log`]) and how
//! far it is durable ([`durable`]), openraft's log storage with the vote, purge point and
//! snapshots in redb ([`store`]), the versioned, CRC-sealed records of that file ([`records`]),
//! and the state machine ([`state_machine`]).
pub mod auth;
pub mod durable;
pub mod log;
pub mod mvcc;
pub mod records;
pub mod state_machine;
pub mod store;
pub mod tokens;
