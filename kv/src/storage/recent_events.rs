//! The latest applies' event batches, the history a new watcher catches up from. They are the
//! same [`EventBatch`]es the live feed carries, so an event's wire encoding is made once for
//! every stream, whether it reaches the stream live or as history: 1,000 flannel nodes that
//! each watch from the revision of their own list would otherwise have every event rebuilt
//! from the store (with its previous key-value), cloned and encoded once per watcher.
use std::collections::VecDeque;
use std::sync::Arc;

use super::state_machine::EventBatch;

/// Most events kept; older batches are dropped and their history read from the store.
const MAX_EVENTS: usize = 20_000;
/// Most bytes of keys and values kept (events and their previous key-values).
const MAX_BYTES: usize = 16 * 1024 * 1024;

/// Event batches in revision order, holding every event from a revision on (`complete_from`).
/// Changed only with the state, under its write lock, so a reader holding the state's read
/// lock sees exactly the events up to the state's revision.
#[derive(Debug, Default)]
pub struct RecentEvents {
    batches: VecDeque<Arc<EventBatch>>,
    /// Every event at this revision or later is in `batches`. The default, 0, fits an empty
    /// store: it has no events at all.
    complete_from: i64,
    events: usize,
    bytes: usize,
}

/// The last revision of a batch's events (batches are never empty).
fn last_revision(batch: &EventBatch) -> i64 {
    batch
        .events
        .last()
        .and_then(|event| event.kv.as_ref())
        .map_or(0, |kv| kv.mod_revision)
}

/// What an event holds in keys and values.
fn size(batch: &EventBatch) -> usize {
    batch
        .events
        .iter()
        .flat_map(|event| [&event.kv, &event.prev_kv])
        .flatten()
        .map(|kv| kv.key.len() + kv.value.len())
        .sum()
}

impl RecentEvents {
    /// Keeps an apply's events, dropping the oldest batches beyond the bounds.
    pub fn push(&mut self, batch: Arc<EventBatch>) {
        if batch.events.is_empty() {
            return;
        }
        self.events += batch.events.len();
        self.bytes += size(&batch);
        self.batches.push_back(batch);
        while self.events > MAX_EVENTS || self.bytes > MAX_BYTES {
            let Some(oldest) = self.batches.pop_front() else {
                break;
            };
            self.events -= oldest.events.len();
            self.bytes -= size(&oldest);
            self.complete_from = self.complete_from.max(last_revision(&oldest) + 1);
        }
    }

    /// Forgets every batch: the state was replaced by one at `revision` (a snapshot), whose
    /// history is only in the store.
    pub fn reset(&mut self, revision: i64) {
        *self = RecentEvents {
            complete_from: revision + 1,
            ..RecentEvents::default()
        };
    }

    /// The batches holding every event at revision `from` or later (and maybe some before),
    /// or `None` when some of those events are no longer kept.
    pub fn since(&self, from: i64) -> Option<impl Iterator<Item = &Arc<EventBatch>>> {
        if from < self.complete_from {
            return None;
        }
        let first = self
            .batches
            .partition_point(|batch| last_revision(batch) < from);
        Some(self.batches.range(first..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb;

    fn batch(revisions: std::ops::RangeInclusive<i64>, value_len: usize) -> Arc<EventBatch> {
        Arc::new(EventBatch::new(
            revisions
                .map(|revision| mvccpb::Event {
                    kv: Some(mvccpb::KeyValue {
                        key: b"k".to_vec(),
                        value: vec![0; value_len],
                        mod_revision: revision,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ))
    }

    fn revisions<'a>(batches: impl Iterator<Item = &'a Arc<EventBatch>>) -> Vec<i64> {
        batches.map(|batch| last_revision(batch)).collect()
    }

    #[test]
    fn history_from_any_kept_revision_starts_at_the_batch_holding_it() {
        let mut recent = RecentEvents::default();
        for range in [2..=3, 4..=4, 5..=7] {
            recent.push(batch(range, 1));
        }
        assert_eq!(revisions(recent.since(1).expect("kept")), vec![3, 4, 7]);
        assert_eq!(revisions(recent.since(4).expect("kept")), vec![4, 7]);
        assert_eq!(revisions(recent.since(6).expect("kept")), vec![7]);
        assert_eq!(revisions(recent.since(8).expect("kept")), Vec::<i64>::new());
    }

    #[test]
    fn dropped_batches_make_older_history_unavailable() {
        let mut recent = RecentEvents::default();
        recent.push(batch(2..=(MAX_EVENTS as i64 + 1), 1));
        recent.push(batch((MAX_EVENTS as i64 + 2)..=(MAX_EVENTS as i64 + 2), 1));
        assert!(recent.since(2).is_none(), "the first batch was dropped");
        let last = MAX_EVENTS as i64 + 2;
        assert_eq!(revisions(recent.since(last).expect("kept")), vec![last]);
        let mut big = RecentEvents::default();
        big.push(batch(2..=2, MAX_BYTES));
        big.push(batch(3..=3, 1));
        assert!(big.since(2).is_none(), "dropped for its size");
        assert!(big.since(3).is_some());
    }

    #[test]
    fn a_replaced_state_keeps_no_history_before_it() {
        let mut recent = RecentEvents::default();
        recent.push(batch(2..=5, 1));
        recent.reset(9);
        assert!(recent.since(5).is_none());
        assert_eq!(
            revisions(recent.since(10).expect("kept")),
            Vec::<i64>::new()
        );
        recent.push(batch(10..=10, 1));
        assert_eq!(revisions(recent.since(10).expect("kept")), vec![10]);
    }
}
