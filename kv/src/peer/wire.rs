//! The framing of member-to-member traffic: requests and answers as length-prefixed frames on
//! one TCP connection per peer, many in flight at once, matched by request ID. What the frames
//! carry (bincode of openraft's messages and of forwarded requests) is [`crate::peer`]'s
//! business.
//!
//! A request is `[method u8][request ID u64 LE][payload]`, an answer `[status u8][request ID
//! u64 LE][payload]` (status 0: the payload is the method's answer; otherwise a UTF-8 reason),
//! each in a frame of `[length u32 BE][frame]` (tokio-util's `LengthDelimitedCodec`). This
//! replaced gRPC between members: a loopback round trip through tonic cost ~250 us of task
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
use tokio::sync::oneshot;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Request ID and method or status.
const HEADER_BYTES: usize = 9;
const STATUS_OK: u8 = 0;
const STATUS_FAILED: u8 = 1;
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// The peer answered with a failure (it could not decode or would not take the request).
    #[error("{0}")]
    Failed(String),
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame + HEADER_BYTES)
        .new_codec()
}

fn frame(kind: u8, id: u64, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_BYTES + payload.len());
    buf.put_u8(kind);
    buf.put_u64_le(id);
    buf.put_slice(payload);
    buf.freeze()
}

/// Splits a received frame into its kind byte, request ID and payload.
fn parse(mut frame: BytesMut) -> Option<(u8, u64, Bytes)> {
    if frame.len() < HEADER_BYTES {
        return None;
    }
    let kind = frame.get_u8();
    let id = frame.get_u64_le();
    Some((kind, id, frame.freeze()))
}

/// A connection frames travel on.
pub trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> PeerStream for S {}

/// Makes a connection to a peer, given the target a call names.
pub type Dial = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<Box<dyn PeerStream>>> + Send>>
        + Send
        + Sync,
>;

/// Dials `host:port` over plain TCP, with Nagle's algorithm off.
pub async fn dial_tcp(address: &str) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

type Writer<W> = tokio::sync::Mutex<FramedWrite<W, LengthDelimitedCodec>>;
type DialedWriter = Writer<WriteHalf<Box<dyn PeerStream>>>;
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
    writer: DialedWriter,
    answers: Arc<Answers>,
    next_id: AtomicU64,
}

