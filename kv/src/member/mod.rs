//! One running member: Raft, the state machine, the peer and client servers, the lease clock.
//!
//! Writes go through [`Member::propose`]: applied locally when this member leads, otherwise
//! forwarded to the leader, and answered once this member has applied them too (so a client
//! reads its own writes from any member). Linearizable reads go through [`Member::read_barrier`]
//! (ReadIndex: the leader confirms it still leads, the reader waits until it applied that far).
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::error::{EtcdError, StoreError};
use crate::peer::{ClusterView, ForwardRpc, Network, PeerHandler, PeerPool, PeerService};
use crate::proto::etcdserverpb::ResponseHeader;
use crate::storage::durable::Durability;
use crate::storage::store::{self, LogStore, Shared, State, StateMachine};
use crate::types::{Command, MemberAttrs, MemberNode, Members, Outcome, Raft};

/// Roughly how many bytes of commands one batched log entry carries.
const MAX_BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// etcd's `--max-request-bytes` default.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// How long a request may wait for Raft (etcd's request timeout is about 5 s plus election time).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// A member's configuration (the `shoal kv` flags, resolved).
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// `name -> peer URLs`, in `--initial-cluster` order.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// Applied entries between snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
}

impl Config {
    /// A single member on the given ports of 127.0.0.1 (tests, benchmarks).
    pub fn local(name: &str, data_dir: PathBuf, client_port: u16, peer_port: u16) -> Self {
        let peer = format!("http://127.0.0.1:{peer_port}");
        let client = format!("http://127.0.0.1:{client_port}");
        Config {
            name: name.to_string(),
            data_dir,
            listen_client_urls: vec![client.clone()],
            advertise_client_urls: vec![client],
            listen_peer_urls: vec![peer.clone()],
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: vec![(name.to_string(), vec![peer])],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".to_string(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
        }
    }
}

/// A stable 64-bit FNV-1a hash (member and cluster IDs must agree across members and restarts).
fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0u8]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A member's ID from its peer URLs and the cluster token, as etcd derives it (not the same
/// hash function, the same inputs).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let joined = urls.join(",");
    fnv64(&[joined.as_bytes(), token.as_bytes()]) & 0x7fff_ffff_ffff_ffff
}

fn cluster_id(members: &Members, token: &str) -> u64 {
    let ids: Vec<[u8; 8]> = members.keys().map(|id| id.to_le_bytes()).collect();
    let mut parts: Vec<&[u8]> = ids.iter().map(|b| b.as_slice()).collect();
    parts.push(token.as_bytes());
    fnv64(&parts)
}

/// Leader-side lease deadlines. Only the leader expires leases; a new leader starts every
/// lease's clock afresh, so no lease expires early after a change of leader.
#[derive(Debug, Default)]
struct LeaseClock {
    deadlines: Mutex<HashMap<i64, Instant>>,
}

impl LeaseClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Member {
    pub id: u64,
    pub cluster_id: u64,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub config: Config,
    pub pool: PeerPool,
    leases: LeaseClock,
    read_requests: mpsc::Sender<ReadWaiter>,
    write_requests: mpsc::Sender<WriteWaiter>,
}

/// What became of a write handed to the write batcher.
#[derive(Debug)]
enum Written {
    /// Committed at this log index with this outcome (not necessarily applied here yet).
    Done(Outcome, u64),
    Failed(EtcdError),
    /// No leader, or the leader changed: try again.
    Retry,
}

type WriteWaiter = (Command, oneshot::Sender<Written>);

type ReadWaiter = oneshot::Sender<Result<u64, EtcdError>>;

/// A running member; dropping it does not stop it, [`RunningMember::shutdown`] does.
pub struct RunningMember {
    pub member: Arc<Member>,
    tasks: Vec<JoinHandle<()>>,
    pub client_addrs: Vec<SocketAddr>,
}

