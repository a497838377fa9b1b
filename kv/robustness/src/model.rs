//! A model of etcd's key space for the keys of one partition: each key's value, create and mod
//! revision, version and lease; the live leases; and the highest revision the linearization has
//! shown so far. Revisions are global in etcd, but a partition sees only its own writes, so the
//! model checks what a partition can: a write's revision is above every revision seen before it
//! in the linearization, a read's revision is not below it, and a key's mod revision is the
//! revision of the write that made it.
//!
//! A lease may expire by itself (its keys deleted), but not before its TTL has run from its
//! grant's call: etcd and shoal both start a lease's clock on the leader once the grant is
//! applied, and a new leader starts it afresh. The model lets a lease expire only where that
//! shows, lazily: just before an operation that names the lease or touches one of its keys,
//! and only if that operation can have taken effect after the lease's earliest expiry. An
//! expiry commutes with every operation that neither names the lease nor touches its keys, so
//! postponing it to the first one that does loses no linearization; expiring eagerly before
//! every operation would double the states for every live lease.
//!
//! A request whose outcome is unknown (an error or a timeout) may or may not have happened: the
//! model offers both states, and a write that may have happened has a revision the model only
//! knows to be above the floor of its time ([`Rev::After`]) until a read shows it.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::history::{
    Compare, CompareTarget, KeyValue, LeaseId, Nanos, Operation, Outcome, Request, Response, Txn,
    TxnOp,
};

/// A revision the model knows, or only knows to be above some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rev {
    Known(i64),
    /// Made by a write whose outcome was unknown: some revision above this one.
    After(i64),
}

impl Rev {
    /// Whether a store's answer `seen` can be this revision.
    fn admits(self, seen: i64) -> bool {
        match self {
            Rev::Known(rev) => rev == seen,
            Rev::After(floor) => seen > floor,
        }
    }
}

/// One live key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyState {
    pub value: String,
    pub create: Rev,
    pub modified: Rev,
    pub version: i64,
    /// 0: no lease.
    pub lease: LeaseId,
}

/// The model's state for one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct State {
    pub keys: BTreeMap<String, KeyState>,
    /// The live leases, each with the earliest time it can expire (its grant's call plus its
    /// TTL, on the history's clock).
    pub leases: BTreeMap<LeaseId, Nanos>,
    /// The highest revision a response in the linearization so far carried.
    pub floor: i64,
    /// No operation after this point of the linearization can have taken effect before this
    /// time: a lease expired before it, and leases expire no earlier than their TTL allows.
    pub not_before: Nanos,
}

/// The revision a write takes effect at.
#[derive(Debug, Clone, Copy)]
enum WriteRev {
    /// From the response.
    Known(i64),
    /// The write's outcome is unknown.
    Unknown,
}

impl State {
    /// Every state `op` can lead to from this one; empty when its outcome is impossible here.
    pub fn step(&self, op: &Operation) -> Vec<State> {
        let latest = op.latest();
        if latest <= self.not_before {
            return Vec::new();
        }
        let (request, call) = (&op.request, op.call);
        self.expirations(request, latest)
            .iter()
            .flat_map(|state| match &op.outcome {
                Outcome::Done(response) => state.step_known(request, response, call),
                Outcome::Unknown(_) => {
                    let mut states = vec![state.clone()];
                    states.extend(state.step_unknown(request, call));
                    states
                }
            })
            .collect()
    }

    /// This state and every state the expiry of leases that matter to `request` leads to: the
    /// lease it names and the leases of the keys it touches, those that can have expired
    /// before `latest`.
    fn expirations(&self, request: &Request, latest: Nanos) -> Vec<State> {
        let mut relevant: BTreeSet<LeaseId> = request.lease().into_iter().collect();
        for key in request.keys() {
            relevant.extend(self.keys.get(key).map(|k| k.lease).filter(|id| *id != 0));
        }
        let mut states = vec![self.clone()];
        for id in relevant {
            let Some(&earliest) = self.leases.get(&id).filter(|at| **at < latest) else {
                continue;
            };
            let expired: Vec<State> = states
                .iter()
                .map(|state| {
                    let mut next = state.clone();
                    next.revoke(id);
                    next.not_before = next.not_before.max(earliest);
                    next
                })
                .collect();
            states.extend(expired);
        }
        states
    }

