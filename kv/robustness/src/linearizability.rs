//! Linearizability of a KV history against [`crate::model`]: the Wing-Gong search with
//! Porcupine's improvements (a doubly linked list of call and return events, operations lifted
//! out as they are linearized, a cache of (linearized set, model states) seen, backtracking),
//! run on each partition of the history on its own. Two operations share a partition when they
//! touch a common key or lease (a txn or a put with a lease joins keys). A partition that
//! exceeds its step or time budget is "unknown", never a hang.
//!
//! Requests of unknown outcome never returned as far as the search is concerned (their return
//! is after every other event) and may or may not take effect; reads of unknown outcome and
//! serializable reads are left out (see [`crate::serializable`] for the latter). Run it on a
//! history [`crate::patch`] settled first.
//!
//! The search forgets a lease once no key holds it and no operation still to place names it:
//! nothing can observe it any more, and states that differ only by such leases (a revoke of
//! unknown outcome that did or did not happen) merge instead of doubling the states for good.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{LeaseId, Operation, Outcome, Request};
use crate::model::State;

/// How much work one partition may take before its verdict is "unknown".
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_steps: u64,
    pub max_time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_steps: 20_000_000,
            max_time: Duration::from_secs(60),
        }
    }
}

/// The verdict on a whole history (the worst of its partitions').
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub partitions: usize,
    pub operations_checked: usize,
    /// Partitions that are not linearizable or whose check ran out of budget.
    pub failures: Vec<PartitionFailure>,
    /// How long the whole check took.
    pub seconds: f64,
    /// The partition whose search took the longest.
    pub hardest: Option<PartitionStats>,
}

/// What one partition's search cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionStats {
    /// Keys and leases.
    pub items: usize,
    pub operations: usize,
    /// Operations of unknown outcome (they never return, and may or may not take effect).
    pub unknown: usize,
    pub steps: u64,
    pub seconds: f64,
    /// The most model states the search carried at once.
    pub most_states: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// A partition exceeded its budget.
    Unknown,
}

/// One partition that failed its check.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionFailure {
    pub items: Vec<String>,
    pub operations: usize,
    pub verdict: Verdict,
    pub detail: String,
}

/// Checks `history`: every partition, each within `budget`.
pub fn check(history: &[Operation], budget: Budget) -> Report {
    let started = Instant::now();
    let checked: Vec<&Operation> = history.iter().filter(|op| is_checked(op)).collect();
    let partitions = partition(&checked);
    let mut report = Report {
        verdict: Verdict::Linearizable,
        partitions: partitions.len(),
        operations_checked: checked.len(),
        failures: Vec::new(),
        seconds: 0.0,
        hardest: None,
    };
    for (items, ops) in partitions {
        let (result, stats) = search(&ops, budget);
        let stats = PartitionStats {
            items: items.len(),
            ..stats
        };
        if report
            .hardest
            .as_ref()
            .is_none_or(|h| h.seconds < stats.seconds)
        {
            report.hardest = Some(stats);
        }
        let (verdict, detail) = match result {
            Search::Linearizable => continue,
            Search::Stuck(detail) => (Verdict::NotLinearizable, detail),
            Search::OutOfBudget(detail) => (Verdict::Unknown, detail),
        };
        if verdict == Verdict::NotLinearizable || report.verdict == Verdict::Linearizable {
            report.verdict = verdict;
        }
        report.failures.push(PartitionFailure {
            items,
            operations: ops.len(),
            verdict,
            detail,
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

fn is_checked(op: &Operation) -> bool {
    match (&op.request, &op.outcome) {
        (Request::Get { serializable, .. }, outcome) => {
            !serializable && matches!(outcome, Outcome::Done(_))
        }
        _ => true,
    }
}

/// Groups operations by the connected components of the items they touch.
fn partition<'a>(ops: &[&'a Operation]) -> Vec<(Vec<String>, Vec<&'a Operation>)> {
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let op_items: Vec<Vec<usize>> = ops
        .iter()
        .map(|op| {
            op.items()
                .into_iter()
                .map(|item| {
                    let next = ids.len();
                    *ids.entry(item).or_insert(next)
                })
                .collect()
        })
        .collect();
    let mut parent: Vec<usize> = (0..ids.len()).collect();
    for items in &op_items {
        for pair in items.windows(2) {
            let (a, b) = (root(&mut parent, pair[0]), root(&mut parent, pair[1]));
            parent[a] = b;
        }
    }
    let mut groups: BTreeMap<usize, (Vec<String>, Vec<&Operation>)> = BTreeMap::new();
    for (item, id) in &ids {
        let group = root(&mut parent, *id);
        groups.entry(group).or_default().0.push(item.clone());
    }
    for (op, items) in ops.iter().zip(&op_items) {
        if let Some(first) = items.first() {
            let group = root(&mut parent, *first);
            groups.entry(group).or_default().1.push(op);
        }
    }
    groups.into_values().collect()
}

fn root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

enum Search {
    Linearizable,
    /// No order works; what blocked the longest partial linearization.
    Stuck(String),
    OutOfBudget(String),
}

/// The call and return events of a partition's operations, in time order, as a doubly linked
/// list that the search lifts operations out of and puts them back in.
struct Events {
    /// Per event: the operation and whether it is the call.
    op: Vec<usize>,
    is_call: Vec<bool>,
    /// A call event's return event.
    return_of: Vec<usize>,
    /// Links; index `len` is the head sentinel, `NONE` ends the list.
    next: Vec<usize>,
    prev: Vec<usize>,
}

const NONE: usize = usize::MAX;

impl Events {
    fn new(ops: &[&Operation]) -> Self {
        // (time, calls before returns at equal times: they overlap, the lenient reading)
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            let ret = if op.answered() { op.ret } else { u64::MAX };
            order.push((op.call, 0, i));
            order.push((ret.max(op.call), 1, i));
        }
        order.sort_unstable();
        let len = order.len();
        let mut events = Events {
            op: order.iter().map(|e| e.2).collect(),
            is_call: order.iter().map(|e| e.1 == 0).collect(),
            return_of: vec![NONE; len],
            next: (1..=len).map(|i| if i == len { NONE } else { i }).collect(),
            prev: (0..len).map(|i| if i == 0 { len } else { i - 1 }).collect(),
        };
        events.next.push(if len == 0 { NONE } else { 0 });
        events.prev.push(NONE);
        let mut call_event = vec![NONE; ops.len()];
        for (event, (_, kind, op)) in order.iter().enumerate() {
            if *kind == 0 {
                call_event[*op] = event;
            } else {
                events.return_of[call_event[*op]] = event;
            }
        }
        events
    }

    fn head(&self) -> usize {
        self.next[self.op.len()]
    }

    fn unlink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.next[prev] = next;
        if next != NONE {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.next[prev] = event;
        if next != NONE {
            self.prev[next] = event;
        }
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.return_of[call]);
    }

    /// Puts them back (the reverse order of `lift`).
    fn unlift(&mut self, call: usize) {
        self.relink(self.return_of[call]);
        self.relink(call);
    }
}

