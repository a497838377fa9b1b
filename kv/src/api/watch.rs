//! The Watch service. Each client stream has one session that owns its watchers; the session
//! hears applied events from the state machine's broadcast feed and reads history from the
//! store for `start_revision` (and when it fell behind the feed). With auth on, a watch is
//! created only on keys its stream's sender may read.
//!
//! The session is the response stream itself (`Session::into_stream`): the HTTP/2 stream's
//! task polls it, so an event reaches the wire with one task wakeup per stream instead of two
//! (a session task, then a channel to the stream's task), and the responses a step makes are
//! encoded together into one DATA frame. Backpressure is HTTP/2's: a stream the client does not
//! read is not polled, falls behind the feed and catches up from history. The client's requests
//! are read by a task of their own (`read_requests`): polling the request body goes through
//! tonic's decoder, the body layers and the HTTP/2 connection's lock, which every event paid
//! when the session polled it beside the feed.
//!
//! Applied events reach many streams at once (every flannel node watches every lease), so each
//! event is encoded once, when the first stream sends it, and every stream's response carries
//! those bytes ([`WatchCodec`]) instead of cloning and encoding the event again.
use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use futures::task::AtomicWaker;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::{Request, Response, Status, Streaming};

use super::access::Credentials;
use crate::error::EtcdError;
use crate::member::Member;
use crate::proto::etcdserverpb::{
    self as pb, watch_create_request::FilterType, watch_request::RequestUnion,
};
use crate::proto::mvccpb::{self, event::EventType};
use crate::proto::watch_service::watch_server::Watch;
use crate::storage::auth::Access;
use crate::storage::mvcc::key_in_range;
use crate::storage::recent_events::RecentEvents;
use crate::storage::state_machine::{EventBatch, Feed, State};

/// The field number of `WatchResponse.events`.
const EVENTS_FIELD: u32 = 11;

/// A response of the Watch stream: a message, or a message followed by events already encoded
/// as its `events` field (protobuf lets a repeated field's elements follow the other fields).
#[derive(Debug)]
pub enum Outgoing {
    Message(pb::WatchResponse),
    Encoded {
        head: pb::WatchResponse,
        events: Vec<Bytes>,
    },
}

/// The Watch service's codec: prost's for requests, [`Outgoing`] for responses.
#[derive(Debug, Default)]
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = Outgoing;
    type Decode = pb::WatchRequest;
    type Encoder = OutgoingEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::WatchRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

#[derive(Debug)]
pub struct OutgoingEncoder;

impl Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let encoded = match item {
            Outgoing::Message(message) => message.encode(dst),
            Outgoing::Encoded { head, events } => head.encode(dst).map(|()| {
                for event in events {
                    dst.put_slice(&event);
                }
            }),
        };
        encoded.map_err(|e| Status::internal(format!("encoding a watch response: {e}")))
    }
}

/// `event` as an element of `WatchResponse.events`, without (index 0) and with (1) its previous
/// key-value.
fn encode_event(event: &mvccpb::Event) -> [Bytes; 2] {
    let without = mvccpb::Event {
        r#type: event.r#type,
        kv: event.kv.clone(),
        prev_kv: None,
    };
    let field = |e: &mvccpb::Event| {
        let mut buf = BytesMut::with_capacity(e.encoded_len() + 8);
        prost::encoding::message::encode(EVENTS_FIELD, e, &mut buf);
        buf.freeze()
    };
    let without = field(&without);
    let with = if event.prev_kv.is_some() {
        field(event)
    } else {
        without.clone()
    };
    [without, with]
}

/// The batch's events encoded, made by the first stream that sends them.
fn encoded(batch: &EventBatch) -> &[[Bytes; 2]] {
    batch
        .encoded
        .get_or_init(|| batch.events.iter().map(encode_event).collect())
}

/// Most events one delivery gathers from the feed (etcd's `watchBatchMaxRevs` is 1,000).
const MAX_COALESCED_EVENTS: usize = 1000;
/// etcd's default interval for `progress_notify` watchers.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

