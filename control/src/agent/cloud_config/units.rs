//! `coreos.units` other than etcd2, fleet and flannel (which the agent runs itself): written
//! and run through systemd when it is PID 1 (unit files and drop-ins in /etc/systemd/system,
//! or /run/systemd/system for `runtime`, then `daemon-reload`, `enable`, the command), else
//! through the built-in supervisor that fleet's units use, with its own directory under the
//! agent's data dir. Like fleet's, supervised units keep running when the agent stops, and
//! the next agent adopts them.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use shoal_scheduler::{
    agent::{UnitRuntime, runtime::systemd_is_init, supervisor::Supervisor},
    unit::{UnitFile, UnitName},
};

use super::mapping::{UnitAction, UnitCommand};

/// Where systemd units live, first match wins (for a unit given without content).
const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The supervisor's directory for cloud-config units, under the agent's data dir.
pub fn supervisor_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cloud-config")
}

/// Runs `units`; returns the supervisor holding them when systemd is not PID 1.
pub async fn run(
    units: &[UnitAction],
    data_dir: &Path,
    environment: Vec<(String, String)>,
) -> Result<Option<Arc<Supervisor>>> {
    if units.is_empty() {
        return Ok(None);
    }
    if systemd_is_init() {
        with_systemd(units, &environment).await?;
        return Ok(None);
    }
    let supervisor = Arc::new(
        Supervisor::new(&supervisor_dir(data_dir))
            .context("opening the supervisor for cloud-config units")?
            .with_environment(environment),
    );
    with_supervisor(&supervisor, units).await?;
    Ok(Some(supervisor))
}

/// Writes the units, then enables and commands them. `environment` (CoreOS's `COREOS_*`
/// addresses) goes into systemd's manager environment first, as fleet's units get it.
async fn with_systemd(units: &[UnitAction], environment: &[(String, String)]) -> Result<()> {
    if !environment.is_empty() {
        let assignments: Vec<String> = environment
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let mut args = vec!["set-environment"];
        args.extend(assignments.iter().map(String::as_str));
        systemctl(&args).await?;
    }
    for unit in units {
        let dir = Path::new(if unit.runtime {
            "/run/systemd/system"
        } else {
            "/etc/systemd/system"
        });
        if unit.mask {
            let mut args = vec!["mask"];
            if unit.runtime {
                args.push("--runtime");
            }
            args.push(&unit.name);
            systemctl(&args).await?;
            continue;
        }
        if let Some(content) = &unit.content {
            write(&dir.join(&unit.name), content)?;
        }
        for (name, content) in &unit.drop_ins {
            write(&dir.join(format!("{}.d", unit.name)).join(name), content)?;
        }
    }
    systemctl(&["daemon-reload"]).await?;
    for unit in units.iter().filter(|unit| !unit.mask) {
        if unit.enable {
            let mut args = vec!["enable"];
            if unit.runtime {
                args.push("--runtime");
            }
            args.push(&unit.name);
            systemctl(&args).await?;
        }
        if let Some(command) = unit.command {
            // --no-block: a unit ordered after the agent's own would otherwise wait for us.
            // A unit that fails is logged; the others still run, as at boot.
            if let Err(err) = systemctl(&["--no-block", command.verb(), &unit.name]).await {
                tracing::error!(unit = %unit.name, "cloud-config: {err:#}");
                continue;
            }
        }
        tracing::info!(unit = %unit.name, "cloud-config: unit handed to systemd");
    }
    Ok(())
}

fn write(path: &Path, content: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

async fn systemctl(args: &[&str]) -> Result<()> {
    let output = tokio::process::Command::new("systemctl")
        .args(args)
        .output()
        .await
        .context("running systemctl")?;
    if !output.status.success() {
        bail!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The unit the supervisor runs: its content (or the host's installed unit), then its
/// drop-ins in order, as systemd reads them.
pub fn supervised_unit(
    unit: &UnitAction,
    installed: impl Fn(&str) -> Option<String>,
) -> Result<(UnitName, UnitFile)> {
    let name = UnitName::parse(&unit.name).with_context(|| format!("unit {}", unit.name))?;
    if name.suffix() != "service" {
        bail!(
            "{}: the built-in supervisor runs services only (systemd is not PID 1 here)",
            unit.name
        );
    }
    let mut text = match &unit.content {
        Some(content) => content.clone(),
        None => installed(&unit.name).with_context(|| {
            format!(
                "{}: no content given and no such unit installed in {}",
                unit.name,
                UNIT_DIRS.join(", ")
            )
        })?,
    };
    for (_, content) in &unit.drop_ins {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(content);
    }
    let file = UnitFile::parse(&unit.name, &text)?;
    Ok((name, file))
}

fn installed_unit(name: &str) -> Option<String> {
    UNIT_DIRS
        .iter()
        .find_map(|dir| std::fs::read_to_string(Path::new(dir).join(name)).ok())
}

/// Loads and runs each unit; one that fails is logged and the others still run, as systemd
/// would.
async fn with_supervisor(supervisor: &Supervisor, units: &[UnitAction]) -> Result<()> {
    for unit in units {
        if unit.mask {
            tracing::info!(unit = %unit.name, "cloud-config: masked: not run");
            continue;
        }
        if let Err(err) = supervise(supervisor, unit).await {
            tracing::error!(unit = %unit.name, "cloud-config: {err:#}");
        }
    }
    supervisor.finish_adoption().await;
    Ok(())
}

async fn supervise(supervisor: &Supervisor, unit: &UnitAction) -> Result<()> {
    let (name, file) = supervised_unit(unit, installed_unit)?;
    supervisor
        .load(&name, &file, &file.hash())
        .await
        .with_context(|| format!("loading {}", unit.name))?;
    let name = unit.name.as_str();
    let restart = match unit.command {
        Some(UnitCommand::Stop) => {
            supervisor.stop(name).await?;
            false
        }
        Some(UnitCommand::Restart | UnitCommand::ReloadOrRestart) => true,
        Some(UnitCommand::TryRestart | UnitCommand::ReloadOrTryRestart) => {
            is_running(supervisor, name).await
        }
        _ => false,
    };
    if restart {
        supervisor.stop(name).await?;
        supervisor.start(name).await?;
    } else if unit.command == Some(UnitCommand::Start)
        || (unit.enable && unit.command != Some(UnitCommand::Stop))
    {
        // Enabled: started at boot, and the agent's start is this node's boot.
        supervisor.start(name).await?;
    }
    tracing::info!(
        unit = name,
        "cloud-config: unit loaded into the built-in supervisor"
    );
    Ok(())
}

async fn is_running(supervisor: &Supervisor, name: &str) -> bool {
    supervisor
        .units()
        .await
        .iter()
        .any(|(unit, status)| unit == name && status.active_state == "active")
}
