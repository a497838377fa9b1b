//! fleet for shoal: systemd units with `[X-Fleet]` placement rules, scheduled across the cluster
//! by a leader-elected engine and run by each node's agent. State lives in an etcd v3 store.

pub mod cli;
