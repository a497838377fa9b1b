//! shoal's key-value store: a Raft-replicated (openraft) MVCC store that speaks the etcd v3 gRPC
//! API, so `etcdctl` and the `etcd-client` crate work against it.
//!
//! The modules depend one way: [`start`] assembles a member ([`member`]) with its two servers,
//! the etcd API ([`api`]) and the peer network ([`peer`]); `api` serves a `member`, which talks
//! to the other members through `peer` and keeps its data in [`storage`]; [`listen`] binds and
//! accepts for both servers, with [`tls`] on `https://` URLs.

pub mod api;
pub mod backup;
pub mod cli;
pub mod error;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod listen;
pub mod member;
pub mod peer;
pub mod profile;
pub mod proto;
pub mod runtime;
pub mod start;
pub mod storage;
pub mod tls;
pub mod types;

/// Logs to stderr, filtered by `SHOAL_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
