//! etcd's watch guarantees, checked against the history: events ordered by revision, none
//! twice, one revision's events (a txn's) in one response, no event before the start revision,
//! no acknowledged write missing between the start and the last revision seen, no event that no
//! request wrote, and a watch reopened from a revision delivering the same events as the first.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::findings::Findings;
use crate::history::{History, Operation, Outcome, Request, Response, TxnOp, WatchLog};

/// Checks every watch (and every resumed one) of `history`.
pub fn check(history: &History) -> Findings {
    let mut findings = Findings::default();
    let writes = Writes::of(&history.operations);
    for log in history.watches.iter().chain(&history.resumed) {
        check_log(log, &writes, &mut findings);
    }
    for resumed in &history.resumed {
        match history.watches.iter().find(|w| w.prefix == resumed.prefix) {
            Some(first) => check_resumed(first, resumed, &mut findings),
            None => findings.problem(format!("resumed watch on {} has no first", resumed.prefix)),
        }
    }
    findings
}

/// What the history says was written, by key.
struct Writes {
    /// Acknowledged writes: (key, revision) -> the value (`None`: a delete).
    acknowledged: BTreeMap<(String, i64), Option<String>>,
    /// Every value any put tried to write, by key, and the revision it was acknowledged at.
    attempted: HashMap<(String, String), Option<i64>>,
}

