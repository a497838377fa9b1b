//! Member-to-member traffic ([`wire`] frames carrying bincode): openraft
//! replication, writes and ReadIndex requests forwarded to the leader, and the leader's lease
//! clock. A peer whose URL is `https://` is dialed over TLS with the member's peer certificate
//! ([`crate::tls`]), its certificate checked against the peer CA and the URL's host.
//!
//! Everything a peer sends is bounded before it is trusted: frames by [`MAX_PEER_MESSAGE`]
//! (checked before allocating), bincode decoding by the frame's length (never by a length it
//! declares), batches by their nesting depth ([`crate::types`]), appends by their entry count,
//! snapshot chunks by the bytes received before them. Forwarded writes are checked on the
//! leader as client requests are ([`crate::member`]). What a member sends is bounded too: an
//! append carries at most [`MAX_APPEND_BYTES`] of entries (one entry at least), so a follower
//! far behind is sent several appends, never one too large for a frame.
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bincode::Options;
use bytes::{BufMut, Bytes, BytesMut};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::EtcdError;
use crate::member::MembershipChange;
use crate::metrics::PeerMetrics;
use crate::peer::wire::{
    CallError, Dial, Identity, Links, Payload, PeerStream, ServerRules, dial_tcp,
};
use crate::storage::store::CommitClamp;
use crate::tls::Tls;
use crate::types::{Command, MemberNode, Outcome, TypeConfig};

/// Largest message between members (snapshots are sent in chunks below this).
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;
/// Most entries one AppendEntries carries (openraft's `max_payload_entries` on the sender).
pub const MAX_APPEND_ENTRIES: u64 = 1000;
/// Most bytes of entries one AppendEntries carries, unless a single entry is larger (etcd's
/// `MaxSizePerMsg`): an append must reach the follower and be synced there within openraft's
/// RPC timeout, the heartbeat interval, and always fits in a frame.
pub const MAX_APPEND_BYTES: u64 = 1024 * 1024;
/// Largest snapshot a member takes (etcd's largest suggested backend quota, 8 GiB).
const MAX_SNAPSHOT_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Requests a member serves at once for one connection and for all of them.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 256;
const MAX_IN_FLIGHT: usize = 1024;

/// The methods of the peer protocol, as their frames name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    AppendEntries = 1,
    Vote = 2,
    FullSnapshot = 3,
    Propose = 4,
    ReadIndex = 5,
    LeaseKeepAlive = 6,
    LeaseTimeToLive = 7,
    Members = 8,
    ChangeMembership = 9,
    Campaign = 10,
}

impl Method {
    const ALL: [Method; 10] = [
        Method::AppendEntries,
        Method::Vote,
        Method::FullSnapshot,
        Method::Propose,
        Method::ReadIndex,
        Method::LeaseKeepAlive,
        Method::LeaseTimeToLive,
        Method::Members,
        Method::ChangeMembership,
        Method::Campaign,
    ];

    fn from_u8(value: u8) -> Option<Method> {
        Self::ALL.into_iter().find(|method| *method as u8 == value)
    }
}

/// Why a peer request could not be encoded, decoded, addressed or taken. A server-side one
/// travels to the calling member as the text of a failure frame, so each message carries its
/// cause itself (none is exposed as a `source`).
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("encoding a peer message: {0}")]
    Encode(bincode::Error),
    #[error("decoding a peer message: {0}")]
    Decode(bincode::Error),
    #[error("member {0} has no peer URL")]
    NoPeerUrl(String),
    #[error("member {name}'s peer URL {url}: {reason}")]
    BadPeerUrl {
        name: String,
        url: String,
        reason: http::uri::InvalidUri,
    },
    #[error("member {name}'s peer URL {url} has no host")]
    NoHost { name: String, url: String },
    #[error("no peer method {0}")]
    NoMethod(u8),
    #[error("Raft message from the receiving member itself")]
    OwnMessage,
    #[error("an AppendEntries of {0} entries (at most {MAX_APPEND_ENTRIES} are sent at once)")]
    TooManyEntries(usize),
    #[error(
        "a snapshot chunk at offset {offset} of {len} bytes: {received} bytes of snapshot {id} \
         were received before it, and a snapshot is at most {MAX_SNAPSHOT_BYTES} bytes"
    )]
    SnapshotChunk {
        id: String,
        offset: u64,
        len: usize,
        received: u64,
    },
}

