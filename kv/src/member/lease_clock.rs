//! The leader-only lease clock: deadlines of live leases, renewed by keep-alives (forwarded to
//! the leader from any member), and the revocation of expired ones.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Member, REQUEST_TIMEOUT};
use crate::error::EtcdError;
use crate::peer::ForwardRpc;
use crate::storage::mvcc::validate;
use crate::types::Command;

/// Leader-side lease deadlines. Only the leader expires leases; a new leader starts every
/// lease's clock afresh, so no lease expires early after a change of leader.
#[derive(Debug, Default)]
pub(super) struct LeaseClock {
    deadlines: Mutex<HashMap<i64, Instant>>,
}

/// When a lease of `ttl` seconds granted or renewed `now` expires. TTLs above etcd's largest
/// are refused when granted; the bound here keeps the clock from overflowing whatever it reads.
fn deadline(now: Instant, ttl: i64) -> Instant {
    let ttl = ttl.clamp(0, validate::MAX_LEASE_TTL) as u64;
    now + Duration::from_secs(ttl)
}

impl LeaseClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Member {
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

    pub(super) fn keep_alive_here(&self, id: i64) -> Result<i64, EtcdError> {
        let Some(ttl) = self.shared.read().mvcc.lease(id).map(|l| l.ttl) else {
            return Ok(0);
        };
        self.leases.lock().insert(id, deadline(Instant::now(), ttl));
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

    pub(super) fn time_to_live_here(&self, id: i64) -> Result<i64, EtcdError> {
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
    pub(super) async fn run_lease_clock(self: Arc<Self>) {
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
            let deadline = *deadlines.entry(id).or_insert_with(|| deadline(now, ttl));
            if deadline <= now {
                expired.push(id);
                // Retry after a while if the revoke does not go through.
                deadlines.insert(id, now + Duration::from_secs(1));
            }
        }
        expired
    }
}
