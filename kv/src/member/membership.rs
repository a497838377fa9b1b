//! Membership changes and leadership transfer, made on the leader as etcd 3.4 makes them:
//! etcd's member add, remove, promote and update become Raft membership changes after etcd's
//! checks (`--strict-reconfig-check`, on as etcd's default: started members, connected voters,
//! a learner in sync before its promotion); a follower forwards a change to the leader and
//! answers once it applied it. MoveLeader hands leadership to a voter that is in sync.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use super::{Member, REQUEST_TIMEOUT, member_id};
use crate::error::EtcdError;
use crate::peer::ForwardRpc;
use crate::types::MemberNode;

/// How long a membership change may take to commit.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);
/// etcd's `HealthInterval`: a change needs the voters connected at least this long.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// etcd's `readyPercent`: a learner is promoted once its log matches this much of the leader's.
const LEARNER_READY_PERCENT: f64 = 0.9;

/// A membership change as a client asks any member for it (what a follower forwards).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    Add {
        peer_urls: Vec<String>,
        is_learner: bool,
    },
    Remove {
        id: u64,
    },
    Promote {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
}

/// A member as the membership lists it.
struct Listed {
    node: MemberNode,
    is_learner: bool,
}

impl Member {
    /// Makes `change` on the leader (forwarded when this member does not lead), once this member
    /// applied it: the ID of the member it concerns.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<u64, EtcdError> {
        let (id, index) = self
            .on_leader(
                || async {
                    if !self.is_leader() {
                        return Err(None);
                    }
                    Ok(self.change_here(&change).await)
                },
                |leader| {
                    self.pool.call(
                        leader,
                        ForwardRpc::ChangeMembership,
                        &change,
                        MEMBERSHIP_TIMEOUT,
                    )
                },
            )
            .await?;
        self.wait_applied(index).await?;
        Ok(id)
    }

    /// A change forwarded by a follower: made here if this member leads.
    pub(crate) async fn change_membership_forwarded(
        &self,
        change: MembershipChange,
    ) -> Result<(u64, u64), EtcdError> {
        if !self.is_leader() {
            return Err(EtcdError::NoLeader);
        }
        self.change_here(&change).await
    }

    /// Checks and commits `change` on this member, the leader: the member's ID and the log index
    /// of the last membership entry.
    async fn change_here(&self, change: &MembershipChange) -> Result<(u64, u64), EtcdError> {
        let members = self.listed();
        match change {
            MembershipChange::Add {
                peer_urls,
                is_learner,
            } => {
                if members
                    .values()
                    .any(|m| m.node.peer_urls.iter().any(|u| peer_urls.contains(u)))
                {
                    return Err(EtcdError::PeerUrlExists);
                }
                let id = member_id(peer_urls, &self.config.initial_cluster_token);
                if members.contains_key(&id) {
                    return Err(EtcdError::MemberExists);
                }
                self.check_ready_to_add(&members, *is_learner)?;
                let node = MemberNode {
                    name: String::new(),
                    peer_urls: peer_urls.clone(),
                };
                let mut index = self
                    .commit(ChangeMembers::AddNodes([(id, node)].into()))
                    .await?;
                if !is_learner {
                    index = self.commit(ChangeMembers::AddVoterIds([id].into())).await?;
                }
                Ok((id, index))
            }
            MembershipChange::Remove { id } => {
                let target = members.get(id).ok_or(EtcdError::MemberNotFound)?;
                if !target.is_learner {
                    self.check_ready_to_remove_voter(&members, *id)?;
                    self.commit(ChangeMembers::RemoveVoters([*id].into()))
                        .await?;
                }
                let index = self
                    .commit(ChangeMembers::RemoveNodes([*id].into()))
                    .await?;
                Ok((*id, index))
            }
            MembershipChange::Promote { id } => {
                let target = members.get(id).ok_or(EtcdError::MemberNotFound)?;
                if !target.is_learner {
                    return Err(EtcdError::MemberNotLearner);
                }
                self.check_learner_in_sync(*id)?;
                self.check_ready_to_promote(&members)?;
                let index = self
                    .commit(ChangeMembers::AddVoterIds([*id].into()))
                    .await?;
                Ok((*id, index))
            }
            MembershipChange::Update { id, peer_urls } => {
                let target = members.get(id).ok_or(EtcdError::MemberNotFound)?;
                if members.iter().any(|(other, m)| {
                    other != id && m.node.peer_urls.iter().any(|u| peer_urls.contains(u))
                }) {
                    return Err(EtcdError::PeerUrlExists);
                }
                let node = MemberNode {
                    name: target.node.name.clone(),
                    peer_urls: peer_urls.clone(),
                };
                let index = self
                    .commit(ChangeMembers::SetNodes([(*id, node)].into()))
                    .await?;
                Ok((*id, index))
            }
        }
    }

    fn listed(&self) -> BTreeMap<u64, Listed> {
        self.members()
            .into_iter()
            .map(|(id, node, is_learner)| (id, Listed { node, is_learner }))
            .collect()
    }

    /// Commits one Raft membership change: the log index of its entry.
    async fn commit(&self, change: ChangeMembers<u64, MemberNode>) -> Result<u64, EtcdError> {
        let changed = tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            self.raft.change_membership(change, false),
        )
        .await
        .map_err(|_| EtcdError::Timeout)?;
        changed
            .map(|response| response.log_id.index)
            .map_err(|e| EtcdError::Internal(e.to_string()))
    }

    /// Whether member `id` has started once, as etcd counts it: it published its name.
    fn started(&self, id: u64) -> bool {
        id == self.id
            || self
                .shared
                .read()
                .member_attrs
                .get(&id)
                .is_some_and(|attrs| !attrs.name.is_empty())
    }

    /// Whether member `id` has answered every RPC of this member for `at_least` (itself
    /// always): etcd's `ActiveSince`.
    fn connected_for(&self, id: u64, at_least: Duration) -> bool {
        let window = self.config.election_timeout * 2;
        id == self.id || self.pool.connected(id, window, at_least)
    }

    /// Whether voter `id` has been connected for etcd's health interval.
    fn connected(&self, id: u64) -> bool {
        self.connected_for(id, HEALTH_INTERVAL)
    }

    /// etcd's `mayAddMember`: for a voter `IsReadyToAddVotingMember`, then for any member every
    /// voter connected for the health interval (`isConnectedFullySince`).
    fn check_ready_to_add(
        &self,
        members: &BTreeMap<u64, Listed>,
        is_learner: bool,
    ) -> Result<(), EtcdError> {
        if !self.config.strict_reconfig_check {
            return Ok(());
        }
        let voters: Vec<u64> = voters(members).collect();
        let members_after = voters.len() + 1;
        let started = voters.iter().filter(|id| self.started(**id)).count();
        // etcd's exception: a second member added to a one-member cluster (restoring a backup).
        let restoring = started == 1 && members_after == 2;
        if !is_learner && !restoring && started < members_after / 2 + 1 {
            return Err(EtcdError::NotEnoughStartedMembers);
        }
        if !voters.iter().all(|id| self.connected(*id)) {
            return Err(EtcdError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `IsReadyToRemoveVotingMember`, then that the voters still connected after the
    /// removal of a connected one form a quorum.
    fn check_ready_to_remove_voter(
        &self,
        members: &BTreeMap<u64, Listed>,
        id: u64,
    ) -> Result<(), EtcdError> {
        if !self.config.strict_reconfig_check {
            return Ok(());
        }
        let voters: Vec<u64> = voters(members).collect();
        let remaining: Vec<&u64> = voters.iter().filter(|v| **v != id).collect();
        let started = remaining.iter().filter(|v| self.started(***v)).count();
        if started < remaining.len() / 2 + 1 {
            return Err(EtcdError::NotEnoughStartedMembers);
        }
        // A member that is down is safe to remove: it is not part of the active quorum.
        if !self.connected_for(id, Duration::ZERO) {
            return Ok(());
        }
        let active = voters.iter().filter(|v| self.connected(**v)).count();
        if active - 1 < 1 + (voters.len() - 1) / 2 {
            return Err(EtcdError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `IsReadyToPromoteMember`: the learner counts as started.
    fn check_ready_to_promote(&self, members: &BTreeMap<u64, Listed>) -> Result<(), EtcdError> {
        if !self.config.strict_reconfig_check {
            return Ok(());
        }
        let voters: Vec<u64> = voters(members).collect();
        let members_after = voters.len() + 1;
        let started = 1 + voters.iter().filter(|id| self.started(**id)).count();
        if started < members_after / 2 + 1 {
            return Err(EtcdError::NotEnoughStartedMembers);
        }
        Ok(())
    }

    /// etcd's `isLearnerReady`: the learner's log matches at least 90% of the leader's.
    fn check_learner_in_sync(&self, id: u64) -> Result<(), EtcdError> {
        let metrics = self.raft.metrics().borrow().clone();
        let Some(replication) = metrics.replication else {
            return Err(EtcdError::NotLeader);
        };
        let Some(matched) = replication.get(&id) else {
            return Ok(());
        };
        let learner = matched.map_or(0, |log_id| log_id.index);
        let leader = metrics.last_log_index.unwrap_or_default();
        if (learner as f64) < (leader as f64) * LEARNER_READY_PERCENT {
            return Err(EtcdError::LearnerNotReady);
        }
        Ok(())
    }

    /// etcd's MoveLeader, on the leader: hands leadership to voter `target` once its log
    /// matches this member's. openraft 0.9 has no leadership transfer: this member stops
    /// heartbeating (so the voters' leader leases run out) and asks `target`, in sync, to
    /// campaign until it leads or the request times out.
    pub async fn move_leader(&self, target: u64) -> Result<(), EtcdError> {
        if !self.is_leader() {
            return Err(EtcdError::NotLeader);
        }
        let members = self.listed();
        let node = match members.get(&target) {
            Some(listed) if !listed.is_learner => listed.node.clone(),
            _ => return Err(EtcdError::BadLeaderTransferee),
        };
        if target == self.id {
            return Ok(());
        }
        self.raft.runtime_config().heartbeat(false);
        self.raft.runtime_config().elect(false);
        let moved = self.hand_leadership_to(target, node).await;
        self.raft.runtime_config().heartbeat(true);
        self.raft.runtime_config().elect(true);
        moved
    }

    async fn hand_leadership_to(&self, target: u64, node: MemberNode) -> Result<(), EtcdError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let pause = self.config.heartbeat_interval;
        loop {
            let metrics = self.raft.metrics().borrow().clone();
            if metrics.current_leader == Some(target) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(EtcdError::LeaderTransferTimeout);
            }
            let in_sync = metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(&target).copied().flatten())
                .map(|matched| matched.index)
                == metrics.last_log_index;
            if metrics.current_leader == Some(self.id) && in_sync {
                let asked: Result<(), EtcdError> = self
                    .pool
                    .call(node.clone(), ForwardRpc::Campaign, &(), pause * 4)
                    .await;
                if let Err(e) = asked {
                    tracing::debug!("asking member {target:x} to campaign: {e}");
                }
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Starts an election here, as the leader asked in a MoveLeader.
    pub(crate) async fn campaign(&self) -> Result<(), EtcdError> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| EtcdError::Internal(e.to_string()))
    }
}

fn voters(members: &BTreeMap<u64, Listed>) -> impl Iterator<Item = u64> + '_ {
    members
        .iter()
        .filter(|(_, m)| !m.is_learner)
        .map(|(id, _)| *id)
}
