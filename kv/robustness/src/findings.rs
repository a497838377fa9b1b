//! What a check found: how much it looked at and the problems, the first few spelled out.
use serde::Serialize;

/// Problems spelled out per check; the rest are only counted.
const SPELLED_OUT: usize = 20;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// How many things (events, reads, operations) the check looked at.
    pub checked: usize,
    pub problems: usize,
    pub first_problems: Vec<String>,
}

impl Findings {
    pub fn problem(&mut self, problem: String) {
        self.problems += 1;
        if self.first_problems.len() < SPELLED_OUT {
            self.first_problems.push(problem);
        }
    }

    pub fn passed(&self) -> bool {
        self.problems == 0
    }
}
