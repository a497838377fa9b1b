//! Auto-compaction (etcd's `--auto-compaction-mode` and `--auto-compaction-retention`): on the
//! leader only, a task proposes `Compact` through Raft so the in-memory MVCC history (and with
//! it the watch history, which is read from it) stays bounded.
//!
//! The two modes follow etcd 3.4's `v3compactor`:
//! - periodic: the revision is sampled every tenth of the period (at most every 6 minutes);
//!   once a period has passed since the last compaction, the store is compacted to the revision
//!   sampled one period ago; later compactions come every period (at most every hour).
//! - revision: every check interval, the store is compacted to `revision - retention`, unless
//!   that revision was already compacted to. etcd checks every 5 minutes; shoal checks every
//!   [`REVISION_CHECK_INTERVAL`] by default, because its compaction is an in-memory pass (no
//!   disk rewrite), and a shorter interval keeps the history closer to the retention.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Member;
use crate::error::EtcdError;
use crate::types::Command;

/// How often revision mode checks the store's revision by default.
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// What the auto-compactor keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// No auto-compaction (a retention of 0, etcd's default).
    Off,
    /// Keep the history of the last `period`.
    Periodic(Duration),
    /// Keep the last `retention` revisions, checked every `check_interval`.
    Revision {
        retention: i64,
        check_interval: Duration,
    },
}

impl AutoCompaction {
    /// Resolves the flags as etcd 3.4 does: in periodic mode the retention is a duration
    /// (`1h`, `30m`) or a bare number of hours; in revision mode a number of revisions.
    pub fn parse(mode: &str, retention: &str) -> Result<Self, String> {
        let retention = retention.trim();
        match mode {
            "periodic" => {
                let period = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => humantime::parse_duration(retention)
                        .map_err(|e| format!("--auto-compaction-retention {retention:?}: {e}"))?,
                };
                Ok(if period.is_zero() {
                    AutoCompaction::Off
                } else {
                    AutoCompaction::Periodic(period)
                })
            }
            "revision" => {
                let revisions = retention.parse::<i64>().map_err(|e| {
                    format!("--auto-compaction-retention {retention:?} is not a number of revisions: {e}")
                })?;
                Ok(match revisions {
                    0 => AutoCompaction::Off,
                    r if r < 0 => {
                        return Err("--auto-compaction-retention must not be negative".to_string());
                    }
                    retention => AutoCompaction::Revision {
                        retention,
                        check_interval: REVISION_CHECK_INTERVAL,
                    },
                })
            }
            other => Err(format!(
                "unknown auto-compaction mode {other:?} (periodic or revision)"
            )),
        }
    }
}

/// etcd's periodic compactor: revisions sampled every `sample` and the compaction schedule.
#[derive(Debug)]
struct PeriodicWindow {
    period: Duration,
    sample: Duration,
    /// Sampled revisions, oldest first; the first is the revision one period ago.
    revisions: VecDeque<i64>,
    /// Since when the next compaction waits, and how long (a period, then at most an hour).
    last_success: Instant,
    wait: Duration,
    last_revision: i64,
}

impl PeriodicWindow {
    fn new(period: Duration, now: Instant) -> Self {
        let interval = period.min(Duration::from_secs(3600));
        PeriodicWindow {
            period,
            sample: interval / 10,
            revisions: VecDeque::new(),
            last_success: now,
            wait: period,
            last_revision: 0,
        }
    }

    fn retentions(&self) -> usize {
        (self.period.as_nanos() / self.sample.as_nanos().max(1)) as usize + 1
    }

    fn record(&mut self, revision: i64) {
        self.revisions.push_back(revision);
        if self.revisions.len() > self.retentions() {
            self.revisions.pop_front();
        }
    }

    /// The revision to compact to now, if it is time.
    fn due(&self, now: Instant) -> Option<i64> {
        let revision = *self.revisions.front()?;
        if now.duration_since(self.last_success) < self.wait || revision == self.last_revision {
            return None;
        }
        Some(revision)
    }

    fn compacted(&mut self, revision: i64, now: Instant) {
        self.last_revision = revision;
        self.last_success = now;
        self.wait = self.period.min(Duration::from_secs(3600));
    }
}

impl Member {
    /// Runs the configured auto-compactor; it acts only while this member leads.
    pub(super) async fn run_auto_compaction(self: Arc<Self>) {
        match self.config.auto_compaction {
            AutoCompaction::Off => {}
            AutoCompaction::Periodic(period) => self.compact_periodically(period).await,
            AutoCompaction::Revision {
                retention,
                check_interval,
            } => self.compact_by_revision(retention, check_interval).await,
        }
    }

    async fn compact_periodically(&self, period: Duration) {
        let mut window = PeriodicWindow::new(period, Instant::now());
        loop {
            window.record(self.shared.read().mvcc.revision());
            tokio::time::sleep(window.sample).await;
            if !self.is_leader() {
                continue;
            }
            let now = Instant::now();
            let Some(revision) = window.due(now) else {
                continue;
            };
            if self.auto_compact(revision, "periodic").await {
                window.compacted(revision, Instant::now());
            }
        }
    }

    async fn compact_by_revision(&self, retention: i64, check_interval: Duration) {
        let mut previous = 0;
        loop {
            tokio::time::sleep(check_interval).await;
            if !self.is_leader() {
                continue;
            }
            let revision = self.shared.read().mvcc.revision() - retention;
            if revision <= 0 || revision == previous {
                continue;
            }
            if self.auto_compact(revision, "revision").await {
                previous = revision;
            }
        }
    }

    /// Proposes the compaction; true when the store is compacted that far (already or now).
    async fn auto_compact(&self, revision: i64, mode: &str) -> bool {
        let started = Instant::now();
        match self.propose(Command::Compact(revision)).await {
            Ok(_) | Err(EtcdError::Compacted) => {
                tracing::debug!(
                    revision,
                    mode,
                    took = ?started.elapsed(),
                    "completed auto compaction"
                );
                true
            }
            Err(e) => {
                tracing::warn!(revision, mode, "failed auto compaction: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_parsed_as_etcd_parses_it() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            AutoCompaction::parse("periodic", "1"),
            Ok(AutoCompaction::Periodic(hour))
        );
        assert_eq!(
            AutoCompaction::parse("periodic", "30m"),
            Ok(AutoCompaction::Periodic(hour / 2))
        );
        assert_eq!(
            AutoCompaction::parse("periodic", "0"),
            Ok(AutoCompaction::Off)
        );
        assert_eq!(
            AutoCompaction::parse("revision", "1000"),
            Ok(AutoCompaction::Revision {
                retention: 1000,
                check_interval: REVISION_CHECK_INTERVAL
            })
        );
        assert!(AutoCompaction::parse("revision", "1h").is_err());
        assert!(AutoCompaction::parse("revision", "-5").is_err());
        assert!(AutoCompaction::parse("hourly", "1").is_err());
    }

    #[test]
    fn periodic_window_compacts_to_the_revision_one_period_ago() {
        let start = Instant::now();
        let period = Duration::from_secs(100);
        let mut window = PeriodicWindow::new(period, start);
        assert_eq!(window.sample, Duration::from_secs(10));
        // One sample every 10 s, the revision growing by 5 each time.
        for i in 0..=10 {
            window.record(1 + 5 * i);
        }
        assert_eq!(window.due(start + Duration::from_secs(99)), None);
        assert_eq!(window.due(start + period), Some(1));
        window.compacted(1, start + period);
        window.record(56);
        assert_eq!(window.revisions.len(), 11);
        assert_eq!(window.due(start + period * 2), Some(6));
    }
}
