//! A connection to one live store member, failover to another, and requests under a timeout.

use std::{future::Future, sync::Arc, time::Duration};

use etcd_client::{Client, GetOptions};

use crate::{
    config::{Endpoint, StoreConfig},
    error::{EtcdError, StoreError, StoreResult},
};

/// The key the readiness probe counts (etcd's own health check reads it too).
const PROBE_KEY: &str = "health";
/// gRPC's PERMISSION_DENIED (named by number: tonic is etcd-client's business, not ours).
const PERMISSION_DENIED: i32 = 7;

/// A client bound to the first member of its config that answered.
#[derive(Clone)]
pub struct StoreClient {
    client: Client,
    endpoint: Endpoint,
    /// What it was connected with, for [`StoreClient::reconnected`].
    config: Arc<StoreConfig>,
}

impl std::fmt::Debug for StoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreClient")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.config.timeout)
            .finish_non_exhaustive()
    }
}

impl StoreClient {
    /// Connects to the first of the config's endpoints that answers a cheap request within the
    /// timeout, trying them in order.
    pub async fn connect(config: &StoreConfig) -> StoreResult<Self> {
        let endpoints = config.parsed_endpoints()?;
        let options = config.connect_options()?;
        let config = Arc::new(config.clone());
        let mut last_error = None;
        for endpoint in &endpoints {
            match Self::connect_one(endpoint, options.clone(), &config).await {
                Ok(client) => return Ok(client),
                Err(err) => {
                    tracing::debug!("store endpoint {endpoint} unusable: {err}");
                    last_error = Some(err);
                }
            }
        }
        let last = last_error.ok_or(StoreError::NoEndpoints)?;
        if endpoints.len() == 1 {
            return Err(last);
        }
        Err(StoreError::Unreachable {
            endpoints: join(&endpoints),
            last: Box::new(last),
        })
    }

    /// Connects to one endpoint and proves it answers within the timeout.
    async fn connect_one(
        endpoint: &Endpoint,
        options: etcd_client::ConnectOptions,
        config: &Arc<StoreConfig>,
    ) -> StoreResult<Self> {
        let connecting = Client::connect([endpoint.url()], Some(options));
        let client = match tokio::time::timeout(config.timeout, connecting).await {
            Ok(result) => result.map_err(|source| StoreError::Request {
                endpoints: endpoint.to_string(),
                operation: "connect".into(),
                source: EtcdError(source),
            })?,
            Err(_) => {
                return Err(StoreError::Timeout {
                    endpoints: endpoint.to_string(),
                    operation: "connect".into(),
                    timeout: config.timeout,
                });
            }
        };
        let store = Self {
            client,
            endpoint: endpoint.clone(),
            config: Arc::clone(config),
        };
        // A lazy channel connects on first use: prove the member answers now.
        store.ready().await?;
        Ok(store)
    }

    /// Proves the member answers a linearizable read within the timeout (so it has a leader).
    /// A member that refuses the probe key for lack of permission has answered too.
    pub async fn ready(&self) -> StoreResult<()> {
        let mut client = self.client.clone();
        let options = GetOptions::new().with_count_only();
        match self
            .call("readiness check", client.get(PROBE_KEY, Some(options)))
            .await
        {
            Err(StoreError::Request {
                source: EtcdError(etcd_client::Error::GRpcStatus(status)),
                ..
            }) if i32::from(status.code()) == PERMISSION_DENIED => Ok(()),
            other => other.map(drop),
        }
    }

    /// A fresh connection to the first of the original endpoints that answers: what a session
    /// that failed should use next, since the member it used may be gone (a powered-off
    /// master) while others still serve.
    pub async fn reconnected(&self) -> StoreResult<Self> {
        Self::connect(&self.config).await
    }

    /// The raw client, for watches, leases and whatever [`StoreClient::call`] wraps.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The member this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// Runs one store call under the request timeout, naming the operation in errors.
    pub async fn call<T, F>(&self, operation: &str, future: F) -> StoreResult<T>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.config.timeout, future).await {
            Ok(result) => result.map_err(|source| self.error(operation, source)),
            Err(_) => Err(StoreError::Timeout {
                endpoints: self.endpoint.to_string(),
                operation: operation.to_string(),
                timeout: self.config.timeout,
            }),
        }
    }

    /// An etcd-client error from this client (a watch or lease stream), named like
    /// [`StoreClient::call`]'s.
    pub fn error(&self, operation: &str, source: etcd_client::Error) -> StoreError {
        StoreError::Request {
            endpoints: self.endpoint.to_string(),
            operation: operation.to_string(),
            source: EtcdError(source),
        }
    }
}

fn join(endpoints: &[Endpoint]) -> String {
    endpoints
        .iter()
        .map(Endpoint::url)
        .collect::<Vec<_>>()
        .join(",")
}