/// The bincode encoding of every peer payload: `bincode::serialize`'s (fixed-width integers,
/// trailing bytes allowed), which the Raft log uses too and write sizes are measured in.
fn bincode_options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

/// Encodes without a limit: a message too large for a frame is refused by the frame codec.
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PeerError> {
    bincode_options()
        .serialize(value)
        .map_err(PeerError::Encode)
}

/// A message encoded as [`encode`] does, straight into a frame's place in the connection's
/// write buffer.
struct Bincode<'a, T>(&'a T);

impl<T: Serialize + Sync> Payload for Bincode<'_, T> {
    fn write_into(&self, buf: &mut BytesMut) -> std::io::Result<()> {
        bincode_options()
            .serialize_into(buf.writer(), self.0)
            .map_err(std::io::Error::other)
    }
}

/// How many bytes [`encode`] makes of `value` (what it cannot encode counts as too large).
fn encoded_size<T: Serialize>(value: &T) -> u64 {
    bincode_options().serialized_size(value).unwrap_or(u64::MAX)
}

/// Decodes at most a frame's worth: a length a payload declares is checked against what is
/// left before anything is allocated for it.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PeerError> {
    bincode_options()
        .with_limit(MAX_PEER_MESSAGE as u64)
        .deserialize(bytes)
        .map_err(PeerError::Decode)
}

/// The `host:port` a member is reached at (from the first of its advertised peer URLs).
fn peer_address(node: &MemberNode) -> Result<String, PeerError> {
    let url = node
        .peer_urls
        .first()
        .ok_or_else(|| PeerError::NoPeerUrl(node.name.clone()))?;
    let uri: http::Uri = url.parse().map_err(|reason| PeerError::BadPeerUrl {
        name: node.name.clone(),
        url: url.clone(),
        reason,
    })?;
    let authority = uri.authority().ok_or_else(|| PeerError::NoHost {
        name: node.name.clone(),
        url: url.clone(),
    })?;
    let address = match authority.port_u16() {
        Some(_) => authority.to_string(),
        None => format!("{}:2380", authority.host()),
    };
    Ok(match uri.scheme_str() {
        Some("https") => format!("https://{address}"),
        _ => address,
    })
}

/// Connects to a [`peer_address`]: plain TCP, or TLS with `tls` for an `https://` one.
fn dial(tls: Option<Arc<Tls>>) -> Dial {
    Arc::new(move |target: String| {
        let tls = tls.clone();
        Box::pin(async move {
            let Some(address) = target.strip_prefix("https://") else {
                let stream: PeerStream = Box::new(dial_tcp(&target).await?);
                return Ok(stream);
            };
            let tls = tls.ok_or_else(|| {
                std::io::Error::other(
                    "an https peer URL needs --peer-cert-file and --peer-key-file",
                )
            })?;
            let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
            let stream = dial_tcp(address).await?;
            let stream: PeerStream = Box::new(tls.connect(host, stream).await?);
            Ok(stream)
        })
    })
}

/// Connections to the other members, and how each has answered.
#[derive(Debug, Clone)]
pub struct PeerPool {
    links: Arc<Links>,
    /// How each member has answered Raft RPCs.
    contacts: Arc<Mutex<HashMap<u64, Contact>>>,
}

/// How a member has answered this one's Raft RPCs.
#[derive(Debug, Clone, Copy)]
struct Contact {
    /// When it last answered.
    last: Option<Instant>,
    /// Since when it has answered without a gap of [`CONTACT_LOST_AFTER`] (etcd's stream
    /// `ActiveSince`: one late answer does not break a connection, a silence does).
    since: Instant,
}

/// A member that answered nothing for this long lost its connection.
const CONTACT_LOST_AFTER: Duration = Duration::from_secs(1);

