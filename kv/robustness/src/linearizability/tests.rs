//! Hand-written histories: linearizable ones pass, the classic violations do not.
use super::*;
use crate::history::{Compare, CompareTarget, KeyValue, Response, Txn, TxnOp};

fn op(client: usize, call: u64, ret: u64, request: Request, response: Response) -> Operation {
    Operation {
        client,
        call,
        ret,
        request,
        outcome: Outcome::Done(response),
    }
}

fn unknown(client: usize, call: u64, request: Request) -> Operation {
    Operation {
        client,
        call,
        ret: call + 1,
        request,
        outcome: Outcome::Unknown("deadline exceeded".into()),
    }
}

fn put(key: &str, value: &str) -> Request {
    Request::Put {
        key: key.into(),
        value: value.into(),
        lease: None,
    }
}

fn get(key: &str) -> Request {
    Request::Get {
        key: key.into(),
        serializable: false,
    }
}

fn put_ok(revision: i64) -> Response {
    Response::Put { revision }
}

/// A read answered at `revision` seeing `value` written at `modified` (version `version`).
fn read(revision: i64, value: &str, modified: i64, version: i64) -> Response {
    Response::Get {
        revision,
        kv: Some(KeyValue {
            value: value.into(),
            create_revision: modified - version + 1,
            mod_revision: modified,
            version,
            lease: 0,
        }),
    }
}

fn read_none(revision: i64) -> Response {
    Response::Get { revision, kv: None }
}

fn verdict(history: &[Operation]) -> Verdict {
    check(history, Budget::default()).verdict
}

