//! fleet's `[X-Fleet]` section: where a unit may run.

use super::{Assignment, UnitFile, UnitName, WordsError, split_words};
use crate::glob::glob_match;

const SECTION: &str = "X-Fleet";

/// A `[X-Fleet]` error: an unknown option, a malformed value or a combination fleet refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct RequirementsError {
    pub file: String,
    /// Line of the offending assignment; 0 when the error is about the section as a whole.
    pub line: usize,
    pub message: String,
}

/// One `MachineMetadata` term: `key=value` or `key!=value`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetadataRule {
    pub key: String,
    pub value: String,
    pub negated: bool,
}

/// The placement rules of one unit, specifiers already expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `MachineID=`: full ID or its 8-character short form.
    pub machine_id: Option<String>,
    /// `MachineOf=`: units that must all be on the chosen machine.
    pub machine_of: Vec<String>,
    /// `MachineMetadata=`: same key ORs, different keys AND, `!=` excludes.
    pub metadata: Vec<MetadataRule>,
    /// `Conflicts=`: globs of units that may not share the machine (checked both ways).
    pub conflicts: Vec<String>,
    /// `Replaces=`: globs of units this one displaces from its machine.
    pub replaces: Vec<String>,
    /// `Global=true`: run on every machine matching the metadata.
    pub global: bool,
}

impl Requirements {
    pub(super) fn from_unit(unit: &UnitFile, name: &UnitName) -> Result<Self, RequirementsError> {
        let mut requirements = Self::default();
        let Some(section) = unit.section(SECTION) else {
            return Ok(requirements);
        };
        let error = |line: usize, message: String| RequirementsError {
            file: name.to_string(),
            line,
            message,
        };
        let mut first_line = 0;
        for assignment in &section.assignments {
            first_line = if first_line == 0 {
                assignment.line
            } else {
                first_line
            };
            let key = canonical_key(&assignment.key).ok_or_else(|| {
                error(
                    assignment.line,
                    format!("unrecognized option {:?} in [X-Fleet]", assignment.key),
                )
            })?;
            requirements
                .apply(key, assignment, name)
                .map_err(|rule| error(assignment.line, rule.to_string()))?;
        }
        requirements
            .check_combinations()
            .map_err(|rule| error(first_line, rule.to_string()))?;
        Ok(requirements)
    }

    fn apply(
        &mut self,
        key: &str,
        assignment: &Assignment,
        name: &UnitName,
    ) -> Result<(), RuleError> {
        let value = name.expand_specifiers(&assignment.value);
        let words = || split_words(&value);
        match key {
            "MachineID" if value.is_empty() => self.machine_id = None,
            "MachineID" => match words()?.as_slice() {
                [id] => self.machine_id = Some(id.clone()),
                _ => return Err(RuleError::MachineIdWords(value.clone())),
            },
            "MachineOf" => reset_or_extend(&mut self.machine_of, words()?),
            "Conflicts" => reset_or_extend(&mut self.conflicts, words()?),
            "Replaces" => reset_or_extend(&mut self.replaces, words()?),
            "MachineMetadata" if value.is_empty() => self.metadata.clear(),
            "MachineMetadata" => {
                for word in words()? {
                    self.metadata.push(parse_metadata_rule(&word)?);
                }
            }
            "Global" => self.global = value.is_empty() || parse_bool(&value)?,
            _ => unreachable!("canonical_key only returns known keys"),
        }
        Ok(())
    }

    fn check_combinations(&self) -> Result<(), RuleError> {
        for peer in &self.machine_of {
            for (option, globs) in [("Conflicts", &self.conflicts), ("Replaces", &self.replaces)] {
                if let Some(glob) = globs.iter().find(|g| glob_match(g, peer)) {
                    return Err(RuleError::Unresolvable {
                        peer: peer.clone(),
                        option,
                        glob: glob.clone(),
                    });
                }
            }
        }
        let has_target = self.machine_id.is_some();
        let refused = [
            (
                has_target && !self.machine_of.is_empty(),
                "MachineID cannot be used with MachineOf",
            ),
            (
                has_target && !self.conflicts.is_empty(),
                "MachineID cannot be used with Conflicts",
            ),
            (
                has_target && !self.replaces.is_empty(),
                "MachineID cannot be used with Replaces",
            ),
            (
                has_target && self.global,
                "MachineID cannot be used with Global",
            ),
            (
                self.global && !self.machine_of.is_empty(),
                "Global cannot be used with MachineOf",
            ),
            (
                self.global && !self.replaces.is_empty(),
                "Global cannot be used with Replaces",
            ),
        ];
        match refused.iter().find(|(applies, _)| *applies) {
            Some((_, message)) => Err(RuleError::Combination(message)),
            None => Ok(()),
        }
    }

