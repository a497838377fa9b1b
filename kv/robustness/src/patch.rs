//! Settles requests of unknown outcome from what the watches saw, as etcd's robustness suite
//! does before its linearizability check: every value a put writes is unique, so a put or txn
//! that timed out either shows up in a complete watch of its family (it happened, at that
//! event's revision, and the event's value says which branch a txn took) or does not (it never
//! happened). Without this, every unsettled write doubles the states the search must carry.
//!
//! Only a watch that covered the whole round (from its start to the end marker) settles
//! anything; deletes, lease grants and revokes of unknown outcome stay unknown. A settled
//! request keeps no return time (it may have been applied any time after its call). If a watch
//! dropped an event, a read may later show a value this step thought never written: the round
//! still fails, on linearizability.
use std::collections::HashMap;

use serde::Serialize;

use crate::history::{Operation, Outcome, Request, Response, TxnOp, WatchLog};

/// What settling did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Settled {
    /// Requests of unknown outcome a watch showed happened.
    pub happened: usize,
    /// Requests of unknown outcome no complete watch showed: left out.
    pub never_happened: usize,
    /// Requests of unknown outcome no complete watch covered: still unknown.
    pub still_unknown: usize,
}

/// `ops` with every unknown put and txn settled by `watches` where one covered its keys.
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
    let mut settled = Settled::default();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        if op.answered() {
            out.push(op.clone());
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
            ret: u64::MAX,
            outcome: Outcome::Done(response),
            ..op.clone()
        });
    }
    (out, settled)
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
    fn an_incomplete_watch_settles_nothing() {
        let ops = [unknown_put("seen"), unknown_put("lost")];
        let (settled_ops, settled) = settle(&ops, &[watch(12)]);
        assert_eq!(settled.still_unknown, 2);
        assert_eq!(settled_ops, ops);
    }
}
