//! The `shoal` binary's library: the per-node agent, `shoal run`, `shoal install`, `shoal pki`
//! and the command-line wiring that ties every crate (the store, flannel, fleet) together.

pub mod agent;
pub mod cli;
pub mod install;
pub mod pki;
pub mod run;
