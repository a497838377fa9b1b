//! Batched ReadIndex: a linearizable read waits until this member applied everything committed
//! when it arrived. Concurrent reads share one leadership confirmation round on the leader
//! (asked over the peer network from a follower).
//!
//! A read index is never below the last log index the leader held when its leadership began
//! ([`LeadershipFloor`]). openraft alone answers `max(first entry of the term, commit index)`,
//! and a leader restarted with its vote still committed resumes its term at once, with the
//! commit index it rebuilt from its snapshot (shoal does not store the commit index): entries
//! committed before the crash sit in its log but count as uncommitted, and a read would be
//! served below them. Raft (§6.4) asks a leader to know its term's commit index before it serves
//! reads; the leader's log holds every committed entry, so its last index does.
use std::sync::{Arc, Mutex};

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::{Member, REQUEST_TIMEOUT};
use crate::error::EtcdError;
use crate::peer::ForwardRpc;

pub(super) type ReadWaiter = oneshot::Sender<Result<u64, EtcdError>>;

impl Member {
    /// The read index when this member leads: openraft's confirmed read index, raised to the
    /// [`LeadershipFloor`] of its term. `Err` names the leader to ask instead, if known.
    pub(super) async fn read_index_here(&self) -> Result<u64, Option<u64>> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => {
                let confirmed = log_id.map(|l| l.index).unwrap_or_default();
                // Read after the confirmation: the floor of the term that confirmed it, or of a
                // later term of ours (higher still); none if leadership was lost meanwhile.
                let floor = {
                    let metrics = self.raft.metrics();
                    let m = metrics.borrow();
                    let leading =
                        m.state == ServerState::Leader && m.current_leader == Some(self.id);
                    self.leadership_floor
                        .observe(m.current_term, leading, m.last_log_index)
                };
                match floor {
                    Some(floor) => Ok(confirmed.max(floor)),
                    None => Err(self.raft.metrics().borrow().current_leader),
                }
            }
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
    pub(super) async fn run_read_batcher(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<ReadWaiter>,
    ) {
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
}

/// The last log index this member held when it first saw itself lead its current term: every
/// entry committed before that term is at or below it (a leader's log holds them all), so a read
/// index at or above it misses none, even when the commit index is still catching up after a
/// restart.
#[derive(Debug, Default)]
pub(super) struct LeadershipFloor {
    /// (term, floor) of the latest term this member led.
    led: Mutex<Option<(u64, u64)>>,
}

impl LeadershipFloor {
    /// The floor of `term` if this member leads it (`leading`): the first `last_log_index`
    /// observed while leading the term, kept for the rest of it. `None` when not leading.
    pub(super) fn observe(
        &self,
        term: u64,
        leading: bool,
        last_log_index: Option<u64>,
    ) -> Option<u64> {
        if !leading {
            return None;
        }
        let mut led = self.led.lock().unwrap_or_else(|p| p.into_inner());
        match *led {
            Some((led_term, floor)) if led_term == term => Some(floor),
            _ => {
                let floor = last_log_index.unwrap_or_default();
                *led = Some((term, floor));
                Some(floor)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LeadershipFloor;

    #[test]
    fn the_floor_is_the_last_log_index_first_seen_in_the_term_and_stays() {
        let floor = LeadershipFloor::default();
        assert_eq!(floor.observe(3, true, Some(2434)), Some(2434));
        assert_eq!(floor.observe(3, true, Some(2500)), Some(2434));
    }

    #[test]
    fn a_new_term_takes_a_new_floor() {
        let floor = LeadershipFloor::default();
        assert_eq!(floor.observe(3, true, Some(10)), Some(10));
        assert_eq!(floor.observe(4, true, Some(17)), Some(17));
    }

    #[test]
    fn a_member_that_does_not_lead_has_no_floor() {
        let floor = LeadershipFloor::default();
        assert_eq!(floor.observe(3, false, Some(10)), None);
        assert_eq!(floor.observe(3, true, None), Some(0));
    }
}
