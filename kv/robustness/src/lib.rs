//! etcd's robustness checks for any store that speaks the etcd v3 API (shoal kv, or etcd itself
//! as the control): traffic of concurrent clients under faults, recorded as a history, then
//! checked for linearizability, watch and lease guarantees, and replicas that agree.
//!
//! The core is deterministic and does no I/O: [`history`] (what happened), [`model`] (etcd's
//! semantics for a set of keys), [`patch`] (settling requests of unknown outcome from the watches
//! and the revisions), [`linearizability`] (the search), [`watch`], [`lease`] and
//! [`serializable`] (the other checks) and [`report`]. The I/O lives beside it: [`traffic`]
//! (the clients), [`replicas`] (revision and HashKV on every member), [`faults`] and [`runner`]
//! (rounds against a store cluster).
pub mod faults;
pub mod findings;
pub mod history;
pub mod lease;
pub mod linearizability;
pub mod model;
pub mod patch;
pub mod replicas;
pub mod report;
pub mod runner;
pub mod serializable;
pub mod traffic;
pub mod watch;
