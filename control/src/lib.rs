//! The `shoal` binary's library: the per-node agent, the overlay control plane (flannel) and the
//! command-line entry points that tie every crate together.

pub mod agent;
pub mod cli;
pub mod flannel;
pub mod install;
pub mod run;