impl PeerPool {
    /// Connections that speak for `identity` ([`Identity::UNKNOWN`] while joining a cluster),
    /// dialing `https://` peers with `tls`.
    pub fn new(identity: Identity, tls: Option<Arc<Tls>>) -> Self {
        Self {
            links: Arc::new(Links::with_dial(MAX_PEER_MESSAGE, identity, dial(tls))),
            contacts: Arc::default(),
        }
    }

    /// Whether `member` answered a Raft RPC within `window` (the leader heartbeats everyone),
    /// connected for at least `for_at_least` (etcd's `ActiveSince`).
    pub fn connected(&self, member: u64, window: Duration, for_at_least: Duration) -> bool {
        let contacts = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        contacts.get(&member).is_some_and(|contact| {
            contact.last.is_some_and(|last| last.elapsed() < window)
                && contact.since.elapsed() >= for_at_least
        })
    }

    fn record_contact(&self, member: u64, answered: bool) {
        let mut contacts = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let contact = contacts.entry(member).or_insert(Contact {
            last: None,
            since: now,
        });
        if !answered {
            return;
        }
        if contact
            .last
            .is_none_or(|last| last.elapsed() > CONTACT_LOST_AFTER)
        {
            contact.since = now;
        }
        contact.last = Some(now);
    }

    /// Calls `method` on `node` with `request` and decodes its answer.
    async fn request<Q: Serialize + Sync, A: DeserializeOwned>(
        &self,
        node: &MemberNode,
        method: Method,
        request: &Q,
        timeout: Duration,
        metrics: Option<&PeerMetrics>,
    ) -> Result<A, CallError> {
        let address = peer_address(node).map_err(|e| CallError::NotSent(e.to_string()))?;
        let answer = self
            .links
            .call(&address, method as u8, &Bincode(request), timeout)
            .await?;
        if let Some(metrics) = metrics {
            metrics.sent.inc_by(encoded_size(request));
            metrics.received.inc_by(answer.len() as u64);
        }
        decode(&answer).map_err(|e| CallError::Failed(e.to_string()))
    }

    /// Calls one of the forwarding RPCs on `node` and decodes its answer.
    pub async fn call<Q: Serialize + Sync, A: DeserializeOwned>(
        &self,
        node: MemberNode,
        rpc: ForwardRpc,
        request: &Q,
        timeout: Duration,
    ) -> Result<A, EtcdError> {
        tracing::debug!("forwarding {rpc:?} to {}", node.name);
        let answer: Result<A, EtcdError> = self
            .request(&node, rpc.method(), request, timeout, None)
            .await
            .map_err(|e| {
                tracing::debug!("forwarding {rpc:?} to {}: {e}", node.name);
                match e {
                    CallError::Timeout(_) => EtcdError::Timeout,
                    // The member taken for the leader is gone (an election is due): the caller
                    // may try again, nothing was sent.
                    CallError::NotSent(_) => EtcdError::NoLeader,
                    e => EtcdError::Internal(format!("forwarding to {}: {e}", node.name)),
                }
            })?;
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
    ChangeMembership,
    Campaign,
}

impl ForwardRpc {
    fn method(self) -> Method {
        match self {
            ForwardRpc::Propose => Method::Propose,
            ForwardRpc::ReadIndex => Method::ReadIndex,
            ForwardRpc::LeaseKeepAlive => Method::LeaseKeepAlive,
            ForwardRpc::LeaseTimeToLive => Method::LeaseTimeToLive,
            ForwardRpc::Members => Method::Members,
            ForwardRpc::ChangeMembership => Method::ChangeMembership,
            ForwardRpc::Campaign => Method::Campaign,
        }
    }
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
            metrics: crate::metrics::metrics().peer(target),
        }
    }
}

pub struct PeerConnection {
    target: u64,
    node: MemberNode,
    pool: PeerPool,
    commit_clamp: CommitClamp,
    metrics: PeerMetrics,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, MemberNode, RaftError<u64, E>>>;

/// How long a replication stream waits after a peer was unreachable, then again while it stays
/// so: openraft's default is 500 ms every time, which a member back after a blip (or a
/// connection that broke) would wait out with writes through it stalled.
fn unreachable_backoff() -> impl Iterator<Item = Duration> + Send + 'static {
    (0u32..).map(|attempt| Duration::from_millis(20 << attempt.min(4)))
}

