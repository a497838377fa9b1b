//! `coreos.units`: etcd2, fleet and flanneld become the agent's components; the others are
//! units the agent writes and runs.
use shoal_scheduler::unit::{UnitFile, UnitName};

use super::{
    Builder, ComponentUnits, ETCD2_UNIT, FLANNEL_UNIT, FLEET_UNIT, Invalid, Setup, UnitAction,
    UnitCommand, invalid,
};
use crate::agent::cloud_config::schema::{DropIn, Unit};

/// Sorts `coreos.units` into the components the agent runs and the units it writes and runs;
/// returns flannel's network config if a flanneld.service drop-in sets it as CoreOS's docs did
/// (`ExecStartPre=/usr/bin/etcdctl set /coreos.com/network/config '{...}'`).
#[allow(clippy::type_complexity)]
pub(super) fn units(
    units: &[Unit],
    builder: &mut Builder,
    setup: &mut Setup,
) -> Result<(ComponentUnits, Option<(String, serde_json::Value, String)>), Invalid> {
    let mut components = ComponentUnits::default();
    let mut network_config = None;
    for (index, unit) in units.iter().enumerate() {
        let key = format!("coreos.units[{index}]");
        builder.others(&key, &unit.other);
        if unit.name.is_empty() {
            return Err(invalid(format!("{key}.name"), "every unit needs a name"));
        }
        UnitName::parse(&unit.name)
            .map_err(|err| invalid(format!("{key}.name"), err.to_string()))?;
        let command = match unit.command.as_deref() {
            None => None,
            Some(text) => Some(UnitCommand::parse(text).ok_or_else(|| {
                invalid(
                    format!("{key}.command"),
                    format!(
                        "`{text}` is not start, stop, restart, reload, try-restart, \
                         reload-or-restart or reload-or-try-restart"
                    ),
                )
            })?),
        };
        for (drop_index, drop_in) in unit.drop_ins.iter().enumerate() {
            let drop_key = format!("{key}.drop_ins[{drop_index}]");
            builder.others(&drop_key, &drop_in.other);
            if !drop_in.name.ends_with(".conf") || drop_in.name.contains('/') {
                return Err(invalid(
                    format!("{drop_key}.name"),
                    format!("`{}` is not a drop-in file name (NAME.conf)", drop_in.name),
                ));
            }
            UnitFile::parse(&drop_in.name, &drop_in.content)
                .map_err(|err| invalid(format!("{drop_key}.content"), err.to_string()))?;
        }
        if let Some(content) = &unit.content {
            UnitFile::parse(&unit.name, content)
                .map_err(|err| invalid(format!("{key}.content"), err.to_string()))?;
        }
        let runs = !unit.mask && (unit.enable || command.is_some_and(UnitCommand::runs));
        let component = match unit.name.as_str() {
            ETCD2_UNIT => Some(&mut components.etcd2),
            FLEET_UNIT => Some(&mut components.fleet),
            FLANNEL_UNIT => Some(&mut components.flannel),
            _ => None,
        };
        if let Some(flag) = component {
            *flag = runs;
            let what = match unit.name.as_str() {
                ETCD2_UNIT => "a member of the store",
                FLEET_UNIT => "fleet (its agent and an engine candidate)",
                _ => "the overlay (flannel)",
            };
            builder.note(
                &key,
                if runs {
                    format!("{}: the agent runs {what} in its place", unit.name)
                } else {
                    format!(
                        "{}: not started, so the agent does not run {what}",
                        unit.name
                    )
                },
            );
            component_unit(unit, &key, builder, &mut network_config)?;
            continue;
        }
        let action = UnitAction {
            name: unit.name.clone(),
            content: unit.content.clone(),
            drop_ins: unit
                .drop_ins
                .iter()
                .map(|DropIn { name, content, .. }| (name.clone(), content.clone()))
                .collect(),
            command,
            enable: unit.enable,
            runtime: unit.runtime,
            mask: unit.mask,
        };
        builder.note(&key, describe_unit(&action));
        setup.units.push(action);
    }
    Ok((components, network_config))
}

fn describe_unit(unit: &UnitAction) -> String {
    let mut parts = vec![match &unit.content {
        Some(_) => format!("unit {} written", unit.name),
        None => format!("the host's unit {}", unit.name),
    }];
    if !unit.drop_ins.is_empty() {
        let names: Vec<&str> = unit
            .drop_ins
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        parts.push(format!("drop-ins {}", names.join(", ")));
    }
    if unit.mask {
        parts.push("masked".into());
    }
    if unit.enable {
        parts.push("enabled".into());
    }
    if let Some(command) = unit.command {
        parts.push(format!("`{}`", command.verb()));
    }
    parts.push(if unit.runtime {
        "in /run/systemd/system (runtime)".into()
    } else {
        "in /etc/systemd/system".into()
    });
    format!(
        "{}: through systemd when it is PID 1, else the agent's built-in supervisor",
        parts.join(", ")
    )
}

/// etcd2.service, fleet.service or flanneld.service: the agent runs the component; the unit's
/// own content and drop-ins have nothing to act on, except flannel's network config.
fn component_unit(
    unit: &Unit,
    key: &str,
    builder: &mut Builder,
    network_config: &mut Option<(String, serde_json::Value, String)>,
) -> Result<(), Invalid> {
    if unit.content.is_some() {
        builder.refuse(
            format!("{key}.content"),
            format!(
                "the agent runs {} itself; the unit's content is not used",
                unit.name
            ),
        );
    }
    if unit.runtime {
        builder.note(
            &format!("{key}.runtime"),
            "nothing to write: the agent runs it".into(),
        );
    }
    for (index, drop_in) in unit.drop_ins.iter().enumerate() {
        let drop_key = format!("{key}.drop_ins[{index}]");
        let file = UnitFile::parse(&drop_in.name, &drop_in.content)
            .map_err(|err| invalid(format!("{drop_key}.content"), err.to_string()))?;
        let mut rest = 0;
        for section in file.sections() {
            for assignment in &section.assignments {
                let config = (unit.name == FLANNEL_UNIT
                    && section.name == "Service"
                    && assignment.key == "ExecStartPre")
                    .then(|| etcdctl_set(&assignment.value))
                    .flatten();
                match config {
                    Some((store_key, json)) => {
                        let json: serde_json::Value =
                            serde_json::from_str(&json).map_err(|err| {
                                invalid(
                                    format!("{drop_key}.content"),
                                    format!("the network config is not JSON: {err}"),
                                )
                            })?;
                        *network_config = Some((store_key, json, format!("{drop_key}.content")));
                    }
                    None => rest += 1,
                }
            }
        }
        if rest > 0 {
            builder.refuse(
                format!("{drop_key}.content"),
                format!(
                    "the agent runs {} itself: {rest} setting(s) of drop-in {} have nothing \
                     to act on",
                    unit.name, drop_in.name
                ),
            );
        }
    }
    Ok(())
}

/// `[-]/usr/bin/etcdctl set KEY 'JSON'` (or `put`): the key and the value.
fn etcdctl_set(command: &str) -> Option<(String, String)> {
    let words =
        shoal_scheduler::unit::split_words(command.trim_start_matches(['-', '@', '+', '!', ':']))
            .ok()?;
    let [program, verb, key, value] = words.as_slice() else {
        return None;
    };
    (program.rsplit('/').next() == Some("etcdctl") && (verb == "set" || verb == "put"))
        .then(|| (key.clone(), value.clone()))
}
