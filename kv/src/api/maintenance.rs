//! etcd's Maintenance service: status (sizes from [`crate::storage::db_size`]), hashes (etcd's,
//! [`etcd_format`]), alarms (listed, raised and cleared through Raft), defragment
//! ([`Member::defragment`]) and the snapshot stream in etcd's format. With auth on, hashes,
//! defragment and snapshots need root, as in etcd.
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::access::check_maintenance_admin;
use super::propose::unexpected;
use crate::backup::etcd_format;
use crate::error::EtcdError;
use crate::member::Member;
use crate::proto::etcdserverpb::{self as pb, maintenance_server::Maintenance};
use crate::storage::alarms::{self, AlarmCommand};
use crate::types::{Command, Outcome, Proto};

/// The version Status reports: the etcd API level served, marked as shoal's.
pub const VERSION: &str = "3.4.0";

pub struct MaintenanceService(pub Arc<Member>);

impl MaintenanceService {
    fn header(&self) -> Option<pb::ResponseHeader> {
        self.0.header(self.0.shared.read().mvcc.revision())
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// GET lists the alarms (after a ReadIndex, so as linearizable as etcd's, which goes through
    /// Raft); ACTIVATE and DEACTIVATE go through Raft and answer the alarm they changed.
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let request = request.into_inner();
        let (member, alarm) = (request.member_id, request.alarm);
        let command = match pb::alarm_request::AlarmAction::try_from(request.action) {
            Ok(pb::alarm_request::AlarmAction::Get) => {
                self.0.read_barrier().await?;
                let alarms = self.0.shared.read().alarms.get(alarm);
                return Ok(Response::new(pb::AlarmResponse {
                    header: self.header(),
                    alarms,
                }));
            }
            Ok(pb::alarm_request::AlarmAction::Activate) => {
                AlarmCommand::Activate { member, alarm }
            }
            Ok(pb::alarm_request::AlarmAction::Deactivate) => {
                AlarmCommand::Deactivate { member, alarm }
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: unknown alarm action {}",
                    request.action
                )));
            }
        };
        match self.0.propose(Command::Alarm(command)).await? {
            Outcome::Alarm(Proto(mut response)) => {
                response.header = self.header();
                Ok(Response::new(response))
            }
            other => Err(unexpected(other)),
        }
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
        let size = &self.0.shared.db_size;
        // etcd lists a missing leader and the active alarms as the member's errors.
        let mut errors = Vec::new();
        if metrics.current_leader.is_none() {
            errors.push(EtcdError::NoLeader.to_string());
        }
        let alarms = self.0.shared.read().alarms.get(pb::AlarmType::None as i32);
        errors.extend(alarms.iter().map(alarms::describe));
        Ok(Response::new(pb::StatusResponse {
            header: self.header(),
            version: VERSION.to_string(),
            db_size: size.size() as i64,
            leader: metrics.current_leader.unwrap_or_default(),
            raft_index: metrics.last_log_index.unwrap_or_default(),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map(|l| l.index).unwrap_or_default(),
            errors,
            db_size_in_use: size.in_use() as i64,
            is_learner,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        check_maintenance_admin(&self.0, &request).await?;
        self.0
            .defragment()
            .await
            .map_err(|e| Status::internal(crate::error::chain(&e)))?;
        Ok(Response::new(pb::DefragmentResponse {
            header: self.header(),
        }))
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        check_maintenance_admin(&self.0, &request).await?;
        let state = self.0.shared.read();
        Ok(Response::new(pb::HashResponse {
            header: self.0.header(state.mvcc.revision()),
            hash: etcd_format::hash(&state).map_err(|e| Status::internal(e.to_string()))?,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        check_maintenance_admin(&self.0, &request).await?;
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
            hash: etcd_format::hash_kv(&state.mvcc, rev),
            // etcd answers -1 before the first compaction.
            compact_revision: state.mvcc.compact_revision(),
            hash_revision: rev,
        }))
    }

    type SnapshotStream = ReceiverStream<Result<pb::SnapshotResponse, Status>>;

    /// Streams the replicated state as of now as etcd 3.4 does: its bbolt database, then the
    /// database's SHA-256 (what `etcdctl snapshot restore` and `shoal kv snapshot restore` read).
    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        check_maintenance_admin(&self.0, &request).await?;
        let (state, applied) = {
            let state = self.0.shared.read();
            (state.clone(), *self.0.shared.applied.borrow())
        };
        let revision = state.mvcc.revision();
        let data = tokio::task::spawn_blocking(move || etcd_format::snapshot(&state, applied))
            .await
            .map_err(|e| Status::internal(format!("building the snapshot: {e}")))?
            .map_err(|e| Status::internal(format!("building the snapshot: {e}")))?;
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
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        check_maintenance_admin(&self.0, &request).await?;
        let target = request.into_inner().target_id;
        self.0.move_leader(target).await?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: self.header(),
        }))
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
