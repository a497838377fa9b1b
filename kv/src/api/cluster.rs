//! etcd's Cluster service: member list, and add, remove, promote and update as Raft membership
//! changes made on the leader with etcd's checks ([`crate::member`]); with auth on they need root.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access::check_admin;
use crate::member::{Member, MembershipChange};
use crate::proto::etcdserverpb::{self as pb, cluster_server::Cluster};

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

    /// Makes `change` on the leader (from any member, as etcd does): the member concerned.
    async fn change(&self, change: MembershipChange) -> Result<u64, Status> {
        Ok(self.0.change_membership(change).await?)
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
        let id = self
            .change(MembershipChange::Add {
                peer_urls: req.peer_ur_ls.clone(),
                is_learner: req.is_learner,
            })
            .await?;
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
        self.change(MembershipChange::Remove { id }).await?;
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
        let req = request.into_inner();
        self.change(MembershipChange::Update {
            id: req.id,
            peer_urls: req.peer_ur_ls,
        })
        .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members: self.member_list(),
        }))
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
        self.change(MembershipChange::Promote { id }).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members: self.member_list(),
        }))
    }
}
