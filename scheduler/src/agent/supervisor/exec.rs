//! Running a unit's commands: the ExecStartPre/ExecStart/ExecStartPost sequence, control
//! commands with their `-` prefix and timeout, spawning with the unit's user, environment and
//! variables, output going to the unit's output file.

use std::{path::Path, process::Stdio, time::Duration};

use shoal_store_client::Chain;

use super::{
    output::{open_output, trim_output},
    process::{MainProcess, process_start_time},
    records::{RunRecord, write_run_record},
};
use crate::agent::{
    runtime::now_epoch,
    service::{ExecCommand, ServiceConfig, ServiceType, parse_environment_file},
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a unit's command did not run to success.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExecError {
    #[error("running {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for {program}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} timed out after {limit:?}")]
    TimedOut { program: String, limit: Duration },
    #[error("{program} exited with {status}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
    },
    #[error("main process vanished at once")]
    Vanished,
    #[error("opening output file in {dir}")]
    Output {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("recording main process in {dir}")]
    RunRecord {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("looking up user {user}")]
    LookupUser {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("no such user {0}")]
    NoSuchUser(String),
    #[error("looking up group {group}")]
    LookupGroup {
        group: String,
        #[source]
        source: nix::Error,
    },
    #[error("no such group {0}")]
    NoSuchGroup(String),
    #[error("EnvironmentFile {path}")]
    EnvironmentFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stopped while starting")]
    StoppedWhileStarting,
    #[error("supervisor shut down")]
    ShutDown,
}

/// Runs ExecStartPre, ExecStart, ExecStartPost; returns the main process of a simple service.
pub(super) async fn start_sequence(
    name: &str,
    hash: &str,
    config: &ServiceConfig,
    dir: &Path,
) -> Result<Option<MainProcess>, ExecError> {
    trim_output(dir);
    let env = environment(config)?;
    for command in &config.exec_start_pre {
        run_control(name, command, &env, config, dir, None).await?;
    }
    let main = match config.service_type {
        ServiceType::Simple => {
            let command = &config.exec_start[0];
            let child = spawn(command, &env, config, dir, false)?;
            let pid = child.id().ok_or(ExecError::Vanished)?;
            let record = RunRecord {
                pid,
                start_time: process_start_time(pid).unwrap_or(0),
                hash: hash.to_string(),
                since: now_epoch(),
            };
            write_run_record(dir, &record).map_err(|source| ExecError::RunRecord {
                dir: dir.display().to_string(),
                source,
            })?;
            Some(MainProcess::Child(child))
        }
        ServiceType::Oneshot => {
            for command in &config.exec_start {
                run_control(name, command, &env, config, dir, None).await?;
            }
            None
        }
    };
    let mut post_env = env.clone();
    if let Some(pid) = main.as_ref().and_then(MainProcess::pid) {
        post_env.push(("MAINPID".into(), pid.to_string()));
    }
    for command in &config.exec_start_post {
        run_control(name, command, &post_env, config, dir, None).await?;
    }
    Ok(main)
}

/// Runs a control command to completion; its failure is an error unless it has the `-` prefix.
pub(super) async fn run_control(
    name: &str,
    command: &ExecCommand,
    env: &[(String, String)],
    config: &ServiceConfig,
    dir: &Path,
    timeout: Option<Duration>,
) -> Result<(), ExecError> {
    let program = || command.argv[0].clone();
    let outcome = match spawn(command, env, config, dir, true) {
        Ok(mut child) => {
            let waited = match timeout {
                Some(limit) => tokio::time::timeout(limit, child.wait())
                    .await
                    .map_err(|_| ExecError::TimedOut {
                        program: program(),
                        limit,
                    })
                    .and_then(|waited| {
                        waited.map_err(|source| ExecError::Wait {
                            program: program(),
                            source,
                        })
                    }),
                None => child.wait().await.map_err(|source| ExecError::Wait {
                    program: program(),
                    source,
                }),
            };
            match waited {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(ExecError::Failed {
                    program: program(),
                    status,
                }),
                Err(err) => Err(err),
            }
        }
        Err(err) => Err(err),
    };
    match outcome {
        Err(err) if command.ignore_failure => {
            tracing::debug!(unit = name, "ignored failure: {}", Chain(&err));
            Ok(())
        }
        other => other,
    }
}

