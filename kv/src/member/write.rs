//! Writes: [`Member::propose`] hands a command to the write batcher, which sends whatever queued
//! meanwhile as one batch: one log entry on the leader, one forwarded request to the leader from
//! a follower. The proposer answers once this member applied the batch.
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::{Member, REQUEST_TIMEOUT};
use crate::error::EtcdError;
use crate::peer::ForwardRpc;
use crate::storage::durable::Durability;
use crate::storage::mvcc::validate;
use crate::types::{Command, MemberNode, Outcome};

/// Roughly how many bytes of commands one batched log entry carries.
const MAX_BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// etcd's `--max-request-bytes` default.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Checks a write as etcd checks a client request before proposing it (its v3rpc checks, the
/// lease TTL bound, the request size), whether a client sent it here or to a follower that
/// forwarded it. Batches are the write batcher's, not requests.
fn check_request(command: &Command) -> Result<(), EtcdError> {
    match command {
        Command::Put(req) => validate::put(&req.0)?,
        Command::DeleteRange(req) => validate::delete_range(&req.0)?,
        Command::Txn(req) => validate::txn(&req.0)?,
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

pub(super) type WriteWaiter = (Command, oneshot::Sender<Written>);

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

    pub(super) async fn write_once(&self, command: Command) -> Written {
        let (tx, rx) = oneshot::channel();
        if self.write_requests.send((command, tx)).await.is_err() {
            return Written::Failed(EtcdError::Internal("the write batcher stopped".to_string()));
        }
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
    /// flush, 1: 16.4k, 2 and 4: 15.9-16.0k).
    pub(super) async fn run_write_batcher(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<WriteWaiter>,
    ) {
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
        let written = match self.leader() {
            Some((leader, _)) if leader == self.id => self.write_here(command).await,
            Some((_, node)) => self.forward(node, command).await,
            None => Written::Retry,
        };
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
