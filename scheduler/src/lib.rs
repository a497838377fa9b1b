//! fleet for shoal: systemd units with `[X-Fleet]` placement rules, scheduled across the cluster
//! by a leader-elected engine and run by each node's agent. State lives in an etcd v3 store
//! (see [`store`] for the key layout).
//!
//! Code map: [`unit`](mod@unit) parses unit files and placement rules; [`schedule`] decides placements;
//! [`engine`] is the elected scheduler; [`agent`] runs units on a machine; [`fleetd`] combines
//! both for one machine; [`registry`] is what fleetctl does to the store; [`cli`] the commands.

pub mod agent;
pub mod cli;
pub mod config;
pub mod engine;
pub mod fleetctl;
pub mod fleetd;
pub mod glob;
pub mod lease;
pub mod registry;
pub mod schedule;
pub mod store;
pub mod table;
pub mod unit;

pub use config::FleetConfig;
pub use fleetd::{Fleetd, FleetdError};
