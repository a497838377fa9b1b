//! Settles requests of unknown outcome before the linearizability check, as etcd's robustness
//! suite patches its histories; every rule only ever narrows what a request may have done, so a
//! history that is not linearizable stays so:
//!
//! - *Writes seen or never seen*: every value a put writes is unique, so a put or txn that
//!   timed out either shows up in a complete watch of its family (it happened, at that event's
//!   revision, and the event's value says which branch a txn took) or does not (it never
//!   happened, and is left out). Only a watch that covered the whole round (from its start to
//!   the end marker) settles anything. If a watch dropped an event, a read may later show a
//!   value this step thought never written: the round still fails, on linearizability.
//! - *Bounded by revisions*: a write settled at revision `r` took effect before any response
//!   carrying a revision of `r` or more was sent (the store had applied `r` by then), so its
//!   return is the earliest such response's.
//! - *Grants seen in use*: lease IDs are unique per grant, so a grant that timed out but whose
//!   lease a put or a revoke then used successfully happened, before the first such use
//!   returned.
//! - *Deletes that deleted nothing*: a single-key delete that took effect wrote a revision
//!   above every revision answered before it was called, holding that one delete event alone.
//!   When a complete watch of the key shows no such revision that another request may not
//!   have written (one with other events, or one an answered put, delete or txn wrote), the
//!   delete changed nothing (or took effect after everything the round observed), and is left
//!   out.
//!
//! Revokes, and grants never seen in use, stay unknown: they never return, and may or may not
//! take effect.
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::history::{LeaseId, Nanos, Operation, Outcome, Request, Response, TxnOp, WatchLog};

/// What settling did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Settled {
    /// Requests of unknown outcome a watch or a later use showed happened.
    pub happened: usize,
    /// Requests of unknown outcome no complete watch showed: left out.
    pub never_happened: usize,
    /// Requests of unknown outcome nothing settled: still unknown.
    pub still_unknown: usize,
}

/// `ops` with every unknown put and txn settled by `watches` where one covered its keys, every
/// unknown grant whose lease was used settled, and settled requests' returns bounded.
pub fn settle(ops: &[Operation], watches: &[WatchLog]) -> (Vec<Operation>, Settled) {
    let complete: Vec<&WatchLog> = watches
        .iter()
        .filter(|w| w.end_revision > 0 && w.last_revision() >= w.end_revision)
        .collect();
    let mut seen: HashMap<(&str, &str), i64> = HashMap::new();
    for watch in &complete {
        for event in watch.events() {
            if let Some(value) = &event.value {
                seen.insert((event.key.as_str(), value.as_str()), event.mod_revision);
            }
        }
    }
    let covered = |key: &str| complete.iter().any(|w| key.starts_with(&w.prefix));
    let applied_by = AppliedBy::of(ops);
    let floor = FloorAt::of(ops);
    let deletes = LoneDeletes::of(ops, &complete);
    let used = lease_uses(ops);
    let mut settled = Settled::default();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        if op.answered() {
            out.push(op.clone());
            continue;
        }
        if let Request::LeaseGrant { id, .. } = &op.request {
            match used.get(id) {
                Some(&used_by) => {
                    settled.happened += 1;
                    out.push(Operation {
                        ret: used_by.max(op.call),
                        outcome: Outcome::Done(Response::LeaseGrant),
                        ..op.clone()
                    });
                }
                None => {
                    settled.still_unknown += 1;
                    out.push(op.clone());
                }
            }
            continue;
        }
        if let Request::Delete { key } = &op.request
            && covered(key)
            && !deletes.may_be(key, floor.before(op.call))
        {
            settled.never_happened += 1;
            continue;
        }
        let puts = puts_of(&op.request);
        if puts.is_empty() || !puts.iter().all(|(_, key, _)| covered(key)) {
            if !matches!(op.request, Request::Get { .. }) {
                settled.still_unknown += 1;
            }
            out.push(op.clone());
            continue;
        }
        let shown = puts
            .iter()
            .find_map(|(branch, key, value)| Some((*branch, *seen.get(&(*key, *value))?)));
        let Some((branch, revision)) = shown else {
            settled.never_happened += 1;
            continue;
        };
        settled.happened += 1;
        let response = match &op.request {
            Request::Txn(_) => Response::Txn {
                revision,
                succeeded: branch,
            },
            _ => Response::Put { revision },
        };
        out.push(Operation {
            ret: applied_by.time(revision).max(op.call),
            outcome: Outcome::Done(response),
            ..op.clone()
        });
    }
    (out, settled)
}