#[test]
fn sequential_puts_and_reads_are_linearizable() {
    let history = [
        op(0, 0, 10, get("a"), read_none(1)),
        op(0, 20, 30, put("a", "1"), put_ok(2)),
        op(1, 40, 50, get("a"), read(2, "1", 2, 1)),
        op(0, 60, 70, put("a", "2"), put_ok(3)),
        op(1, 80, 90, get("a"), read(3, "2", 3, 2)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn concurrent_puts_may_be_read_in_either_order() {
    // Both puts overlap the read: it may see the one applied second, whichever that was.
    let history = [
        op(0, 0, 100, put("a", "1"), put_ok(3)),
        op(1, 0, 100, put("a", "2"), put_ok(2)),
        op(2, 50, 150, get("a"), read(3, "1", 3, 2)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn a_stale_read_is_rejected() {
    let history = [
        op(0, 0, 10, put("a", "1"), put_ok(2)),
        op(0, 20, 30, put("a", "2"), put_ok(3)),
        op(1, 40, 50, get("a"), read(2, "1", 2, 1)),
    ];
    let report = check(&history, Budget::default());
    assert_eq!(report.verdict, Verdict::NotLinearizable);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].items, ["a"]);
}

#[test]
fn a_lost_acknowledged_write_is_rejected() {
    // The put was acknowledged, then a read finds the key missing (as after a power loss that
    // dropped an unsynced log tail).
    let history = [
        op(0, 0, 10, put("a", "1"), put_ok(2)),
        op(1, 20, 30, get("a"), read_none(2)),
    ];
    assert_eq!(verdict(&history), Verdict::NotLinearizable);
}

#[test]
fn a_read_of_a_value_never_written_is_rejected() {
    let history = [
        op(0, 0, 10, put("a", "1"), put_ok(2)),
        op(1, 20, 30, get("a"), read(2, "ghost", 2, 1)),
    ];
    assert_eq!(verdict(&history), Verdict::NotLinearizable);
}

#[test]
fn a_txn_taking_the_wrong_branch_is_rejected() {
    let txn = |succeeded_value: &str| {
        Request::Txn(Txn {
            compares: vec![Compare {
                key: "a".into(),
                target: CompareTarget::Value("1".into()),
            }],
            success: vec![TxnOp::Put {
                key: "b".into(),
                value: succeeded_value.into(),
            }],
            failure: vec![TxnOp::Delete { key: "b".into() }],
        })
    };
    let taken = |succeeded: bool, revision: i64| Response::Txn {
        revision,
        succeeded,
    };
    let right = [
        op(0, 0, 10, put("a", "1"), put_ok(2)),
        op(1, 20, 30, txn("yes"), taken(true, 3)),
        op(1, 40, 50, get("b"), read(3, "yes", 3, 1)),
    ];
    assert_eq!(verdict(&right), Verdict::Linearizable);
    let wrong = [
        op(0, 0, 10, put("a", "1"), put_ok(2)),
        op(1, 20, 30, txn("yes"), taken(false, 2)),
    ];
    assert_eq!(verdict(&wrong), Verdict::NotLinearizable);
}

#[test]
fn a_revision_going_backwards_is_rejected() {
    let writes_backwards = [
        op(0, 0, 10, put("a", "1"), put_ok(5)),
        op(0, 20, 30, put("a", "2"), put_ok(4)),
    ];
    assert_eq!(verdict(&writes_backwards), Verdict::NotLinearizable);
    let read_backwards = [
        op(0, 0, 10, put("a", "1"), put_ok(5)),
        op(1, 20, 30, get("a"), read(4, "1", 5, 1)),
    ];
    assert_eq!(verdict(&read_backwards), Verdict::NotLinearizable);
}

#[test]
fn a_write_of_unknown_outcome_may_or_may_not_have_happened() {
    let seen = [
        unknown(0, 0, put("a", "1")),
        op(1, 20, 30, get("a"), read(7, "1", 7, 1)),
        op(1, 40, 50, get("a"), read(7, "1", 7, 1)),
    ];
    assert_eq!(verdict(&seen), Verdict::Linearizable);
    let not_seen = [
        unknown(0, 0, put("a", "1")),
        op(1, 20, 30, get("a"), read_none(7)),
    ];
    assert_eq!(verdict(&not_seen), Verdict::Linearizable);
    // Once a read saw it, it cannot vanish again.
    let vanished = [
        unknown(0, 0, put("a", "1")),
        op(1, 20, 30, get("a"), read(7, "1", 7, 1)),
        op(1, 40, 50, get("a"), read_none(7)),
    ];
    assert_eq!(verdict(&vanished), Verdict::NotLinearizable);
}

#[test]
fn keys_of_an_acknowledged_revoke_never_come_back() {
    let leased = Request::Put {
        key: "a".into(),
        value: "1".into(),
        lease: Some(9),
    };
    let with_lease = |revision| Response::Get {
        revision,
        kv: Some(KeyValue {
            value: "1".into(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: 9,
        }),
    };
    let mut history = vec![
        op(
            0,
            0,
            10,
            Request::LeaseGrant { id: 9, ttl: 60 },
            Response::LeaseGrant,
        ),
        op(0, 20, 30, leased, put_ok(2)),
        op(1, 40, 50, get("a"), with_lease(2)),
        op(
            0,
            60,
            70,
            Request::LeaseRevoke { id: 9 },
            Response::LeaseRevoke { revision: 3 },
        ),
        op(1, 80, 90, get("a"), read_none(3)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
    history.push(op(1, 100, 110, get("a"), with_lease(3)));
    assert_eq!(verdict(&history), Verdict::NotLinearizable);
}

#[test]
fn keys_are_checked_apart_unless_an_operation_joins_them() {
    let history = [
        op(0, 0, 10, put("a", "1"), put_ok(2)),
        op(1, 0, 10, put("b", "1"), put_ok(3)),
        op(0, 20, 30, get("a"), read(3, "1", 2, 1)),
    ];
    let report = check(&history, Budget::default());
    assert_eq!(
        (report.verdict, report.partitions),
        (Verdict::Linearizable, 2)
    );
    let joined = Request::Txn(Txn {
        compares: vec![Compare {
            key: "a".into(),
            target: CompareTarget::ModRevision(2),
        }],
        success: vec![TxnOp::Delete { key: "b".into() }],
        failure: vec![],
    });
    let mut history = history.to_vec();
    history.push(op(
        2,
        40,
        50,
        joined,
        Response::Txn {
            revision: 4,
            succeeded: true,
        },
    ));
    let report = check(&history, Budget::default());
    assert_eq!(
        (report.verdict, report.partitions),
        (Verdict::Linearizable, 1)
    );
}

#[test]
fn a_search_over_budget_is_unknown_not_a_hang() {
    // Many concurrent writes of unknown outcome and a read no order can explain: the search has
    // to try every subset before it can say no.
    let mut history: Vec<Operation> = (0..24)
        .map(|i| unknown(i, 0, put("a", &format!("v{i}"))))
        .collect();
    history.push(op(99, 10, 20, get("a"), read(3, "never", 3, 1)));
    let by_time = Budget {
        max_steps: u64::MAX,
        max_time: Duration::from_millis(500),
    };
    let started = Instant::now();
    let report = check(&history, by_time);
    assert_eq!(report.verdict, Verdict::Unknown);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(report.failures[0].detail.contains("steps"));
    let by_steps = Budget {
        max_steps: 200,
        max_time: Duration::from_secs(60),
    };
    assert_eq!(check(&history, by_steps).verdict, Verdict::Unknown);
}

const MILLI: u64 = 1_000_000;

/// One client granting `leases` leases of 2 s, one every 300 ms, each put on one of three keys
/// with its lease and read back: most leases outlive their keys' use and are past their TTL.
fn short_leases(leases: i64) -> Vec<Operation> {
    let mut history = Vec::new();
    for i in 0..leases {
        let t = i as u64 * 300 * MILLI;
        let key = format!("k{}", i % 3);
        let value = format!("v{i}");
        let revision = i + 2;
        history.push(op(
            0,
            t,
            t + 10 * MILLI,
            Request::LeaseGrant { id: i + 1, ttl: 2 },
            Response::LeaseGrant,
        ));
        let leased = Request::Put {
            key: key.clone(),
            value: value.clone(),
            lease: Some(i + 1),
        };
        history.push(op(
            0,
            t + 20 * MILLI,
            t + 30 * MILLI,
            leased,
            put_ok(revision),
        ));
        let seen = KeyValue {
            value,
            create_revision: i % 3 + 2,
            mod_revision: revision,
            version: i / 3 + 1,
            lease: i + 1,
        };
        let answer = Response::Get {
            revision,
            kv: Some(seen),
        };
        history.push(op(1, t + 40 * MILLI, t + 50 * MILLI, get(&key), answer));
    }
    history
}

#[test]
fn many_live_leases_past_their_ttl_are_decided_quickly() {
    // Expiring every live lease before every operation would carry 2^leases model states.
    let history = short_leases(40);
    let started = Instant::now();
    let report = check(&history, Budget::default());
    assert_eq!(
        report.verdict,
        Verdict::Linearizable,
        "{:?}",
        report.failures
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(report.hardest.expect("a partition").most_states <= 4);
}

#[test]
fn a_key_whose_lease_ran_out_may_be_gone_but_not_before() {
    let mut history = short_leases(3);
    // Lease 3 was granted at 600 ms with a TTL of 2 s.
    let at = |ms: u64| (ms * MILLI, (ms + 10) * MILLI);
    let (call, ret) = at(2_700);
    let expired = op(2, call, ret, get("k2"), read_none(4));
    history.push(expired);
    assert_eq!(verdict(&history), Verdict::Linearizable);
    let mut early = short_leases(3);
    let (call, ret) = at(2_500);
    early.push(op(2, call, ret, get("k2"), read_none(4)));
    assert_eq!(verdict(&early), Verdict::NotLinearizable);
}

fn settled_verdict(history: &[Operation], watches: &[crate::history::WatchLog]) -> Verdict {
    let (settled, _) = crate::patch::settle(history, watches);
    verdict(&settled)
}

#[test]
fn a_read_older_than_a_settled_write_it_follows_is_rejected() {
    use crate::history::{WatchEvent, WatchLog, WatchResponse};
    // The put of a timed out; the watch saw it at revision 5; a put of b at revision 6
    // returned at 20, so the store had applied 5 by then; a read of a called at 30 answers
    // from revision 4, without it: stale.
    let watch = WatchLog {
        prefix: String::new(),
        start_revision: 2,
        end_revision: 6,
        responses: vec![WatchResponse {
            revision: 6,
            events: vec![
                WatchEvent {
                    key: "a".into(),
                    value: Some("x".into()),
                    mod_revision: 5,
                },
                WatchEvent {
                    key: "b".into(),
                    value: Some("y".into()),
                    mod_revision: 6,
                },
            ],
        }],
    };
    let mut history = vec![
        unknown(0, 0, put("a", "x")),
        op(1, 10, 20, put("b", "y"), put_ok(6)),
        op(2, 30, 40, get("a"), read(6, "x", 5, 1)),
    ];
    assert_eq!(
        settled_verdict(&history, std::slice::from_ref(&watch)),
        Verdict::Linearizable
    );
    history[2] = op(2, 30, 40, get("a"), read_none(4));
    assert_eq!(
        settled_verdict(&history, &[watch]),
        Verdict::NotLinearizable
    );
}

#[test]
fn a_lease_not_found_after_its_grant_was_seen_in_use_is_rejected() {
    let leased = |value: &str| Request::Put {
        key: "a".into(),
        value: value.into(),
        lease: Some(7),
    };
    let mut history = vec![
        unknown(0, 0, Request::LeaseGrant { id: 7, ttl: 3600 }),
        op(1, 10, 20, leased("1"), put_ok(2)),
    ];
    history.push(op(2, 5, 8, leased("0"), Response::LeaseNotFound));
    assert_eq!(settled_verdict(&history, &[]), Verdict::Linearizable);
    history.push(op(2, 30, 40, leased("2"), Response::LeaseNotFound));
    assert_eq!(settled_verdict(&history, &[]), Verdict::NotLinearizable);
}

/// `leases` rounds of: grant a lease, put `a` with it, overwrite `a` without it, then revoke
/// the lease with no answer: whether each revoke happened no later operation can tell.
fn unanswered_revokes_of_unused_leases(leases: i64) -> Vec<Operation> {
    let mut history = Vec::new();
    for i in 0..leases {
        let t = i as u64 * 100;
        let id = i + 1;
        history.push(op(
            0,
            t,
            t + 10,
            Request::LeaseGrant { id, ttl: 3600 },
            Response::LeaseGrant,
        ));
        let leased = Request::Put {
            key: "a".into(),
            value: format!("leased{i}"),
            lease: Some(id),
        };
        history.push(op(0, t + 20, t + 30, leased, put_ok(2 * i + 2)));
        history.push(op(
            0,
            t + 40,
            t + 50,
            put("a", &format!("free{i}")),
            put_ok(2 * i + 3),
        ));
        history.push(unknown(1, t + 60, Request::LeaseRevoke { id }));
    }
    history
}

#[test]
fn leases_nothing_can_observe_any_more_are_forgotten() {
    let history = unanswered_revokes_of_unused_leases(14);
    let report = check(&history, Budget::default());
    assert_eq!(
        report.verdict,
        Verdict::Linearizable,
        "{:?}",
        report.failures
    );
    // Without forgetting: one state per subset of the revokes that happened.
    assert!(report.hardest.expect("a partition").most_states <= 2);
    // A read of an overwritten value: to say no, the search tries every subset of the
    // revokes that are still pending (so fewer of them here).
    let mut broken = unanswered_revokes_of_unused_leases(6);
    broken.push(op(2, 2_000, 2_010, get("a"), read(13, "free3", 13, 12)));
    assert_eq!(verdict(&broken), Verdict::NotLinearizable);
}

/// A complete watch of everything up to revision `end`, with `events` (key, value or a delete,
/// revision).
fn watch_of(end: i64, events: &[(&str, Option<&str>, i64)]) -> crate::history::WatchLog {
    use crate::history::{WatchEvent, WatchLog, WatchResponse};
    WatchLog {
        prefix: String::new(),
        start_revision: 2,
        end_revision: end,
        responses: events
            .iter()
            .map(|(key, value, revision)| WatchResponse {
                revision: *revision,
                events: vec![WatchEvent {
                    key: key.to_string(),
                    value: value.map(String::from),
                    mod_revision: *revision,
                }],
            })
            .collect(),
    }
}

#[test]
fn a_delete_the_watch_shows_never_took_effect_cannot_explain_a_missing_key() {
    let delete = || unknown(1, 20, Request::Delete { key: "a".into() });
    let history = [
        op(0, 0, 10, put("a", "1"), put_ok(2)),
        delete(),
        op(2, 30, 40, put("b", "1"), put_ok(3)),
        op(2, 50, 60, get("a"), read_none(3)),
    ];
    // No delete event of a: the read that misses it is wrong.
    let without = watch_of(3, &[("a", Some("1"), 2), ("b", Some("1"), 3)]);
    assert_eq!(
        settled_verdict(&history, &[without]),
        Verdict::NotLinearizable
    );
    // A delete of a at revision 3 that nothing answered explains it.
    let history = [
        op(0, 0, 10, put("a", "1"), put_ok(2)),
        delete(),
        op(2, 50, 60, get("a"), read_none(3)),
    ];
    let with = watch_of(3, &[("a", Some("1"), 2), ("a", None, 3)]);
    assert_eq!(settled_verdict(&history, &[with]), Verdict::Linearizable);
}
