//! The framing of member-to-member traffic: requests and answers as length-prefixed frames on
//! one connection per peer, many in flight at once, matched by request ID. What the frames
//! carry (bincode of openraft's messages and of forwarded requests) is [`crate::peer`]'s
//! business.
//!
//! Every frame starts with the same header: `[protocol version u8][method or status
//! u8][cluster ID u64 LE][member ID u64 LE][request ID u64 LE]`, then the payload (an answer's
//! status 0: the method's answer; otherwise a UTF-8 reason), each in a frame of `[length u32
//! BE][frame]` (read with tokio-util's `LengthDelimitedCodec`, which refuses a length above the
//! limit before allocating; written by `FrameEncoder`, which puts the header and the
//! [`Payload`] straight into the connection's write buffer, no copy of either in between, and
//! refuses a frame above the limit as the reader would). A member refuses a frame of another
//! protocol version (and closes the connection: the rest of it cannot be read) and a request
//! from another cluster; a member that does not know its cluster yet (joining one) sends
//! cluster ID 0, which only the server's open methods take. Requests are served in tasks of their own, at most so many at once per
//! connection and per server: past that the server stops reading, and the sender waits.
//!
//! This replaced gRPC between members: a loopback round trip through tonic cost ~250 us of task
//! handoffs (the channel's buffer task, the HTTP/2 connection task, a task per stream on both
//! sides) against ~20 us of socket time; here the caller writes its frame itself and one
//! reader task per connection wakes it.
//!
//! The frames run over any byte stream: how a connection is made (TCP, TLS over it) is the
//! [`Dial`] a [`Links`] is given, and the server serves whatever streams it is handed.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::codec::{Encoder, FramedRead, FramedWrite, LengthDelimitedCodec};

/// The version of this framing (and of the payloads [`crate::peer`] puts in it): members of
/// another version refuse each other's frames.
pub const PROTOCOL_VERSION: u8 = 1;
/// Version, method or status, cluster ID, member ID, request ID.
const HEADER_BYTES: usize = 26;
const STATUS_OK: u8 = 0;
const STATUS_FAILED: u8 = 1;
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Who sends a frame. A cluster ID of 0 is a member that does not know its cluster yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
}

impl Identity {
    /// A member joining a cluster, before it learned the cluster's ID and its own.
    pub const UNKNOWN: Identity = Identity {
        cluster_id: 0,
        member_id: 0,
    };
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No connection to the peer: the request never left, so trying again cannot repeat it.
    #[error("{0}")]
    NotSent(String),
    /// The connection broke with the request sent, or maybe sent.
    #[error("{0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer answered with a failure (it could not decode or would not take the request), or
    /// its answer was not one this member takes.
    #[error("{0}")]
    Failed(String),
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame + HEADER_BYTES)
        .new_codec()
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    version: u8,
    /// The method of a request, the status of an answer.
    kind: u8,
    from: Identity,
    request_id: u64,
}

impl Header {
    /// The header of a frame this member sends.
    fn ours(kind: u8, from: Identity, request_id: u64) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            kind,
            from,
            request_id,
        }
    }

    fn put(&self, buf: &mut BytesMut) {
        buf.put_u8(self.version);
        buf.put_u8(self.kind);
        buf.put_u64_le(self.from.cluster_id);
        buf.put_u64_le(self.from.member_id);
        buf.put_u64_le(self.request_id);
    }
}

/// What a frame carries, written by itself into the connection's write buffer (an encoder
/// writes there directly instead of into a buffer of its own that is then copied).
pub trait Payload: Sync {
    fn write_into(&self, buf: &mut BytesMut) -> std::io::Result<()>;
}

impl Payload for [u8] {
    fn write_into(&self, buf: &mut BytesMut) -> std::io::Result<()> {
        buf.extend_from_slice(self);
        Ok(())
    }
}

impl<const N: usize> Payload for [u8; N] {
    fn write_into(&self, buf: &mut BytesMut) -> std::io::Result<()> {
        buf.extend_from_slice(self);
        Ok(())
    }
}