pub struct WatchService(pub Arc<Member>);

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<Outgoing, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let session = Session {
            credentials: Credentials::of(&request),
            member: self.0.clone(),
            feed: self.0.shared.feed.subscribe(),
            out: VecDeque::new(),
            watchers: BTreeMap::new(),
            next_id: 0,
            ticker: None,
        };
        let (requests_tx, queue) = mpsc::channel(REQUESTS_QUEUED);
        let arrived = Arc::new(Arrived::default());
        let reader = tokio::spawn(read_requests(
            request.into_inner(),
            requests_tx,
            arrived.clone(),
        ));
        Ok(Response::new(Box::pin(session.into_stream(Requests {
            queue,
            arrived,
            _reader: AbortOnDrop(reader),
        }))))
    }
}

/// Requests read ahead of the session, per stream.
const REQUESTS_QUEUED: usize = 16;

/// Hands the stream's requests to its session until the client closes its side, the stream
/// fails or the session is gone; each one (and the end) raises [`Arrived`].
async fn read_requests(
    mut inbound: Streaming<pb::WatchRequest>,
    requests: mpsc::Sender<pb::WatchRequest>,
    arrived: Arc<Arrived>,
) {
    while let Ok(Some(request)) = inbound.message().await {
        if requests.send(request).await.is_err() {
            return;
        }
        arrived.raise();
    }
    drop(requests);
    arrived.raise();
}

