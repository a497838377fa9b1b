//! etcd's Cluster service: member list, add, remove and promote, as Raft membership changes
//! (which, with auth on, need root).
use std::sync::Arc;

use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use super::access::check_admin;
use crate::error::EtcdError;
use crate::member::{Member, member_id};
use crate::proto::etcdserverpb::{self as pb, cluster_server::Cluster};
use crate::types::MemberNode;

/// How long a membership change may take to commit.
const MEMBERSHIP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct ClusterService(pub Arc<Member>);

impl ClusterService {
    fn member_list(&self) -> Vec<pb::Member> {
        let state = self.0.shared.read();
        self.0
            .members()
            .into_iter()
            .map(|(id, node, is_learner)| {
                let attrs = state.member_attrs.get(&id);
                pb::Member {
                    id,
                    // etcd lists a member that has not started yet with an empty name.
                    name: attrs.map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: node.peer_urls,
                    client_ur_ls: attrs.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner,
                }
            })
            .collect()
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.0.header(self.0.shared.read().mvcc.revision())
    }

    async fn change(&self, change: ChangeMembers<u64, MemberNode>) -> Result<(), Status> {
        if !self.0.is_leader() {
            return Err(Status::failed_precondition(
                "etcdserver: membership changes must be sent to the leader in shoal kv",
            ));
        }
        let changed = tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            self.0.raft.change_membership(change, false),
        )
        .await
        .map_err(|_| Status::from(EtcdError::Timeout))?;
        changed
            .map(|_| ())
            .map_err(|e| Status::failed_precondition(format!("etcdserver: {e}")))
    }

    /// etcd refuses a change after which the voters that are up could not form a quorum.
    fn check_quorum_after(&self, voters_after: &[u64]) -> Result<(), Status> {
        let window = self.0.config.election_timeout * 2;
        let reachable = voters_after
            .iter()
            .filter(|id| **id == self.0.id || self.0.pool.recently_heard(**id, window))
            .count();
        if voters_after.is_empty() || reachable < voters_after.len() / 2 + 1 {
            return Err(EtcdError::Unhealthy.into());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        check_admin(&self.0, &request).await?;
        let req = request.into_inner();
        let existing = self.member_list();
        if existing
            .iter()
            .any(|m| m.peer_ur_ls.iter().any(|u| req.peer_ur_ls.contains(u)))
        {
            return Err(EtcdError::PeerUrlExists.into());
        }
        let id = member_id(&req.peer_ur_ls, &self.0.config.initial_cluster_token);
        let node = MemberNode {
            name: String::new(),
            peer_urls: req.peer_ur_ls.clone(),
        };
        let nodes = [(id, node)].into_iter().collect();
        self.change(ChangeMembers::AddNodes(nodes)).await?;
        if !req.is_learner {
            self.change(ChangeMembers::AddVoterIds([id].into_iter().collect()))
                .await?;
        }
        let member = pb::Member {
            id,
            peer_ur_ls: req.peer_ur_ls,
            is_learner: req.is_learner,
            ..Default::default()
        };
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members: self.member_list(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        check_admin(&self.0, &request).await?;
        let id = request.into_inner().id;
        let members = self.member_list();
        let target = members
            .iter()
            .find(|m| m.id == id)
            .ok_or(EtcdError::MemberNotFound)?;
        if !target.is_learner {
            let voters_after: Vec<u64> = members
                .iter()
                .filter(|m| !m.is_learner && m.id != id)
                .map(|m| m.id)
                .collect();
            self.check_quorum_after(&voters_after)?;
            self.change(ChangeMembers::RemoveVoters([id].into_iter().collect()))
                .await?;
        }
        self.change(ChangeMembers::RemoveNodes([id].into_iter().collect()))
            .await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members: self.member_list(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        check_admin(&self.0, &request).await?;
        Err(Status::unimplemented(
            "etcdserver: member update is not supported by shoal kv",
        ))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members: self.member_list(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        check_admin(&self.0, &request).await?;
        let id = request.into_inner().id;
        let members = self.member_list();
        let target = members
            .iter()
            .find(|m| m.id == id)
            .ok_or(EtcdError::MemberNotFound)?;
        if !target.is_learner {
            return Err(EtcdError::MemberNotLearner.into());
        }
        self.change(ChangeMembers::AddVoterIds([id].into_iter().collect()))
            .await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members: self.member_list(),
        }))
    }
}
