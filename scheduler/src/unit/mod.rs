//! The unit model: systemd unit files parsed as systemd does, unit names (templates and
//! instances) and fleet's `[X-Fleet]` placement rules.
//!
//! Parsing follows systemd.syntax(7): `[Section]` headers, `Key=Value` assignments (whitespace
//! around key and value dropped), `#`/`;` comment lines, a trailing `\` joins the next line with
//! a space (comment lines inside a continuation are skipped), repeated keys accumulate in order,
//! and an empty assignment (`Key=`) resets the list built so far.

mod name;
mod words;
mod xfleet;

use std::fmt::Write as _;

use sha1::{Digest, Sha1};

pub use name::{UnitName, UnitNameError};
pub use words::{WordsError, split_words};
pub use xfleet::{MetadataRule, NotBoolean, Requirements, RequirementsError, parse_bool, short_id};

/// A syntax error in a unit file, naming the file and the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// One `Key=Value` assignment, with the line it started on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// One `[Section]` with its assignments in file order. A section may appear several times in a
/// file; its assignments are merged into one entry, as systemd does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub assignments: Vec<Assignment>,
}

/// A parsed unit file: its sections in order of first appearance, and the text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    sections: Vec<Section>,
    raw: String,
}

impl UnitFile {
    /// Parses `text`; `file` names the source in errors (a path or a unit name).
    pub fn parse(file: &str, text: &str) -> Result<Self, ParseError> {
        let mut sections: Vec<Section> = Vec::new();
        let mut current: Option<usize> = None;
        for (line, content) in logical_lines(text) {
            let error = |message: String| ParseError {
                file: file.to_string(),
                line,
                message,
            };
            if let Some(header) = content.strip_prefix('[') {
                let name = parse_section_header(header).map_err(|e| error(e.to_string()))?;
                current = Some(section_index(&mut sections, name));
                continue;
            }
            let Some(index) = current else {
                return Err(error(format!(
                    "assignment outside of a section: {content:?}"
                )));
            };
            let (key, value) = parse_assignment(&content).map_err(|e| error(e.to_string()))?;
            sections[index]
                .assignments
                .push(Assignment { key, value, line });
        }
        Ok(Self {
            sections,
            raw: text.to_string(),
        })
    }

    /// The text the unit was parsed from, byte for byte.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|section| section.name == name)
    }

    /// The effective values of a list setting: every assignment in order, an empty assignment
    /// discarding those before it (and itself).
    pub fn values(&self, section: &str, key: &str) -> Vec<&Assignment> {
        let mut values = Vec::new();
        let Some(section) = self.section(section) else {
            return values;
        };
        for assignment in section.assignments.iter().filter(|a| a.key == key) {
            if assignment.value.is_empty() {
                values.clear();
            } else {
                values.push(assignment);
            }
        }
        values
    }

    /// The effective value of a single-valued setting: the last assignment, `None` when unset or
    /// reset by an empty assignment.
    pub fn value(&self, section: &str, key: &str) -> Option<&str> {
        let section = self.section(section)?;
        let last = section.assignments.iter().rev().find(|a| a.key == key)?;
        (!last.value.is_empty()).then_some(last.value.as_str())
    }

    /// The normalised form of the unit: one section per header, one `Key=Value` line per
    /// assignment. Two files that differ only in comments, whitespace or line continuations
    /// serialise identically.
    pub fn serialize(&self) -> String {
        let mut out = String::new();
        for (index, section) in self.sections.iter().enumerate() {
            if index > 0 {
                out.push('\n');
            }
            let _ = writeln!(out, "[{}]", section.name);
            for assignment in &section.assignments {
                let _ = writeln!(out, "{}={}", assignment.key, assignment.value);
            }
        }
        out
    }

    /// Content address of the unit: SHA-1 of its normalised form, in hex (as fleet does).
    pub fn hash(&self) -> String {
        let digest = Sha1::digest(self.serialize().as_bytes());
        digest
            .iter()
            .fold(String::with_capacity(40), |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            })
    }

    /// The `[X-Fleet]` rules of this unit as unit `name`, with specifiers expanded.
    pub fn requirements(&self, name: &UnitName) -> Result<Requirements, RequirementsError> {
        Requirements::from_unit(self, name)
    }
}

/// Splits `text` into logical lines (continuations joined), skipping blanks and comments.
/// Yields the number of the line each logical line starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw_line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = raw_line.trim();
        let is_comment = trimmed.starts_with('#') || trimmed.starts_with(';');
        if let Some((start, mut joined)) = pending.take() {
            if is_comment {
                pending = Some((start, joined));
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(head) => {
                    joined.push(' ');
                    joined.push_str(head);
                    pending = Some((start, joined));
                }
                None => {
                    joined.push(' ');
                    joined.push_str(trimmed);
                    lines.push((start, joined));
                }
            }
            continue;
        }
        if trimmed.is_empty() || is_comment {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) if !trimmed.starts_with('[') => pending = Some((number, head.to_string())),
            _ => lines.push((number, trimmed.to_string())),
        }
    }
    if let Some(last) = pending {
        lines.push(last);
    }
    lines
        .into_iter()
        .map(|(number, line)| (number, line.trim().to_string()))
        .collect()
}

/// What is wrong with one line of a unit file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SyntaxError {
    #[error("section header [{0} lacks a closing ']'")]
    UnclosedSection(String),
    #[error("invalid section name [{0}]")]
    InvalidSection(String),
    #[error("missing '=' in {0:?}")]
    MissingEquals(String),
    #[error("missing key before '=' in {0:?}")]
    MissingKey(String),
    #[error("invalid key {0:?}")]
    InvalidKey(String),
}

fn parse_section_header(after_bracket: &str) -> Result<String, SyntaxError> {
    let Some(name) = after_bracket.strip_suffix(']') else {
        return Err(SyntaxError::UnclosedSection(after_bracket.to_string()));
    };
    if name.is_empty() || name.contains(['[', ']']) {
        return Err(SyntaxError::InvalidSection(name.to_string()));
    }
    Ok(name.to_string())
}

fn section_index(sections: &mut Vec<Section>, name: String) -> usize {
    if let Some(index) = sections.iter().position(|s| s.name == name) {
        return index;
    }
    sections.push(Section {
        name,
        assignments: Vec::new(),
    });
    sections.len() - 1
}

fn parse_assignment(line: &str) -> Result<(String, String), SyntaxError> {
    let Some((key, value)) = line.split_once('=') else {
        return Err(SyntaxError::MissingEquals(line.to_string()));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(SyntaxError::MissingKey(line.to_string()));
    }
    if key.contains(char::is_whitespace) {
        return Err(SyntaxError::InvalidKey(key.to_string()));
    }
    Ok((key.to_string(), value.trim().to_string()))
}

/// Why a job's unit cannot be scheduled or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUnit {
    #[error("unit file {hash} is missing from the store")]
    Missing { hash: String },
    #[error(transparent)]
    Name(#[from] UnitNameError),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Requirements(#[from] RequirementsError),
}

/// Parses a job's unit text into its rules, or the reason it is invalid.
pub fn parse_rules(name: &str, text: &str) -> Result<Requirements, InvalidUnit> {
    let unit_name = UnitName::parse(name)?;
    let unit = UnitFile::parse(name, text)?;
    Ok(unit.requirements(&unit_name)?)
}

#[cfg(test)]
mod tests;