/// Whether the requests queue may hold something, and the session's stream to wake when it
/// does. The stream looks at the queue only when this is raised: the queue's own check walks
/// its block list, which every stream paid at every event while requests almost never come.
#[derive(Default)]
struct Arrived {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Arrived {
    /// Called after a request was queued (or the queue closed).
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Takes the signal, or registers the stream to be woken by the next one.
    fn take(&self, cx: &mut Context<'_>) -> bool {
        if self.raised.swap(false, Ordering::AcqRel) {
            return true;
        }
        self.waker.register(cx.waker());
        self.raised.swap(false, Ordering::AcqRel)
    }
}

/// The session's side of [`read_requests`]: the queue, and the task, stopped with the session.
struct Requests {
    queue: mpsc::Receiver<pb::WatchRequest>,
    arrived: Arc<Arrived>,
    _reader: AbortOnDrop,
}

impl Requests {
    /// The next request, or `None` once the client closed its side.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<pb::WatchRequest>> {
        if !self.arrived.take(cx) {
            return Poll::Pending;
        }
        match self.queue.try_recv() {
            Ok(request) => {
                // More may be queued behind it: look again at the next step.
                self.arrived.raised.store(true, Ordering::Release);
                Poll::Ready(Some(request))
            }
            Err(mpsc::error::TryRecvError::Disconnected) => Poll::Ready(None),
            // Taken at an earlier step; the signal was for that one.
            Err(mpsc::error::TryRecvError::Empty) => {
                if self.arrived.take(cx) {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }

    async fn next(&mut self) -> Option<pb::WatchRequest> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The first revision this watcher has not seen yet.
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// Whether events went out since the last progress notification.
    sent_since_tick: bool,
}

impl Watcher {
    fn wants(&self, e: &mvccpb::Event) -> bool {
        let kv = e.kv.as_ref();
        let key = kv.map(|kv| kv.key.as_slice()).unwrap_or_default();
        let rev = kv.map(|kv| kv.mod_revision).unwrap_or_default();
        let is_put = e.r#type == EventType::Put as i32;
        rev >= self.next_rev
            && key_in_range(key, &self.key, &self.range_end)
            && !(is_put && self.no_put)
            && (is_put || !self.no_delete)
    }

    /// The encodings of the events of `batches` this watcher wants.
    fn select_encoded(&self, batches: &[Arc<EventBatch>]) -> Vec<Bytes> {
        let variant = usize::from(self.prev_kv);
        batches
            .iter()
            .flat_map(|batch| {
                batch
                    .events
                    .iter()
                    .zip(encoded(batch))
                    .filter(|(e, _)| self.wants(e))
                    .map(move |(_, both)| both[variant].clone())
            })
            .collect()
    }

    fn select<'a>(&self, events: impl Iterator<Item = &'a mvccpb::Event>) -> Vec<mvccpb::Event> {
        events
            .filter(|e| self.wants(e))
            // The feed's events carry their previous key-value; copy it only when asked.
            .map(|e| mvccpb::Event {
                r#type: e.r#type,
                kv: e.kv.clone(),
                prev_kv: if self.prev_kv {
                    e.prev_kv.clone()
                } else {
                    None
                },
            })
            .collect()
    }
}

/// A watcher's history: what it missed, up to the state's revision.
enum History {
    /// Each event's revision and its shared encoding, from the recent batches.
    Encoded(Vec<(i64, Bytes)>),
    /// Built from the store, when the recent batches no longer reach back far enough.
    Built(Vec<mvccpb::Event>),
}

impl Watcher {
    /// The events from `next_rev` up to `state`'s revision this watcher wants: the encodings
    /// the live feed shares when the recent batches still hold them all, else built from the
    /// store. Called with the state read-locked, so `recent` ends at the state's revision.
    fn history(&self, state: &State, recent: &RecentEvents) -> History {
        let Some(batches) = recent.since(self.next_rev) else {
            let built = state
                .mvcc
                .events_since(&self.key, &self.range_end, self.next_rev);
            return History::Built(self.select(built.iter()));
        };
        let variant = usize::from(self.prev_kv);
        History::Encoded(
            batches
                .flat_map(|batch| batch.events.iter().zip(encoded(batch)))
                .filter(|(event, _)| self.wants(event))
                .map(|(event, both)| {
                    let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    (revision, both[variant].clone())
                })
                .collect(),
        )
    }
}

/// `events` (in revision order) in groups of about `max`: a group ends at the first revision
/// change at or after `max` events.
fn revision_chunks(events: Vec<(i64, Bytes)>, max: usize) -> Vec<Vec<Bytes>> {
    let mut chunks: Vec<Vec<Bytes>> = Vec::new();
    let mut last_revision = None;
    for (revision, event) in events {
        match chunks.last_mut() {
            Some(chunk) if chunk.len() < max || last_revision == Some(revision) => {
                chunk.push(event)
            }
            _ => chunks.push(vec![event]),
        }
        last_revision = Some(revision);
    }
    chunks
}

struct Session {
    /// What the stream presented; each watch's creation checks read on its keys with it.
    credentials: Credentials,
    member: Arc<Member>,
    feed: broadcast::Receiver<Feed>,
    /// Responses made and not yet taken by the stream.
    out: VecDeque<Outgoing>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Runs once a watcher asks for progress notifications (a ticking timer would cost every
    /// session a timer registration per event otherwise).
    ticker: Option<tokio::time::Interval>,
}

/// The next progress tick, or never while nobody asked for progress notifications.
async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Why a session ends: the client went away.
struct Closed;

impl Session {
    /// The session as its stream's responses: each step (a request, the feed's events, a
    /// progress tick) queues its responses, which the stream hands out before the next step.
    /// The stream ends when the client closes its side or goes away.
    fn into_stream(self, inbound: Requests) -> impl Stream<Item = Result<Outgoing, Status>> + Send {
        futures::stream::unfold(Some((self, inbound)), |state| async move {
            let (mut session, mut inbound) = state?;
            loop {
                if let Some(response) = session.out.pop_front() {
                    return Some((Ok(response), Some((session, inbound))));
                }
                if session.step(&mut inbound).await.is_err() {
                    return None;
                }
            }
        })
    }