impl RunningMember {
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(e) = self.member.raft.shutdown().await {
            tracing::warn!("stopping raft: {e}");
        }
    }
}

async fn bind_all(urls: &[String]) -> Result<Vec<TcpListener>, StoreError> {
    let mut listeners = Vec::new();
    for url in urls {
        let host_port = url
            .strip_prefix("http://")
            .ok_or_else(|| StoreError::Config(format!("{url}: only http:// URLs are supported")))?
            .trim_end_matches('/');
        let listener = TcpListener::bind(host_port)
            .await
            .map_err(|e| StoreError::Config(format!("listening on {url}: {e}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}

impl Member {
    /// Opens the data dir, starts Raft and serves clients and peers until shut down.
    pub async fn start(config: Config) -> Result<RunningMember, StoreError> {
        let db = store::open_database(&config.data_dir)?;
        let (feed, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            state: std::sync::RwLock::new(State::default()),
            feed,
            applied: tokio::sync::watch::channel(0).0,
        });
        let initial = initial_members(&config);
        let id = member_id(
            &config.initial_advertise_peer_urls,
            &config.initial_cluster_token,
        );
        let peer_listeners = bind_all(&config.listen_peer_urls).await?;
        let client_listeners = bind_all(&config.listen_client_urls).await?;
        let client_addrs = client_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let pool = PeerPool::default();
        let (id, cluster_id) = match config.initial_cluster_state {
            ClusterState::New => (id, cluster_id(&initial, &config.initial_cluster_token)),
            ClusterState::Existing => join_existing(&pool, &config, &initial, id).await?,
        };
        let log_store = LogStore::new(db.clone(), &config.data_dir, id)?;
        let durability = log_store.durability();
        let state_machine = StateMachine::open(db, shared.clone(), durability.clone())?;
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
        let (write_requests, write_waiters) = mpsc::channel(4096);
        let member = Arc::new(Member {
            id,
            cluster_id,
            raft,
            shared,
            config,
            pool,
            leases: LeaseClock::default(),
            read_requests,
            write_requests,
        });
        let mut tasks = vec![
            tokio::spawn(member.clone().run_read_batcher(read_waiters)),
            tokio::spawn(member.clone().run_write_batcher(write_waiters)),
            tokio::spawn(member.clone().tell_followers_what_is_durable(durability)),
        ];
        for listener in peer_listeners {
            tasks.push(tokio::spawn(serve_peers(member.clone(), listener)));
        }
        for listener in client_listeners {
            tasks.push(tokio::spawn(crate::api::serve_clients(
                member.clone(),
                listener,
            )));
        }
        if member.config.initial_cluster_state == ClusterState::New {
            tasks.push(member.clone().bootstrap(initial)?);
        }
        tasks.push(tokio::spawn(member.clone().publish_attrs()));
        tasks.push(tokio::spawn(member.clone().run_lease_clock()));
        Ok(RunningMember {
            member,
            tasks,
            client_addrs,
        })
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

    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        })
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
            if Instant::now() > deadline {
                return Err(if self.leader().is_none() {
                    EtcdError::NoLeader
                } else {
                    EtcdError::Timeout
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_applied(&self, index: u64) -> Result<(), EtcdError> {
        let mut applied = self.shared.applied.subscribe();
        let reached = applied.wait_for(|applied| *applied >= index);
        match tokio::time::timeout(REQUEST_TIMEOUT, reached).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(EtcdError::Internal("the state machine stopped".to_string())),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// Replicates a command and returns its outcome once this member applied it.
    pub async fn propose(&self, command: Command) -> Result<Outcome, EtcdError> {
        let size =
            bincode::serialized_size(&command).map_err(|e| EtcdError::Internal(e.to_string()))?;
        if size as usize > MAX_REQUEST_BYTES {
            return Err(EtcdError::RequestTooLarge);
        }
        let t = Instant::now();
        let (outcome, index) = self.write(command).await?;
        crate::profile::record("propose.written", t);
        let t2 = Instant::now();
        self.wait_applied(index).await?;
        crate::profile::record("propose.wait_applied", t2);
        crate::profile::record("propose.total", t);
        match outcome {
            Outcome::Error(e) => Err(e),
            outcome => Ok(outcome),
        }
    }

    /// Writes a command through the write batcher, retrying while there is no leader, until the
    /// request timeout: its outcome and log index.
    async fn write(&self, command: Command) -> Result<(Outcome, u64), EtcdError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            match self.write_once(command.clone()).await {
                Written::Done(outcome, index) => return Ok((outcome, index)),
                Written::Failed(error) => return Err(error),
                Written::Retry => {}
            }
            if Instant::now() > deadline {
                return Err(if self.leader().is_none() {
                    EtcdError::NoLeader
                } else {
                    EtcdError::Timeout
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn write_once(&self, command: Command) -> Written {
        let (tx, rx) = oneshot::channel();
        if self.write_requests.send((command, tx)).await.is_err() {
            return Written::Failed(EtcdError::Internal("the write batcher stopped".to_string()));
        }
        rx.await.unwrap_or(Written::Retry)
    }

    /// After each sync of the leader's log, sends the commit index the followers were not told
    /// while it was not on disk yet ([`crate::storage::durable`]) in a heartbeat, instead of leaving it
    /// for the next write or the next regular heartbeat.
    async fn tell_followers_what_is_durable(self: Arc<Self>, durability: Durability) {
        let mut durable = durability.subscribe();
        while durable.changed().await.is_ok() {
            if durability.take_clamped() && self.raft.trigger().heartbeat().await.is_err() {
                return;
            }
        }
    }

    /// Writes queued while a batch is in flight travel together in the next one: as one log
    /// entry on the leader (applied as consecutive revisions), as one forwarded request on a
    /// follower. One batch at a time is fastest on a busy machine: the writes that arrive
    /// meanwhile make the next batch bigger (one log entry, one fsync per member, one forwarded
    /// request), and the CPU is what runs out (measured at 128 clients: with the leader's
    /// serial fsync, 1 in flight 9-12k puts/s, 2: 8-10k, 4: 7.5-9k, 8: 2-5k; with its parallel
    /// flush, 1: 16.4k, 2 and 4: 15.9-16.0k).
    async fn run_write_batcher(self: Arc<Self>, mut requests: mpsc::Receiver<WriteWaiter>) {
        while let Some(first) = requests.recv().await {
            let mut batch = vec![first];
            let mut bytes = 0u64;
            while bytes < MAX_BATCH_BYTES {
                match requests.try_recv() {
                    Ok(more) => {
                        bytes += bincode::serialized_size(&more.0).unwrap_or(MAX_BATCH_BYTES);
                        batch.push(more);
                    }
                    Err(_) => break,
                }
            }
            self.write_batch(batch).await;
        }
    }

    async fn write_batch(&self, mut batch: Vec<WriteWaiter>) {
        let command = if batch.len() == 1 {
            batch[0].0.clone()
        } else {
            Command::Batch(batch.iter().map(|(c, _)| c.clone()).collect())
        };
        crate::profile::record_duration("batch.size", Duration::from_micros(batch.len() as u64));
        let written = match self.leader() {
            Some((leader, _)) if leader == self.id => self.write_here(command).await,
            Some((_, node)) => self.forward(node, command).await,
            None => Written::Retry,
        };
        match written {
            Written::Done(outcome, index) if batch.len() == 1 => {
                let (_, waiter) = batch.remove(0);
                let _ = waiter.send(Written::Done(outcome, index));
            }
            Written::Done(Outcome::Batch(outcomes), index) if outcomes.len() == batch.len() => {
                for ((_, waiter), outcome) in batch.into_iter().zip(outcomes) {
                    let _ = waiter.send(Written::Done(outcome, index));
                }
            }
            Written::Done(other, _) => {
                let error = EtcdError::Internal(format!("unexpected batch outcome {other:?}"));
                for (_, waiter) in batch {
                    let _ = waiter.send(Written::Failed(error.clone()));
                }
            }
            Written::Failed(error) => {
                for (_, waiter) in batch {
                    let _ = waiter.send(Written::Failed(error.clone()));
                }
            }
            Written::Retry => {
                for (_, waiter) in batch {
                    let _ = waiter.send(Written::Retry);
                }
            }
        }
    }

    /// Appends a command to the Raft log of this member, which leads.
    async fn write_here(&self, command: Command) -> Written {
        let t = Instant::now();
        let written = self.raft.client_write(command).await;
        crate::profile::record("raft.client_write", t);
        match written {
            Ok(response) => Written::Done(response.data, response.log_id.index),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Written::Retry,
            Err(e) => {
                tracing::warn!("proposing: {e}");
                Written::Retry
            }
        }
    }

    /// Sends a (batched) command to the leader.
    async fn forward(&self, leader: MemberNode, command: Command) -> Written {
        let t = Instant::now();
        let answer: Result<(Outcome, u64), EtcdError> = self
            .pool
            .call(leader, ForwardRpc::Propose, &command, REQUEST_TIMEOUT)
            .await;
        crate::profile::record("forward.rtt", t);
        match answer {
            Ok((outcome, index)) => Written::Done(outcome, index),
            Err(EtcdError::NoLeader) => Written::Retry,
            Err(error) => Written::Failed(error),
        }
    }

    async fn read_index_here(&self) -> Result<u64, Option<u64>> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or_default()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(f.leader_id),
            Err(e) => {
                tracing::debug!("confirming leadership: {e}");
                Err(None)
            }
        }
    }

    /// Waits until this member has applied everything committed when the read arrived.
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        let index = self.read_index().await?;
        self.wait_applied(index).await
    }

    /// The commit index a linearizable read must wait for. Concurrent callers share one
    /// confirmation round; a round only serves reads that arrived before it started.
    async fn read_index(&self) -> Result<u64, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.read_requests
            .send(tx)
            .await
            .map_err(|_| EtcdError::Internal("the read-index batcher stopped".to_string()))?;
        rx.await
            .map_err(|_| EtcdError::Internal("the read-index batcher stopped".to_string()))?
    }

    /// Serves read-index requests in rounds (see [`Member::read_index`]).
    async fn run_read_batcher(self: Arc<Self>, mut requests: mpsc::Receiver<ReadWaiter>) {
        while let Some(first) = requests.recv().await {
            let mut waiters = vec![first];
            while let Ok(more) = requests.try_recv() {
                waiters.push(more);
            }
            let result = self.read_index_round().await;
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }

    async fn read_index_round(&self) -> Result<u64, EtcdError> {
        self.on_leader(
            || async { self.read_index_here().await.map(Ok) },
            |node| {
                self.pool
                    .call(node, ForwardRpc::ReadIndex, &(), REQUEST_TIMEOUT)
            },
        )
        .await
    }

    /// Renews a lease on the leader; the TTL it got (0 when the lease is unknown, like etcd).
    pub async fn keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        self.on_leader(
            || async { Ok(self.keep_alive_here(id)) },
            |node| {
                self.pool
                    .call(node, ForwardRpc::LeaseKeepAlive, &id, REQUEST_TIMEOUT)
            },
        )
        .await
    }

    fn keep_alive_here(&self, id: i64) -> Result<i64, EtcdError> {
        let Some(ttl) = self.shared.read().mvcc.lease(id).map(|l| l.ttl) else {
            return Ok(0);
        };
        self.leases
            .lock()
            .insert(id, Instant::now() + Duration::from_secs(ttl.max(0) as u64));
        Ok(ttl)
    }

    /// The seconds a lease has left, as the leader sees it.
    pub async fn time_to_live(&self, id: i64) -> Result<i64, EtcdError> {
        self.on_leader(
            || async { Ok(self.time_to_live_here(id)) },
            |node| {
                self.pool
                    .call(node, ForwardRpc::LeaseTimeToLive, &id, REQUEST_TIMEOUT)
            },
        )
        .await
    }

    fn time_to_live_here(&self, id: i64) -> Result<i64, EtcdError> {
        let ttl = self
            .shared
            .read()
            .mvcc
            .lease(id)
            .map(|l| l.ttl)
            .ok_or(EtcdError::LeaseNotFound)?;
        let remaining = match self.leases.lock().get(&id) {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => ttl,
        };
        Ok(remaining)
    }

    /// On the leader: starts clocks for new leases and revokes expired ones.
    async fn run_lease_clock(self: Arc<Self>) {
        let mut was_leader = false;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let leader = self.is_leader();
            if !leader || !was_leader {
                self.leases.lock().clear();
            }
            was_leader = leader;
            if !leader {
                continue;
            }
            for id in self.expired_leases() {
                let member = self.clone();
                tokio::spawn(async move {
                    match member.propose(Command::LeaseRevoke { id }).await {
                        Ok(_) | Err(EtcdError::LeaseNotFound) => {}
                        Err(e) => tracing::warn!("revoking expired lease {id:x}: {e}"),
                    }
                });
            }
        }
    }

    fn expired_leases(&self) -> Vec<i64> {
        let now = Instant::now();
        let state = self.shared.read();
        let mut deadlines = self.leases.lock();
        let live: BTreeMap<i64, i64> = state.mvcc.leases().map(|(id, l)| (*id, l.ttl)).collect();
        deadlines.retain(|id, _| live.contains_key(id));
        let mut expired = Vec::new();
        for (id, ttl) in live {
            let deadline = *deadlines
                .entry(id)
                .or_insert_with(|| now + Duration::from_secs(ttl.max(0) as u64));
            if deadline <= now {
                expired.push(id);
                // Retry after a while if the revoke does not go through.
                deadlines.insert(id, now + Duration::from_secs(1));
            }
        }
        expired
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
        match self.write_once(command).await {
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

fn initial_members(config: &Config) -> Members {
    config
        .initial_cluster
        .iter()
        .map(|(name, urls)| {
            let node = MemberNode {
                name: name.clone(),
                peer_urls: urls.clone(),
            };
            (member_id(urls, &config.initial_cluster_token), node)
        })
        .collect()
}

/// A member added with MemberAdd learns its ID and the cluster's from the running members.
async fn join_existing(
    pool: &PeerPool,
    config: &Config,
    initial: &Members,
    fallback_id: u64,
) -> Result<(u64, u64), StoreError> {
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

fn raft_config(config: &Config) -> Result<openraft::Config, StoreError> {
    let election = config.election_timeout.as_millis() as u64;
    openraft::Config {
        cluster_name: config.initial_cluster_token.clone(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        election_timeout_min: election,
        election_timeout_max: election * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
        max_in_snapshot_log_to_keep: config.snapshot_count.min(1000),
        max_payload_entries: 1000,
        install_snapshot_timeout: 5000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StoreError::Config(format!("raft settings: {e}")))
}

/// Accepted connections with Nagle's algorithm off (tonic only sets TCP_NODELAY on listeners
/// it binds itself); small gRPC and peer frames would otherwise wait for delayed ACKs.
pub fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("setting TCP_NODELAY: {e}");
            }
        })
    })
}

async fn serve_peers(member: Arc<Member>, listener: TcpListener) {
    let service = Arc::new(PeerService { handler: member });
    crate::peer::wire::serve(
        incoming(listener),
        crate::peer::MAX_PEER_MESSAGE,
        move |method, payload| {
            let service = service.clone();
            async move { service.handle(method, payload).await }
        },
    )
    .await;
}