fn spawn(
    command: &ExecCommand,
    env: &[(String, String)],
    config: &ServiceConfig,
    dir: &Path,
    kill_on_drop: bool,
) -> Result<tokio::process::Child, ExecError> {
    let argv = if command.literal {
        command.argv.clone()
    } else {
        expand_variables(&command.argv, env)
    };
    let output_error = |source| ExecError::Output {
        dir: dir.display().to_string(),
        source,
    };
    let output = open_output(dir).map_err(output_error)?;
    let errors = output.try_clone().map_err(output_error)?;
    let mut process = tokio::process::Command::new(&argv[0]);
    process
        .args(&argv[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(errors))
        .process_group(0)
        .kill_on_drop(kill_on_drop);
    if let Some(argv0) = &command.argv0 {
        process.arg0(argv0);
    }
    if let Some(dir) = &config.working_directory {
        process.current_dir(dir);
    }
    if !command.full_privileges {
        apply_user(&mut process, config)?;
    }
    process.spawn().map_err(|source| ExecError::Spawn {
        program: argv[0].clone(),
        source,
    })
}

fn apply_user(
    process: &mut tokio::process::Command,
    config: &ServiceConfig,
) -> Result<(), ExecError> {
    if let Some(user) = &config.user {
        let found = nix::unistd::User::from_name(user)
            .map_err(|source| ExecError::LookupUser {
                user: user.clone(),
                source,
            })?
            .ok_or_else(|| ExecError::NoSuchUser(user.clone()))?;
        process
            .uid(found.uid.as_raw())
            .gid(found.gid.as_raw())
            .env("USER", user)
            .env("LOGNAME", user)
            .env("HOME", &found.dir);
    }
    if let Some(group) = &config.group {
        let found = nix::unistd::Group::from_name(group)
            .map_err(|source| ExecError::LookupGroup {
                group: group.clone(),
                source,
            })?
            .ok_or_else(|| ExecError::NoSuchGroup(group.clone()))?;
        process.gid(found.gid.as_raw());
    }
    Ok(())
}

/// Environment= then EnvironmentFile= (whose settings override), as systemd does.
pub(super) fn environment(config: &ServiceConfig) -> Result<Vec<(String, String)>, ExecError> {
    let mut env = config.environment.clone();
    for file in &config.environment_files {
        match std::fs::read_to_string(&file.path) {
            Ok(text) => env.extend(parse_environment_file(&text)),
            Err(_) if file.optional => {}
            Err(source) => {
                return Err(ExecError::EnvironmentFile {
                    path: file.path.display().to_string(),
                    source,
                });
            }
        }
    }
    Ok(env)
}

/// systemd's expansion of an `Exec*=` line: `${NAME}` anywhere in a word (one argument, spaces
/// kept), a word that is exactly `$NAME` split on whitespace into zero or more arguments, and
/// `$$` for a literal `$`. Unset variables expand to nothing.
pub(super) fn expand_variables(argv: &[String], env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    };
    let mut out = Vec::with_capacity(argv.len());
    for (index, word) in argv.iter().enumerate() {
        let bare = word.strip_prefix('$').filter(|name| {
            index > 0
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        match bare {
            Some(name) => out.extend(lookup(name).split_whitespace().map(str::to_string)),
            None => out.push(expand_word(word, lookup)),
        }
    }
    out
}

/// `${NAME}` and `$$` inside one word.
fn expand_word<'a>(word: &str, lookup: impl Fn(&str) -> &'a str) -> String {
    let mut expanded = String::new();
    let mut rest = word;
    while let Some(start) = rest.find('$') {
        expanded.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            expanded.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('{').and_then(|r| r.split_once('}')) {
            expanded.push_str(lookup(name));
            rest = tail;
        } else {
            expanded.push('$');
            rest = after;
        }
    }
    expanded.push_str(rest);
    expanded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &[&str]) -> Vec<String> {
        text.iter().map(|word| word.to_string()).collect()
    }

    #[test]
    fn expansion_follows_systemd() {
        let env = vec![
            ("COREOS_PUBLIC_IPV4".to_string(), "10.0.0.5".to_string()),
            ("OPTS".to_string(), "--a  --b".to_string()),
            ("EMPTY".to_string(), String::new()),
        ];
        let argv = words(&[
            "/usr/bin/docker",
            "run",
            "-p",
            "${COREOS_PUBLIC_IPV4}:8080:80",
            "$OPTS",
            "${OPTS}",
            "$EMPTY",
            "cost=$$5",
            "$UNSET",
            "${unterminated",
        ]);
        assert_eq!(
            expand_variables(&argv, &env),
            words(&[
                "/usr/bin/docker",
                "run",
                "-p",
                "10.0.0.5:8080:80",
                "--a",
                "--b",
                "--a  --b",
                "cost=$5",
                "${unterminated",
            ])
        );
    }
}