    fn step_known(&self, request: &Request, response: &Response, call: Nanos) -> Vec<State> {
        match (request, response) {
            (Request::Get { key, .. }, Response::Get { revision, kv }) => {
                self.read(key, *revision, kv.as_ref()).into_iter().collect()
            }
            (Request::Put { key, value, lease }, Response::Put { revision }) => {
                if *revision <= self.floor || lease.is_some_and(|id| !self.leases.contains_key(&id))
                {
                    return Vec::new();
                }
                let mut next = self.clone();
                next.put(key, value, lease.unwrap_or(0), WriteRev::Known(*revision));
                next.floor = *revision;
                vec![next]
            }
            (Request::Put { lease, .. }, Response::LeaseNotFound) => {
                let missing = lease.is_some_and(|id| !self.leases.contains_key(&id));
                missing.then(|| self.clone()).into_iter().collect()
            }
            (Request::Delete { key }, Response::Delete { revision, deleted }) => {
                let exists = self.keys.contains_key(key);
                if *deleted != i64::from(exists) || !self.revision_fits(*revision, exists) {
                    return Vec::new();
                }
                let mut next = self.clone();
                next.keys.remove(key);
                next.floor = *revision;
                vec![next]
            }
            (
                Request::Txn(txn),
                Response::Txn {
                    revision,
                    succeeded,
                },
            ) => self
                .compare_outcomes(&txn.compares)
                .into_iter()
                .filter(|(_, holds)| holds == succeeded)
                .filter_map(|(state, _)| state.txn(txn, *succeeded, WriteRev::Known(*revision)))
                .collect(),
            (Request::LeaseGrant { id, ttl }, Response::LeaseGrant) => {
                self.grant(*id, *ttl, call).into_iter().collect()
            }
            (Request::LeaseRevoke { id }, Response::LeaseRevoke { revision }) => {
                if !self.leases.contains_key(id) {
                    return Vec::new();
                }
                let mut next = self.clone();
                let deleted = next.revoke(*id);
                if !self.revision_fits(*revision, deleted) {
                    return Vec::new();
                }
                next.floor = *revision;
                vec![next]
            }
            (Request::LeaseRevoke { id }, Response::LeaseNotFound) => {
                let missing = !self.leases.contains_key(id);
                missing.then(|| self.clone()).into_iter().collect()
            }
            // An answer of another kind than the request: never linearizable.
            _ => Vec::new(),
        }
    }

    /// The states a request of unknown outcome leads to if it took effect.
    fn step_unknown(&self, request: &Request, call: Nanos) -> Vec<State> {
        match request {
            // A read changes nothing.
            Request::Get { .. } => Vec::new(),
            Request::Put { key, value, lease } => {
                if lease.is_some_and(|id| !self.leases.contains_key(&id)) {
                    return Vec::new();
                }
                let mut next = self.clone();
                next.put(key, value, lease.unwrap_or(0), WriteRev::Unknown);
                vec![next]
            }
            Request::Delete { key } => {
                let mut next = self.clone();
                next.keys.remove(key).map(|_| next).into_iter().collect()
            }
            Request::Txn(txn) => self
                .compare_outcomes(&txn.compares)
                .into_iter()
                .filter_map(|(state, holds)| state.txn(txn, holds, WriteRev::Unknown))
                .collect(),
            Request::LeaseGrant { id, ttl } => self.grant(*id, *ttl, call).into_iter().collect(),
            Request::LeaseRevoke { id } => {
                if !self.leases.contains_key(id) {
                    return Vec::new();
                }
                let mut next = self.clone();
                next.revoke(*id);
                vec![next]
            }
        }
    }

    /// Drops the leases nothing can observe any more: no key holds them, and `named(id)` says
    /// no operation still to place names them. Their presence then changes no answer (they can
    /// expire only where an operation names them or touches their keys), and forgetting them
    /// lets states that differ only there merge.
    pub fn forget_leases(&mut self, named: impl Fn(LeaseId) -> bool) {
        let keys = &self.keys;
        self.leases
            .retain(|id, _| named(*id) || keys.values().any(|k| k.lease == *id));
    }

    /// A linearizable read of `key` answered at `revision` with `kv`.
    fn read(&self, key: &str, revision: i64, kv: Option<&KeyValue>) -> Option<State> {
        if revision < self.floor {
            return None;
        }
        let mut next = self.clone();
        next.floor = revision;
        match (next.keys.get_mut(key), kv) {
            (None, None) => Some(next),
            (Some(state), Some(kv)) => {
                let fits = state.value == kv.value
                    && state.version == kv.version
                    && state.lease == kv.lease
                    && state.modified.admits(kv.mod_revision)
                    && state.create.admits(kv.create_revision)
                    && kv.create_revision <= kv.mod_revision
                    && kv.mod_revision <= revision;
                // The read shows what an unknown write's revision was.
                state.modified = Rev::Known(kv.mod_revision);
                state.create = Rev::Known(kv.create_revision);
                fits.then_some(next)
            }
            _ => None,
        }
    }