/// A frame on its way out: its header and what it carries.
struct Outgoing<'a, P: ?Sized> {
    header: Header,
    payload: &'a P,
}

/// Writes frames into a connection's write buffer: the length prefix, the header and the
/// payload in place. A frame over the limit (or a payload that fails to write itself) is taken
/// back out of the buffer and refused, as `LengthDelimitedCodec` refuses one.
struct FrameEncoder {
    max_frame: usize,
}

impl<P: Payload + ?Sized> Encoder<Outgoing<'_, P>> for FrameEncoder {
    type Error = std::io::Error;

    fn encode(&mut self, item: Outgoing<'_, P>, dst: &mut BytesMut) -> std::io::Result<()> {
        let start = dst.len();
        dst.put_u32(0);
        item.header.put(dst);
        if let Err(e) = item.payload.write_into(dst) {
            dst.truncate(start);
            return Err(e);
        }
        let length = dst.len() - start - 4;
        if length > self.max_frame + HEADER_BYTES {
            dst.truncate(start);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a frame of {length} bytes is over the limit of {}",
                    self.max_frame + HEADER_BYTES
                ),
            ));
        }
        // Fits: `length` is at most the limit, a u32 (a frame's payload is bounded in MiB).
        let length = u32::try_from(length).map_err(std::io::Error::other)?;
        dst[start..start + 4].copy_from_slice(&length.to_be_bytes());
        Ok(())
    }
}

/// Splits a received frame into its header and payload; `None` when it is too short for one.
fn parse(mut frame: BytesMut) -> Option<(Header, Bytes)> {
    if frame.len() < HEADER_BYTES {
        return None;
    }
    let header = Header {
        version: frame.get_u8(),
        kind: frame.get_u8(),
        from: Identity {
            cluster_id: frame.get_u64_le(),
            member_id: frame.get_u64_le(),
        },
        request_id: frame.get_u64_le(),
    };
    Some((header, frame.freeze()))
}

fn wrong_version(version: u8) -> String {
    format!(
        "peer protocol version {version} is not spoken here (this member speaks version \
         {PROTOCOL_VERSION}): every member must run the same shoal version"
    )
}

fn wrong_cluster(theirs: u64, ours: u64) -> String {
    format!("cluster ID mismatch: the frame is from cluster {theirs:x}, this member is in {ours:x}")
}

/// A connection to a peer, whatever carries it (TCP, TLS over TCP).
pub trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> PeerIo for S {}
/// A connection to a peer, as [`Links`] hold them.
pub type PeerStream = Box<dyn PeerIo>;

/// Makes a connection to a peer, given the target a call names.
pub type Dial = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<PeerStream>> + Send>>
        + Send
        + Sync,
>;

/// Dials `host:port` over plain TCP, with Nagle's algorithm off.
pub async fn dial_tcp(address: &str) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

type FrameWriter<S> = tokio::sync::Mutex<FramedWrite<WriteHalf<S>, FrameEncoder>>;
type FrameReader<S> = FramedRead<ReadHalf<S>, LengthDelimitedCodec>;
type Writer = FrameWriter<PeerStream>;
type Waiters = HashMap<u64, oneshot::Sender<Result<Bytes, CallError>>>;
/// A peer's connection, once made; locked while connecting.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Link>>>>;

/// What a link's callers and its reader task share: the calls waiting for an answer, and
/// whether the connection has ended.
#[derive(Default)]
struct Answers {
    waiting: Mutex<Waiters>,
    closed: AtomicBool,
}

impl Answers {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// One connection to a peer.
struct Link {
    writer: Writer,
    answers: Arc<Answers>,
    next_id: AtomicU64,
    identity: Identity,
}

impl Link {
    async fn connect(
        dial: &Dial,
        target: &str,
        max_frame: usize,
        identity: Identity,
    ) -> Result<Arc<Link>, CallError> {
        let unreachable = |e: &dyn std::fmt::Display| CallError::NotSent(format!("{target}: {e}"));
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, dial(target.to_string()))
            .await
            .map_err(|_| unreachable(&"connecting timed out"))?
            .map_err(|e| unreachable(&e))?;
        Ok(Link::over(stream, max_frame, identity))
    }

