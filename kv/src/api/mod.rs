//! The etcd v3 gRPC services (KV, Lease, Cluster, Maintenance; Watch is in [`crate::api::watch`]) on
//! top of a [`Member`].
pub mod authority;
pub mod watch;

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::ChangeMembers;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::EtcdError;
use crate::member::{MAX_REQUEST_BYTES, Member, member_id};
use crate::proto::etcdserverpb::{
    self as pb,
    cluster_server::{Cluster, ClusterServer},
    kv_server::{Kv, KvServer},
    lease_server::{Lease, LeaseServer},
    maintenance_server::{Maintenance, MaintenanceServer},
    watch_server::WatchServer,
};
use crate::storage::mvcc::validate;
use crate::types::{Command, MemberNode, Outcome, Proto};

/// The version Status reports: the etcd API level served, marked as shoal's.
pub const VERSION: &str = "3.4.0";
/// etcd's largest lease TTL.
const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// gRPC framing allowance on top of the request limit (etcd's `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How long a membership change may take to commit.
const MEMBERSHIP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves the etcd API on one listener until the task is aborted.
pub async fn serve_clients(member: Arc<Member>, listener: TcpListener) {
    let limit = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(KvServer::new(KvService(member.clone())).max_decoding_message_size(limit))
        .add_service(
            WatchServer::new(crate::api::watch::WatchService(member.clone()))
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
        .serve_with_incoming(
            crate::listen::incoming(listener)
                .map(|accepted| accepted.map(crate::api::authority::AuthorityFixingStream::new)),
        )
        .await;
    if let Err(e) = served {
        tracing::error!("client server stopped: {e}");
    }
}

fn unexpected(outcome: Outcome) -> Status {
    Status::internal(format!("etcdserver: unexpected outcome {outcome:?}"))
}

fn revision_of(header: &Option<pb::ResponseHeader>) -> i64 {
    header.as_ref().map(|h| h.revision).unwrap_or_default()
}

pub struct KvService(pub Arc<Member>);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = request.into_inner();
        validate::range(&req)?;
        if !req.serializable {
            self.0.read_barrier().await?;
        }
        let mut response = self.0.shared.read().mvcc.range(&req)?;
        response.header = self.0.header(revision_of(&response.header));
        Ok(Response::new(response))
    }

    type RangeStreamStream = BoxStream<pb::RangeStreamResponse>;

    async fn range_stream(
        &self,
        _request: Request<pb::RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(Status::unimplemented(
            "RangeStream is not part of the etcd 3.4 API",
        ))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let req = request.into_inner();
        validate::put(&req)?;
        match self.0.propose(Command::Put(Proto(req))).await? {
            Outcome::Put(Proto(mut response)) => {
                response.header = self.0.header(revision_of(&response.header));
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        validate::delete_range(&req)?;
        match self.0.propose(Command::DeleteRange(Proto(req))).await? {
            Outcome::DeleteRange(Proto(mut response)) => {
                response.header = self.0.header(revision_of(&response.header));
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let req = request.into_inner();
        validate::txn(&req)?;
        match self.0.propose(Command::Txn(Proto(req))).await? {
            Outcome::Txn(Proto(mut response)) => {
                response.header = self.0.header(revision_of(&response.header));
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let revision = request.into_inner().revision;
        match self.0.propose(Command::Compact(revision)).await? {
            Outcome::Compact(Proto(mut response)) => {
                response.header = self.0.header(revision_of(&response.header));
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
    }
}

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
        let req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        let id = if req.id == 0 {
            rand::random::<i64>() & i64::MAX
        } else {
            req.id
        };
        let ttl = req.ttl.max(self.min_ttl());
        match self.0.propose(Command::LeaseGrant { id, ttl }).await? {
            Outcome::LeaseGrant(Proto(mut response)) => {
                response.header = self.0.header(revision_of(&response.header));
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        match self.0.propose(Command::LeaseRevoke { id }).await? {
            Outcome::LeaseRevoke(Proto(mut response)) => {
                response.header = self.0.header(revision_of(&response.header));
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
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
        _request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
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

pub struct MaintenanceService(pub Arc<Member>);

impl MaintenanceService {
    fn db_size(&self) -> i64 {
        let path = self.0.config.data_dir.join("shoal-kv.redb");
        std::fs::metadata(path)
            .map(|m| m.len() as i64)
            .unwrap_or_default()
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        self.0.header(self.0.shared.read().mvcc.revision())
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        _request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        Ok(Response::new(pb::AlarmResponse {
            header: self.header(),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let metrics = self.0.raft.metrics().borrow().clone();
        let is_learner = self
            .0
            .members()
            .iter()
            .any(|(id, _, learner)| *id == self.0.id && *learner);
        let db_size = self.db_size();
        Ok(Response::new(pb::StatusResponse {
            header: self.header(),
            version: VERSION.to_string(),
            db_size,
            leader: metrics.current_leader.unwrap_or_default(),
            raft_index: metrics.last_log_index.unwrap_or_default(),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map(|l| l.index).unwrap_or_default(),
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // redb reuses freed pages itself; there is nothing to defragment.
        Ok(Response::new(pb::DefragmentResponse {
            header: self.header(),
        }))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let state = self.0.shared.read();
        Ok(Response::new(pb::HashResponse {
            header: self.0.header(state.mvcc.revision()),
            hash: state.mvcc.hash_kv(state.mvcc.revision()),
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let state = self.0.shared.read();
        let current = state.mvcc.revision();
        let requested = request.into_inner().revision;
        let rev = if requested <= 0 { current } else { requested };
        if rev > current {
            return Err(EtcdError::FutureRevision.into());
        }
        if rev < state.mvcc.compact_revision() {
            return Err(EtcdError::Compacted.into());
        }
        Ok(Response::new(pb::HashKvResponse {
            header: self.0.header(current),
            hash: state.mvcc.hash_kv(rev),
            compact_revision: state.mvcc.compact_revision().max(0),
            hash_revision: rev,
        }))
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotResponse, Status>>;

    /// Streams the replicated state as of now (shoal's own format, restorable only by shoal).
    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let (data, revision) = {
            let state = self.0.shared.read();
            let mut data =
                bincode::serialize(&*state).map_err(|e| Status::internal(e.to_string()))?;
            // Like etcd's, the stream is whole 512-byte pages followed by the SHA-256 of
            // them (etcdctl checks both); the encoding tolerates the zero padding.
            data.resize(data.len().div_ceil(512) * 512, 0);
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&data);
            data.extend_from_slice(&digest);
            (data, state.mvcc.revision())
        };
        let header = self.0.header(revision);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let chunks: Vec<&[u8]> = data.chunks(64 * 1024).collect();
            let mut remaining = data.len() as u64;
            for chunk in chunks {
                remaining -= chunk.len() as u64;
                let response = pb::SnapshotResponse {
                    header,
                    remaining_bytes: remaining,
                    blob: chunk.to_vec(),
                    version: VERSION.to_string(),
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "etcdserver: move-leader is not supported by shoal kv",
        ))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "downgrade is not part of the etcd 3.4 API",
        ))
    }
}