    /// Does a machine with this metadata satisfy `MachineMetadata`?
    pub fn metadata_matches(&self, machine: &std::collections::BTreeMap<String, String>) -> bool {
        Self::metadata_rules_match(&self.metadata, machine)
    }

    /// Does a machine with this metadata satisfy the `MachineMetadata` terms `rules`?
    pub fn metadata_rules_match(
        rules: &[MetadataRule],
        machine: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        // Without allocating: the engine asks this for every machine it passes over.
        rules.iter().enumerate().all(|(index, first)| {
            if rules[..index].iter().any(|r| r.key == first.key) {
                return true; // this key was judged at its first rule
            }
            let have = machine.get(&first.key);
            let (mut wanted, mut wanted_ok, mut excluded_ok) = (false, false, true);
            for rule in rules.iter().filter(|r| r.key == first.key) {
                if rule.negated {
                    excluded_ok &= have != Some(&rule.value);
                } else {
                    wanted = true;
                    wanted_ok |= have == Some(&rule.value);
                }
            }
            (!wanted || wanted_ok) && excluded_ok
        })
    }

    /// Does this unit refuse to share a machine with `other`?
    pub fn conflicts_with(&self, other: &str) -> bool {
        self.conflicts.iter().any(|glob| glob_match(glob, other))
    }

    /// Does this unit displace `other` from its machine?
    pub fn replaces_unit(&self, other: &str) -> bool {
        self.replaces.iter().any(|glob| glob_match(glob, other))
    }

    /// Does `machine_id` satisfy `MachineID` (full or short form)?
    pub fn machine_id_matches(&self, machine_id: &str) -> bool {
        self.machine_id
            .as_deref()
            .is_none_or(|wanted| wanted == machine_id || short_id(machine_id) == wanted)
    }
}

/// First 8 characters of a machine ID, as fleetctl prints it.
pub fn short_id(machine_id: &str) -> &str {
    machine_id.get(..8).unwrap_or(machine_id)
}

/// Maps current and deprecated option names to the current one.
fn canonical_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "MachineID" | "X-ConditionMachineID" => "MachineID",
        "MachineOf" | "X-ConditionMachineOf" => "MachineOf",
        "MachineMetadata" | "X-ConditionMachineMetadata" => "MachineMetadata",
        "Conflicts" | "X-Conflicts" => "Conflicts",
        "Replaces" => "Replaces",
        "Global" => "Global",
        _ => return None,
    })
}

fn reset_or_extend(list: &mut Vec<String>, words: Vec<String>) {
    if words.is_empty() {
        list.clear();
    } else {
        list.extend(words);
    }
}

fn parse_metadata_rule(word: &str) -> Result<MetadataRule, RuleError> {
    let (key, value, negated) = match word.split_once("!=") {
        Some((key, value)) => (key, value, true),
        None => match word.split_once('=') {
            Some((key, value)) => (key, value, false),
            None => return Err(RuleError::MetadataNotPair(word.to_string())),
        },
    };
    if key.is_empty() || value.is_empty() {
        return Err(RuleError::MetadataMissingPart(word.to_string()));
    }
    Ok(MetadataRule {
        key: key.to_string(),
        value: value.to_string(),
        negated,
    })
}

/// A value that is none of systemd's booleans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a boolean")]
pub struct NotBoolean(pub String);

/// systemd's booleans.
pub fn parse_bool(value: &str) -> Result<bool, NotBoolean> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(NotBoolean(value.to_string())),
    }
}

/// What is wrong with one `[X-Fleet]` option or their combination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RuleError {
    #[error(transparent)]
    Words(#[from] WordsError),
    #[error(transparent)]
    Bool(#[from] NotBoolean),
    #[error("MachineID takes one machine ID, got {0:?}")]
    MachineIdWords(String),
    #[error("MachineMetadata {0:?} is not key=value or key!=value")]
    MetadataNotPair(String),
    #[error("MachineMetadata {0:?} needs a key and a value")]
    MetadataMissingPart(String),
    #[error("unresolvable requirements: MachineOf {peer:?} matches {option} {glob:?}")]
    Unresolvable {
        peer: String,
        option: &'static str,
        glob: String,
    },
    #[error("{0}")]
    Combination(&'static str),
}