    async fn step(&mut self, inbound: &mut Requests) -> Result<(), Closed> {
        tokio::select! {
            biased;
            request = inbound.next() => match request {
                Some(request) => self.handle(request).await,
                None => Err(Closed),
            },
            feed = self.feed.recv() => match feed {
                Ok(Feed::Events(events)) => self.deliver_queued(events),
                Ok(Feed::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
                Err(broadcast::error::RecvError::Closed) => Err(Closed),
            },
            _ = next_tick(&mut self.ticker) => self.progress_tick(),
        }
    }

    fn send(&mut self, response: pb::WatchResponse) {
        self.out.push_back(Outgoing::Message(response));
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        self.member.header(revision)
    }

    async fn handle(&mut self, request: pb::WatchRequest) -> Result<(), Closed> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let revision = self.member.shared.read().mvcc.revision();
                    self.send(pb::WatchResponse {
                        header: self.header(revision),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    });
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let revision = self.member.shared.read().mvcc.revision();
                self.send(pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: -1,
                    ..Default::default()
                });
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn allocate_id(&mut self, requested: i64) -> Option<i64> {
        if requested != 0 {
            return (!self.watchers.contains_key(&requested)).then_some(requested);
        }
        while self.watchers.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        Some(id)
    }

    /// etcd's `isWatchPermitted`: read on the watched keys, when the watch is created.
    async fn check_read(&self, create: &pb::WatchCreateRequest) -> Result<(), EtcdError> {
        let user = self.credentials.requester(&self.member).await?;
        self.member.shared.read().auth.check_range(
            &user,
            &create.key,
            &create.range_end,
            Access::Read,
        )
    }

    /// A creation refused with `reason`: etcd answers created and canceled at once.
    fn refuse_create(&mut self, watch_id: i64, reason: String) {
        let revision = self.member.shared.read().mvcc.revision();
        self.send(pb::WatchResponse {
            header: self.header(revision),
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        });
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Closed> {
        if let Err(refused) = self.check_read(&create).await {
            let reason = match refused {
                EtcdError::InvalidAuthToken | EtcdError::AuthOldRevision | EtcdError::UserEmpty => {
                    refused
                }
                _ => EtcdError::PermissionDenied,
            };
            self.refuse_create(-1, reason.grpc_go_text());
            return Ok(());
        }
        let limit = self.member.config.limits.max_watchers_per_stream;
        if self.watchers.len() >= limit {
            self.refuse_create(
                -1,
                format!(
                    "etcdserver: too many watchers on one stream (at most {limit}, \
                     --max-watchers-per-stream)"
                ),
            );
            return Ok(());
        }
        let Some(id) = self.allocate_id(create.watch_id) else {
            self.refuse_create(
                create.watch_id,
                "etcdserver: watch ID already exists".to_string(),
            );
            return Ok(());
        };
        let mut watcher = Watcher {
            key: create.key,
            range_end: create.range_end,
            next_rev: create.start_revision,
            prev_kv: create.prev_kv,
            no_put: create.filters.contains(&(FilterType::Noput as i32)),
            no_delete: create.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: create.progress_notify,
            sent_since_tick: false,
        };
        let (current, compacted, history) = {
            let state = self.member.shared.read();
            let current = state.mvcc.revision();
            let compacted = state.mvcc.compact_revision();
            let start = watcher.next_rev;
            let history = if start > 0 && start <= current && start >= compacted {
                watcher.history(&state, &self.member.shared.recent_events())
            } else {
                History::Built(Vec::new())
            };
            (current, compacted, history)
        };
        self.send(pb::WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        });
        if watcher.next_rev > 0 && watcher.next_rev < compacted {
            self.send_compacted(id, compacted, current);
            return Ok(());
        }
        if watcher.next_rev <= 0 {
            watcher.next_rev = current + 1;
        }
        watcher.next_rev = watcher.next_rev.max(current + 1);
        self.send_history(id, history, current);
        if watcher.progress_notify && self.ticker.is_none() {
            let first = tokio::time::Instant::now() + PROGRESS_INTERVAL;
            self.ticker = Some(tokio::time::interval_at(first, PROGRESS_INTERVAL));
        }
        self.watchers.insert(id, watcher);
        Ok(())
    }

