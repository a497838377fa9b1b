//! Starting a member with its servers: storage, Raft and the member's own tasks
//! ([`crate::member`]), the peer server ([`crate::peer`]) and the etcd API ([`crate::api`]) on
//! the listeners of its URLs, with TLS ([`crate::tls`]) on the `https://` ones. The one place
//! that knows all three, so none of them knows another's server.
use std::sync::Arc;

use crate::error::StoreError;
use crate::listen::{PerClient, bind_all, connections};
use crate::member::{Config, Member, RunningMember};
use crate::storage::store;
use crate::tls::{Tls, TlsFiles};

/// The client listener speaks HTTP/2 (gRPC, and the HTTP endpoints) and HTTP/1.1 (the HTTP
/// endpoints, for curl and Prometheus), as etcd's.
const CLIENT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

fn load(files: &Option<TlsFiles>, alpn: &[&[u8]]) -> Result<Option<Arc<Tls>>, StoreError> {
    Ok(files
        .clone()
        .map(|files| Tls::load(files, alpn))
        .transpose()?)
}

impl Member {
    /// Opens the data dir, starts Raft and serves clients and peers until shut down.
    pub async fn start(config: Config) -> Result<RunningMember, StoreError> {
        let client_tls = load(&config.client_tls, CLIENT_ALPN)?;
        let peer_tls = load(&config.peer_tls, &[])?;
        let db = store::open_database(&config.data_dir)?;
        let mut peer_connections = Vec::new();
        for listener in bind_all(&config.listen_peer_urls).await? {
            peer_connections.push(connections(listener, peer_tls.clone(), None)?);
        }
        // One count of connections per client address over the client and metrics listeners.
        let per_client = PerClient::new(config.limits.max_connections_per_client);
        let mut client_connections = Vec::new();
        let mut client_addrs = Vec::new();
        for listener in bind_all(&config.listen_client_urls).await? {
            client_addrs.extend(listener.tcp.local_addr().ok());
            client_connections.push(connections(
                listener,
                client_tls.clone(),
                Some(per_client.clone()),
            )?);
        }
        let mut metrics_connections = Vec::new();
        for listener in bind_all(&config.listen_metrics_urls).await? {
            metrics_connections.push(connections(
                listener,
                client_tls.clone(),
                Some(per_client.clone()),
            )?);
        }
        let (member, mut tasks) = Member::open(config, db, peer_tls).await?;
        for incoming in peer_connections {
            let identity = member.identity();
            tasks.push(tokio::spawn(crate::peer::serve(
                member.clone(),
                identity,
                incoming,
            )));
        }
        for incoming in client_connections {
            tasks.push(tokio::spawn(crate::api::serve_clients(
                member.clone(),
                incoming,
            )));
        }
        for incoming in metrics_connections {
            tasks.push(tokio::spawn(crate::api::serve_metrics(
                member.clone(),
                incoming,
            )));
        }
        tasks.extend(Arc::clone(&member).join_the_cluster()?);
        Ok(RunningMember {
            member,
            tasks,
            client_addrs,
        })
    }
}
