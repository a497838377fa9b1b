//! The `[Service]` settings the built-in supervisor implements, read from a unit file.

use std::{path::PathBuf, time::Duration};

use crate::unit::{UnitFile, UnitName, WordsError, split_words};

const SECTION: &str = "Service";
/// systemd's default `RestartSec`.
const DEFAULT_RESTART_SEC: Duration = Duration::from_millis(100);
/// systemd's default `TimeoutStopSec`.
const DEFAULT_TIMEOUT_STOP: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{unit}:{line}: {message}")]
pub struct ServiceError {
    pub unit: String,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    Simple,
    Oneshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    Always,
    OnFailure,
}

/// One `Exec*=` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    /// Program and arguments, specifiers expanded; `$VAR` is expanded at spawn time.
    pub argv: Vec<String>,
    /// `-` prefix: a failure is not fatal.
    pub ignore_failure: bool,
    /// `@` prefix: `argv[1]` is what the program sees as its name.
    pub argv0: Option<String>,
    /// `+`, `!` or `!!` prefix: run with full privileges, ignoring `User=` and `Group=`.
    pub full_privileges: bool,
    /// `:` prefix: no `$VAR` expansion.
    pub literal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentFile {
    pub path: PathBuf,
    /// `-` prefix: a missing file is not an error.
    pub optional: bool,
}

/// A service as the supervisor runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub service_type: ServiceType,
    pub exec_start_pre: Vec<ExecCommand>,
    pub exec_start: Vec<ExecCommand>,
    pub exec_start_post: Vec<ExecCommand>,
    pub exec_stop: Vec<ExecCommand>,
    pub exec_stop_post: Vec<ExecCommand>,
    pub environment: Vec<(String, String)>,
    pub environment_files: Vec<EnvironmentFile>,
    pub working_directory: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub restart: RestartPolicy,
    pub restart_sec: Duration,
    pub timeout_stop: Duration,
    pub remain_after_exit: bool,
}

impl ServiceConfig {
    pub fn from_unit(name: &UnitName, unit: &UnitFile) -> Result<Self, ServiceError> {
        let error = |line: usize, message: String| ServiceError {
            unit: name.to_string(),
            line,
            message,
        };
        let line_of = |key: &str| {
            unit.values(SECTION, key)
                .last()
                .map_or(0, |assignment| assignment.line)
        };
        let commands = |key: &str| -> Result<Vec<ExecCommand>, ServiceError> {
            unit.values(SECTION, key)
                .into_iter()
                .map(|a| {
                    parse_exec(name, &a.value).map_err(|m| error(a.line, format!("{key}: {m}")))
                })
                .collect()
        };
        let service_type = match unit.value(SECTION, "Type").unwrap_or("simple") {
            "simple" | "exec" | "notify" | "idle" => ServiceType::Simple,
            "oneshot" => ServiceType::Oneshot,
            other => {
                return Err(error(
                    line_of("Type"),
                    format!("Type={other} is not supported by the built-in supervisor"),
                ));
            }
        };
        let restart = match unit.value(SECTION, "Restart").unwrap_or("no") {
            "no" => RestartPolicy::No,
            "always" => RestartPolicy::Always,
            "on-failure" | "on-abnormal" | "on-abort" => RestartPolicy::OnFailure,
            other => {
                return Err(error(
                    line_of("Restart"),
                    format!("Restart={other} is not supported"),
                ));
            }
        };
        let timespan = |key: &str, default: Duration| -> Result<Duration, ServiceError> {
            match unit.value(SECTION, key) {
                Some(text) => {
                    parse_timespan(text).map_err(|m| error(line_of(key), format!("{key}: {m}")))
                }
                None => Ok(default),
            }
        };
        let remain_after_exit = match unit.value(SECTION, "RemainAfterExit") {
            Some(text) => crate::unit::parse_bool(text)
                .map_err(|m| error(line_of("RemainAfterExit"), m.to_string()))?,
            None => false,
        };
        let config = Self {
            service_type,
            exec_start_pre: commands("ExecStartPre")?,
            exec_start: commands("ExecStart")?,
            exec_start_post: commands("ExecStartPost")?,
            exec_stop: commands("ExecStop")?,
            exec_stop_post: commands("ExecStopPost")?,
            environment: environment(name, unit)?,
            environment_files: unit
                .values(SECTION, "EnvironmentFile")
                .into_iter()
                .map(|a| environment_file(&a.value))
                .collect(),
            working_directory: unit
                .value(SECTION, "WorkingDirectory")
                .map(|dir| PathBuf::from(name.expand_specifiers(dir.trim_start_matches('-')))),
            user: unit.value(SECTION, "User").map(str::to_string),
            group: unit.value(SECTION, "Group").map(str::to_string),
            restart,
            restart_sec: timespan("RestartSec", DEFAULT_RESTART_SEC)?,
            timeout_stop: timespan("TimeoutStopSec", DEFAULT_TIMEOUT_STOP)?,
            remain_after_exit,
        };
        config.check(name, line_of("ExecStart"))?;
        Ok(config)
    }

