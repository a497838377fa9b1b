//! What can go wrong reaching the store. Messages name the endpoints and the operation; the
//! cause is only ever the `#[source]`, so a `{:#}` chain prints it once.

use std::{fmt, path::PathBuf, time::Duration};

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
        source: EtcdError,
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

impl StoreError {
    /// Whether the store refused the user and password (etcd's "authentication failed"):
    /// retrying with the same credentials cannot help.
    pub fn is_authentication_failure(&self) -> bool {
        match self {
            StoreError::Request {
                source: EtcdError(etcd_client::Error::GRpcStatus(status)),
                ..
            } => {
                i32::from(status.code()) == INVALID_ARGUMENT
                    && status.message().contains(AUTHENTICATION_FAILED)
            }
            StoreError::Unreachable { last, .. } => last.is_authentication_failure(),
            _ => false,
        }
    }
}

/// gRPC's INVALID_ARGUMENT, the code etcd answers a failed authentication with (named by
/// number: tonic is etcd-client's business, not ours).
const INVALID_ARGUMENT: i32 = 3;
/// etcd's message for a wrong user or password (`rpctypes.ErrGRPCAuthFailed`).
const AUTHENTICATION_FAILED: &str = "authentication failed, invalid user ID or password";

/// etcd-client's error as one link of a chain. etcd-client's own message folds a gRPC status's
/// cause into its text in Debug form, and tonic's transport errors repeat each other's text
/// ("tcp connect error: tcp connect error"); this prints the status code, then each distinct
/// cause once.
#[derive(Debug)]
pub struct EtcdError(pub etcd_client::Error);

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let etcd_client::Error::GRpcStatus(status) = &self.0 else {
            return self.0.fmt(f);
        };
        write!(f, "{}", status.code())?;
        let Some(mut cause) = std::error::Error::source(status) else {
            if !status.message().is_empty() {
                write!(f, ": {}", status.message())?;
            }
            return Ok(());
        };
        let mut previous = String::new();
        loop {
            let text = cause.to_string();
            if text != previous {
                write!(f, ": {text}")?;
            }
            previous = text;
            match cause.source() {
                Some(next) => cause = next,
                None => return Ok(()),
            }
        }
    }
}

/// The causes are part of the message (see above), so none is exposed as a source.
impl std::error::Error for EtcdError {}

/// Prints an error and its causes, `: `-separated (what anyhow's `{:#}` does), for logging
/// errors whose own message leaves the cause to the chain.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_prints_each_cause_once() {
        let err = StoreError::ReadTlsFile {
            path: "/ca.pem".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(Chain(&err).to_string(), "reading /ca.pem: entity not found");
    }
}
