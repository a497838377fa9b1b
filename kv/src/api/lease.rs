//! etcd's Lease service: grants and revokes go through Raft, keep-alives and time-to-live ask
//! the leader's lease clock.
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::access::requester;
use super::propose::{propose, propose_as};
use crate::error::EtcdError;
use crate::member::Member;
use crate::proto::etcdserverpb::{self as pb, lease_server::Lease};
use crate::storage::quota;

pub struct LeaseService(pub Arc<Member>);

impl LeaseService {
    /// etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds.
    fn min_ttl(&self) -> i64 {
        let millis = self.0.config.election_timeout.as_millis() as i64 * 3 / 2;
        ((millis + 999) / 1000).max(1)
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.0.check_quota(quota::lease_grant_cost()).await?;
        // etcd 3.4 checks no permission for a grant, only that a token is valid.
        requester(&self.0, &request).await?;
        let req = request.into_inner();
        let id = if req.id == 0 {
            rand::random::<i64>() & i64::MAX
        } else {
            req.id
        };
        let ttl = req.ttl.max(self.min_ttl());
        propose(&self.0, pb::LeaseGrantRequest { id, ttl }).await
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        // Revoking deletes the lease's keys: it needs write on every one of them.
        let user = requester(&self.0, &request).await?;
        propose_as(&self.0, user, request.into_inner()).await
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let member = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let answer =
                    member
                        .keep_alive(req.id)
                        .await
                        .map(|ttl| pb::LeaseKeepAliveResponse {
                            header: member.header(member.shared.read().mvcc.revision()),
                            id: req.id,
                            ttl,
                        });
                if tx.send(answer.map_err(Status::from)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let req = request.into_inner();
        let ttl = match self.0.time_to_live(req.id).await {
            Ok(ttl) => ttl,
            // etcd answers an unknown lease with TTL -1 rather than an error.
            Err(EtcdError::LeaseNotFound) => {
                return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: self.0.header(self.0.shared.read().mvcc.revision()),
                    id: req.id,
                    ttl: -1,
                    ..Default::default()
                }));
            }
            Err(e) => return Err(e.into()),
        };
        let state = self.0.shared.read();
        let lease = state.mvcc.lease(req.id);
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: self.0.header(state.mvcc.revision()),
            id: req.id,
            ttl,
            granted_ttl: lease.map(|l| l.ttl).unwrap_or_default(),
            keys: match (req.keys, lease) {
                (true, Some(l)) => l.keys.iter().cloned().collect(),
                _ => Vec::new(),
            },
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let state = self.0.shared.read();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.0.header(state.mvcc.revision()),
            leases: state
                .mvcc
                .leases()
                .map(|(id, _)| pb::LeaseStatus { id: *id })
                .collect(),
        }))
    }
}