    fn check(&self, name: &UnitName, line: usize) -> Result<(), ServiceError> {
        let error = |message: &str| ServiceError {
            unit: name.to_string(),
            line,
            message: message.to_string(),
        };
        match (self.service_type, self.exec_start.len()) {
            (_, 0) => Err(error("the service has no ExecStart=")),
            (ServiceType::Simple, 1) | (ServiceType::Oneshot, _) => Ok(()),
            (ServiceType::Simple, _) => Err(error(
                "more than one ExecStart= is only allowed with Type=oneshot",
            )),
        }
    }
}

/// What is wrong with an `Exec*=` command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ExecLineError {
    #[error(transparent)]
    Words(#[from] WordsError),
    #[error("empty command line")]
    Empty,
    #[error("the {0:?} prefix is not supported")]
    UnsupportedPrefix(char),
}

/// An `Exec*=` line with systemd's prefixes: `-` (failure ignored), `@` (argv[0] given),
/// `+`/`!`/`!!` (full privileges: the supervisor has no sandboxing, so all three only skip
/// `User=`/`Group=`), `:` (no variable expansion); `|` (a login shell) is refused.
fn parse_exec(name: &UnitName, value: &str) -> Result<ExecCommand, ExecLineError> {
    let mut rest = value.trim_start();
    let mut ignore_failure = false;
    let mut with_argv0 = false;
    let mut full_privileges = false;
    let mut literal = false;
    while let Some(prefix) = rest.chars().next() {
        match prefix {
            '-' => ignore_failure = true,
            '@' => with_argv0 = true,
            '+' | '!' => full_privileges = true,
            ':' => literal = true,
            '|' => return Err(ExecLineError::UnsupportedPrefix(prefix)),
            _ => break,
        }
        rest = &rest[1..];
    }
    let mut argv: Vec<String> = split_words(&name.expand_specifiers(rest))?;
    let argv0 = if with_argv0 && argv.len() >= 2 {
        Some(argv.remove(1))
    } else {
        None
    };
    if argv.is_empty() {
        return Err(ExecLineError::Empty);
    }
    Ok(ExecCommand {
        argv,
        ignore_failure,
        argv0,
        full_privileges,
        literal,
    })
}

fn environment(name: &UnitName, unit: &UnitFile) -> Result<Vec<(String, String)>, ServiceError> {
    let mut pairs = Vec::new();
    for assignment in unit.values(SECTION, "Environment") {
        let error = |message: String| ServiceError {
            unit: name.to_string(),
            line: assignment.line,
            message,
        };
        let words = split_words(&name.expand_specifiers(&assignment.value))
            .map_err(|e| error(e.to_string()))?;
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(error(format!("Environment: {word:?} is not NAME=value")));
            };
            pairs.push((key.to_string(), value.to_string()));
        }
    }
    Ok(pairs)
}

fn environment_file(value: &str) -> EnvironmentFile {
    match value.strip_prefix('-') {
        Some(path) => EnvironmentFile {
            path: PathBuf::from(path),
            optional: true,
        },
        None => EnvironmentFile {
            path: PathBuf::from(value),
            optional: false,
        },
    }
}

/// Parses an environment file: `NAME=value` lines, `#`/`;` comments, optional quotes.
pub fn parse_environment_file(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let unquoted = match split_words(value) {
            Ok(words) if value.starts_with(['"', '\'']) && words.len() == 1 => words[0].clone(),
            _ => value.to_string(),
        };
        pairs.push((key.trim().to_string(), unquoted));
    }
    pairs
}

/// A value that is not a systemd time span.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimespanError {
    #[error("{0:?} is not a time span")]
    NotANumber(String),
    #[error("unknown time unit {unit:?} in {text:?}")]
    UnknownUnit { unit: String, text: String },
    #[error("empty time span")]
    Empty,
}

/// Parses a systemd time span: `90`, `5s`, `500ms`, `1min 30s`, `2h`, `infinity`.
pub fn parse_timespan(text: &str) -> Result<Duration, TimespanError> {
    let text = text.trim();
    if text == "infinity" {
        return Ok(Duration::from_secs(u64::from(u32::MAX)));
    }
    let mut total = Duration::ZERO;
    for part in text.split_whitespace() {
        let digits_end = part
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(part.len());
        let (number, unit) = part.split_at(digits_end);
        let number: f64 = number
            .parse()
            .map_err(|_| TimespanError::NotANumber(text.to_string()))?;
        let seconds = match unit {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "ms" | "msec" => 0.001,
            "us" | "usec" => 0.000_001,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            _ => {
                return Err(TimespanError::UnknownUnit {
                    unit: unit.to_string(),
                    text: text.to_string(),
                });
            }
        };
        total += Duration::from_secs_f64(number * seconds);
    }
    if text.is_empty() {
        return Err(TimespanError::Empty);
    }
    Ok(total)
}