    /// A link over a connection made, its reader task started.
    fn over(stream: PeerStream, max_frame: usize, identity: Identity) -> Arc<Link> {
        let (read, write) = tokio::io::split(stream);
        let link = Arc::new(Link {
            writer: tokio::sync::Mutex::new(FramedWrite::new(write, FrameEncoder { max_frame })),
            answers: Arc::default(),
            next_id: AtomicU64::new(0),
            identity,
        });
        let reader = FramedRead::new(read, codec(max_frame));
        tokio::spawn(read_answers(reader, link.answers.clone(), identity));
        link
    }

    /// Sends one request and waits for its answer, all within `timeout`. A send cut short (by
    /// the timeout or an error) may leave half a frame on the wire: the link is then closed, and
    /// the next call connects anew.
    async fn call<P: Payload + ?Sized>(
        &self,
        method: u8,
        payload: &P,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.answers.waiting().insert(id, tx);
        if self.answers.is_closed() {
            // The reader ended after this link was handed out: nobody would answer.
            self.answers.waiting().remove(&id);
            return Err(CallError::NotSent("the connection closed".to_string()));
        }
        let request = Outgoing {
            header: Header::ours(method, self.identity, id),
            payload,
        };
        let send = async { self.writer.lock().await.send(request).await };
        let failure = match tokio::time::timeout_at(deadline, send).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(CallError::Unreachable(format!("sending: {e}"))),
            Err(_) => Some(CallError::Timeout(timeout)),
        };
        if let Some(failure) = failure {
            self.answers.close();
            self.answers.waiting().remove(&id);
            return Err(failure);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(CallError::Unreachable("the connection closed".to_string())),
            Err(_) => {
                self.answers.waiting().remove(&id);
                Err(CallError::Timeout(timeout))
            }
        }
    }
}

/// Hands each answer to its caller until the connection ends (or answers in another protocol
/// version), then fails every call still waiting. An answer from another cluster fails its call.
async fn read_answers(
    mut reader: FrameReader<PeerStream>,
    answers: Arc<Answers>,
    identity: Identity,
) {
    let mut ended_by = "the connection closed".to_string();
    while let Some(Ok(received)) = reader.next().await {
        let Some((header, payload)) = parse(received) else {
            tracing::warn!("a peer sent a frame too short for its header");
            break;
        };
        if header.version != PROTOCOL_VERSION {
            ended_by = wrong_version(header.version);
            tracing::warn!("a peer answered: {ended_by}");
            break;
        }
        let Some(waiter) = answers.waiting().remove(&header.request_id) else {
            continue;
        };
        let theirs = header.from.cluster_id;
        let answer = if identity.cluster_id != 0 && theirs != identity.cluster_id {
            let reason = wrong_cluster(theirs, identity.cluster_id);
            tracing::warn!(
                "refusing the answer of member {:x}: {reason}",
                header.from.member_id
            );
            Err(CallError::Failed(reason))
        } else if header.kind == STATUS_OK {
            Ok(payload)
        } else {
            Err(CallError::Failed(
                String::from_utf8_lossy(&payload).into_owned(),
            ))
        };
        let _ = waiter.send(answer);
    }
    answers.close();
    for (_, waiter) in answers.waiting().drain() {
        let _ = waiter.send(Err(CallError::Unreachable(ended_by.clone())));
    }
}