    /// Whether a response revision fits: above the floor for a change, not below it otherwise.
    fn revision_fits(&self, revision: i64, changed: bool) -> bool {
        if changed {
            revision > self.floor
        } else {
            revision >= self.floor
        }
    }

    fn put(&mut self, key: &str, value: &str, lease: LeaseId, rev: WriteRev) {
        let modified = match rev {
            WriteRev::Known(rev) => Rev::Known(rev),
            WriteRev::Unknown => Rev::After(self.floor),
        };
        let (create, version) = match self.keys.get(key) {
            Some(old) => (old.create, old.version + 1),
            None => (modified, 1),
        };
        let state = KeyState {
            value: value.to_string(),
            create,
            modified,
            version,
            lease,
        };
        self.keys.insert(key.to_string(), state);
    }

    /// A new lease granted by a request called at `call`; `None` if the ID is taken.
    fn grant(&self, id: LeaseId, ttl: i64, call: Nanos) -> Option<State> {
        if self.leases.contains_key(&id) {
            return None;
        }
        let mut next = self.clone();
        let ttl = Duration::from_secs(ttl.max(0).unsigned_abs());
        let earliest = call.saturating_add(ttl.as_nanos().try_into().unwrap_or(Nanos::MAX));
        next.leases.insert(id, earliest);
        Some(next)
    }

    /// Ends lease `id` and deletes its keys; whether any key went.
    fn revoke(&mut self, id: LeaseId) -> bool {
        self.leases.remove(&id);
        let before = self.keys.len();
        self.keys.retain(|_, state| state.lease != id);
        self.keys.len() != before
    }

    /// The ways the compares can come out: (state, whether all hold). A compare on the mod
    /// revision of a key written with unknown outcome can go either way; when it holds, the
    /// state learns the revision.
    fn compare_outcomes(&self, compares: &[Compare]) -> Vec<(State, bool)> {
        let mut outcomes = vec![(self.clone(), true)];
        for compare in compares {
            let mut next = Vec::new();
            for (state, holds) in outcomes {
                for (state, this) in state.compare(compare) {
                    next.push((state, holds && this));
                }
            }
            outcomes = next;
        }
        outcomes
    }

    fn compare(&self, compare: &Compare) -> Vec<(State, bool)> {
        let key = self.keys.get(&compare.key);
        match (&compare.target, key) {
            (CompareTarget::Value(value), key) => {
                vec![(self.clone(), key.is_some_and(|k| &k.value == value))]
            }
            (CompareTarget::ModRevision(0), key) => vec![(self.clone(), key.is_none())],
            (CompareTarget::ModRevision(_), None) => vec![(self.clone(), false)],
            (CompareTarget::ModRevision(rev), Some(state)) => match state.modified {
                Rev::Known(known) => vec![(self.clone(), known == *rev)],
                Rev::After(floor) if *rev <= floor => vec![(self.clone(), false)],
                Rev::After(_) => {
                    let mut learned = self.clone();
                    if let Some(state) = learned.keys.get_mut(&compare.key) {
                        state.modified = Rev::Known(*rev);
                    }
                    vec![(learned, true), (self.clone(), false)]
                }
            },
        }
    }

