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

/// The end of the key range that holds every key starting with `prefix` (etcd's rule,
/// clientv3's `GetPrefixRangeEnd`: the prefix with its last byte below 0xff incremented; `\0`,
/// every key, when there is none).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_range_end;

    #[test]
    fn a_prefix_range_ends_after_the_last_key_with_the_prefix() {
        assert_eq!(prefix_range_end(b"/fleet/job/"), b"/fleet/job0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff"), vec![0]);
    }
}
