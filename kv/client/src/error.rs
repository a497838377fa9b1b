//! What can go wrong reaching the store. Messages name the endpoints and the operation; the
//! cause is only ever the `#[source]`, so a `{:#}` chain prints it once.

use std::{path::PathBuf, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        endpoint: String,
        reason: &'static str,
    },
    #[error("no store endpoints given")]
    NoEndpoints,
    #[error("reading {path}")]
    ReadTlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store at {endpoints}: {operation}")]
    Request {
        endpoints: String,
        operation: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("store at {endpoints}: {operation} timed out after {timeout:?}")]
    Timeout {
        endpoints: String,
        operation: String,
        timeout: Duration,
    },
    /// Every endpoint failed; the source is the last one's error.
    #[error("none of the store endpoints {endpoints} answered")]
    Unreachable {
        endpoints: String,
        #[source]
        last: Box<StoreError>,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;
