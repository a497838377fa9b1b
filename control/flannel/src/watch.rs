//! The lease watch on flannel's own gRPC stream: etcd's `Watch` RPC, with messages whose keys
//! and values are slices of the received message (`Bytes`), where etcd-client decodes every
//! key-value into two `Vec`s. A node receives every peer's lease on this stream, so that
//! decoding is paid per event per node; here it costs no allocation. Only the fields the lease
//! sync reads are declared: prost skips the others as unknown fields.
//!
//! The stream runs on a channel of its own to the member the registry's client uses (the same
//! endpoint, TLS files and user); with a user, a token from `Authenticate` goes with it, as
//! etcd-client sends one with each call.
use std::time::Duration;

use bytes::Bytes;
use shoal_store_client::{
    Credentials, EtcdError, StoreError, TlsFiles,
    etcd_client::{self, Client},
};
use tokio_stream::StreamExt;
use tonic::{
    codegen::http::uri::PathAndQuery,
    metadata::{AsciiMetadataValue, errors::InvalidMetadataValue},
    transport::{Channel, Endpoint},
};

/// The largest watch response accepted from the store, as etcd-client (tonic's default) does:
/// a larger message ends the stream with an error instead of being buffered.
pub const MAX_WATCH_MESSAGE: usize = 4 * 1024 * 1024;

/// etcd's `Watch` RPC.
const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";
/// The metadata key etcd reads a token from.
const TOKEN_HEADER: &str = "token";

/// `etcdserverpb.WatchRequest`, as flannel sends it: one create request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    #[prost(oneof = "RequestUnion", tags = "1")]
    pub request_union: Option<RequestUnion>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RequestUnion {
    #[prost(message, tag = "1")]
    CreateRequest(WatchCreateRequest),
}

/// `etcdserverpb.WatchCreateRequest`: a key range from a revision on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
}

/// `etcdserverpb.WatchResponse`, the fields the lease sync reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchResponse {
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

/// `mvccpb.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(enumeration = "EventType", tag = "1")]
    pub r#type: i32,
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
}

impl Event {
    /// The event's type; an unknown number is read as a put, as etcd-client does.
    pub fn event_type(&self) -> EventType {
        EventType::try_from(self.r#type).unwrap_or(EventType::Put)
    }
}

/// `mvccpb.Event.EventType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EventType {
    Put = 0,
    Delete = 1,
}