/// Connections to peers by target (what the [`Dial`] takes; `host:port` for plain TCP), made
/// on first use and again after one breaks.
pub struct Links {
    slots: Mutex<HashMap<String, Slot>>,
    dial: Dial,
    /// The largest payload a frame carries, both ways.
    max_frame: usize,
    /// Who this member is, as its requests say.
    identity: Identity,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

impl Links {
    /// Links over plain TCP to `host:port` targets, speaking for `identity`.
    pub fn new(max_frame: usize, identity: Identity) -> Self {
        Self::with_dial(
            max_frame,
            identity,
            Arc::new(|address: String| {
                Box::pin(async move {
                    let stream: PeerStream = Box::new(dial_tcp(&address).await?);
                    Ok(stream)
                })
            }),
        )
    }

    /// Links whose connections `dial` makes.
    pub fn with_dial(max_frame: usize, identity: Identity, dial: Dial) -> Self {
        Self {
            slots: Mutex::default(),
            dial,
            max_frame,
            identity,
        }
    }

    /// Calls `method` on the peer at `address` with `payload`, waiting at most `timeout` for
    /// its answer.
    pub async fn call<P: Payload + ?Sized>(
        &self,
        address: &str,
        method: u8,
        payload: &P,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        let link = self.link(address).await?;
        link.call(method, payload, timeout).await
    }

    async fn link(&self, address: &str) -> Result<Arc<Link>, CallError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(address.to_string()).or_default().clone()
        };
        // One connection attempt per peer at a time; other peers are not held up.
        let mut slot = slot.lock().await;
        if let Some(link) = slot.as_ref().filter(|link| !link.answers.is_closed()) {
            return Ok(link.clone());
        }
        let link = Link::connect(&self.dial, address, self.max_frame, self.identity).await?;
        *slot = Some(link.clone());
        Ok(link)
    }
}

/// How a peer server takes requests.
#[derive(Debug, Clone)]
pub struct ServerRules {
    /// Who this member is: requests from another cluster are refused.
    pub identity: Identity,
    /// The largest payload a frame carries, both ways.
    pub max_frame: usize,
    /// Methods a member that does not know its cluster yet may call (cluster ID 0).
    pub open_methods: &'static [u8],
    /// Requests served at once on one connection.
    pub max_in_flight_per_connection: usize,
    /// Requests served at once on all connections together.
    pub max_in_flight: usize,
}

/// What every connection of a server shares: its rules, the server-wide cap, and how many
/// frames it refused.
struct Server {
    rules: ServerRules,
    in_flight: Arc<Semaphore>,
    refused: AtomicU64,
}

impl Server {
    /// Why a request is not taken, if it is not.
    fn refusal(&self, header: &Header) -> Option<String> {
        let (theirs, ours) = (header.from.cluster_id, self.rules.identity.cluster_id);
        if theirs == ours || (theirs == 0 && self.rules.open_methods.contains(&header.kind)) {
            return None;
        }
        Some(wrong_cluster(theirs, ours))
    }
}

