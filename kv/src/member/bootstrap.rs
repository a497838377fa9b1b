//! Bringing a member up: opening its storage and Raft, learning its IDs (from the
//! configuration for a new cluster, from the running members when joining one), forming a new
//! cluster without two members initializing it at once, and publishing its name and client URLs.
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::config::{cluster_id, initial_members, member_id, raft_config};
use super::lease_clock::LeaseClock;
use super::{ClusterState, Config, Member};
use crate::error::StoreError;
use crate::peer::wire::Identity;
use crate::peer::{ClusterView, ForwardRpc, Network, PeerPool};
use crate::storage::state_machine::{Shared, State, StateMachine, restored_cluster};
use crate::storage::store::{DataFile, LogStore};
use crate::storage::tokens::SimpleTokens;
use crate::types::{Command, MemberAttrs, Members, Raft};

impl Member {
    /// Starts Raft on the opened data file, and the member's write and read batchers; the
    /// member and those tasks. Joining an existing cluster asks its members for this member's ID.
    pub(crate) async fn open(
        config: Config,
        db: Arc<DataFile>,
        peer_tls: Option<Arc<crate::tls::Tls>>,
    ) -> Result<(Arc<Member>, Vec<JoinHandle<()>>), StoreError> {
        let (feed, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            state: std::sync::RwLock::new(State {
                tokens: SimpleTokens::new(config.auth_token_ttl),
                ..State::default()
            }),
            feed,
            applied: tokio::sync::watch::channel(0).0,
            db_size: Default::default(),
            recent: Default::default(),
        });
        let initial = initial_members(&config);
        let id = member_id(
            &config.initial_advertise_peer_urls,
            &config.initial_cluster_token,
        );
        let (id, cluster_id) = match config.initial_cluster_state {
            ClusterState::New => (id, cluster_id(&initial, &config.initial_cluster_token)),
            ClusterState::Existing => join_existing(&config, &initial, id, &peer_tls).await?,
        };
        check_restored_for(&db, cluster_id)?;
        let pool = PeerPool::new(
            Identity {
                cluster_id,
                member_id: id,
            },
            peer_tls,
        );
        let log_store = LogStore::new(db.clone(), &config.data_dir, id)?;
        let durability = log_store.durability();
        let state_machine = StateMachine::open(
            db.clone(),
            shared.clone(),
            durability.clone(),
            log_store.snapshot_mark(),
        )?;
        let network = Network {
            pool: pool.clone(),
            commit_clamp: log_store.commit_clamp(),
        };
        let raft = Raft::new(
            id,
            Arc::new(raft_config(&config)?),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| StoreError::Raft(e.to_string()))?;
        let (read_requests, read_waiters) = mpsc::channel(4096);
        let member = Arc::new(Member {
            id,
            cluster_id,
            raft,
            shared,
            config,
            pool,
            db,
            leases: LeaseClock::default(),
            leadership_floor: Default::default(),
            read_requests,
            writes: Default::default(),
        });
        let tasks = vec![
            tokio::spawn(member.clone().run_read_batcher(read_waiters)),
            tokio::spawn(member.clone().run_write_batcher()),
            tokio::spawn(member.clone().tell_followers_what_is_durable(durability)),
        ];
        Ok((member, tasks))
    }

    /// Once the member serves peers: forms a new cluster (see [`Member::bootstrap`]), publishes
    /// this member's attributes and runs the lease clock and the auto-compactor.
    pub(crate) fn join_the_cluster(self: Arc<Self>) -> Result<Vec<JoinHandle<()>>, StoreError> {
        let mut tasks = Vec::new();
        if self.config.initial_cluster_state == ClusterState::New {
            tasks.push(self.clone().bootstrap(initial_members(&self.config))?);
        }
        tasks.push(tokio::spawn(self.clone().publish_attrs()));
        tasks.push(tokio::spawn(self.clone().run_auto_compaction()));
        tasks.push(tokio::spawn(self.clone().count_leader_changes()));
        tasks.push(tokio::spawn(self.run_lease_clock()));
        Ok(tasks)
    }

    /// Forms a new cluster without two members initializing it at once: the member with the
    /// lowest ID initializes at once, the one ranked `r` only after `r` times two election
    /// timeouts and only if no other member contacted it meanwhile. Concurrent `initialize`
    /// calls make several members candidates of term 1 at the same moment.
    fn bootstrap(self: Arc<Self>, members: Members) -> Result<JoinHandle<()>, StoreError> {
        let rank = members
            .keys()
            .position(|id| *id == self.id)
            .ok_or_else(|| {
                StoreError::Config(format!(
                    "--initial-cluster does not name this member ({})",
                    self.config.name
                ))
            })?;
        let delay = self.config.election_timeout * 2 * rank as u32;
        Ok(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            match self.raft.is_initialized().await {
                Ok(true) => tracing::debug!("contacted by another member; not initializing"),
                Ok(false) => {
                    if let Err(e) = self.initialize(members).await {
                        tracing::error!("{e}");
                    }
                }
                Err(e) => tracing::error!("asking Raft whether it is initialized: {e}"),
            }
        }))
    }

    async fn initialize(&self, members: Members) -> Result<(), StoreError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StoreError::Raft(format!("initializing the cluster: {e}"))),
        }
    }

    /// Proposes this member's name and client URLs until the cluster has them.
    async fn publish_attrs(self: Arc<Self>) {
        let attrs = MemberAttrs {
            name: self.config.name.clone(),
            client_urls: self.config.advertise_client_urls.clone(),
        };
        loop {
            let published = self.shared.read().member_attrs.get(&self.id) == Some(&attrs);
            if published {
                return;
            }
            let command = Command::PublishMember {
                id: self.id,
                attrs: attrs.clone(),
            };
            if let Err(e) = self.propose(command).await {
                tracing::debug!("publishing member attributes: {e}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A member added with MemberAdd learns its ID and the cluster's from the running members (as
/// etcd does), asking as a member of no cluster yet.
async fn join_existing(
    config: &Config,
    initial: &Members,
    fallback_id: u64,
    peer_tls: &Option<Arc<crate::tls::Tls>>,
) -> Result<(u64, u64), StoreError> {
    let pool = PeerPool::new(Identity::UNKNOWN, peer_tls.clone());
    for (_, node) in initial.iter().filter(|(id, _)| **id != fallback_id) {
        let view: Result<ClusterView, _> = pool
            .call(
                node.clone(),
                ForwardRpc::Members,
                &(),
                Duration::from_secs(2),
            )
            .await;
        let Ok(view) = view else { continue };
        let mine = view
            .members
            .iter()
            .find(|(_, n)| n.peer_urls == config.initial_advertise_peer_urls);
        let Some((id, _)) = mine else {
            return Err(StoreError::Config(format!(
                "this member ({}) is not in the cluster; add it with `etcdctl member add` first",
                config.initial_advertise_peer_urls.join(",")
            )));
        };
        return Ok((*id, view.cluster_id));
    }
    Err(StoreError::Config(
        "--initial-cluster-state existing: no member of --initial-cluster answered".to_string(),
    ))
}

/// A data dir restored from a backup serves only the cluster the restore named.
fn check_restored_for(db: &DataFile, cluster_id: u64) -> Result<(), StoreError> {
    match restored_cluster(db)? {
        Some(restored) if restored != cluster_id => Err(StoreError::Config(format!(
            "the data dir was restored for cluster {restored:x}, but --initial-cluster, \
             --initial-cluster-token and --initial-cluster-state make cluster {cluster_id:x}"
        ))),
        _ => Ok(()),
    }
}