    /// Runs the branch the compares chose, at `rev`; `None` when the revision cannot be.
    fn txn(&self, txn: &Txn, succeeded: bool, rev: WriteRev) -> Option<State> {
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut next = self.clone();
        let mut changed = false;
        for op in ops {
            match op {
                TxnOp::Put { key, value } => {
                    next.put(key, value, 0, rev);
                    changed = true;
                }
                TxnOp::Delete { key } => changed |= next.keys.remove(key).is_some(),
            }
        }
        if let WriteRev::Known(revision) = rev {
            if !self.revision_fits(revision, changed) {
                return None;
            }
            next.floor = revision;
        }
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    /// `request` called at `call` s and answered `response` at `ret` s.
    fn at(call: f64, ret: f64, request: Request, response: Response) -> Operation {
        Operation {
            client: 0,
            call: (call * SECOND as f64) as Nanos,
            ret: (ret * SECOND as f64) as Nanos,
            request,
            outcome: Outcome::Done(response),
        }
    }

    fn done(request: Request, response: Response) -> Operation {
        at(0.0, 0.001, request, response)
    }

    #[test]
    fn a_put_sets_the_mod_revision_its_response_names() {
        let state = State::default();
        let next = state.step(&done(put("a", "1"), Response::Put { revision: 5 }));
        assert_eq!(next.len(), 1);
        let key = &next[0].keys["a"];
        assert_eq!(
            (key.modified, key.create, key.version),
            (Rev::Known(5), Rev::Known(5), 1)
        );
        assert_eq!(next[0].floor, 5);
    }

    #[test]
    fn a_write_below_the_floor_is_impossible() {
        let state = State {
            floor: 7,
            ..State::default()
        };
        let next = state.step(&done(put("a", "1"), Response::Put { revision: 7 }));
        assert!(next.is_empty());
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let op = Operation {
            outcome: Outcome::Unknown("timeout".into()),
            ..done(put("a", "1"), Response::Put { revision: 0 })
        };
        let next = State::default().step(&op);
        assert_eq!(next.len(), 2);
        assert!(next[0].keys.is_empty());
        assert_eq!(next[1].keys["a"].modified, Rev::After(0));
    }

    #[test]
    fn a_revoke_deletes_the_keys_of_its_lease() {
        let grant = Request::LeaseGrant { id: 9, ttl: 60 };
        let state = &State::default().step(&done(grant, Response::LeaseGrant))[0];
        let leased = Request::Put {
            key: "a".into(),
            value: "1".into(),
            lease: Some(9),
        };
        let state = &state.step(&done(leased, Response::Put { revision: 2 }))[0];
        let revoke = Request::LeaseRevoke { id: 9 };
        let revoked = &state.step(&done(revoke, Response::LeaseRevoke { revision: 3 }));
        assert_eq!(revoked.len(), 1);
        assert!(revoked[0].keys.is_empty() && revoked[0].leases.is_empty());
    }

    /// A state with lease 4 of `ttl` s granted at 0 s and key `a` put with it at revision 2.
    fn leased_key(ttl: i64) -> State {
        let grant = Request::LeaseGrant { id: 4, ttl };
        let state = &State::default().step(&at(0.0, 0.1, grant, Response::LeaseGrant))[0];
        let leased = Request::Put {
            key: "a".into(),
            value: "1".into(),
            lease: Some(4),
        };
        let put = state.step(&at(0.2, 0.3, leased, Response::Put { revision: 2 }));
        assert_eq!(put.len(), 1, "a put with the lease needs it alive");
        put[0].clone()
    }

    fn get_a() -> Request {
        Request::Get {
            key: "a".into(),
            serializable: false,
        }
    }

    #[test]
    fn a_lease_may_expire_with_its_keys_once_its_ttl_has_run() {
        let state = leased_key(2);
        let gone = state.step(&at(
            2.5,
            2.6,
            get_a(),
            Response::Get {
                revision: 3,
                kv: None,
            },
        ));
        assert_eq!(gone.len(), 1);
        assert!(gone[0].leases.is_empty() && gone[0].keys.is_empty());
        assert_eq!(gone[0].not_before, 2 * SECOND);
        let leased = Request::Put {
            key: "a".into(),
            value: "2".into(),
            lease: Some(4),
        };
        let refused = gone[0].step(&at(2.7, 2.8, leased, Response::LeaseNotFound));
        assert_eq!(refused.len(), 1, "an expired lease is not found");
    }

    #[test]
    fn a_lease_never_expires_before_its_ttl_has_run() {
        let state = leased_key(2);
        // Answered 1.9 s after the grant was called: the lease's clock had not run out.
        let early = at(
            1.5,
            1.9,
            get_a(),
            Response::Get {
                revision: 3,
                kv: None,
            },
        );
        assert!(state.step(&early).is_empty());
    }

    #[test]
    fn nothing_after_an_expiry_takes_effect_before_the_lease_could_expire() {
        // Two reads overlap, and the linearization puts the one that saw the lease expired
        // first: the other, answered before the TTL ran out, cannot come after it.
        let state = leased_key(2);
        let gone = &state.step(&at(
            1.0,
            2.5,
            get_a(),
            Response::Get {
                revision: 3,
                kv: None,
            },
        ))[0];
        let read = Request::Get {
            key: "b".into(),
            serializable: false,
        };
        let before = at(
            1.2,
            1.8,
            read,
            Response::Get {
                revision: 3,
                kv: None,
            },
        );
        assert!(gone.step(&before).is_empty());
        assert_eq!(state.step(&before).len(), 1);
    }

    #[test]
    fn a_lease_expires_only_where_an_operation_touches_it() {
        let state = leased_key(2);
        let elsewhere = Request::Get {
            key: "b".into(),
            serializable: false,
        };
        let next = state.step(&at(
            3.0,
            3.1,
            elsewhere,
            Response::Get {
                revision: 2,
                kv: None,
            },
        ));
        assert_eq!(
            next.len(),
            1,
            "no branch for a lease the read does not touch"
        );
        assert!(next[0].leases.contains_key(&4));
        let touched = state.step(&at(
            3.0,
            3.1,
            get_a(),
            Response::Get {
                revision: 2,
                kv: None,
            },
        ));
        assert_eq!(touched.len(), 1, "the read of its key saw it expired");
        assert!(touched[0].leases.is_empty());
    }
}