    fn send_compacted(&mut self, id: i64, compacted: i64, current: i64) {
        self.send(pb::WatchResponse {
            header: self.header(current),
            watch_id: id,
            canceled: true,
            compact_revision: compacted,
            ..Default::default()
        });
    }

    fn send_events(&mut self, id: i64, events: Vec<mvccpb::Event>, revision: i64) {
        self.send(pb::WatchResponse {
            header: self.header(revision),
            watch_id: id,
            events,
            ..Default::default()
        });
    }

    /// Sends a watcher's history: the built events in one response, the shared encodings in
    /// responses of about [`MAX_COALESCED_EVENTS`] events each (etcd's `watchBatchMaxRevs`),
    /// cut only between revisions so a transaction's events arrive together.
    fn send_history(&mut self, id: i64, history: History, revision: i64) {
        match history {
            History::Built(events) if events.is_empty() => {}
            History::Built(events) => self.send_events(id, events, revision),
            History::Encoded(events) => {
                for events in revision_chunks(events, MAX_COALESCED_EVENTS) {
                    let head = pb::WatchResponse {
                        header: self.header(revision),
                        watch_id: id,
                        ..Default::default()
                    };
                    self.out.push_back(Outgoing::Encoded { head, events });
                }
            }
        }
    }

    /// Delivers `first` and whatever else the feed already holds (up to [`MAX_COALESCED_EVENTS`]
    /// events), each watcher's share in one response, as etcd batches a watcher's events: a
    /// session that fell behind catches up with few messages instead of one per write.
    fn deliver_queued(&mut self, first: Arc<EventBatch>) -> Result<(), Closed> {
        let mut count = first.events.len();
        let mut queued = vec![first];
        let mut resync = false;
        while count < MAX_COALESCED_EVENTS {
            match self.feed.try_recv() {
                Ok(Feed::Events(more)) => {
                    count += more.events.len();
                    queued.push(more);
                }
                Ok(Feed::Resync) | Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    resync = true;
                    break;
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return Err(Closed),
            }
        }
        self.deliver(&queued);
        if resync {
            self.resync()?;
        }
        Ok(())
    }

    /// Queues each watcher's share of `queued`, one response per watcher with events.
    fn deliver(&mut self, queued: &[Arc<EventBatch>]) {
        let Some(last) = queued
            .iter()
            .rev()
            .find_map(|batch| batch.events.last())
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
        else {
            return;
        };
        // One header for every response of this delivery (reading it takes the Raft metrics'
        // lock).
        let header = self.header(last);
        for (id, watcher) in &mut self.watchers {
            let events = watcher.select_encoded(queued);
            watcher.next_rev = watcher.next_rev.max(last + 1);
            if !events.is_empty() {
                watcher.sent_since_tick = true;
                let head = pb::WatchResponse {
                    header,
                    watch_id: *id,
                    ..Default::default()
                };
                self.out.push_back(Outgoing::Encoded { head, events });
            }
        }
    }

    /// The feed skipped events (a slow session, or a snapshot replaced the state): catch every
    /// watcher up from the store's history.
    fn resync(&mut self) -> Result<(), Closed> {
        let mut outgoing = Vec::new();
        let mut compacted_out = Vec::new();
        let (current, compacted) = {
            let state = self.member.shared.read();
            let recent = self.member.shared.recent_events();
            let current = state.mvcc.revision();
            let compacted = state.mvcc.compact_revision();
            for (id, watcher) in &mut self.watchers {
                if watcher.next_rev < compacted {
                    compacted_out.push(*id);
                    continue;
                }
                let history = watcher.history(&state, &recent);
                watcher.next_rev = watcher.next_rev.max(current + 1);
                outgoing.push((*id, history));
            }
            (current, compacted)
        };
        for id in compacted_out {
            self.watchers.remove(&id);
            self.send_compacted(id, compacted, current);
        }
        for (id, history) in outgoing {
            self.send_history(id, history, current);
        }
        Ok(())
    }