impl Link {
    async fn connect(dial: &Dial, target: &str, max_frame: usize) -> Result<Arc<Link>, CallError> {
        let unreachable = |e: &dyn std::fmt::Display| CallError::NotSent(format!("{target}: {e}"));
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, dial(target.to_string()))
            .await
            .map_err(|_| unreachable(&"connecting timed out"))?
            .map_err(|e| unreachable(&e))?;
        let (read, write) = tokio::io::split(stream);
        let link = Arc::new(Link {
            writer: tokio::sync::Mutex::new(FramedWrite::new(write, codec(max_frame))),
            answers: Arc::default(),
            next_id: AtomicU64::new(0),
        });
        let reader = FramedRead::new(read, codec(max_frame));
        tokio::spawn(read_answers(reader, link.answers.clone()));
        Ok(link)
    }

    /// Sends one request and waits for its answer, all within `timeout`. A send cut short (by
    /// the timeout or an error) may leave half a frame on the wire: the link is then closed, and
    /// the next call connects anew.
    async fn call(
        &self,
        method: u8,
        payload: &[u8],
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
        let send = async {
            self.writer
                .lock()
                .await
                .send(frame(method, id, payload))
                .await
        };
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

/// Hands each answer to its caller until the connection ends, then fails every call still
/// waiting.
async fn read_answers(
    mut reader: FramedRead<ReadHalf<Box<dyn PeerStream>>, LengthDelimitedCodec>,
    answers: Arc<Answers>,
) {
    while let Some(Ok(received)) = reader.next().await {
        let Some((status, id, payload)) = parse(received) else {
            tracing::debug!("a peer sent a frame too short for its header");
            break;
        };
        let Some(waiter) = answers.waiting().remove(&id) else {
            continue;
        };
        let answer = if status == STATUS_OK {
            Ok(payload)
        } else {
            Err(CallError::Failed(
                String::from_utf8_lossy(&payload).into_owned(),
            ))
        };
        let _ = waiter.send(answer);
    }
    answers.close();
    answers.waiting().clear();
}

/// Connections to peers by target (what the [`Dial`] takes; `host:port` for plain TCP), made
/// on first use and again after one breaks.
pub struct Links {
    slots: Mutex<HashMap<String, Slot>>,
    dial: Dial,
    /// The largest payload a frame carries, both ways.
    max_frame: usize,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

impl Links {
    /// Links over plain TCP to `host:port` targets.
    pub fn new(max_frame: usize) -> Self {
        Self::with_dial(
            max_frame,
            Arc::new(|address: String| {
                Box::pin(async move {
                    let stream: Box<dyn PeerStream> = Box::new(dial_tcp(&address).await?);
                    Ok(stream)
                })
            }),
        )
    }

    /// Links whose connections `dial` makes.
    pub fn with_dial(max_frame: usize, dial: Dial) -> Self {
        Self {
            slots: Mutex::default(),
            dial,
            max_frame,
        }
    }

    /// Calls `method` on the peer at `address` with `payload`, waiting at most `timeout` for
    /// its answer.
    pub async fn call(
        &self,
        address: &str,
        method: u8,
        payload: &[u8],
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
        let link = Link::connect(&self.dial, address, self.max_frame).await?;
        *slot = Some(link.clone());
        Ok(link)
    }
}

/// Answers the requests arriving on `connections` (as [`crate::listen::incoming`] accepts
/// them), each with `handle(method, payload)` in a task of its own (so a slow request does not
/// hold up the ones behind it), until the task running this is aborted.
pub async fn serve<C, S, H, F, E>(connections: C, max_frame: usize, handle: H)
where
    C: futures::Stream<Item = std::io::Result<S>>,
    S: PeerStream,
    H: Fn(u8, Bytes) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut connections = std::pin::pin!(connections);
    while let Some(accepted) = connections.next().await {
        match accepted {
            Ok(stream) => {
                tokio::spawn(serve_connection(stream, max_frame, handle.clone()));
            }
            Err(e) => {
                tracing::debug!("accepting a peer connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection<S, H, F, E>(stream: S, max_frame: usize, handle: H)
where
    S: PeerStream,
    H: Fn(u8, Bytes) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Vec<u8>, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let writer: Arc<Writer<WriteHalf<S>>> = Arc::new(tokio::sync::Mutex::new(FramedWrite::new(
        write,
        codec(max_frame),
    )));
    let mut reader = FramedRead::new(read, codec(max_frame));
    while let Some(received) = reader.next().await {
        let received = match received {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!("reading from a peer: {e}");
                break;
            }
        };
        let Some((method, id, payload)) = parse(received) else {
            tracing::debug!("a peer sent a frame too short for its header");
            break;
        };
        let answered = handle(method, payload);
        let writer = writer.clone();
        tokio::spawn(async move {
            let answer = match answered.await {
                Ok(answer) => frame(STATUS_OK, id, &answer),
                Err(reason) => frame(STATUS_FAILED, id, reason.to_string().as_bytes()),
            };
            if let Err(e) = writer.lock().await.send(answer).await {
                tracing::debug!("answering a peer: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let connections = crate::listen::incoming(listener);
        tokio::spawn(serve(
            connections,
            1024,
            |method, payload: Bytes| async move {
                match method {
                    0 => Ok(payload.to_vec()),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok(b"slow".to_vec())
                    }
                    _ => Err(format!("no method {method}")),
                }
            },
        ));
        address
    }

    #[tokio::test]
    async fn answers_reach_their_callers_while_a_slow_request_is_in_flight() {
        let address = echo_server().await;
        let links = Arc::new(Links::new(1024));
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
        let address = echo_server().await;
        let links = Links::new(1024);
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
}
