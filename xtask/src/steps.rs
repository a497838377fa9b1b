//! How a chore reports its progress: one line per step, saying what it does and how long it took.
//! The tools' own output (apt, cargo install, clippy's compile lines) goes to a log file, which
//! the error names, with its last lines, when a step fails.
use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// Lines of a failed step's log printed with its error.
const TAIL_LINES: usize = 30;

/// The steps of one chore, sharing one log file.
pub struct Steps {
    chore: &'static str,
    log: PathBuf,
}

impl Steps {
    /// Starts the log `target/xtask/<chore>.log` afresh.
    pub fn new(chore: &'static str) -> Result<Self> {
        let dir = crate::workspace_root().join("target/xtask");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join(format!("{chore}.log"));
        File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        Ok(Self { chore, log })
    }

    /// Says that a step had nothing to do.
    pub fn skip(&self, what: &str) {
        println!("{}: {what}", self.chore);
    }

    /// Runs `cmd` as the step `what`, its output appended to the log.
    pub fn run(&self, what: &str, cmd: &mut Command) -> Result<()> {
        self.timed(what, || {
            let log = self.open_log()?;
            writeln!(&log, "\n==> {what}: {cmd:?}")?;
            let status = cmd
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .status()
                .with_context(|| format!("starting {}", program(cmd)))?;
            if !status.success() {
                bail!(
                    "{} failed ({status}); its output is in {}, ending:\n{}",
                    program(cmd),
                    self.log.display(),
                    tail(&self.log, TAIL_LINES)
                );
            }
            Ok(())
        })
    }

    /// Runs an in-process step, timed like the others.
    pub fn timed<T>(&self, what: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
        print!("{}: {what} ... ", self.chore);
        // The line shows while the step runs; a failed flush only delays it.
        let _ = std::io::stdout().flush();
        let started = Instant::now();
        let result = step();
        let took = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => println!("done in {took:.1}s"),
            Err(_) => println!("failed after {took:.1}s"),
        }
        result.with_context(|| what.to_string())
    }

    fn open_log(&self) -> Result<File> {
        OpenOptions::new()
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))
    }
}

fn program(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// The last `lines` lines of a log (empty if it cannot be read: the error names the file).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return String::new();
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
