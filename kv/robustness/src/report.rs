//! A run's report: per round the operations by type and outcome, the fault, and every check's
//! verdict; written as JSON and as a text table.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::faults::Injected;
use crate::findings::Findings;
use crate::history::{History, Operation, Outcome, Response};
use crate::linearizability;
use crate::patch::Settled;
use crate::replicas::Agreement;

/// How a kind of operation came out.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub ok: usize,
    /// Definite refusals (a lease that does not exist).
    pub refused: usize,
    /// Errors and timeouts: may or may not have happened.
    pub unknown: usize,
}

/// Counts `ops` by request kind.
pub fn count(ops: &[Operation]) -> BTreeMap<String, Counts> {
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for op in ops {
        let entry = counts.entry(op.request.kind().to_string()).or_default();
        match &op.outcome {
            Outcome::Done(Response::LeaseNotFound) => entry.refused += 1,
            Outcome::Done(_) => entry.ok += 1,
            Outcome::Unknown(_) => entry.unknown += 1,
        }
    }
    counts
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub round: usize,
    pub seconds: f64,
    pub fault: Injected,
    pub operations: BTreeMap<String, Counts>,
    /// Writes of unknown outcome the watches settled before the linearizability check.
    pub settled: Settled,
    pub linearizability: linearizability::Report,
    pub watch: Findings,
    pub lease: Findings,
    pub serializable: Findings,
    pub replicas: Agreement,
    /// The round's history, kept only when the round failed.
    pub history: Option<History>,
}

impl RoundReport {
    /// Every check passed (a linearizability check over budget is not a pass).
    pub fn passed(&self) -> bool {
        self.linearizability.verdict == linearizability::Verdict::Linearizable
            && self.fault.error.is_none()
            && self.watch.passed()
            && self.lease.passed()
            && self.serializable.passed()
            && self.replicas.passed
    }

    /// A check found a violation (not merely ran out of budget).
    pub fn violated(&self) -> bool {
        self.linearizability.verdict == linearizability::Verdict::NotLinearizable
            || !self.watch.passed()
            || !self.lease.passed()
            || !self.serializable.passed()
            || !self.replicas.passed
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub store: String,
    /// Whether this was the broken control build (it must fail).
    pub broken: bool,
    pub seed: u64,
    /// Faults asked for that the store cannot take (failpoints on etcd).
    pub skipped_faults: Vec<String>,
    pub rounds: Vec<RoundReport>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.rounds.iter().all(RoundReport::passed)
    }

    pub fn violated(&self) -> bool {
        self.rounds.iter().any(RoundReport::violated)
    }

    /// The operations of every round, by kind.
    pub fn totals(&self) -> BTreeMap<String, Counts> {
        let mut totals: BTreeMap<String, Counts> = BTreeMap::new();
        for round in &self.rounds {
            for (kind, counts) in &round.operations {
                let total = totals.entry(kind.clone()).or_default();
                total.ok += counts.ok;
                total.refused += counts.refused;
                total.unknown += counts.unknown;
            }
        }
        totals
    }

    /// The text table: one line per round, then the operations by kind, then the problems.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let broken = if self.broken { " (broken build)" } else { "" };
        let _ = writeln!(
            out,
            "robustness run against {}{broken}: {verdict}",
            self.store
        );
        let _ = writeln!(
            out,
            "{:>5} {:<30} {:>7} {:>6} {:>8} {:>16} {:>7} {:>8} {:>7} {:>7} {:>8}",
            "round",
            "fault",
            "ops",
            "unknown",
            "seconds",
            "linearizability",
            "check s",
            "watch",
            "lease",
            "serial.",
            "replicas"
        );
        for round in &self.rounds {
            let ops: usize = round
                .operations
                .values()
                .map(|c| c.ok + c.refused + c.unknown)
                .sum();
            let unknown: usize = round.operations.values().map(|c| c.unknown).sum();
            let _ = writeln!(
                out,
                "{:>5} {:<30} {:>7} {:>6} {:>8.1} {:>16} {:>7.2} {:>8} {:>7} {:>7} {:>8}",
                round.round,
                round.fault.name,
                ops,
                unknown,
                round.seconds,
                format!("{:?}", round.linearizability.verdict),
                round.linearizability.seconds,
                verdict_of(&round.watch),
                verdict_of(&round.lease),
                verdict_of(&round.serializable),
                if round.replicas.passed {
                    "equal"
                } else {
                    "DIFFER"
                },
            );
        }
        let _ = writeln!(
            out,
            "\n{:<18} {:>8} {:>8} {:>8}",
            "operation", "ok", "refused", "unknown"
        );
        for (kind, counts) in self.totals() {
            let _ = writeln!(
                out,
                "{kind:<18} {:>8} {:>8} {:>8}",
                counts.ok, counts.refused, counts.unknown
            );
        }
        if !self.skipped_faults.is_empty() {
            let skipped = self.skipped_faults.join(", ");
            let _ = writeln!(out, "\nnot applicable to {}: {skipped}", self.store);
        }
        let _ = writeln!(out, "\nfaults injected:");
        for round in &self.rounds {
            let _ = writeln!(out, "  round {}: {}", round.round, round.fault.description);
        }
        for round in self.rounds.iter().filter(|r| !r.passed()) {
            let _ = writeln!(out, "\nround {} problems:", round.round);
            if let Some(err) = &round.fault.error {
                let _ = writeln!(out, "  fault: {err}");
            }
            for failure in &round.linearizability.failures {
                let _ = writeln!(
                    out,
                    "  linearizability {:?}: {}",
                    failure.items, failure.detail
                );
            }
            for (name, findings) in [
                ("watch", &round.watch),
                ("lease", &round.lease),
                ("serializable", &round.serializable),
            ] {
                for problem in &findings.first_problems {
                    let _ = writeln!(out, "  {name}: {problem}");
                }
            }
            if !round.replicas.passed {
                let _ = writeln!(
                    out,
                    "  replicas: {} (revisions {:?}, hashes {:?})",
                    round.replicas.detail, round.replicas.revisions, round.replicas.hashes
                );
            }
        }
        out
    }

    /// Writes `<dir>/<name>.json` and `<dir>/<name>.txt`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join(format!("{name}.json"));
        let text = dir.join(format!("{name}.txt"));
        let encoded = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&json, encoded)?;
        std::fs::write(&text, self.table())?;
        Ok((json, text))
    }
}

/// A round a saved report kept the history of (failed rounds keep theirs).
#[derive(Debug, Clone)]
pub struct SavedRound {
    pub round: usize,
    pub fault: String,
    pub history: History,
}

/// The histories a report written by [`RunReport::write`] kept, to check them again.
pub fn saved_rounds(json: &str) -> Result<Vec<SavedRound>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Saved {
        rounds: Vec<Round>,
    }
    #[derive(serde::Deserialize)]
    struct Round {
        round: usize,
        fault: Fault,
        history: Option<History>,
    }
    #[derive(serde::Deserialize)]
    struct Fault {
        name: String,
    }
    let saved: Saved = serde_json::from_str(json)?;
    Ok(saved
        .rounds
        .into_iter()
        .filter_map(|r| {
            Some(SavedRound {
                round: r.round,
                fault: r.fault.name,
                history: r.history?,
            })
        })
        .collect())
}

fn verdict_of(findings: &Findings) -> String {
    if findings.passed() {
        format!("ok/{}", findings.checked)
    } else {
        format!("FAIL/{}", findings.problems)
    }
}
