//! The Watch service. Each client stream runs one session task that owns its watchers; the
//! session hears applied events from the state machine's broadcast feed and reads history from
//! the store for `start_revision` (and when it fell behind the feed). With auth on, a watch is
//! created only on keys its stream's sender may read.
//!
//! Applied events reach many streams at once (every flannel node watches every lease), so each
//! event is encoded once, when the first stream sends it, and every stream's response carries
//! those bytes ([`WatchCodec`]) instead of cloning and encoding the event again.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
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
    type WatchStream = ReceiverStream<Result<Outgoing, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        let session = Session {
            credentials: Credentials::of(&request),
            member: self.0.clone(),
            feed: self.0.shared.feed.subscribe(),
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            ticker: None,
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
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
    tx: mpsc::Sender<Result<Outgoing, Status>>,
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
    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        loop {
            let step = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.handle(request).await,
                    Ok(None) | Err(_) => Err(Closed),
                },
                feed = self.feed.recv() => match feed {
                    Ok(Feed::Events(events)) => self.deliver_queued(events).await,
                    Ok(Feed::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => self.resync().await,
                    Err(broadcast::error::RecvError::Closed) => Err(Closed),
                },
                _ = next_tick(&mut self.ticker) => self.progress_tick().await,
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), Closed> {
        self.tx
            .send(Ok(Outgoing::Message(response)))
            .await
            .map_err(|_| Closed)
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
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let revision = self.member.shared.read().mvcc.revision();
                self.send(pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
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

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Closed> {
        if let Err(refused) = self.check_read(&create).await {
            let revision = self.member.shared.read().mvcc.revision();
            let reason = match refused {
                EtcdError::InvalidAuthToken | EtcdError::AuthOldRevision | EtcdError::UserEmpty => {
                    refused
                }
                _ => EtcdError::PermissionDenied,
            };
            return self
                .send(pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason.grpc_go_text(),
                    ..Default::default()
                })
                .await;
        }
        let limit = self.member.config.limits.max_watchers_per_stream;
        if self.watchers.len() >= limit {
            let revision = self.member.shared.read().mvcc.revision();
            return self
                .send(pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: format!(
                        "etcdserver: too many watchers on one stream (at most {limit}, \
                         --max-watchers-per-stream)"
                    ),
                    ..Default::default()
                })
                .await;
        }
        let Some(id) = self.allocate_id(create.watch_id) else {
            let revision = self.member.shared.read().mvcc.revision();
            return self
                .send(pb::WatchResponse {
                    header: self.header(revision),
                    watch_id: create.watch_id,
                    created: true,
                    canceled: true,
                    cancel_reason: "etcdserver: watch ID already exists".to_string(),
                    ..Default::default()
                })
                .await;
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
        })
        .await?;
        if watcher.next_rev > 0 && watcher.next_rev < compacted {
            return self.send_compacted(id, compacted, current).await;
        }
        if watcher.next_rev <= 0 {
            watcher.next_rev = current + 1;
        }
        watcher.next_rev = watcher.next_rev.max(current + 1);
        self.send_history(id, history, current).await?;
        if watcher.progress_notify && self.ticker.is_none() {
            let first = tokio::time::Instant::now() + PROGRESS_INTERVAL;
            self.ticker = Some(tokio::time::interval_at(first, PROGRESS_INTERVAL));
        }
        self.watchers.insert(id, watcher);
        Ok(())
    }

    async fn send_compacted(&self, id: i64, compacted: i64, current: i64) -> Result<(), Closed> {
        self.send(pb::WatchResponse {
            header: self.header(current),
            watch_id: id,
            canceled: true,
            compact_revision: compacted,
            ..Default::default()
        })
        .await
    }

    async fn send_events(
        &self,
        id: i64,
        events: Vec<mvccpb::Event>,
        revision: i64,
    ) -> Result<(), Closed> {
        self.send(pb::WatchResponse {
            header: self.header(revision),
            watch_id: id,
            events,
            ..Default::default()
        })
        .await
    }

    /// Sends a watcher's history: the built events in one response, the shared encodings in
    /// responses of about [`MAX_COALESCED_EVENTS`] events each (etcd's `watchBatchMaxRevs`),
    /// cut only between revisions so a transaction's events arrive together.
    async fn send_history(&self, id: i64, history: History, revision: i64) -> Result<(), Closed> {
        match history {
            History::Built(events) if events.is_empty() => Ok(()),
            History::Built(events) => self.send_events(id, events, revision).await,
            History::Encoded(events) => {
                for events in revision_chunks(events, MAX_COALESCED_EVENTS) {
                    let head = pb::WatchResponse {
                        header: self.header(revision),
                        watch_id: id,
                        ..Default::default()
                    };
                    self.tx
                        .send(Ok(Outgoing::Encoded { head, events }))
                        .await
                        .map_err(|_| Closed)?;
                }
                Ok(())
            }
        }
    }

    /// Delivers `first` and whatever else the feed already holds (up to [`MAX_COALESCED_EVENTS`]
    /// events), each watcher's share in one response, as etcd batches a watcher's events: a
    /// session that fell behind catches up with few messages instead of one per write.
    async fn deliver_queued(&mut self, first: Arc<EventBatch>) -> Result<(), Closed> {
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
        self.deliver(&queued).await?;
        if resync {
            self.resync().await?;
        }
        Ok(())
    }

    async fn deliver(&mut self, queued: &[Arc<EventBatch>]) -> Result<(), Closed> {
        let Some(last) = queued
            .iter()
            .rev()
            .find_map(|batch| batch.events.last())
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
        else {
            return Ok(());
        };
        let mut outgoing = Vec::new();
        for (id, watcher) in &mut self.watchers {
            let selected = watcher.select_encoded(queued);
            watcher.next_rev = watcher.next_rev.max(last + 1);
            if !selected.is_empty() {
                watcher.sent_since_tick = true;
                outgoing.push((*id, selected));
            }
        }
        for (id, events) in outgoing {
            let head = pb::WatchResponse {
                header: self.header(last),
                watch_id: id,
                ..Default::default()
            };
            self.tx
                .send(Ok(Outgoing::Encoded { head, events }))
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// The feed skipped events (a slow session, or a snapshot replaced the state): catch every
    /// watcher up from the store's history.
    async fn resync(&mut self) -> Result<(), Closed> {
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
            self.send_compacted(id, compacted, current).await?;
        }
        for (id, history) in outgoing {
            self.send_history(id, history, current).await?;
        }
        Ok(())
    }

    async fn progress_tick(&mut self) -> Result<(), Closed> {
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
            })
            .await?;
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
