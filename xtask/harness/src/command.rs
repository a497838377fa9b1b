//! Running host commands with errors that name them (the harness and the VM tooling share it).
use std::process::{Child, Command, Output};

use crate::{Error, Result};

/// Runs a command to completion; its stdout on success, an error naming it otherwise.
pub fn run(cmd: &mut Command) -> Result<String> {
    let output = output(cmd)?;
    if !output.status.success() {
        return Err(Error::Failed {
            command: describe(cmd),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command with its output going to ours (long builds the user should see).
pub fn run_visible(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|source| Error::spawn(cmd, source))?;
    if !status.success() {
        return Err(Error::Failed {
            command: describe(cmd),
            status,
            stderr: "see its output above".to_string(),
        });
    }
    Ok(())
}

/// Runs a command and returns its whole output, whatever its exit.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().map_err(|source| Error::spawn(cmd, source))
}

/// Starts a command.
pub fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.spawn().map_err(|source| Error::spawn(cmd, source))
}

/// The command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

impl Error {
    /// A command that could not be started.
    pub fn spawn(cmd: &Command, source: std::io::Error) -> Self {
        Error::Spawn {
            command: describe(cmd),
            cause: source,
        }
    }
}