/// `mvccpb.KeyValue`: key and value share the received message's buffer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(bytes = "bytes", tag = "5")]
    pub value: Bytes,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the store endpoint {url} for the lease watch")]
    Endpoint {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the TLS files for the lease watch")]
    Tls(#[source] StoreError),
    #[error("authenticating as {user} for the lease watch")]
    Authenticate {
        user: String,
        #[source]
        source: EtcdError,
    },
    #[error("the store's auth token is not a header value")]
    Token(#[from] InvalidMetadataValue),
    #[error("the store refused or ended the lease watch")]
    Status(#[from] tonic::Status),
}

/// Where and as whom the watch connects: the registry client's member.
#[derive(Debug, Clone)]
pub struct WatchTarget<'a> {
    pub url: &'a str,
    pub tls: Option<&'a TlsFiles>,
    pub credentials: Option<&'a Credentials>,
    pub timeout: Duration,
    pub keep_alive: Option<Duration>,
}

/// Opens lease watches on a channel of its own (connected by [`LeaseWatcher::connect`],
/// reconnected by tonic).
#[derive(Clone)]
pub struct LeaseWatcher {
    channel: Channel,
    /// The member's URL, for errors.
    url: String,
    credentials: Option<Credentials>,
    max_message: usize,
}

impl LeaseWatcher {
    /// The watcher with its channel not yet connected.
    fn lazy(target: &WatchTarget<'_>) -> Result<Self, WatchError> {
        let endpoint_error = |source| WatchError::Endpoint {
            url: target.url.to_string(),
            source,
        };
        let tls = target.tls.filter(|tls| !tls.is_empty());
        let url = endpoint_url(target.url, tls.is_some());
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(endpoint_error)?
            .connect_timeout(target.timeout);
        if let Some(interval) = target.keep_alive {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(target.timeout);
        }
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls.client_config().map_err(WatchError::Tls)?)
                .map_err(endpoint_error)?;
        }
        Ok(Self {
            channel: endpoint.connect_lazy(),
            url,
            credentials: target.credentials.cloned(),
            max_message: MAX_WATCH_MESSAGE,
        })
    }

    /// A watcher on a channel to `target`, connected: a node opens its watch's connection when it
    /// connects to the store, not while it follows the leases (the channel reconnects by itself
    /// later).
    pub async fn connect(target: &WatchTarget<'_>) -> Result<Self, WatchError> {
        let watcher = Self::lazy(target)?;
        tonic::client::Grpc::new(watcher.channel.clone())
            .ready()
            .await
            .map_err(|source| WatchError::Endpoint {
                url: watcher.url.clone(),
                source,
            })?;
        Ok(watcher)
    }

    /// Refuses watch responses larger than `bytes` (default [`MAX_WATCH_MESSAGE`]).
    pub fn with_max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Watches every key from `key` up to `range_end` (etcd's range) from `start_revision` on.
    /// `client` authenticates the watch when the registry has a user.
    pub async fn watch(
        &self,
        client: &Client,
        key: &str,
        range_end: Vec<u8>,
        start_revision: i64,
    ) -> Result<WatchStream, WatchError> {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.as_bytes().to_vec(),
                range_end,
                start_revision,
            })),
        };
        // The request stream stays open: closing it would end the watch on some stores.
        let requests = tokio_stream::once(create).chain(tokio_stream::pending());
        let mut request = tonic::Request::new(requests);
        if let Some(token) = self.token(client).await? {
            request.metadata_mut().insert(TOKEN_HEADER, token);
        }
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(self.max_message);
        grpc.ready().await.map_err(|source| WatchError::Endpoint {
            url: self.url.clone(),
            source,
        })?;
        let responses = grpc
            .streaming(
                request,
                PathAndQuery::from_static(WATCH_PATH),
                tonic_prost::ProstCodec::default(),
            )
            .await?
            .into_inner();
        Ok(WatchStream { responses })
    }

    /// A fresh token for the registry's user, or `None` without one.
    async fn token(&self, client: &Client) -> Result<Option<AsciiMetadataValue>, WatchError> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        let response = client
            .auth_client()
            .authenticate(credentials.user.clone(), credentials.password.clone())
            .await
            .map_err(|source: etcd_client::Error| WatchError::Authenticate {
                user: credentials.user.clone(),
                source: EtcdError(source),
            })?;
        Ok(Some(response.token().parse()?))
    }
}

impl std::fmt::Debug for LeaseWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseWatcher")
            .field("url", &self.url)
            .field("max_message", &self.max_message)
            .finish_non_exhaustive()
    }
}

/// The responses of one lease watch.
pub struct WatchStream {
    responses: tonic::Streaming<WatchResponse>,
}

impl WatchStream {
    /// The next response; `None` when the store ended the stream.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, WatchError> {
        Ok(self.responses.message().await?)
    }
}

/// `url` with a scheme: etcd-client takes a bare `host:port` as plain HTTP (HTTPS with TLS),
/// and so does the watch.
fn endpoint_url(url: &str, tls: bool) -> String {
    match (url.contains("://"), tls) {
        (true, _) => url.to_string(),
        (false, false) => format!("http://{url}"),
        (false, true) => format!("https://{url}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_bare_address_gets_the_scheme_etcd_client_gives_it() {
        assert_eq!(
            endpoint_url("127.0.0.1:2379", false),
            "http://127.0.0.1:2379"
        );
        assert_eq!(endpoint_url("10.0.0.1:2379", true), "https://10.0.0.1:2379");
        assert_eq!(endpoint_url("https://a:1", false), "https://a:1");
    }

    /// Key and value are slices of the message they came in, not copies.
    #[test]
    fn keys_and_values_borrow_the_received_message() {
        let sent = WatchResponse {
            events: vec![Event {
                r#type: EventType::Put as i32,
                kv: Some(KeyValue {
                    key: Bytes::from_static(b"/n/subnets/10.1.2.0-24"),
                    mod_revision: 4,
                    value: Bytes::from_static(b"{}"),
                    lease: 7,
                }),
            }],
            ..Default::default()
        };
        let message = Bytes::from(sent.encode_to_vec());
        let received = WatchResponse::decode(message.clone()).expect("decodes");
        assert_eq!(received, sent);
        let kv = received.events[0].kv.as_ref().expect("kv");
        let within = |part: &Bytes| message.as_ptr_range().contains(&part.as_ptr());
        assert!(within(&kv.key) && within(&kv.value));
    }
}