/// When the store had applied a revision for sure: the earliest return of a response carrying
/// that revision or a later one.
struct AppliedBy {
    /// (revision, the earliest return of a response at this revision or above), by revision.
    by_revision: Vec<(i64, Nanos)>,
}

impl AppliedBy {
    fn of(ops: &[Operation]) -> Self {
        let mut by_revision: Vec<(i64, Nanos)> = ops
            .iter()
            .filter_map(|op| match &op.outcome {
                Outcome::Done(response) => Some((response.revision()?, op.ret)),
                Outcome::Unknown(_) => None,
            })
            .collect();
        by_revision.sort_unstable();
        // Each entry becomes the earliest return at its revision or above.
        let mut earliest = Nanos::MAX;
        for entry in by_revision.iter_mut().rev() {
            earliest = earliest.min(entry.1);
            entry.1 = earliest;
        }
        AppliedBy { by_revision }
    }

    /// The earliest time a response showed `revision` applied; `Nanos::MAX` if none did.
    fn time(&self, revision: i64) -> Nanos {
        let first = self.by_revision.partition_point(|(rev, _)| *rev < revision);
        self.by_revision.get(first).map_or(Nanos::MAX, |e| e.1)
    }
}

/// The highest revision answered before a time: what any request called then writes above.
struct FloorAt {
    /// (return, the highest revision answered by then), by return.
    by_return: Vec<(Nanos, i64)>,
}

impl FloorAt {
    fn of(ops: &[Operation]) -> Self {
        let mut by_return: Vec<(Nanos, i64)> = ops
            .iter()
            .filter_map(|op| match &op.outcome {
                Outcome::Done(response) => Some((op.ret, response.revision()?)),
                Outcome::Unknown(_) => None,
            })
            .collect();
        by_return.sort_unstable();
        let mut highest = 0;
        for entry in &mut by_return {
            highest = highest.max(entry.1);
            entry.1 = highest;
        }
        FloorAt { by_return }
    }

    /// The highest revision a response that returned before `time` carried (0: none).
    fn before(&self, time: Nanos) -> i64 {
        let returned = self.by_return.partition_point(|(ret, _)| *ret < time);
        returned.checked_sub(1).map_or(0, |i| self.by_return[i].1)
    }
}

/// The revisions of the complete watches a single-key delete of unknown outcome may have
/// written: those holding one event, a delete, that no answered put, delete or txn wrote.
struct LoneDeletes<'a> {
    by_key: HashMap<&'a str, Vec<i64>>,
}

impl<'a> LoneDeletes<'a> {
    fn of(ops: &[Operation], complete: &[&'a WatchLog]) -> Self {
        let mut events_at: HashMap<i64, usize> = HashMap::new();
        for event in complete.iter().flat_map(|w| w.events()) {
            *events_at.entry(event.mod_revision).or_insert(0) += 1;
        }
        let written: HashSet<i64> = ops.iter().filter_map(definite_write).collect();
        let mut by_key: HashMap<&str, Vec<i64>> = HashMap::new();
        for event in complete.iter().flat_map(|w| w.events()) {
            let lone = events_at.get(&event.mod_revision) == Some(&1);
            if event.value.is_none() && lone && !written.contains(&event.mod_revision) {
                by_key
                    .entry(event.key.as_str())
                    .or_default()
                    .push(event.mod_revision);
            }
        }
        LoneDeletes { by_key }
    }

    /// Whether a delete of `key` called after revision `floor` was answered may have deleted it.
    fn may_be(&self, key: &str, floor: i64) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|revisions| revisions.iter().any(|r| *r > floor))
    }
}

