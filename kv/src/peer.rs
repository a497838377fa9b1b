//! Member-to-member traffic over gRPC (`proto/shoal/peer.proto`): openraft replication, writes
//! and ReadIndex requests forwarded to the leader, and the leader's lease clock.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::error::EtcdError;
use crate::proto::peer::Blob;
use crate::proto::peer::peer_client::PeerClient;
use crate::proto::peer::peer_server::Peer;
use crate::store::CommitClamp;
use crate::types::{Command, MemberNode, Outcome, TypeConfig};

/// Largest message between members (snapshots are sent in chunks below this).
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

fn blob<T: Serialize>(value: &T) -> Result<Blob, Status> {
    bincode::serialize(value)
        .map(|data| Blob { data })
        .map_err(|e| Status::internal(format!("encoding a peer message: {e}")))
}

fn unblob<T: DeserializeOwned>(blob: &Blob) -> Result<T, Status> {
    bincode::deserialize(&blob.data)
        .map_err(|e| Status::invalid_argument(format!("decoding a peer message: {e}")))
}

/// The peer URL a member is reached at (the first of its advertised ones).
fn peer_url(node: &MemberNode) -> Result<&str, Status> {
    node.peer_urls
        .first()
        .map(String::as_str)
        .ok_or_else(|| Status::failed_precondition(format!("member {} has no peer URL", node.name)))
}

/// Lazily connected gRPC channels to the other members, by peer URL.
#[derive(Debug, Clone, Default)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// When each member last answered a Raft RPC, and whether a later one failed.
    last_contact: Arc<Mutex<HashMap<u64, (Instant, bool)>>>,
}

impl PeerPool {
    /// Whether `member` answered its last Raft RPC, within `window` (the leader heartbeats
    /// everyone).
    pub fn recently_heard(&self, member: u64, window: Duration) -> bool {
        let contacts = self.last_contact.lock().unwrap_or_else(|p| p.into_inner());
        contacts
            .get(&member)
            .is_some_and(|(at, failing)| !failing && at.elapsed() < window)
    }

    fn record_contact(&self, member: u64, answered: bool) {
        let mut contacts = self.last_contact.lock().unwrap_or_else(|p| p.into_inner());
        let entry = contacts.entry(member).or_insert((Instant::now(), true));
        if answered {
            *entry = (Instant::now(), false);
        } else {
            entry.1 = true;
        }
    }

    pub fn client(&self, node: &MemberNode) -> Result<PeerClient<Channel>, Status> {
        let url = peer_url(node)?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(url) {
            return Ok(Self::wrap(channel.clone()));
        }
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| Status::invalid_argument(format!("peer URL {url}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(url.to_string(), channel.clone());
        Ok(Self::wrap(channel))
    }

    fn wrap(channel: Channel) -> PeerClient<Channel> {
        PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE)
    }

    /// Calls one of the forwarding RPCs on `node` and decodes its answer.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        node: MemberNode,
        rpc: ForwardRpc,
        request: &Q,
        timeout: Duration,
    ) -> Result<A, EtcdError> {
        let unavailable = |e: Status| {
            EtcdError::Internal(format!("forwarding to {}: {}", node.name, e.message()))
        };
        tracing::debug!("forwarding {rpc:?} to {}", node.name);
        let mut client = self.client(&node).map_err(unavailable)?;
        let mut req = Request::new(blob(request).map_err(unavailable)?);
        req.set_timeout(timeout);
        let reply = match rpc {
            ForwardRpc::Propose => client.propose(req).await,
            ForwardRpc::ReadIndex => client.read_index(req).await,
            ForwardRpc::LeaseKeepAlive => client.lease_keep_alive(req).await,
            ForwardRpc::LeaseTimeToLive => client.lease_time_to_live(req).await,
            ForwardRpc::Members => client.members(req).await,
        };
        let reply = reply.map_err(|status| {
            tracing::debug!("forwarding {rpc:?} to {}: {status}", node.name);
            status
        });
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::DeadlineExceeded => EtcdError::Timeout,
            _ => unavailable(status),
        })?;
        let answer: Result<A, EtcdError> = unblob(reply.get_ref()).map_err(unavailable)?;
        answer
    }
}

/// The forwarding RPCs of the peer protocol.
#[derive(Debug, Clone, Copy)]
pub enum ForwardRpc {
    Propose,
    ReadIndex,
    LeaseKeepAlive,
    LeaseTimeToLive,
    Members,
}

/// What a member tells another that joins or asks who is in the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster_id: u64,
    pub members: Vec<(u64, MemberNode)>,
}

/// openraft's network: one [`PeerConnection`] per target.
#[derive(Clone)]
pub struct Network {
    pub pool: PeerPool,
    /// Keeps the commit index sent to followers behind what this member's log has on disk.
    pub commit_clamp: CommitClamp,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            target,
            node: node.clone(),
            pool: self.pool.clone(),
            commit_clamp: self.commit_clamp.clone(),
        }
    }
}