/// A set of linearized operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Self {
        Bits(vec![0; len.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The model states the linearization so far can be in (unknown outcomes make several).
type States = Vec<State>;

/// Per lease, how many operations that name it are still to place.
struct LeaseUses(HashMap<LeaseId, usize>);

impl LeaseUses {
    fn new(ops: &[&Operation]) -> Self {
        let mut uses = HashMap::new();
        for id in ops.iter().filter_map(|op| op.request.lease()) {
            *uses.entry(id).or_insert(0) += 1;
        }
        LeaseUses(uses)
    }

    fn placed(&mut self, op: &Operation) {
        if let Some(uses) = op.request.lease().and_then(|id| self.0.get_mut(&id)) {
            *uses -= 1;
        }
    }

    fn unplaced(&mut self, op: &Operation) {
        if let Some(uses) = op.request.lease().and_then(|id| self.0.get_mut(&id)) {
            *uses += 1;
        }
    }

    fn pending(&self, id: LeaseId) -> bool {
        self.0.get(&id).is_some_and(|uses| *uses > 0)
    }
}

/// The states `op` leads to from `states`, once placed (`uses` already counts it placed).
fn step(states: &States, op: &Operation, uses: &LeaseUses) -> States {
    let mut next: States = states
        .iter()
        .flat_map(|state| state.step(op))
        .map(|mut state| {
            state.forget_leases(|id| uses.pending(id));
            state
        })
        .collect();
    next.sort_unstable();
    next.dedup();
    next
}

fn search(ops: &[&Operation], budget: Budget) -> (Search, PartitionStats) {
    let started = Instant::now();
    let mut stats = PartitionStats {
        operations: ops.len(),
        unknown: ops.iter().filter(|op| !op.answered()).count(),
        ..PartitionStats::default()
    };
    let result = run_search(ops, budget, started, &mut stats);
    stats.seconds = started.elapsed().as_secs_f64();
    (result, stats)
}

fn run_search(
    ops: &[&Operation],
    budget: Budget,
    started: Instant,
    stats: &mut PartitionStats,
) -> Search {
    let mut events = Events::new(ops);
    let mut linearized = Bits::new(ops.len());
    let mut seen: HashSet<(Bits, States)> = HashSet::new();
    let mut stack: Vec<(usize, States)> = Vec::new();
    let mut states: States = vec![State::default()];
    let mut deepest = (0, NONE, States::new());
    let mut steps = 0u64;
    let mut uses = LeaseUses::new(ops);
    let mut event = events.head();
    while events.head() != NONE {
        steps += 1;
        stats.steps = steps;
        stats.most_states = stats.most_states.max(states.len());
        // A step can be slow (many possible states): the clock is read at every one.
        if steps > budget.max_steps || started.elapsed() > budget.max_time {
            return Search::OutOfBudget(format!(
                "{} operations, {steps} steps in {:?}, {} of them linearized at most",
                ops.len(),
                started.elapsed(),
                deepest.0
            ));
        }
        let op = events.op[event];
        if events.is_call[event] {
            uses.placed(ops[op]);
            let next = step(&states, ops[op], &uses);
            if !next.is_empty() {
                linearized.set(op);
                if seen.insert((linearized.clone(), next.clone())) {
                    stack.push((event, std::mem::replace(&mut states, next)));
                    events.lift(event);
                    event = events.head();
                    continue;
                }
                linearized.clear(op);
            }
            uses.unplaced(ops[op]);
            event = events.next[event];
        } else {
            // An operation returned before any order could place it: undo the last choice.
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), op, states.clone());
            }
            let Some((call, previous)) = stack.pop() else {
                return Search::Stuck(describe_stuck(ops, &deepest));
            };
            states = previous;
            uses.unplaced(ops[events.op[call]]);
            linearized.clear(events.op[call]);
            events.unlift(call);
            event = events.next[call];
        }
    }
    Search::Linearizable
}

fn describe_stuck(ops: &[&Operation], deepest: &(usize, usize, States)) -> String {
    let (depth, op, states) = deepest;
    let op = ops[*op];
    format!(
        "{} of {} operations linearized at most; then client {} could not be placed: \
         {:?} -> {:?} (called at {} ns, returned at {} ns) from model states {:?}",
        depth,
        ops.len(),
        op.client,
        op.request,
        op.outcome,
        op.call,
        op.ret,
        states
    )
}

#[cfg(test)]
mod tests;