/// The revision an answered request wrote for sure: a put's, a delete's that deleted, a txn's
/// whose branch puts (a revoke may have deleted nothing, and answers the current revision).
fn definite_write(op: &Operation) -> Option<i64> {
    match (&op.request, &op.outcome) {
        (Request::Put { .. }, Outcome::Done(Response::Put { revision })) => Some(*revision),
        (Request::Delete { .. }, Outcome::Done(Response::Delete { revision, deleted }))
            if *deleted > 0 =>
        {
            Some(*revision)
        }
        (
            Request::Txn(txn),
            Outcome::Done(Response::Txn {
                revision,
                succeeded,
            }),
        ) => {
            let branch = if *succeeded {
                &txn.success
            } else {
                &txn.failure
            };
            let puts = branch.iter().any(|op| matches!(op, TxnOp::Put { .. }));
            puts.then_some(*revision)
        }
        _ => None,
    }
}

/// Per lease, the earliest return of a request that used it successfully (a put with it, a
/// revoke of it): its grant had happened by then.
fn lease_uses(ops: &[Operation]) -> HashMap<LeaseId, Nanos> {
    let mut used: HashMap<LeaseId, Nanos> = HashMap::new();
    for op in ops {
        let id = match (&op.request, &op.outcome) {
            (
                Request::Put {
                    lease: Some(id), ..
                },
                Outcome::Done(Response::Put { .. }),
            )
            | (Request::LeaseRevoke { id }, Outcome::Done(Response::LeaseRevoke { .. })) => *id,
            _ => continue,
        };
        let at = used.entry(id).or_insert(op.ret);
        *at = (*at).min(op.ret);
    }
    used
}

