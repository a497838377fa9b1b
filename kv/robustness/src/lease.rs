//! Lease semantics: once a revoke is acknowledged, no read that starts afterwards sees a key
//! attached to that lease. (The linearizability model checks the same through the keys' state;
//! this check says it in the lease's own words, also for reads outside any one partition.)
use std::collections::HashMap;

use crate::findings::Findings;
use crate::history::{LeaseId, Operation, Outcome, Request, Response};

pub fn check(ops: &[Operation]) -> Findings {
    let mut findings = Findings::default();
    // Lease -> when its revoke was acknowledged (the earliest, if several).
    let mut revoked: HashMap<LeaseId, u64> = HashMap::new();
    for op in ops {
        if let (Request::LeaseRevoke { id }, Outcome::Done(Response::LeaseRevoke { .. })) =
            (&op.request, &op.outcome)
        {
            let at = revoked.entry(*id).or_insert(op.ret);
            *at = (*at).min(op.ret);
        }
    }
    for op in ops {
        let (Request::Get { key, serializable }, Outcome::Done(Response::Get { kv, .. })) =
            (&op.request, &op.outcome)
        else {
            continue;
        };
        // A serializable read may come from a member that has not applied the revoke yet.
        if *serializable {
            continue;
        }
        findings.checked += 1;
        let Some(kv) = kv.as_ref().filter(|kv| kv.lease != 0) else {
            continue;
        };
        if let Some(at) = revoked.get(&kv.lease).filter(|at| op.call > **at) {
            findings.problem(format!(
                "{key} read at {} ns still held by lease {}, revoked at {at} ns",
                op.call, kv.lease
            ));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::KeyValue;

    fn read(call: u64, lease: LeaseId) -> Operation {
        Operation {
            client: 1,
            call,
            ret: call + 5,
            request: Request::Get {
                key: "a".into(),
                serializable: false,
            },
            outcome: Outcome::Done(Response::Get {
                revision: 3,
                kv: Some(KeyValue {
                    value: "1".into(),
                    create_revision: 2,
                    mod_revision: 2,
                    version: 1,
                    lease,
                }),
            }),
        }
    }

    #[test]
    fn a_leased_key_read_after_its_revoke_is_a_problem() {
        let revoke = Operation {
            client: 0,
            call: 10,
            ret: 20,
            request: Request::LeaseRevoke { id: 7 },
            outcome: Outcome::Done(Response::LeaseRevoke { revision: 3 }),
        };
        // Overlapping the revoke is fine; starting after its acknowledgement is not.
        let findings = check(&[read(15, 7), revoke, read(30, 7), read(40, 8)]);
        assert_eq!((findings.checked, findings.problems), (3, 1));
        assert!(findings.first_problems[0].contains("lease 7"));
    }
}
