//! The etcd v3 gRPC services on top of a [`Member`]: one file per service (KV, Lease, Cluster,
//! Maintenance, Watch, Auth), who sent a request (`access`), the typed path their writes take through Raft (`propose`), the
//! `:authority` shim under the listener ([`authority`]) and the server that assembles them.
mod access;
mod auth;
pub mod authority;
mod cluster;
pub mod identity;
mod kv;
mod lease;
mod maintenance;
mod propose;
pub mod watch;

use std::sync::Arc;

use futures::StreamExt;

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
/// task is aborted.
pub async fn serve_clients(
    member: Arc<Member>,
    connections: impl futures::Stream<Item = std::io::Result<crate::listen::Connection>>
    + Send
    + 'static,
) {
    let limit = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(KvServer::new(KvService(member.clone())).max_decoding_message_size(limit))
        .add_service(
            crate::proto::watch_service::watch_server::WatchServer::new(
                crate::api::watch::WatchService(member.clone()),
            )
            .max_decoding_message_size(limit),
        )
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
        .add_service(AuthServer::new(AuthService(member.clone())).max_decoding_message_size(limit))
        .serve_with_incoming(
            connections
                .map(|accepted| accepted.map(crate::api::authority::AuthorityFixingStream::new)),
        )
        .await;
    if let Err(e) = served {
        tracing::error!("client server stopped: {e}");
    }
}

/// The revision a response's header carries (0 without one).
fn revision_of(header: &Option<pb::ResponseHeader>) -> i64 {
    header.as_ref().map(|h| h.revision).unwrap_or_default()
}