    fn progress_tick(&mut self) -> Result<(), Closed> {
        let revision = self.member.shared.read().mvcc.revision();
        let mut due = Vec::new();
        for (id, watcher) in &mut self.watchers {
            if watcher.progress_notify && !watcher.sent_since_tick {
                due.push(*id);
            }
            watcher.sent_since_tick = false;
        }
        for id in due {
            self.send(pb::WatchResponse {
                header: self.header(revision),
                watch_id: id,
                ..Default::default()
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;

    fn events(revisions: &[i64]) -> Vec<(i64, Bytes)> {
        revisions
            .iter()
            .map(|revision| (*revision, Bytes::from(revision.to_string())))
            .collect()
    }

    fn sizes(chunks: &[Vec<Bytes>]) -> Vec<usize> {
        chunks.iter().map(Vec::len).collect()
    }

    #[test]
    fn history_is_sent_in_groups_of_the_limit_cut_only_between_revisions() {
        let chunks = revision_chunks(events(&[1, 2, 3, 4, 5]), 2);
        assert_eq!(sizes(&chunks), vec![2, 2, 1]);
        // A transaction's three events at revision 2 stay together past the limit.
        let chunks = revision_chunks(events(&[1, 2, 2, 2, 3, 4]), 2);
        assert_eq!(sizes(&chunks), vec![4, 2]);
        assert_eq!(
            chunks.concat(),
            events(&[1, 2, 2, 2, 3, 4])
                .into_iter()
                .map(|(_, e)| e)
                .collect::<Vec<_>>()
        );
        assert!(revision_chunks(Vec::new(), 2).is_empty());
    }
}

#[cfg(test)]
mod requests_tests {
    use super::*;

    fn requests() -> (mpsc::Sender<pb::WatchRequest>, Arc<Arrived>, Requests) {
        let (sender, queue) = mpsc::channel(REQUESTS_QUEUED);
        let arrived = Arc::new(Arrived::default());
        let reader = tokio::spawn(std::future::pending::<()>());
        let requests = Requests {
            queue,
            arrived: arrived.clone(),
            _reader: AbortOnDrop(reader),
        };
        (sender, arrived, requests)
    }

    fn progress() -> pb::WatchRequest {
        pb::WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(Default::default())),
        }
    }

    fn poll(requests: &mut Requests) -> Poll<Option<pb::WatchRequest>> {
        requests.poll_next(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }

    #[tokio::test]
    async fn the_queue_is_read_only_once_a_request_was_signalled() {
        let (sender, arrived, mut requests) = requests();
        sender.try_send(progress()).unwrap();
        // Queued but not yet signalled: the stream does not look.
        assert!(poll(&mut requests).is_pending());
        arrived.raise();
        assert!(matches!(poll(&mut requests), Poll::Ready(Some(_))));
        assert!(poll(&mut requests).is_pending());
    }

    #[tokio::test]
    async fn every_queued_request_is_taken_after_one_signal_and_the_end_after_the_last() {
        let (sender, arrived, mut requests) = requests();
        for _ in 0..3 {
            sender.try_send(progress()).unwrap();
        }
        arrived.raise();
        for _ in 0..3 {
            assert!(matches!(poll(&mut requests), Poll::Ready(Some(_))));
        }
        assert!(poll(&mut requests).is_pending());
        drop(sender);
        arrived.raise();
        assert!(matches!(poll(&mut requests), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn a_signal_wakes_the_stream_that_found_nothing() {
        let (sender, arrived, mut requests) = requests();
        let woken = Arc::new(WakeCount::default());
        let waker = std::task::Waker::from(woken.clone());
        assert!(
            requests
                .poll_next(&mut Context::from_waker(&waker))
                .is_pending()
        );
        sender.try_send(progress()).unwrap();
        arrived.raise();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            requests.poll_next(&mut Context::from_waker(&waker)),
            Poll::Ready(Some(_))
        ));
    }

    #[derive(Default)]
    struct WakeCount(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
