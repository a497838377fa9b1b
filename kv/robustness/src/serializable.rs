//! Serializable reads may be stale, so they are checked loosely: what they return was written
//! by some request that started before the read returned.
use std::collections::HashMap;

use crate::findings::Findings;
use crate::history::{Operation, Outcome, Request, Response, TxnOp};

pub fn check(ops: &[Operation]) -> Findings {
    let mut findings = Findings::default();
    // (key, value) -> when the first request writing it was called.
    let mut written: HashMap<(&str, &str), u64> = HashMap::new();
    for op in ops {
        let puts: Vec<(&str, &str)> = match &op.request {
            Request::Put { key, value, .. } => vec![(key, value)],
            Request::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .filter_map(|put| match put {
                    TxnOp::Put { key, value } => Some((key.as_str(), value.as_str())),
                    TxnOp::Delete { .. } => None,
                })
                .collect(),
            _ => continue,
        };
        for put in puts {
            let at = written.entry(put).or_insert(op.call);
            *at = (*at).min(op.call);
        }
    }
    for op in ops {
        let (
            Request::Get {
                key,
                serializable: true,
            },
            Outcome::Done(Response::Get { kv, .. }),
        ) = (&op.request, &op.outcome)
        else {
            continue;
        };
        findings.checked += 1;
        let Some(kv) = kv else { continue };
        match written.get(&(key.as_str(), kv.value.as_str())) {
            Some(at) if *at <= op.ret => {}
            _ => findings.problem(format!(
                "serializable read of {key} returned {:?}, which no request wrote before it",
                kv.value
            )),
        }
    }
    findings
}
