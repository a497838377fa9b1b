//! The results page, `bench/RESULTS.md`: every run of a suite adds its table there, newest
//! first, saying when it ran, which revision it measured, on which host and under what load
//! (the machines are shared, so a ratio means something only beside its load).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context, Result};
use serde::Serialize;

/// The line of RESULTS.md that new runs go right after.
const MARKER: &str = "<!-- runs: the benches insert each run below this line, newest first -->";

/// What a run records about itself, taken when it starts.
pub struct Run {
    suite: &'static str,
    started: SystemTime,
    revision: String,
    host: String,
    load_before: String,
}

impl Run {
    pub fn start(suite: &'static str) -> Self {
        Self {
            suite,
            started: SystemTime::now(),
            revision: revision(),
            host: host(),
            load_before: load(),
        }
    }

    /// Adds the run's table (as the suite printed it) to the results page.
    pub fn record(&self, table: &str) -> Result<()> {
        self.record_in(&page_path(), table)
    }

    fn record_in(&self, page: &Path, table: &str) -> Result<()> {
        let text =
            std::fs::read_to_string(page).with_context(|| format!("reading {}", page.display()))?;
        let entry = self.entry(table);
        let updated = match text.split_once(MARKER) {
            Some((head, runs)) => format!("{head}{MARKER}\n\n{entry}{runs}"),
            None => format!("{text}\n{MARKER}\n\n{entry}"),
        };
        std::fs::write(page, updated).with_context(|| format!("writing {}", page.display()))?;
        println!("added the run to {}", page.display());
        Ok(())
    }

    fn entry(&self, table: &str) -> String {
        let minutes = self.started.elapsed().map_or(0, |d| d.as_secs() / 60);
        format!(
            "### {} · {} · {} · {}\n\nLoad (1 min) {} before, {} after; {minutes} min.\n\n```text\n{}\n```\n",
            self.suite,
            humantime::format_rfc3339_seconds(self.started),
            self.revision,
            self.host,
            self.load_before,
            load(),
            table.trim_matches('\n'),
        )
    }
}

/// Writes `<suite>.json` and draws `<suite>.png` from it with `chart`, a matplotlib script that
/// takes the JSON and PNG paths as its arguments.
pub fn write_outputs(suite: &str, report: &impl Serialize, chart: &str) -> Result<()> {
    let dir = output_dir()?;
    let json = dir.join(format!("{suite}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let png = dir.join(format!("{suite}.png"));
    // Debian's python3 carries python3-matplotlib; a python3 earlier in PATH (pyenv) may not.
    let status = Command::new("/usr/bin/python3")
        .args(["-c", chart])
        .arg(&json)
        .arg(&png)
        .status()
        .context("running /usr/bin/python3 (python3-matplotlib) for the chart")?;
    anyhow::ensure!(status.success(), "python3 failed to draw {}", png.display());
    println!("wrote {} and {}", json.display(), png.display());
    Ok(())
}

/// Where a suite writes its JSON and chart: `<target dir>/bench`, created if missing.
fn output_dir() -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn page_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")
}

/// `rev <short hash>`, with `+changes` when the tree differs from it.
fn revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(hash) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "rev unknown".into();
    };
    let changed = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|status| !status.is_empty());
    format!("rev {hash}{}", if changed { "+changes" } else { "" })
}

/// `<hostname> (<n> CPUs, <model>, Linux <release>)`: the machine a run measured, also in the
/// suites' JSON.
pub fn host() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(|| "?".to_string(), |(_, model)| model.trim().to_string());
    format!(
        "{} ({cpus} CPUs, {model}, Linux {})",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/osrelease")
    )
}

/// The 1-minute load average.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_go_newest_first_under_the_marker_and_the_rest_stays() {
        let dir = tempfile::tempdir().expect("temp dir");
        let page = dir.path().join("RESULTS.md");
        std::fs::write(
            &page,
            format!("# Results\n\n{MARKER}\n\n## Recorded by hand\n"),
        )
        .expect("write");
        Run::start("net")
            .record_in(&page, "first table\n")
            .expect("record");
        Run::start("kv")
            .record_in(&page, "second table\n")
            .expect("record");
        let text = std::fs::read_to_string(&page).expect("read");
        let (head, runs) = text.split_once(MARKER).expect("marker kept");
        assert_eq!(head, "# Results\n\n");
        let second = runs.find("### kv").expect("kv run");
        let first = runs.find("### net").expect("net run");
        let by_hand = runs
            .find("## Recorded by hand")
            .expect("hand-written part kept");
        assert!(second < first && first < by_hand, "{runs}");
        assert!(runs.contains("```text\nfirst table\n```"), "{runs}");
        assert!(runs.contains("Load (1 min) "), "{runs}");
        assert!(runs.contains(" · rev "), "{runs}");
    }
}
