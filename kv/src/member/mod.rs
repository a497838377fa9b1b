//! One running member: Raft, the state machine and the member's own tasks (write batching,
//! ReadIndex, the lease clock, the auto-compactor). Its servers are started by [`crate::start`].
//!
//! Writes go through [`Member::propose`]: applied locally when this member leads, otherwise
//! forwarded to the leader, and answered once this member has applied them too (so a client
//! reads its own writes from any member). Linearizable reads go through [`Member::read_barrier`]
//! (ReadIndex: the leader confirms it still leads, the reader waits until it applied that far).
mod bootstrap;
mod compactor;
mod config;
mod lease_clock;
mod membership;
mod read_index;
mod space;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use self::compactor::{AutoCompaction, REVISION_CHECK_INTERVAL};
pub use self::config::{ClientLimits, ClusterState, Config, member_id, new_cluster};
use self::lease_clock::LeaseClock;
pub use self::membership::MembershipChange;
use self::read_index::{LeadershipFloor, ReadWaiter};
pub use self::write::MAX_REQUEST_BYTES;
use self::write::{WriteQueue, Written};
use crate::error::EtcdError;
use crate::peer::wire::Identity;
use crate::peer::{ClusterView, PeerHandler, PeerPool};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::storage::state_machine::Shared;
use crate::types::{Command, MemberNode, Outcome, Raft};

/// How long a request may wait for Raft (etcd's request timeout is about 5 s plus election time).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

pub struct Member {
    pub id: u64,
    pub cluster_id: u64,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub config: Config,
    pub pool: PeerPool,
    /// The data file, for defragmenting it.
    db: Arc<crate::storage::store::DataFile>,
    leases: LeaseClock,
    /// What a read index may not go below in the term this member leads.
    leadership_floor: LeadershipFloor,
    read_requests: mpsc::Sender<ReadWaiter>,
    writes: WriteQueue,
}

/// A running member; dropping it does not stop it, [`RunningMember::shutdown`] does.
pub struct RunningMember {
    pub member: Arc<Member>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
    pub client_addrs: Vec<SocketAddr>,
}

impl RunningMember {
    /// See [`Member::raft_stopped`].
    pub async fn raft_stopped(&self) -> String {
        self.member.raft_stopped().await
    }

    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(e) = self.member.raft.shutdown().await {
            tracing::warn!("stopping raft: {e}");
        }
    }
}

impl Member {
    /// Resolves once Raft stopped by itself (a storage error such as EIO or ENOSPC, or its task
    /// ended): why. A member whose Raft stopped must stop serving, as etcd exits: it would
    /// otherwise answer reads from a state that no longer moves.
    pub async fn raft_stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        let stopped = metrics.wait_for(|m| m.running_state.is_err()).await;
        match stopped.as_deref().map(|m| &m.running_state) {
            Ok(Err(fatal)) => fatal.to_string(),
            _ => "its task ended".to_string(),
        }
    }

    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        })
    }

    /// Who this member is in the frames it sends its peers.
    pub fn identity(&self) -> Identity {
        Identity {
            cluster_id: self.cluster_id,
            member_id: self.id,
        }
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    fn leader(&self) -> Option<(u64, MemberNode)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    /// Waits a moment before a request is tried again, or gives up once `deadline` has passed:
    /// with `NoLeader` while there is none (an election is running), else with `Timeout`.
    async fn pause_before_retry(&self, deadline: Instant) -> Result<(), EtcdError> {
        if Instant::now() > deadline {
            return Err(if self.leader().is_none() {
                EtcdError::NoLeader
            } else {
                EtcdError::Timeout
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }

    /// Runs `local` when this member leads, else `remote` against the leader, retrying while
    /// there is no leader, until the request timeout.
    async fn on_leader<T, L, LF, R, RF>(&self, local: L, remote: R) -> Result<T, EtcdError>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<Result<T, EtcdError>, Option<u64>>>,
        R: Fn(MemberNode) -> RF,
        RF: Future<Output = Result<T, EtcdError>>,
    {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            let leader = self.leader();
            match leader {
                Some((leader, _)) if leader == self.id => {
                    if let Ok(answer) = local().await {
                        return answer;
                    }
                }
                Some((leader, node)) => match remote(node).await {
                    Err(EtcdError::NoLeader) => {
                        tracing::debug!("member {leader:x} no longer leads; retrying");
                    }
                    other => return other,
                },
                None => {}
            }
            self.pause_before_retry(deadline).await?;
        }
    }

    pub(crate) async fn wait_applied(&self, index: u64) -> Result<(), EtcdError> {
        let mut applied = self.shared.applied.subscribe();
        let reached = applied.wait_for(|applied| *applied >= index);
        match tokio::time::timeout(REQUEST_TIMEOUT, reached).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(EtcdError::Internal("the state machine stopped".to_string())),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// Counts the leaders this member sees take over (etcd's
    /// `etcd_server_leader_changes_seen_total`), until Raft stops.
    async fn count_leader_changes(self: Arc<Self>) {
        let mut raft = self.raft.metrics();
        let mut seen = None;
        loop {
            let leader = raft.borrow_and_update().current_leader;
            // As etcd: a leader other than the last one seen, none in between included.
            if leader.is_some() && leader != seen {
                crate::metrics::metrics().leader_changes.inc();
            }
            seen = leader;
            if raft.changed().await.is_err() {
                return;
            }
        }
    }

    /// The Raft members: voters and learners with their nodes.
    pub fn members(&self) -> Vec<(u64, MemberNode, bool)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| (*id, node.clone(), !voters.contains(id)))
            .collect()
    }
}

impl PeerHandler for Member {
    fn raft(&self) -> &Raft {
        &self.raft
    }

    async fn propose_local(&self, command: Command) -> Result<(Outcome, u64), EtcdError> {
        if !self.is_leader() {
            return Err(EtcdError::NoLeader);
        }
        match self.write_forwarded(command).await {
            Written::Done(outcome, index) => Ok((outcome, index)),
            Written::Failed(error) => Err(error),
            Written::Retry => Err(EtcdError::NoLeader),
        }
    }

    async fn read_index_local(&self) -> Result<u64, EtcdError> {
        self.read_index_here()
            .await
            .map_err(|_| EtcdError::NoLeader)
    }

    async fn keep_alive_local(&self, id: i64) -> Result<i64, EtcdError> {
        if !self.is_leader() {
            return Err(EtcdError::NoLeader);
        }
        self.keep_alive_here(id)
    }

    async fn time_to_live_local(&self, id: i64) -> Result<i64, EtcdError> {
        if !self.is_leader() {
            return Err(EtcdError::NoLeader);
        }
        self.time_to_live_here(id)
    }

    async fn change_membership_local(
        &self,
        change: MembershipChange,
    ) -> Result<(u64, u64), EtcdError> {
        self.change_membership_forwarded(change).await
    }

    async fn campaign_local(&self) -> Result<(), EtcdError> {
        self.campaign().await
    }

    fn cluster_view(&self) -> ClusterView {
        ClusterView {
            cluster_id: self.cluster_id,
            members: self
                .members()
                .into_iter()
                .map(|(id, node, _)| (id, node))
                .collect(),
        }
    }
}