/// openraft's name for a call to `target` that got no answer: a call that got none in time is
/// a [`Timeout`], which openraft simply retries; only a peer that could not be reached (or whose
/// connection broke) is [`Unreachable`], which holds its replication back for a backoff.
fn rpc_error<E: std::error::Error>(
    error: CallError,
    action: (RPCTypes, u64),
    target: u64,
) -> RPCError<u64, MemberNode, E> {
    match error {
        e @ CallError::Failed(_) => RPCError::Network(NetworkError::new(&e)),
        CallError::Timeout(timeout) => {
            crate::profile::record_duration("net.rpc_timeout", timeout);
            RPCError::Timeout(Timeout {
                action: action.0,
                id: action.1,
                target,
                timeout,
            })
        }
        e @ (CallError::NotSent(_) | CallError::Unreachable(_)) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
    }
}

impl PeerConnection {
    /// Sends a Raft RPC; `action` is its kind and the sender, for a [`Timeout`]: a follower
    /// slower than the heartbeat interval (a large append synced on a loaded machine) is not
    /// unreachable ([`rpc_error`]).
    async fn send<Q, A, E>(
        &self,
        request: &Q,
        option: &RPCOption,
        method: Method,
        action: (RPCTypes, u64),
    ) -> RpcResult<A, E>
    where
        Q: Serialize + Sync,
        A: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Result<A, RaftError<u64, E>>, CallError> = self
            .pool
            .request(
                &self.node,
                method,
                request,
                option.hard_ttl(),
                Some(&self.metrics),
            )
            .await;
        self.pool.record_contact(self.target, answer.is_ok());
        if answer.is_err() {
            self.metrics.send_failures.inc();
        }
        let answer = answer.map_err(|e| rpc_error(e, action, self.target))?;
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        rpc.leader_commit = self.commit_clamp.clamp(rpc.leader_commit);
        if let Some(fitting) = entries_fitting_an_append(&rpc) {
            tracing::debug!(
                "{} entries for member {:x} are too large for one append; sending {fitting} at a time",
                rpc.entries.len(),
                self.target
            );
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fitting),
            ));
        }
        let t = Instant::now();
        let n = rpc.entries.len();
        let from = rpc.vote.leader_id().voted_for().unwrap_or_default();
        let r = self
            .send(
                &rpc,
                &option,
                Method::AppendEntries,
                (RPCTypes::AppendEntries, from),
            )
            .await;
        // A heartbeat's round trip (it carries no entries to write) is the peer RTT etcd's
        // prober measures.
        if n == 0 && r.is_ok() {
            self.metrics.round_trip.observe(t.elapsed().as_secs_f64());
        }
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
        let from = rpc.vote.leader_id().voted_for().unwrap_or_default();
        self.send(
            &rpc,
            &option,
            Method::FullSnapshot,
            (RPCTypes::InstallSnapshot, from),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        let from = rpc.vote.leader_id().voted_for().unwrap_or_default();
        self.send(&rpc, &option, Method::Vote, (RPCTypes::Vote, from))
            .await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(unreachable_backoff())
    }
}