/// Answers the requests arriving on `connections` (as [`crate::listen::incoming`] accepts
/// them), each with `handle(method, payload)` in a task of its own (so a slow request does not
/// hold up the ones behind it), within the caps of `rules`, until the task running this is
/// aborted.
pub async fn serve<C, S, H, F, E>(connections: C, rules: ServerRules, handle: H)
where
    C: futures::Stream<Item = std::io::Result<S>>,
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Fn(u8, Bytes) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let server = Arc::new(Server {
        in_flight: Arc::new(Semaphore::new(rules.max_in_flight)),
        rules,
        refused: AtomicU64::new(0),
    });
    let mut connections = std::pin::pin!(connections);
    while let Some(accepted) = connections.next().await {
        match accepted {
            Ok(stream) => {
                tokio::spawn(serve_connection(stream, server.clone(), handle.clone()));
            }
            Err(e) => {
                tracing::debug!("accepting a peer connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection until it ends, a frame cannot be read, or one is of another version.
async fn serve_connection<S, H, F, E>(stream: S, server: Arc<Server>, handle: H)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Fn(u8, Bytes) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let rules = &server.rules;
    let (read, write) = tokio::io::split(stream);
    let writer: Arc<FrameWriter<S>> = Arc::new(tokio::sync::Mutex::new(FramedWrite::new(
        write,
        FrameEncoder {
            max_frame: rules.max_frame,
        },
    )));
    let mut reader = FramedRead::new(read, codec(rules.max_frame));
    let per_connection = Arc::new(Semaphore::new(rules.max_in_flight_per_connection));
    let mut refused_here = 0u64;
    // The traffic counters of the member on the other end, looked up once it is known.
    let mut peer: Option<(u64, crate::metrics::PeerMetrics)> = None;
    while let Some(received) = reader.next().await {
        let received = match received {
            Ok(received) => received,
            Err(e) => {
                tracing::warn!("reading from a peer: {e}");
                break;
            }
        };
        let Some((header, payload)) = parse(received) else {
            tracing::warn!("a peer sent a frame too short for its header");
            break;
        };
        if header.version != PROTOCOL_VERSION {
            let reason = wrong_version(header.version);
            tracing::warn!("refusing a peer connection: {reason}");
            answer(&writer, rules.identity, header.request_id, Err(reason)).await;
            break;
        }
        if let Some(reason) = server.refusal(&header) {
            let refused = server.refused.fetch_add(1, Ordering::Relaxed) + 1;
            refused_here += 1;
            if refused_here == 1 {
                tracing::warn!(
                    "refusing requests of member {:x}: {reason} ({refused} frames refused so far)",
                    header.from.member_id
                );
            }
            answer(&writer, rules.identity, header.request_id, Err(reason)).await;
            continue;
        }
        // Waiting for both permits stops this loop reading: the sender's writes then wait.
        let (Ok(connection_permit), Ok(server_permit)) = (
            per_connection.clone().acquire_owned().await,
            server.in_flight.clone().acquire_owned().await,
        ) else {
            break;
        };
        let from = header.from.member_id;
        let metrics = match &peer {
            Some((id, metrics)) if *id == from => metrics.clone(),
            _ => peer
                .insert((from, crate::metrics::metrics().peer(from)))
                .1
                .clone(),
        };
        metrics.received.inc_by(payload.len() as u64);
        let answered = handle(header.kind, payload);
        let (writer, identity) = (writer.clone(), rules.identity);
        tokio::spawn(async move {
            let result = answered.await.map_err(|reason| reason.to_string());
            if let Ok(answer) = &result {
                metrics.sent.inc_by(answer.len() as u64);
            }
            answer(&writer, identity, header.request_id, result).await;
            drop((connection_permit, server_permit));
        });
    }
    if refused_here > 0 {
        tracing::warn!("a peer connection closed after {refused_here} of its frames were refused");
    }
}

async fn answer<S: AsyncWrite>(
    writer: &FrameWriter<S>,
    identity: Identity,
    request_id: u64,
    result: Result<Vec<u8>, String>,
) {
    let (status, payload) = match &result {
        Ok(answer) => (STATUS_OK, answer.as_slice()),
        Err(reason) => (STATUS_FAILED, reason.as_bytes()),
    };
    let answer = Outgoing {
        header: Header::ours(status, identity, request_id),
        payload,
    };
    if let Err(e) = writer.lock().await.send(answer).await {
        tracing::debug!("answering a peer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const CLUSTER: Identity = Identity {
        cluster_id: 0xc1,
        member_id: 0xa,
    };
    const OPEN_METHOD: u8 = 7;

    /// Methods: 0 echoes, 1 answers after 200 ms, 2 answers after 300 ms counting how many
    /// run at once, 7 (open) echoes, others fail.
    async fn echo_server(in_flight_per_connection: usize) -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let connections = crate::listen::incoming(listener);
        let rules = ServerRules {
            identity: CLUSTER,
            max_frame: 1024,
            open_methods: &[OPEN_METHOD],
            max_in_flight_per_connection: in_flight_per_connection,
            max_in_flight: 64,
        };
        let (running, most) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let seen = most.clone();
        tokio::spawn(serve(connections, rules, move |method, payload: Bytes| {
            let (running, most) = (running.clone(), most.clone());
            async move {
                match method {
                    0 | OPEN_METHOD => Ok(payload.to_vec()),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok(b"slow".to_vec())
                    }
                    2 => {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(Vec::new())
                    }
                    _ => Err(format!("no method {method}")),
                }
            }
        }));
        (address, seen)
    }

    #[tokio::test]
    async fn answers_reach_their_callers_while_a_slow_request_is_in_flight() {
        let (address, _) = echo_server(16).await;
        let links = Arc::new(Links::new(1024, CLUSTER));
        let slow = {
            let (links, address) = (links.clone(), address.clone());
            tokio::spawn(async move { links.call(&address, 1, b"", Duration::from_secs(2)).await })
        };
        for n in 0..20u8 {
            let answer = links
                .call(&address, 0, &[n; 3], Duration::from_secs(2))
                .await
                .expect("echo");
            assert_eq!(&answer[..], &[n; 3]);
        }
        assert_eq!(&slow.await.expect("task").expect("slow")[..], b"slow");
    }

    #[tokio::test]
    async fn failures_timeouts_and_unreachable_peers_are_told_apart() {
        let (address, _) = echo_server(16).await;
        let links = Links::new(1024, CLUSTER);
        let failed = links.call(&address, 9, b"", Duration::from_secs(2)).await;
        assert_eq!(failed, Err(CallError::Failed("no method 9".to_string())));
        let slow = links
            .call(&address, 1, b"", Duration::from_millis(20))
            .await;
        assert_eq!(slow, Err(CallError::Timeout(Duration::from_millis(20))));
        let too_big = links
            .call(&address, 0, &[0; 4096], Duration::from_secs(2))
            .await;
        assert!(
            matches!(too_big, Err(CallError::Unreachable(_))),
            "{too_big:?}"
        );
        // The broken connection is replaced on the next call.
        let echoed = links
            .call(&address, 0, b"again", Duration::from_secs(2))
            .await;
        assert_eq!(echoed.as_deref(), Ok(&b"again"[..]));
        let nobody = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gone = nobody.local_addr().expect("address").to_string();
        drop(nobody);
        let unreachable = links.call(&gone, 0, b"", Duration::from_secs(2)).await;
        assert!(
            matches!(unreachable, Err(CallError::NotSent(_))),
            "{unreachable:?}"
        );
    }

    #[tokio::test]
    async fn another_cluster_is_refused_except_on_open_methods_when_it_does_not_know_its_own() {
        let (address, _) = echo_server(16).await;
        let stranger = Links::new(
            1024,
            Identity {
                cluster_id: 0xbad,
                member_id: 0xb,
            },
        );
        let refused = stranger
            .call(&address, 0, b"x", Duration::from_secs(2))
            .await;
        // The refusal itself comes from cluster c1, which the stranger does not take either.
        assert_eq!(refused, Err(CallError::Failed(wrong_cluster(0xc1, 0xbad))));
        let open = stranger
            .call(&address, OPEN_METHOD, b"x", Duration::from_secs(2))
            .await;
        assert!(matches!(open, Err(CallError::Failed(_))), "{open:?}");
        let joiner = Links::new(1024, Identity::UNKNOWN);
        let refused = joiner.call(&address, 0, b"x", Duration::from_secs(2)).await;
        assert_eq!(refused, Err(CallError::Failed(wrong_cluster(0, 0xc1))));
        let open = joiner
            .call(&address, OPEN_METHOD, b"x", Duration::from_secs(2))
            .await;
        assert_eq!(open.as_deref(), Ok(&b"x"[..]));
        // The refusals did not close anything: the member itself is still answered.
        let member = Links::new(1024, CLUSTER);
        let echoed = member.call(&address, 0, b"y", Duration::from_secs(2)).await;
        assert_eq!(echoed.as_deref(), Ok(&b"y"[..]));
    }

    /// Sends raw bytes on a fresh connection and reads what comes back until it closes.
    async fn exchange_raw(address: &str, bytes: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(bytes).await.expect("write");
        let mut back = Vec::new();
        let read = stream.read_to_end(&mut back);
        tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .expect("the server closes the connection")
            .expect("read");
        back
    }

    #[test]
    fn frames_written_in_place_read_back_whole_and_one_over_the_limit_leaves_nothing_behind() {
        let mut encoder = FrameEncoder { max_frame: 16 };
        let mut wire = BytesMut::new();
        let first = Outgoing {
            header: Header::ours(3, CLUSTER, 1),
            payload: b"hello",
        };
        encoder.encode(first, &mut wire).expect("fits");
        let written = wire.len();
        let too_big = Outgoing {
            header: Header::ours(3, CLUSTER, 2),
            payload: &[0u8; 17],
        };
        let refused = encoder
            .encode(too_big, &mut wire)
            .expect_err("over the limit");
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(wire.len(), written, "the refused frame was taken back out");
        let largest = Outgoing {
            header: Header::ours(4, CLUSTER, 3),
            payload: &[9u8; 16],
        };
        encoder.encode(largest, &mut wire).expect("at the limit");
        let mut reader = codec(16);
        let frames: Vec<(Header, Bytes)> = std::iter::from_fn(|| {
            tokio_util::codec::Decoder::decode(&mut reader, &mut wire).expect("a valid frame")
        })
        .map(|frame| parse(frame).expect("a header"))
        .collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0, Header::ours(3, CLUSTER, 1));
        assert_eq!(&frames[0].1[..], b"hello");
        assert_eq!(frames[1].0, Header::ours(4, CLUSTER, 3));
        assert_eq!(&frames[1].1[..], &[9u8; 16]);
        assert!(wire.is_empty());
    }

    #[tokio::test]
    async fn another_protocol_version_is_refused_with_a_reason_and_the_connection_closed() {
        let (address, _) = echo_server(16).await;
        let mut raw = BytesMut::new();
        let request = Outgoing {
            header: Header::ours(0, CLUSTER, 42),
            payload: b"x",
        };
        FrameEncoder { max_frame: 1024 }
            .encode(request, &mut raw)
            .expect("fits");
        raw[4] = PROTOCOL_VERSION + 1;
        let back = exchange_raw(&address, &raw).await;
        let (header, payload) = parse(BytesMut::from(&back[4..])).expect("an answer");
        assert_eq!((header.kind, header.request_id), (STATUS_FAILED, 42));
        assert_eq!(
            String::from_utf8_lossy(&payload),
            wrong_version(PROTOCOL_VERSION + 1)
        );
    }

    #[tokio::test]
    async fn a_4_gib_length_prefix_or_garbage_closes_the_connection_without_allocating() {
        let (address, _) = echo_server(16).await;
        let back = exchange_raw(&address, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
        assert!(back.is_empty(), "{back:?}");
        let back = exchange_raw(&address, &[0, 0, 0, 3, 1, 2, 3]).await;
        assert!(back.is_empty(), "{back:?}");
        let member = Links::new(1024, CLUSTER);
        let echoed = member
            .call(&address, 0, b"up", Duration::from_secs(2))
            .await;
        assert_eq!(echoed.as_deref(), Ok(&b"up"[..]));
    }

    #[tokio::test]
    async fn requests_past_the_cap_wait_for_a_slot() {
        let (address, most) = echo_server(2).await;
        let links = Arc::new(Links::new(1024, CLUSTER));
        let started = tokio::time::Instant::now();
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let (links, address) = (links.clone(), address.clone());
                tokio::spawn(
                    async move { links.call(&address, 2, b"", Duration::from_secs(5)).await },
                )
            })
            .collect();
        for call in calls {
            call.await.expect("task").expect("answered");
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        // Six 300 ms requests, two at a time.
        assert!(started.elapsed() >= Duration::from_millis(900));
    }
}