impl Writes {
    fn of(ops: &[Operation]) -> Self {
        let mut writes = Writes {
            acknowledged: BTreeMap::new(),
            attempted: HashMap::new(),
        };
        for op in ops {
            let revision = match &op.outcome {
                Outcome::Done(Response::Put { revision }) => Some(*revision),
                Outcome::Done(Response::Txn { revision, .. }) => Some(*revision),
                Outcome::Done(Response::Delete { revision, deleted }) if *deleted > 0 => {
                    Some(*revision)
                }
                _ => None,
            };
            match &op.request {
                Request::Put { key, value, .. } => writes.put(key, value, revision),
                Request::Delete { key } => {
                    if let Some(rev) = revision {
                        writes.acknowledged.insert((key.clone(), rev), None);
                    }
                }
                Request::Txn(txn) => {
                    let taken = match &op.outcome {
                        Outcome::Done(Response::Txn { succeeded, .. }) => Some(*succeeded),
                        _ => None,
                    };
                    for (branch, ops) in [(true, &txn.success), (false, &txn.failure)] {
                        for put in ops {
                            // A txn's deletes may have found nothing: only its puts are sure.
                            if let TxnOp::Put { key, value } = put {
                                let acked = taken.filter(|t| *t == branch).and(revision);
                                writes.put(key, value, acked);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        writes
    }

    fn put(&mut self, key: &str, value: &str, revision: Option<i64>) {
        if let Some(rev) = revision {
            let write = (key.to_string(), rev);
            self.acknowledged.insert(write, Some(value.to_string()));
        }
        self.attempted
            .insert((key.to_string(), value.to_string()), revision);
    }
}

fn check_log(log: &WatchLog, writes: &Writes, findings: &mut Findings) {
    let name = format!("watch {} from {}", log.prefix, log.start_revision);
    let mut last = 0;
    let mut seen = BTreeSet::new();
    let mut response_of_revision: BTreeMap<i64, usize> = BTreeMap::new();
    for (index, response) in log.responses.iter().enumerate() {
        for event in &response.events {
            findings.checked += 1;
            let rev = event.mod_revision;
            if rev < last {
                findings.problem(format!("{name}: revision {rev} after {last}"));
            }
            last = last.max(rev);
            if rev < log.start_revision {
                findings.problem(format!("{name}: event at {rev} before the start"));
            }
            if !seen.insert((event.key.clone(), rev)) {
                findings.problem(format!("{name}: {} at {rev} twice", event.key));
            }
            if *response_of_revision.entry(rev).or_insert(index) != index {
                findings.problem(format!("{name}: revision {rev} split across responses"));
            }
            if let Some(value) = &event.value {
                let attempt = writes.attempted.get(&(event.key.clone(), value.clone()));
                match attempt {
                    None => findings.problem(format!(
                        "{name}: {} = {value:?} at {rev} was never written",
                        event.key
                    )),
                    Some(Some(acked)) if *acked != rev => findings.problem(format!(
                        "{name}: {} = {value:?} at {rev}, acknowledged at {acked}",
                        event.key
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    if log.end_revision > 0 && log.last_revision() < log.end_revision {
        findings.problem(format!(
            "{name}: reached {} only, not {}",
            log.last_revision(),
            log.end_revision
        ));
    }
    let revisions = log.start_revision..=log.last_revision();
    let expected = writes
        .acknowledged
        .iter()
        .filter(|((key, rev), _)| key.starts_with(&log.prefix) && revisions.contains(rev));
    for ((key, rev), value) in expected {
        if !seen.contains(&(key.clone(), *rev)) {
            findings.problem(format!(
                "{name}: acknowledged write {key} = {value:?} at {rev} missing (gap)"
            ));
        }
    }
}

/// The resumed watch delivers exactly the first one's events from its start revision on.
fn check_resumed(first: &WatchLog, resumed: &WatchLog, findings: &mut Findings) {
    let end = first.last_revision();
    let window = |log: &WatchLog| -> Vec<(String, Option<String>, i64)> {
        log.events()
            .filter(|e| e.mod_revision >= resumed.start_revision && e.mod_revision <= end)
            .map(|e| (e.key.clone(), e.value.clone(), e.mod_revision))
            .collect()
    };
    let (expected, got) = (window(first), window(resumed));
    findings.checked += expected.len();
    if resumed.last_revision() < end {
        findings.problem(format!(
            "watch {} resumed from {} reached {} only, the first reached {end}",
            resumed.prefix,
            resumed.start_revision,
            resumed.last_revision()
        ));
    } else if expected != got {
        let at = expected.iter().zip(&got).position(|(a, b)| a != b);
        findings.problem(format!(
            "watch {} resumed from {}: {} events, the first had {}; first difference at {:?}",
            resumed.prefix,
            resumed.start_revision,
            got.len(),
            expected.len(),
            at.map(|i| (&expected[i], &got[i]))
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{WatchEvent, WatchResponse};

    fn put_op(key: &str, value: &str, revision: i64) -> Operation {
        Operation {
            client: 0,
            call: 0,
            ret: 1,
            request: Request::Put {
                key: key.into(),
                value: value.into(),
                lease: None,
            },
            outcome: Outcome::Done(Response::Put { revision }),
        }
    }

    fn event(key: &str, value: &str, rev: i64) -> WatchEvent {
        WatchEvent {
            key: key.into(),
            value: Some(value.into()),
            mod_revision: rev,
        }
    }

    fn log(start: i64, responses: Vec<Vec<WatchEvent>>) -> WatchLog {
        WatchLog {
            prefix: "f/".into(),
            start_revision: start,
            end_revision: 0,
            responses: responses
                .into_iter()
                .map(|events| WatchResponse {
                    revision: events.last().map_or(0, |e| e.mod_revision),
                    events,
                })
                .collect(),
        }
    }

    fn history(watch: WatchLog) -> History {
        History {
            operations: vec![
                put_op("f/a", "1", 2),
                put_op("f/b", "2", 3),
                put_op("f/a", "3", 4),
            ],
            watches: vec![watch],
            resumed: vec![],
        }
    }

    #[test]
    fn a_complete_ordered_watch_passes() {
        let watch = log(
            2,
            vec![
                vec![event("f/a", "1", 2)],
                vec![event("f/b", "2", 3), event("f/a", "3", 4)],
            ],
        );
        let findings = check(&history(watch));
        assert!(findings.passed(), "{:?}", findings.first_problems);
        assert_eq!(findings.checked, 3);
    }

    #[test]
    fn a_missing_acknowledged_write_is_a_gap() {
        let watch = log(
            2,
            vec![vec![event("f/a", "1", 2)], vec![event("f/a", "3", 4)]],
        );
        let findings = check(&history(watch));
        assert_eq!(findings.problems, 1);
        assert!(findings.first_problems[0].contains("gap"));
    }

    #[test]
    fn duplicates_disorder_and_phantoms_are_problems() {
        let watch = log(
            2,
            vec![
                vec![event("f/a", "1", 2), event("f/b", "2", 3)],
                vec![event("f/b", "2", 3)],
                vec![event("f/a", "3", 4), event("f/a", "ghost", 4)],
                vec![event("f/a", "1", 2)],
            ],
        );
        let problems = check(&history(watch)).first_problems.join("\n");
        for expected in [
            "twice",
            "split across",
            "never written",
            "revision 2 after 4",
        ] {
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
    }

    #[test]
    fn a_resumed_watch_must_deliver_the_same_events() {
        let first = log(
            2,
            vec![vec![event("f/a", "1", 2)], vec![event("f/b", "2", 3)]],
        );
        let mut history = history(first);
        history.operations.pop();
        history.resumed = vec![log(3, vec![vec![event("f/b", "2", 3)]])];
        assert!(check(&history).passed());
        history.resumed = vec![log(2, vec![vec![event("f/b", "2", 3)]])];
        assert!(!check(&history).passed());
    }
}