/// How many of an AppendEntries' entries fit in [`MAX_APPEND_BYTES`], when not all of them
/// do (at least one: a batched entry is far below a frame, [`crate::member::MAX_REQUEST_BYTES`]
/// per request, and the write batcher's bound). openraft then sends that many at a time instead
/// of the same request again.
fn entries_fitting_an_append(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<u64> {
    let total = encoded_size(rpc);
    if total <= MAX_APPEND_BYTES || rpc.entries.len() <= 1 {
        return None;
    }
    let sizes: Vec<u64> = rpc.entries.iter().map(encoded_size).collect();
    let entries = sizes
        .iter()
        .fold(0u64, |sum, size| sum.saturating_add(*size));
    let mut left = MAX_APPEND_BYTES.saturating_sub(total.saturating_sub(entries));
    let fitting = sizes
        .iter()
        .take_while(|entry| {
            let fits = **entry <= left;
            left = left.saturating_sub(**entry);
            fits
        })
        .count();
    Some((fitting as u64).max(1))
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
    /// Makes a membership change a follower forwarded, on the leader: the ID of the member it
    /// concerns and the log index of its entry.
    fn change_membership_local(
        &self,
        change: MembershipChange,
    ) -> impl std::future::Future<Output = Result<(u64, u64), EtcdError>> + Send;
    /// Starts an election, as the leader asks in a MoveLeader.
    fn campaign_local(&self) -> impl std::future::Future<Output = Result<(), EtcdError>> + Send;
    fn cluster_view(&self) -> ClusterView;
}

/// What a member answers other members.
pub struct PeerService<H> {
    pub handler: Arc<H>,
    /// The snapshot being received: its ID and how many bytes of it were sent so far.
    snapshot: Mutex<(String, u64)>,
}

impl<H: PeerHandler> PeerService<H> {
    pub fn new(handler: Arc<H>) -> Self {
        Self {
            handler,
            snapshot: Mutex::default(),
        }
    }

    /// Takes a snapshot chunk only where one was received before it, or at the start of a new
    /// snapshot, and within [`MAX_SNAPSHOT_BYTES`]: openraft seeks to a chunk's offset in a
    /// buffer in memory, so a forged offset would make it allocate that much.
    fn check_snapshot_chunk(
        &self,
        rpc: &InstallSnapshotRequest<TypeConfig>,
    ) -> Result<(), PeerError> {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let id = &rpc.meta.snapshot_id;
        let received = if *id == snapshot.0 { snapshot.1 } else { 0 };
        let end = rpc.offset.checked_add(rpc.data.len() as u64);
        match end {
            Some(end) if rpc.offset <= received && end <= MAX_SNAPSHOT_BYTES => {
                *snapshot = (id.clone(), received.max(end));
                Ok(())
            }
            _ => Err(PeerError::SnapshotChunk {
                id: id.clone(),
                offset: rpc.offset,
                len: rpc.data.len(),
                received,
            }),
        }
    }

    /// Refuses a Raft message this member sent itself (a peer URL of another member that
    /// reaches this one): openraft would take its own vote as granted by a second voter, and a
    /// leader receiving its own AppendEntries trips openraft's `self.leader.is_none()`.
    fn refuse_own(&self, vote: &openraft::Vote<u64>) -> Result<(), PeerError> {
        let own = self.handler.raft().metrics().borrow().id;
        if vote.leader_id().voted_for() == Some(own) {
            tracing::error!("refusing a Raft message from this member itself: a peer URL is wrong");
            return Err(PeerError::OwnMessage);
        }
        Ok(())
    }

    /// Answers one request: the bincode of the method's answer, or why there is none.
    pub async fn handle(&self, method: u8, payload: Bytes) -> Result<Vec<u8>, PeerError> {
        let method = Method::from_u8(method).ok_or(PeerError::NoMethod(method))?;
        match method {
            Method::AppendEntries => {
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&payload)?;
                self.refuse_own(&rpc.vote)?;
                if rpc.entries.len() as u64 > MAX_APPEND_ENTRIES {
                    return Err(PeerError::TooManyEntries(rpc.entries.len()));
                }
                let t = Instant::now();
                let n = rpc.entries.len();
                let answer = self.handler.raft().append_entries(rpc).await;
                if n > 0 {
                    crate::profile::record("follower.append_entries", t);
                }
                encode(&answer)
            }
            Method::Vote => {
                let rpc: VoteRequest<u64> = decode(&payload)?;
                self.refuse_own(&rpc.vote)?;
                encode(&self.handler.raft().vote(rpc).await)
            }
            Method::FullSnapshot => {
                let rpc: InstallSnapshotRequest<TypeConfig> = decode(&payload)?;
                self.refuse_own(&rpc.vote)?;
                self.check_snapshot_chunk(&rpc)?;
                encode(&self.handler.raft().install_snapshot(rpc).await)
            }
            Method::Propose => {
                let command: Command = decode(&payload)?;
                encode(&self.handler.propose_local(command).await)
            }
            Method::ReadIndex => encode(&self.handler.read_index_local().await),
            Method::LeaseKeepAlive => {
                let id: i64 = decode(&payload)?;
                encode(&self.handler.keep_alive_local(id).await)
            }
            Method::LeaseTimeToLive => {
                let id: i64 = decode(&payload)?;
                encode(&self.handler.time_to_live_local(id).await)
            }
            Method::ChangeMembership => {
                let change: MembershipChange = decode(&payload)?;
                encode(&self.handler.change_membership_local(change).await)
            }
            Method::Campaign => encode(&self.handler.campaign_local().await),
            Method::Members => {
                let view: Result<ClusterView, EtcdError> = Ok(self.handler.cluster_view());
                encode(&view)
            }
        }
    }
}