pub struct PeerConnection {
    target: u64,
    node: MemberNode,
    pool: PeerPool,
    commit_clamp: CommitClamp,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, MemberNode, RaftError<u64, E>>>;

impl PeerConnection {
    async fn send<Q, A, E>(&self, request: &Q, option: &RPCOption, kind: RaftRpc) -> RpcResult<A, E>
    where
        Q: Serialize,
        A: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .pool
            .client(&self.node)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut req =
            Request::new(blob(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?);
        req.set_timeout(option.hard_ttl());
        let reply = match kind {
            RaftRpc::Append => client.append_entries(req).await,
            RaftRpc::Vote => client.vote(req).await,
            RaftRpc::Snapshot => client.full_snapshot(req).await,
        }
        .map_err(|e| {
            self.pool.record_contact(self.target, false);
            RPCError::Unreachable(Unreachable::new(&e))
        })?;
        self.pool.record_contact(self.target, true);
        let answer: Result<A, RaftError<u64, E>> =
            unblob(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

#[derive(Clone, Copy)]
enum RaftRpc {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        rpc.leader_commit = self.commit_clamp.clamp(rpc.leader_commit);
        let t = Instant::now();
        let n = rpc.entries.len();
        let r = self.send(&rpc, &option, RaftRpc::Append).await;
        crate::profile::record(
            if n == 0 {
                "net.heartbeat_rtt"
            } else {
                "net.append_rtt"
            },
            t,
        );
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.send(&rpc, &option, RaftRpc::Snapshot).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.send(&rpc, &option, RaftRpc::Vote).await
    }
}

/// What the peer server needs from the member it runs in.
pub trait PeerHandler: Send + Sync + 'static {
    fn raft(&self) -> &crate::types::Raft;
    /// Applies a forwarded write on the leader: its outcome and log index.
    fn propose_local(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = Result<(Outcome, u64), EtcdError>> + Send;
    /// Confirms leadership and returns the index a linearizable read must wait for.
    fn read_index_local(&self) -> impl std::future::Future<Output = Result<u64, EtcdError>> + Send;
    fn keep_alive_local(
        &self,
        id: i64,
    ) -> impl std::future::Future<Output = Result<i64, EtcdError>> + Send;
    fn time_to_live_local(
        &self,
        id: i64,
    ) -> impl std::future::Future<Output = Result<i64, EtcdError>> + Send;
    fn cluster_view(&self) -> ClusterView;
}

/// The gRPC service other members call.
pub struct PeerService<H> {
    pub handler: Arc<H>,
}

impl<H: PeerHandler> PeerService<H> {
    /// Refuses a Raft message this member sent itself (a peer URL of another member that
    /// reaches this one): openraft would take its own vote as granted by a second voter, and a
    /// leader receiving its own AppendEntries trips openraft's `self.leader.is_none()`.
    fn refuse_own(&self, vote: &openraft::Vote<u64>) -> Result<(), Status> {
        let own = self.handler.raft().metrics().borrow().id;
        if vote.leader_id().voted_for() == Some(own) {
            tracing::error!("refusing a Raft message from this member itself: a peer URL is wrong");
            return Err(Status::failed_precondition(
                "Raft message from the receiving member itself",
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl<H: PeerHandler> Peer for PeerService<H> {
    async fn append_entries(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = unblob(request.get_ref())?;
        self.refuse_own(&rpc.vote)?;
        let t = Instant::now();
        let n = rpc.entries.len();
        let answer = self.handler.raft().append_entries(rpc).await;
        if n > 0 {
            crate::profile::record("follower.append_entries", t);
        }
        Ok(Response::new(blob(&answer)?))
    }

    async fn vote(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc: VoteRequest<u64> = unblob(request.get_ref())?;
        self.refuse_own(&rpc.vote)?;
        let answer = self.handler.raft().vote(rpc).await;
        Ok(Response::new(blob(&answer)?))
    }

    async fn full_snapshot(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = unblob(request.get_ref())?;
        self.refuse_own(&rpc.vote)?;
        let answer = self.handler.raft().install_snapshot(rpc).await;
        Ok(Response::new(blob(&answer)?))
    }

    async fn propose(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let command: Command = unblob(request.get_ref())?;
        let answer = self.handler.propose_local(command).await;
        Ok(Response::new(blob(&answer)?))
    }

    async fn read_index(&self, _request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let answer = self.handler.read_index_local().await;
        Ok(Response::new(blob(&answer)?))
    }

    async fn lease_keep_alive(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let id: i64 = unblob(request.get_ref())?;
        let answer = self.handler.keep_alive_local(id).await;
        Ok(Response::new(blob(&answer)?))
    }

    async fn lease_time_to_live(&self, request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let id: i64 = unblob(request.get_ref())?;
        let answer = self.handler.time_to_live_local(id).await;
        Ok(Response::new(blob(&answer)?))
    }

    async fn members(&self, _request: Request<Blob>) -> Result<Response<Blob>, Status> {
        let view: Result<ClusterView, EtcdError> = Ok(self.handler.cluster_view());
        Ok(Response::new(blob(&view)?))
    }
}
