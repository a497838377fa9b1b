//! The etcd v3 gRPC services on top of a [`Member`]: one file per service (KV, Lease, Cluster,
//! Maintenance, Watch, Auth), who sent a request (`access`), the typed path their writes take through Raft (`propose`), the
//! `:authority` shim under the listener ([`authority`]) and the server that assembles them.
mod access;
mod auth;
pub mod authority;
mod cluster;
mod grpc_metrics;
pub mod http;
pub mod identity;
mod kv;
mod lease;
mod maintenance;
mod propose;
pub mod watch;

use std::sync::Arc;

use futures::StreamExt;
use tonic::service::Routes;

pub use self::auth::AuthService;
pub use self::cluster::ClusterService;
pub use self::kv::KvService;
pub use self::lease::LeaseService;
pub use self::maintenance::{MaintenanceService, VERSION};
use crate::member::{MAX_REQUEST_BYTES, Member};
use crate::proto::etcdserverpb::{
    self as pb, auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};

/// gRPC framing allowance on top of the request limit (etcd's `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Serves the etcd API on one listener's connections ([`crate::listen::connections`]) until the
/// task is aborted: the gRPC services, counted (`grpc_metrics`), and beside them the HTTP
/// endpoints ([`http`]), over HTTP/2 or HTTP/1.1.
pub async fn serve_clients(
    member: Arc<Member>,
    connections: impl futures::Stream<Item = std::io::Result<crate::listen::Connection>>
    + Send
    + 'static,
) {
    let limit = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;
    let grpc =
        Routes::new(KvServer::new(KvService(member.clone())).max_decoding_message_size(limit))
            .add_service(watch::WatchServer::new(member.clone(), limit))
            .add_service(
                LeaseServer::new(LeaseService(member.clone())).max_decoding_message_size(limit),
            )
            .add_service(
                ClusterServer::new(ClusterService(member.clone())).max_decoding_message_size(limit),
            )
            .add_service(
                MaintenanceServer::new(MaintenanceService(member.clone()))
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                AuthServer::new(AuthService(member.clone())).max_decoding_message_size(limit),
            );
    let routes = grpc
        .into_axum_router()
        .merge(http::routes(member.clone(), http::Endpoints::Client));
    serve(&member, Routes::from(routes), connections, "client").await;
}

/// Serves `/metrics` and `/health` on a `--listen-metrics-urls` listener's connections.
pub async fn serve_metrics(
    member: Arc<Member>,
    connections: impl futures::Stream<Item = std::io::Result<crate::listen::Connection>>
    + Send
    + 'static,
) {
    let routes = http::routes(member.clone(), http::Endpoints::Metrics);
    serve(&member, Routes::from(routes), connections, "metrics").await;
}

async fn serve(
    member: &Member,
    routes: Routes,
    connections: impl futures::Stream<Item = std::io::Result<crate::listen::Connection>>
    + Send
    + 'static,
    what: &str,
) {
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .accept_http1(true)
        .max_concurrent_streams(member.config.limits.max_concurrent_streams)
        .layer(grpc_metrics::GrpcMetricsLayer)
        .add_routes(routes)
        .serve_with_incoming(
            connections
                .map(|accepted| accepted.map(crate::api::authority::AuthorityFixingStream::new)),
        )
        .await;
    if let Err(e) = served {
        tracing::error!("{what} server stopped: {e}");
    }
}

/// The revision a response's header carries (0 without one).
fn revision_of(header: &Option<pb::ResponseHeader>) -> i64 {
    header.as_ref().map(|h| h.revision).unwrap_or_default()
}
