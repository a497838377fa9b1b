//! fleetctl's commands against the store.

mod commands;

pub use commands::{BlockArgs, FleetctlCommand, TableArgs};

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use etcd_client::WatchOptions;
use shoal_store_client::StoreConfig;

use crate::{
    registry::{Job, Registry, Submitted, ValidUnit},
    store::{MachineRecord, Store, TargetState, UnitStateRecord},
    table::{self, format_metadata},
    unit::{UnitFile, UnitName, short_id},
};

/// Pause between checks while blocking on a state change.
const BLOCK_POLL: Duration = Duration::from_millis(500);

/// Runs `command` against the store at `endpoints`, plain connections.
pub async fn run(
    endpoints: &[String],
    prefix: &str,
    timeout: Duration,
    command: FleetctlCommand,
) -> anyhow::Result<()> {
    let store = StoreConfig::new(endpoints.iter().cloned()).with_timeout(timeout);
    run_with(&store, prefix, command).await
}

/// Runs `command` against the store `store` describes (TLS, credentials).
pub async fn run_with(
    store: &StoreConfig,
    prefix: &str,
    command: FleetctlCommand,
) -> anyhow::Result<()> {
    let store = Store::connect_with(store, prefix).await.context(
        "cannot reach the fleet store (check --endpoint, the TLS files, --etcd-username)",
    )?;
    let registry = Registry::new(store);
    match command {
        FleetctlCommand::Submit { units, replace } => {
            create_units(&registry, &units, replace).await.map(drop)
        }
        FleetctlCommand::Load {
            units,
            replace,
            block,
        } => {
            let names = create_units(&registry, &units, replace).await?;
            transition(&registry, &names, TargetState::Loaded, &block).await
        }
        FleetctlCommand::Start {
            units,
            replace,
            block,
        } => {
            let names = create_units(&registry, &units, replace).await?;
            transition(&registry, &names, TargetState::Launched, &block).await
        }
        FleetctlCommand::Stop { units, block } => {
            let names = existing_units(&registry, &units).await?;
            let jobs = registry.jobs().await?;
            let launched: Vec<String> = names
                .into_iter()
                .filter(|name| {
                    jobs.get(name).and_then(|j| j.target_state) == Some(TargetState::Launched)
                })
                .collect();
            transition(&registry, &launched, TargetState::Loaded, &block).await
        }
        FleetctlCommand::Unload { units, block } => {
            let names = existing_units(&registry, &units).await?;
            transition(&registry, &names, TargetState::Inactive, &block).await
        }
        FleetctlCommand::Destroy { units } => destroy(&registry, &units).await,
        FleetctlCommand::Restart { units, block } => {
            let names = existing_units(&registry, &units).await?;
            let wait = BlockArgs {
                no_block: false,
                block_attempts: block.block_attempts,
            };
            transition(&registry, &names, TargetState::Loaded, &wait).await?;
            transition(&registry, &names, TargetState::Launched, &block).await
        }
        FleetctlCommand::Cat { unit } => cat(&registry, &unit).await,
        FleetctlCommand::Status { units, lines } => status(&registry, &units, lines).await,
        FleetctlCommand::Journal {
            unit,
            lines,
            follow,
        } => journal(&registry, &unit, lines, follow).await,
        FleetctlCommand::ListUnits { table } => list_units(&registry, &table).await,
        FleetctlCommand::ListUnitFiles { table } => list_unit_files(&registry, &table).await,
        FleetctlCommand::ListMachines { mut table, long } => {
            table.full |= long;
            list_machines(&registry, &table).await
        }
    }
}

