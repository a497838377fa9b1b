//! `shoal agent --config FILE` with a CoreOS `#cloud-config` (the first line says so): the
//! node described the way CoreOS machines were, read as coreos-cloudinit read it (keys with
//! `-` or `_`). [`schema`] holds the keys, [`mapping`] turns them into the agent's own config
//! and the node's setup (pure), [`provision`] writes files, keys, users and the host name,
//! [`units`] writes and runs `coreos.units`. Keys the agent cannot honour are named in one
//! warning at start (and by `--check`), never dropped silently.
pub mod lines;
pub mod mapping;
pub mod provision;
pub mod schema;
pub mod units;

use serde_yaml::{Mapping, Value};

use self::mapping::{Mapped, NotHonoured, Setup};
use super::config::AgentConfig;

/// The first line of a cloud-config.
pub const HEADER: &str = "#cloud-config";

/// Whether `text` is a cloud-config (cloudinit's test: the first line, trailing space aside).
pub fn is_cloud_config(text: &str) -> bool {
    text.lines()
        .next()
        .is_some_and(|first| first.trim_end() == HEADER)
}

/// A cloud-config, understood.
#[derive(Debug, Clone)]
pub struct CloudConfigNode {
    /// The agent's config it maps to.
    pub agent: AgentConfig,
    /// What each key does (`--check`).
    pub mapped: Vec<Mapped>,
    /// The keys the agent does not honour, and why.
    pub not_honoured: Vec<NotHonoured>,
    /// Files, users, keys, host name and units to set up at start.
    pub setup: Setup,
}

impl CloudConfigNode {
    /// The one warning that names every key not honoured; `None` when all are.
    pub fn not_honoured_warning(&self) -> Option<String> {
        if self.not_honoured.is_empty() {
            return None;
        }
        let keys: Vec<String> = self
            .not_honoured
            .iter()
            .map(|entry| format!("{} ({})", entry.key, entry.reason))
            .collect();
        Some(format!(
            "cloud-config keys not honoured: {}",
            keys.join("; ")
        ))
    }
}

/// What is wrong with a cloud-config: the key, its line when it can be found, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// CoreOS's substitution variables, filled in by cloudinit from a cloud provider's metadata.
const SUBSTITUTIONS: [&str; 2] = ["$public_ipv4", "$private_ipv4"];

/// Parses a cloud-config and maps it onto the agent's config.
pub fn parse(text: &str) -> Result<CloudConfigNode, Invalid> {
    let at = |key: String, message: String| Invalid {
        line: lines::line_of(text, &key),
        key,
        message,
    };
    let mut value: Value = serde_yaml::from_str(text).map_err(|err| Invalid {
        line: err.location().map(|location| location.line()),
        key: "(YAML)".into(),
        message: err.to_string(),
    })?;
    if value.is_null() {
        value = Value::Mapping(Mapping::new());
    }
    if !value.is_mapping() {
        return Err(at(
            "(top level)".into(),
            "a cloud-config is a YAML mapping".into(),
        ));
    }
    normalise_keys(&mut value, true);
    if let Some((key, variable)) = substitution(&value, "") {
        return Err(at(
            key,
            format!(
                "{variable} is not substituted here (no cloud provider metadata): write the address"
            ),
        ));
    }
    let config: schema::CloudConfig = serde_path_to_error::deserialize(value)
        .map_err(|err| at(err.path().to_string(), err.into_inner().to_string()))?;
    let translation = mapping::translate(&config).map_err(|err| at(err.key, err.message))?;
    let agent = AgentConfig::from_value(translation.agent).map_err(|(field, message)| {
        let key = cloud_key(&translation.provenance, &field, config.shoal.is_some());
        at(key, message)
    })?;
    // In the file's order, for --check.
    let mut mapped = translation.mapped;
    mapped.sort_by_key(|entry| lines::line_of(text, &entry.key).unwrap_or(usize::MAX));
    Ok(CloudConfigNode {
        agent,
        mapped,
        not_honoured: translation.not_honoured,
        setup: translation.setup,
    })
}

/// The cloud-config key behind agent field `field`: the one that set it (or its section),
/// else the `shoal:` setting, else the field itself.
fn cloud_key(provenance: &[(String, String)], field: &str, has_shoal: bool) -> String {
    let within = |set: &str| {
        field == set
            || field.starts_with(&format!("{set}."))
            || set.starts_with(&format!("{field}."))
    };
    if let Some((_, key)) = provenance.iter().rev().find(|(set, _)| within(set)) {
        return key.clone();
    }
    if has_shoal {
        format!("shoal.{field}")
    } else {
        field.to_string()
    }
}

/// cloudinit read `-` in keys as `_`; so does the agent (not inside `shoal:`, which is the
/// agent's own format, nor in values).
fn normalise_keys(value: &mut Value, top: bool) {
    match value {
        Value::Mapping(map) => {
            let entries: Vec<(Value, Value)> = std::mem::take(map).into_iter().collect();
            for (key, mut inner) in entries {
                let key = match key {
                    Value::String(text) => Value::String(text.replace('-', "_")),
                    other => other,
                };
                if !(top && key.as_str() == Some("shoal")) {
                    normalise_keys(&mut inner, false);
                }
                map.insert(key, inner);
            }
        }
        Value::Sequence(items) => items
            .iter_mut()
            .for_each(|item| normalise_keys(item, false)),
        _ => {}
    }
}

/// The first key whose value uses a substitution variable.
fn substitution(value: &Value, path: &str) -> Option<(String, &'static str)> {
    match value {
        Value::String(text) => SUBSTITUTIONS
            .into_iter()
            .find(|variable| text.contains(variable))
            .map(|variable| (path.to_string(), variable)),
        Value::Mapping(map) => map.iter().find_map(|(key, inner)| {
            let key = key.as_str()?;
            substitution(
                inner,
                &if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                },
            )
        }),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| substitution(item, &format!("{path}[{index}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
