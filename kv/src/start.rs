//! Starting a member with its servers: storage, Raft and the member's own tasks
//! ([`crate::member`]), the peer server ([`crate::peer`]) and the etcd API ([`crate::api`]) on
//! the listeners of its URLs. The one place that knows all three, so none of them knows another's
//! server.
use std::sync::Arc;

use crate::error::StoreError;
use crate::listen::bind_all;
use crate::member::{Config, Member, RunningMember};
use crate::storage::store;

impl Member {
    /// Opens the data dir, starts Raft and serves clients and peers until shut down.
    pub async fn start(config: Config) -> Result<RunningMember, StoreError> {
        let db = store::open_database(&config.data_dir)?;
        let peer_listeners = bind_all(&config.listen_peer_urls).await?;
        let client_listeners = bind_all(&config.listen_client_urls).await?;
        let client_addrs = client_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let (member, mut tasks) = Member::open(config, db).await?;
        for listener in peer_listeners {
            let identity = member.identity();
            tasks.push(tokio::spawn(crate::peer::serve(
                member.clone(),
                identity,
                listener,
            )));
        }
        for listener in client_listeners {
            tasks.push(tokio::spawn(crate::api::serve_clients(
                member.clone(),
                listener,
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