/// The unit name an argument stands for: the file name of a path.
fn unit_name_of(arg: &str) -> String {
    Path::new(arg).file_name().map_or_else(
        || arg.to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Makes sure every argument exists as a unit in the cluster, submitting local files (and
/// instances of templates) that are not there yet. Everything is validated first; nothing is
/// written if any unit is bad.
async fn create_units(
    registry: &Registry,
    args: &[String],
    replace: bool,
) -> anyhow::Result<Vec<String>> {
    let jobs = registry.jobs().await?;
    let mut to_submit = Vec::new();
    let mut names = Vec::new();
    for arg in args {
        let name = unit_name_of(arg);
        let parsed = UnitName::parse(&name)?;
        names.push(name.clone());
        let local = PathBuf::from(arg);
        if jobs.contains_key(&name) && !(replace && local.is_file()) {
            continue;
        }
        if local.is_file() {
            let text = std::fs::read_to_string(&local)
                .with_context(|| format!("reading unit file {}", local.display()))?;
            to_submit.push(ValidUnit::new(&name, arg, &text)?);
            continue;
        }
        let Some(template) = parsed.template() else {
            bail!("unit {name} not found: no such file and not in the cluster");
        };
        let text = template_text(registry, &jobs, &local, &template).await?;
        to_submit.push(ValidUnit::new(&name, &template, &text)?);
    }
    let outcomes = registry.submit(&to_submit, replace).await?;
    for (unit, outcome) in to_submit.iter().zip(outcomes) {
        if outcome == Submitted::Replaced {
            eprintln!("Replaced unit {}", unit.name);
        }
    }
    Ok(names)
}

/// Contents of template `template`: a local file next to the instance path, else the cluster's.
async fn template_text(
    registry: &Registry,
    jobs: &BTreeMap<String, Job>,
    instance_path: &Path,
    template: &str,
) -> anyhow::Result<String> {
    let local = instance_path.with_file_name(template);
    if local.is_file() {
        return std::fs::read_to_string(&local)
            .with_context(|| format!("reading {}", local.display()));
    }
    let hash = jobs
        .get(template)
        .and_then(|job| job.hash.clone())
        .ok_or_else(|| {
            anyhow!(
                "unit {} not found: neither it nor template {template} exists",
                unit_name_of(&instance_path.display().to_string())
            )
        })?;
    registry
        .unit_text(&hash)
        .await?
        .ok_or_else(|| anyhow!("template {template} is missing its unit file {hash}"))
}

/// Names of existing units; an unknown one is an error before anything changes.
async fn existing_units(registry: &Registry, args: &[String]) -> anyhow::Result<Vec<String>> {
    let jobs = registry.jobs().await?;
    let names: Vec<String> = args.iter().map(|arg| unit_name_of(arg)).collect();
    if let Some(missing) = names.iter().find(|name| !jobs.contains_key(*name)) {
        bail!("unit {missing} does not exist in the cluster");
    }
    Ok(names)
}

async fn transition(
    registry: &Registry,
    names: &[String],
    state: TargetState,
    block: &BlockArgs,
) -> anyhow::Result<()> {
    let names: Vec<String> = names.iter().filter(|n| !is_template(n)).cloned().collect();
    if names.is_empty() {
        return Ok(());
    }
    registry.set_target_state(&names, state).await?;
    if block.no_block {
        return Ok(());
    }
    wait_for_state(registry, &names, state, block.block_attempts).await
}

fn is_template(name: &str) -> bool {
    UnitName::parse(name).is_ok_and(|n| n.is_template())
}

/// Polls until every unit reached `state` (as its agents report), printing each as it does.
async fn wait_for_state(
    registry: &Registry,
    names: &[String],
    state: TargetState,
    attempts: u32,
) -> anyhow::Result<()> {
    let mut remaining: Vec<String> = names.to_vec();
    let mut attempt = 0u32;
    loop {
        let jobs = registry.jobs().await?;
        let states = registry.states().await?;
        let machines = machine_index(&registry.machines().await?);
        let mut still = Vec::new();
        for name in remaining {
            let reported = states.get(&name).cloned().unwrap_or_default();
            if let Some(line) = reached(&name, state, &reported, &machines) {
                println!("{line}");
                continue;
            }
            if let Some(reason) = jobs.get(&name).and_then(|j| j.unschedulable.clone()) {
                bail!("unit {name} cannot be scheduled: {reason}");
            }
            if let Some(error) = reported.values().find(|s| s.load_state == "error") {
                bail!("unit {name} failed to load: {}", error.sub_state);
            }
            still.push(name);
        }
        remaining = still;
        if remaining.is_empty() {
            return Ok(());
        }
        attempt += 1;
        if attempts > 0 && attempt >= attempts {
            bail!(
                "units did not reach {state} after {attempts} attempts: {}",
                remaining.join(", ")
            );
        }
        tokio::time::sleep(BLOCK_POLL).await;
    }
}

/// The line fleetctl prints once a unit reached `state`, if it has.
fn reached(
    name: &str,
    state: TargetState,
    reported: &BTreeMap<String, UnitStateRecord>,
    machines: &BTreeMap<String, MachineRecord>,
) -> Option<String> {
    match state {
        TargetState::Inactive => reported.is_empty().then(|| format!("Unit {name} inactive")),
        TargetState::Loaded => {
            let (machine, _) = reported
                .iter()
                .find(|(_, s)| s.load_state == "loaded" && s.active_state != "active")?;
            Some(format!(
                "Unit {name} loaded on {}",
                machine_legend(machine, machines)
            ))
        }
        TargetState::Launched => {
            let (machine, _) = reported.iter().find(|(_, s)| s.active_state == "active")?;
            Some(format!(
                "Unit {name} launched on {}",
                machine_legend(machine, machines)
            ))
        }
    }
}

fn machine_index(machines: &[MachineRecord]) -> BTreeMap<String, MachineRecord> {
    machines.iter().map(|m| (m.id.clone(), m.clone())).collect()
}

/// `113f16a7.../172.17.8.101`, as fleetctl names a machine.
fn machine_legend(id: &str, machines: &BTreeMap<String, MachineRecord>) -> String {
    let ip = machines.get(id).map_or("-", |m| m.public_ip.as_str());
    format!("{}.../{ip}", short_id(id))
}

async fn destroy(registry: &Registry, args: &[String]) -> anyhow::Result<()> {
    for arg in args {
        let name = unit_name_of(arg);
        if registry.destroy(&name).await? {
            println!("Destroyed {name}");
        } else {
            eprintln!("Unit {name} does not exist");
        }
    }
    Ok(())
}

async fn cat(registry: &Registry, arg: &str) -> anyhow::Result<()> {
    let name = unit_name_of(arg);
    let job = registry
        .job(&name)
        .await?
        .ok_or_else(|| anyhow!("unit {name} does not exist in the cluster"))?;
    let hash = job.hash.unwrap_or_default();
    let text = registry
        .unit_text(&hash)
        .await?
        .ok_or_else(|| anyhow!("unit file {hash} of {name} is missing from the store"))?;
    print!("{text}");
    Ok(())
}

async fn status(registry: &Registry, args: &[String], lines: usize) -> anyhow::Result<()> {
    let jobs = registry.jobs().await?;
    let states = registry.states().await?;
    let machines = machine_index(&registry.machines().await?);
    let mut unknown = Vec::new();
    for (index, arg) in args.iter().enumerate() {
        let name = unit_name_of(arg);
        let Some(job) = jobs.get(&name) else {
            unknown.push(name);
            continue;
        };
        if index > 0 {
            println!();
        }
        let reported = states.get(&name).cloned().unwrap_or_default();
        print_status(registry, job, &reported, &machines, lines).await?;
    }
    if !unknown.is_empty() {
        bail!("unit(s) not found in the cluster: {}", unknown.join(", "));
    }
    Ok(())
}

async fn print_status(
    registry: &Registry,
    job: &Job,
    reported: &BTreeMap<String, UnitStateRecord>,
    machines: &BTreeMap<String, MachineRecord>,
    lines: usize,
) -> anyhow::Result<()> {
    let name = &job.name;
    let desired = job.target_state.map_or("-", TargetState::as_str);
    if reported.is_empty() {
        println!("● {name}");
        println!("   Desired: {desired}");
        match &job.unschedulable {
            Some(reason) => println!("    Status: unschedulable: {reason}"),
            None if job.target_state == Some(TargetState::Inactive) => {
                println!("    Status: not loaded on any machine")
            }
            None => println!("    Status: waiting for a machine to report it"),
        }
        return Ok(());
    }
    for (machine, state) in reported {
        let dot = if state.active_state == "active" {
            "●"
        } else {
            "○"
        };
        println!("{dot} {name} - {}", machine_legend(machine, machines));
        println!("   Loaded: {}", state.load_state);
        let since = state
            .since
            .filter(|_| state.active_state == "active")
            .map(|s| format!(" since {}", format_epoch(s)))
            .unwrap_or_default();
        println!(
            "   Active: {} ({}){since}",
            state.active_state, state.sub_state
        );
        if let Some(pid) = state.main_pid {
            println!(" Main PID: {pid}");
        }
        println!("  Desired: {desired}");
        println!("  Machine: {machine}");
        let output = registry
            .store()
            .get(&registry.store().keys().journal(name, machine))
            .await?
            .unwrap_or_default();
        let tail = crate::agent::runtime::tail_lines(&output, lines);
        if !tail.is_empty() {
            println!();
            print!("{tail}");
        }
    }
    Ok(())
}

/// UTC `YYYY-MM-DD HH:MM:SS` for epoch seconds.
fn format_epoch(seconds: u64) -> String {
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

async fn journal(registry: &Registry, arg: &str, lines: usize, follow: bool) -> anyhow::Result<()> {
    let name = unit_name_of(arg);
    if registry.job(&name).await?.is_none() {
        bail!("unit {name} does not exist in the cluster");
    }
    let store = registry.store();
    let prefix = store.keys().unit_journals(&name);
    let (outputs, revision) = store.get_prefix(&prefix).await?;
    let Some((key, text)) = outputs.into_iter().next() else {
        if !follow {
            bail!("unit {name} is not running on any machine, so it has no output");
        }
        return follow_output(store, &prefix, String::new(), 0).await;
    };
    print!("{}", crate::agent::runtime::tail_lines(&text, lines));
    let _ = std::io::stdout().flush();
    if follow {
        let _ = key;
        follow_output(store, &prefix, text, revision).await?;
    }
    Ok(())
}

/// Prints output lines as agents publish them, until interrupted.
async fn follow_output(
    store: &Store,
    prefix: &str,
    mut last: String,
    revision: i64,
) -> anyhow::Result<()> {
    let mut client = store.client();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut events = client
        .watch(prefix, Some(options))
        .await
        .context("watching unit output")?;
    while let Some(response) = events.message().await.context("watching unit output")? {
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let text = String::from_utf8_lossy(kv.value()).into_owned();
            print!("{}", new_lines(&last, &text));
            let _ = std::io::stdout().flush();
            last = text;
        }
    }
    Ok(())
}

/// Lines of `current` that come after what `previous` already showed.
pub fn new_lines(previous: &str, current: &str) -> String {
    let old: Vec<&str> = previous.lines().collect();
    let new: Vec<&str> = current.lines().collect();
    for overlap in (1..=old.len().min(new.len())).rev() {
        if old[old.len() - overlap..] == new[..overlap] {
            return join_lines(&new[overlap..]);
        }
    }
    join_lines(&new)
}

fn join_lines(lines: &[&str]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// Which columns to print: `--fields` checked against the known ones, else the defaults.
fn fields(table: &TableArgs, known: &[&str], defaults: &[&str]) -> anyhow::Result<Vec<String>> {
    let Some(wanted) = &table.fields else {
        return Ok(defaults.iter().map(|f| f.to_string()).collect());
    };
    let chosen: Vec<String> = wanted
        .split(',')
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    if chosen.is_empty() {
        bail!("--fields needs at least one of: {}", known.join(","));
    }
    if let Some(bad) = chosen.iter().find(|f| !known.contains(&f.as_str())) {
        bail!("unknown field {bad:?}; known fields: {}", known.join(","));
    }
    Ok(chosen)
}

fn print_table(table: &TableArgs, columns: &[String], rows: Vec<Vec<String>>) {
    let mut all = Vec::with_capacity(rows.len() + 1);
    if !table.no_legend {
        all.push(columns.iter().map(|c| c.to_uppercase()).collect());
    }
    all.extend(rows);
    print!("{}", table::render(&all));
}

fn shorten(text: &str, full: bool, with_dots: bool) -> String {
    if full || text.len() <= 8 {
        return text.to_string();
    }
    if with_dots {
        format!("{}...", &text[..8])
    } else {
        text[..7].to_string()
    }
}

async fn list_machines(registry: &Registry, table: &TableArgs) -> anyhow::Result<()> {
    let columns = fields(
        table,
        &["machine", "ip", "metadata"],
        &["machine", "ip", "metadata"],
    )?;
    let mut machines = registry.machines().await?;
    machines.sort_by(|a, b| a.id.cmp(&b.id));
    let rows = machines
        .iter()
        .map(|m| {
            columns
                .iter()
                .map(|column| match column.as_str() {
                    "machine" => shorten(&m.id, table.full, true),
                    "ip" => non_empty(&m.public_ip),
                    _ => format_metadata(&m.metadata),
                })
                .collect()
        })
        .collect();
    print_table(table, &columns, rows);
    Ok(())
}

async fn list_units(registry: &Registry, table: &TableArgs) -> anyhow::Result<()> {
    let known = ["unit", "load", "active", "sub", "machine", "hash", "desc"];
    let columns = fields(table, &known, &["unit", "machine", "active", "sub"])?;
    let jobs = registry.jobs().await?;
    let states = registry.states().await?;
    let machines = machine_index(&registry.machines().await?);
    let mut rows = Vec::new();
    for (name, job) in &jobs {
        let reported = states.get(name);
        let wanted = matches!(
            job.target_state,
            Some(TargetState::Loaded | TargetState::Launched)
        );
        match reported {
            Some(per_machine) => {
                for (machine, state) in per_machine {
                    let cells = unit_row(
                        &columns,
                        name,
                        Some((machine, state)),
                        &machines,
                        table.full,
                    );
                    rows.push(cells);
                }
            }
            None if wanted => rows.push(unit_row(&columns, name, None, &machines, table.full)),
            None => {}
        }
    }
    print_table(table, &columns, rows);
    Ok(())
}

fn unit_row(
    columns: &[String],
    name: &str,
    reported: Option<(&String, &UnitStateRecord)>,
    machines: &BTreeMap<String, MachineRecord>,
    full: bool,
) -> Vec<String> {
    columns
        .iter()
        .map(|column| match (column.as_str(), reported) {
            ("unit", _) => name.to_string(),
            ("load", Some((_, s))) => s.load_state.clone(),
            ("active", Some((_, s))) => s.active_state.clone(),
            ("sub", Some((_, s))) => s.sub_state.clone(),
            ("hash", Some((_, s))) => shorten(&s.unit_hash, full, false),
            ("machine", Some((m, _))) if full => {
                format!(
                    "{m}/{}",
                    machines
                        .get(m.as_str())
                        .map_or("-", |r| r.public_ip.as_str())
                )
            }
            ("machine", Some((m, _))) => machine_legend(m, machines),
            _ => "-".to_string(),
        })
        .collect()
}

async fn list_unit_files(registry: &Registry, table: &TableArgs) -> anyhow::Result<()> {
    let known = [
        "unit", "global", "dstate", "state", "target", "desc", "hash",
    ];
    let columns = fields(
        table,
        &known,
        &["unit", "hash", "dstate", "state", "target"],
    )?;
    let jobs = registry.jobs().await?;
    let states = registry.states().await?;
    let machines = machine_index(&registry.machines().await?);
    let mut rows = Vec::new();
    for (name, job) in &jobs {
        let hash = job.hash.clone().unwrap_or_default();
        let text = registry.unit_text(&hash).await?.unwrap_or_default();
        let unit = UnitFile::parse(name, &text).ok();
        let global = UnitName::parse(name)
            .ok()
            .zip(unit.as_ref())
            .and_then(|(n, u)| u.requirements(&n).ok())
            .is_some_and(|r| r.global);
        let reported = states.get(name);
        let current = current_state(reported);
        let row = columns
            .iter()
            .map(|column| match column.as_str() {
                "unit" => name.clone(),
                "global" => global.to_string(),
                "dstate" => job
                    .target_state
                    .map_or("-", TargetState::as_str)
                    .to_string(),
                "state" => current.to_string(),
                "target" if global => "global".to_string(),
                "target" => job
                    .target
                    .as_deref()
                    .map_or("-".to_string(), |m| machine_legend(m, &machines)),
                "desc" => unit
                    .as_ref()
                    .and_then(|u| u.value("Unit", "Description"))
                    .map_or("-".to_string(), str::to_string),
                _ => shorten(&hash, table.full, false),
            })
            .collect();
        rows.push(row);
    }
    print_table(table, &columns, rows);
    Ok(())
}

/// A unit's state across machines, in fleet's words: launched, loaded or inactive.
fn current_state(reported: Option<&BTreeMap<String, UnitStateRecord>>) -> &'static str {
    let Some(reported) = reported.filter(|r| !r.is_empty()) else {
        return "inactive";
    };
    if reported.values().any(|s| s.active_state == "active") {
        "launched"
    } else {
        "loaded"
    }
}

fn non_empty(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_lines_skips_what_was_shown() {
        assert_eq!(new_lines("a\nb\n", "a\nb\nc\n"), "c\n");
        assert_eq!(new_lines("a\nb\nc\n", "b\nc\nd\ne\n"), "d\ne\n");
        assert_eq!(new_lines("", "x\n"), "x\n");
        assert_eq!(new_lines("x\n", "y\n"), "y\n");
    }

    #[test]
    fn epoch_formatting() {
        assert_eq!(format_epoch(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_epoch(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
