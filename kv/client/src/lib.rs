//! The one way shoal's components reach the store (etcd v3 or shoal kv): an endpoint list with
//! failover to a live member, a timeout on every request, keep-alive, and the one place where TLS
//! and credentials are configured.
//!
//! [`StoreClient::connect`] tries the endpoints in order and keeps the first that answers a cheap
//! request within the timeout. It keeps only that one because etcd-client balances over all of
//! its endpoints and would send requests to a dead one; [`StoreClient::reconnected`] fails over
//! to the next live member when a session on the kept one breaks. The client is prefix-free:
//! key layouts belong to the components.

mod client;
mod config;
mod error;

pub use client::StoreClient;
pub use config::{Credentials, Endpoint, StoreConfig, TlsFiles};
pub use error::{Chain, EtcdError, StoreError, StoreResult};
pub use etcd_client;
