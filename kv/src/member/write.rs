//! Writes: [`Member::propose`] hands a command to the write batcher, which sends whatever queued
//! meanwhile as one batch: one log entry on the leader, one forwarded request to the leader from
//! a follower. The proposer answers once this member applied the batch.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Notify, Semaphore, oneshot};

use super::{Member, REQUEST_TIMEOUT};
use crate::error::EtcdError;
use crate::peer::ForwardRpc;
use crate::storage::durable::Durability;
use crate::storage::mvcc::validate;
use crate::types::{Command, MemberNode, Outcome};

/// Roughly how many bytes of commands one batched log entry carries.
const MAX_BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Writes a member holds at once, sent or queued (what the batcher's channel bounded before);
/// more proposers wait for a slot instead of growing the queue without bound.
const MAX_PENDING_WRITES: usize = 4096;
/// etcd's `--max-request-bytes` default.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Checks a write as etcd checks a client request before proposing it (its v3rpc checks, the
/// lease TTL bound, the request size), whether a client sent it here or to a follower that
/// forwarded it. Batches are the write batcher's, not requests.
fn check_request(command: &Command) -> Result<(), EtcdError> {
    match command {
        Command::Put(req) => validate::put(req.message())?,
        Command::DeleteRange(req) => validate::delete_range(req.message())?,
        Command::Txn(req) => validate::txn(req.message())?,
        Command::LeaseGrant { ttl, .. } => validate::lease_ttl(*ttl)?,
        Command::Batch(_) => {
            return Err(EtcdError::Internal("a batch inside a request".to_string()));
        }
        Command::AsUser { command, .. } => match command.as_ref() {
            Command::AsUser { .. } | Command::Batch(_) => {
                return Err(EtcdError::Internal(
                    "a request inside a request".to_string(),
                ));
            }
            command => check_request(command)?,
        },
        Command::Auth(_) | Command::Alarm(_) => {}
        Command::Compact(_) | Command::LeaseRevoke { .. } | Command::PublishMember { .. } => {}
    }
    let size = bincode::serialized_size(command).map_err(|e| EtcdError::Internal(e.to_string()))?;
    if size as usize > MAX_REQUEST_BYTES {
        return Err(EtcdError::RequestTooLarge);
    }
    Ok(())
}

/// A proposal on its way (etcd's `proposals_pending`), until dropped.
struct Pending<'a>(&'a prometheus::IntGauge);

impl<'a> Pending<'a> {
    fn count(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Pending(gauge)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What became of a write handed to the write batcher.
#[derive(Debug)]
pub(super) enum Written {
    /// Committed at this log index with this outcome (not necessarily applied here yet).
    Done(Outcome, u64),
    Failed(EtcdError),
    /// No leader, or the leader changed: try again.
    Retry,
}

type WriteWaiter = (Command, oneshot::Sender<Written>);

/// The writes waiting for the batch in flight, and whether one is in flight. Only one batch is
/// in flight at a time: sent by the proposer that found none in flight and nothing queued, or by
/// the batcher task, which [`Turn`] wakes when that proposer's write is done and others queued.
pub(super) struct WriteQueue {
    state: Mutex<QueueState>,
    queued: Notify,
    slots: Semaphore,
}

impl Default for WriteQueue {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            queued: Notify::new(),
            slots: Semaphore::new(MAX_PENDING_WRITES),
        }
    }
}

#[derive(Default)]
struct QueueState {
    in_flight: bool,
    waiting: VecDeque<WriteWaiter>,
}