/// The puts a request makes: (the txn branch they belong to, key, value); a plain put is in
/// the `true` branch.
fn puts_of(request: &Request) -> Vec<(bool, &str, &str)> {
    match request {
        Request::Put { key, value, .. } => vec![(true, key, value)],
        Request::Txn(txn) => [(true, &txn.success), (false, &txn.failure)]
            .into_iter()
            .flat_map(|(branch, ops)| {
                ops.iter().filter_map(move |op| match op {
                    TxnOp::Put { key, value } => Some((branch, key.as_str(), value.as_str())),
                    TxnOp::Delete { .. } => None,
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{WatchEvent, WatchResponse};

    fn unknown_put(value: &str) -> Operation {
        Operation {
            client: 0,
            call: 5,
            ret: 6,
            request: Request::Put {
                key: "f/a".into(),
                value: value.into(),
                lease: None,
            },
            outcome: Outcome::Unknown("timeout".into()),
        }
    }

    fn watch(end_revision: i64) -> WatchLog {
        WatchLog {
            prefix: "f/".into(),
            start_revision: 2,
            end_revision,
            responses: vec![WatchResponse {
                revision: 9,
                events: vec![WatchEvent {
                    key: "f/a".into(),
                    value: Some("seen".into()),
                    mod_revision: 9,
                }],
            }],
        }
    }

    #[test]
    fn a_complete_watch_settles_unknown_puts() {
        let ops = [unknown_put("seen"), unknown_put("lost")];
        let (settled_ops, settled) = settle(&ops, &[watch(9)]);
        assert_eq!((settled.happened, settled.never_happened), (1, 1));
        assert_eq!(settled_ops.len(), 1);
        assert_eq!(
            settled_ops[0].outcome,
            Outcome::Done(Response::Put { revision: 9 })
        );
        assert_eq!(settled_ops[0].ret, u64::MAX);
    }

    #[test]
    fn a_settled_write_returns_by_the_first_response_at_or_above_its_revision() {
        let read = |call: u64, ret: u64, revision: i64| Operation {
            client: 1,
            call,
            ret,
            request: Request::Get {
                key: "g/b".into(),
                serializable: false,
            },
            outcome: Outcome::Done(Response::Get { revision, kv: None }),
        };
        // Revision 8 says nothing of 9; of the responses at 9 and above, the one at 12
        // returned first.
        let ops = [
            unknown_put("seen"),
            read(10, 20, 8),
            read(30, 50, 9),
            read(31, 40, 12),
        ];
        let (settled_ops, _) = settle(&ops, &[watch(9)]);
        assert_eq!(settled_ops[0].ret, 40);
    }

    #[test]
    fn a_grant_seen_in_use_happened_before_that_use_returned() {
        let grant = |id| Operation {
            client: 0,
            call: 5,
            ret: 6,
            request: Request::LeaseGrant { id, ttl: 60 },
            outcome: Outcome::Unknown("timeout".into()),
        };
        let leased_put = |call: u64, ret: u64| Operation {
            client: 1,
            call,
            ret,
            request: Request::Put {
                key: "h/a".into(),
                value: format!("v{call}"),
                lease: Some(7),
            },
            outcome: Outcome::Done(Response::Put { revision: 3 }),
        };
        let ops = [grant(7), grant(8), leased_put(30, 45), leased_put(10, 35)];
        let (settled_ops, settled) = settle(&ops, &[]);
        assert_eq!((settled.happened, settled.still_unknown), (1, 1));
        assert_eq!(settled_ops[0].outcome, Outcome::Done(Response::LeaseGrant));
        assert_eq!(settled_ops[0].ret, 35);
        assert_eq!(settled_ops[1], ops[1], "a grant never used stays unknown");
    }

    #[test]
    fn a_delete_with_no_lone_delete_event_above_its_floor_is_left_out() {
        let op = |call: u64, ret: u64, request: Request, outcome: Outcome| Operation {
            client: 0,
            call,
            ret,
            request,
            outcome,
        };
        let delete = |call: u64| {
            let request = Request::Delete { key: "f/a".into() };
            op(call, call + 1, request, Outcome::Unknown("timeout".into()))
        };
        let deleted = |revision| {
            Outcome::Done(Response::Delete {
                revision,
                deleted: 1,
            })
        };
        let events = |events: &[(i64, Option<&str>)]| WatchLog {
            prefix: "f/".into(),
            start_revision: 2,
            end_revision: 9,
            responses: events
                .iter()
                .map(|(revision, value)| WatchResponse {
                    revision: *revision,
                    events: vec![WatchEvent {
                        key: "f/a".into(),
                        value: value.map(String::from),
                        mod_revision: *revision,
                    }],
                })
                .collect(),
        };
        let answered_delete = op(10, 20, Request::Delete { key: "f/a".into() }, deleted(4));
        let watch = events(&[(3, Some("x")), (4, None), (6, None), (9, Some("end"))]);
        // Called after revision 4 was answered: the delete at 6, which nothing answered, may
        // be its.
        let (_, settled) = settle(&[answered_delete.clone(), delete(30)], &[watch]);
        assert_eq!(settled.still_unknown, 1);
        // Without the delete at 6, the one at 4 is the answered delete's.
        let watch = events(&[(3, Some("x")), (4, None), (9, Some("end"))]);
        let (ops, settled) = settle(&[answered_delete.clone(), delete(30)], &[watch]);
        assert_eq!((settled.never_happened, ops.len()), (1, 1));
        // Called before anything was answered: the one delete event is still the answered
        // delete's.
        let watch = events(&[(3, Some("x")), (4, None), (9, Some("end"))]);
        let (_, settled) = settle(&[answered_delete, delete(5)], &[watch]);
        assert_eq!(settled.never_happened, 1);
    }

    #[test]
    fn an_incomplete_watch_settles_nothing() {
        let ops = [unknown_put("seen"), unknown_put("lost")];
        let (settled_ops, settled) = settle(&ops, &[watch(12)]);
        assert_eq!(settled.still_unknown, 2);
        assert_eq!(settled_ops, ops);
    }
}