/// Serves the peer protocol on one listener's connections ([`crate::listen::connections`]),
/// answering with `handler` (a member of cluster `identity`), until the task is aborted.
pub async fn serve<H: PeerHandler>(
    handler: Arc<H>,
    identity: Identity,
    connections: impl futures::Stream<Item = std::io::Result<crate::listen::Connection>>,
) {
    let service = Arc::new(PeerService::new(handler));
    let rules = ServerRules {
        identity,
        max_frame: MAX_PEER_MESSAGE,
        // A joining member asks who is in the cluster before it knows the cluster's ID.
        open_methods: &[Method::Members as u8],
        max_in_flight_per_connection: MAX_IN_FLIGHT_PER_CONNECTION,
        max_in_flight: MAX_IN_FLIGHT,
    };
    wire::serve(connections, rules, move |method, payload| {
        let service = service.clone();
        async move { service.handle(method, payload).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::PutRequest;
    use crate::types::{ClientRequest, Entry, LogId};

    fn append_of_puts(values: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        let leader = openraft::CommittedLeaderId::new(1, 1);
        let entries = values
            .iter()
            .enumerate()
            .map(|(i, len)| Entry {
                log_id: LogId::new(leader, i as u64 + 1),
                payload: openraft::EntryPayload::Normal(Command::Put(ClientRequest::new(
                    PutRequest {
                        key: bytes::Bytes::from_static(b"k"),
                        value: vec![0; *len].into(),
                        ..Default::default()
                    },
                ))),
            })
            .collect();
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            entries,
            leader_commit: None,
        }
    }

    #[test]
    fn a_call_without_an_answer_in_time_is_a_timeout_not_an_unreachable_peer() {
        let action = (RPCTypes::AppendEntries, 1);
        let slow: RPCError<u64, MemberNode> =
            rpc_error(CallError::Timeout(Duration::from_millis(100)), action, 2);
        assert!(
            matches!(slow, RPCError::Timeout(Timeout { target: 2, .. })),
            "{slow:?}"
        );
        for gone in [
            CallError::NotSent("refused".to_string()),
            CallError::Unreachable("reset".to_string()),
        ] {
            let gone: RPCError<u64, MemberNode> = rpc_error(gone, action, 2);
            assert!(matches!(gone, RPCError::Unreachable(_)), "{gone:?}");
        }
    }

    #[test]
    fn an_unreachable_peer_is_retried_soon_then_at_most_every_few_hundred_ms() {
        let waits: Vec<Duration> = unreachable_backoff().take(8).collect();
        assert_eq!(waits[0], Duration::from_millis(20));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(waits[7], Duration::from_millis(320));
    }

    #[test]
    fn an_append_over_its_byte_bound_is_cut_to_the_entries_that_fit() {
        let half = MAX_APPEND_BYTES as usize / 2 - 100;
        assert_eq!(entries_fitting_an_append(&append_of_puts(&[half; 2])), None);
        assert_eq!(
            entries_fitting_an_append(&append_of_puts(&[half; 5])),
            Some(2)
        );
        let large = MAX_APPEND_BYTES as usize + 1;
        assert_eq!(
            entries_fitting_an_append(&append_of_puts(&[large; 3])),
            Some(1),
            "one entry is sent even when it alone is over the bound"
        );
        assert_eq!(entries_fitting_an_append(&append_of_puts(&[large])), None);
    }
}