impl WriteQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Ok(command)` when the caller may send it now (its [`Turn`] then), or the receiver of
    /// its outcome once a batch carried it.
    fn take_turn_or_queue(&self, command: Command) -> Result<Command, oneshot::Receiver<Written>> {
        let mut state = self.state();
        if !state.in_flight && state.waiting.is_empty() {
            state.in_flight = true;
            return Ok(command);
        }
        let (tx, rx) = oneshot::channel();
        state.waiting.push_back((command, tx));
        Err(rx)
    }

    /// The next batch (about [`MAX_BATCH_BYTES`] of commands at most), or `None` when nothing
    /// is queued: then no batch is in flight any more.
    fn next_batch(&self) -> Option<Vec<WriteWaiter>> {
        let mut state = self.state();
        let first = match state.waiting.pop_front() {
            Some(first) => first,
            None => {
                state.in_flight = false;
                return None;
            }
        };
        let mut batch = vec![first];
        let mut bytes = 0u64;
        while bytes < MAX_BATCH_BYTES {
            let Some(more) = state.waiting.pop_front() else {
                break;
            };
            bytes += bincode::serialized_size(&more.0).unwrap_or(MAX_BATCH_BYTES);
            batch.push(more);
        }
        Some(batch)
    }
}

/// A proposer's own write in flight; when it ends (or its proposer gives up), the batcher sends
/// what queued meanwhile, or nothing is in flight any more.
struct Turn<'a>(&'a WriteQueue);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        if state.waiting.is_empty() {
            state.in_flight = false;
        } else {
            self.0.queued.notify_one();
        }
    }
}

impl Member {
    /// Replicates a command and returns its outcome once this member applied it.
    pub async fn propose(&self, command: Command) -> Result<Outcome, EtcdError> {
        check_request(&command)?;
        let t = Instant::now();
        let metrics = crate::metrics::metrics();
        let _pending = Pending::count(&metrics.proposals_pending);
        let (outcome, index) = self
            .write(command)
            .await
            .inspect_err(|_| metrics.proposals_failed.inc())?;
        crate::profile::record("propose.written", t);
        let t2 = Instant::now();
        self.wait_applied(index)
            .await
            .inspect_err(|_| metrics.proposals_failed.inc())?;
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
            self.pause_before_retry(deadline).await?;
        }
    }

    /// Writes a command a follower forwarded, as this member leads: one request or a batch of
    /// them, each checked as a client request is.
    pub(super) async fn write_forwarded(&self, command: Command) -> Written {
        let checked = match &command {
            Command::Batch(commands) => commands.iter().try_for_each(check_request),
            command => check_request(command),
        };
        match checked {
            Ok(()) => self.write_once(command).await,
            Err(e) => Written::Failed(e),
        }
    }

    /// Writes one command: at once from this task when no batch is in flight (no hop to the
    /// batcher and back), otherwise queued for the next batch.
    pub(super) async fn write_once(&self, command: Command) -> Written {
        let Ok(_slot) = self.writes.slots.acquire().await else {
            return Written::Failed(EtcdError::Internal("the write queue closed".to_string()));
        };
        let rx = match self.writes.take_turn_or_queue(command) {
            Ok(command) => {
                let _turn = Turn(&self.writes);
                return self.send_batch(command).await;
            }
            Err(rx) => rx,
        };
        rx.await.unwrap_or(Written::Retry)
    }

    /// After each sync of the leader's log, sends the commit index the followers were not told
    /// while it was not on disk yet ([`crate::storage::durable`]) in a heartbeat, instead of leaving it
    /// for the next write or the next regular heartbeat.
    pub(super) async fn tell_followers_what_is_durable(self: Arc<Self>, durability: Durability) {
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
    /// flush, 1: 16.4k, 2 and 4: 15.9-16.0k). This task sends the queued batches once the
    /// write sent directly by its proposer ([`Member::write_once`]) is done.
    pub(super) async fn run_write_batcher(self: Arc<Self>) {
        loop {
            self.writes.queued.notified().await;
            while let Some(batch) = self.writes.next_batch() {
                self.write_batch(batch).await;
            }
        }
    }

    /// Sends one batch: the queued commands move into it (each proposer kept its own for a
    /// retry), and each waiter hears its own outcome.
    async fn write_batch(&self, batch: Vec<WriteWaiter>) {
        let (mut commands, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
        let command = match commands.pop() {
            Some(command) if commands.is_empty() => command,
            Some(last) => {
                commands.push(last);
                Command::Batch(commands)
            }
            None => return,
        };
        crate::profile::record_duration("batch.size", Duration::from_micros(waiters.len() as u64));
        let written = self.send_batch(command).await;
        match written {
            Written::Done(outcome, index) if waiters.len() == 1 => {
                if let Some(waiter) = waiters.into_iter().next() {
                    let _ = waiter.send(Written::Done(outcome, index));
                }
            }
            Written::Done(Outcome::Batch(outcomes), index) if outcomes.len() == waiters.len() => {
                for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                    let _ = waiter.send(Written::Done(outcome, index));
                }
            }
            Written::Done(other, _) => {
                let error = EtcdError::Internal(format!("unexpected batch outcome {other:?}"));
                for waiter in waiters {
                    let _ = waiter.send(Written::Failed(error.clone()));
                }
            }
            Written::Failed(error) => {
                for waiter in waiters {
                    let _ = waiter.send(Written::Failed(error.clone()));
                }
            }
            Written::Retry => {
                for waiter in waiters {
                    let _ = waiter.send(Written::Retry);
                }
            }
        }
    }

    /// Appends a command (or a batch) to the log here if this member leads, else forwards it.
    async fn send_batch(&self, command: Command) -> Written {
        match self.leader() {
            Some((leader, _)) if leader == self.id => self.write_here(command).await,
            Some((_, node)) => self.forward(node, command).await,
            None => Written::Retry,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(rx: Result<Command, oneshot::Receiver<Written>>) -> oneshot::Receiver<Written> {
        match rx {
            Ok(command) => panic!("{command:?} was sent at once while a batch was in flight"),
            Err(rx) => rx,
        }
    }

    #[tokio::test]
    async fn a_write_with_nothing_in_flight_is_sent_by_its_proposer_and_others_wait_for_the_batcher()
     {
        let queue = WriteQueue::default();
        let own = queue
            .take_turn_or_queue(Command::Compact(1))
            .expect("nothing in flight: the proposer sends its write itself");
        assert!(matches!(own, Command::Compact(1)));
        let _second = queued(queue.take_turn_or_queue(Command::Compact(2)));
        let _third = queued(queue.take_turn_or_queue(Command::Compact(3)));
        drop(Turn(&queue));
        tokio::time::timeout(Duration::from_secs(5), queue.queued.notified())
            .await
            .expect("the end of the turn wakes the batcher");
        let batch = queue.next_batch().expect("the queued writes");
        let sent: Vec<_> = batch.iter().map(|(command, _)| command.clone()).collect();
        assert!(matches!(
            sent.as_slice(),
            [Command::Compact(2), Command::Compact(3)]
        ));
        // Still in flight while the batcher sends them: a new write queues.
        let _fourth = queued(queue.take_turn_or_queue(Command::Compact(4)));
        assert!(queue.next_batch().is_some());
        assert!(queue.next_batch().is_none());
        assert!(queue.take_turn_or_queue(Command::Compact(5)).is_ok());
    }

    #[test]
    fn a_turn_ended_with_nothing_queued_leaves_nothing_in_flight() {
        let queue = WriteQueue::default();
        assert!(queue.take_turn_or_queue(Command::Compact(1)).is_ok());
        // The proposer gave up (its client went away) before its write was done.
        drop(Turn(&queue));
        assert!(
            queue.take_turn_or_queue(Command::Compact(2)).is_ok(),
            "the next write is sent at once"
        );
    }
}
