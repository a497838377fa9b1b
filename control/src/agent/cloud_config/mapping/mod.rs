//! From a parsed cloud-config to the agent's own config (as YAML, so that the agent's
//! validation and defaults apply unchanged) and to the node setup it asks for. Pure: no I/O.
//!
//! etcd2, fleet and flannel run when `coreos.units` starts (or enables) `etcd2.service`,
//! `fleet.service` and `flanneld.service`, as on CoreOS, where their sections only configured
//! those units: the agent runs each of them itself.
mod components;
mod host;
mod units;

use serde_yaml::{Mapping, Value};

use super::schema::{CloudConfig, Other};
use components::{etcd2, flannel, fleet, proxy_endpoints};
use host::{hostname, ssh_authorized_keys, users, write_files};
use units::units;

/// What a cloud-config key does: one line of `--check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    pub key: String,
    pub effect: String,
}

/// A key the agent cannot honour, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotHonoured {
    pub key: String,
    pub reason: String,
}

/// A key with a wrong value: the key (dotted, with `[index]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Everything a cloud-config asks of the node.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The agent's config in its own YAML shape, `shoal:` laid over it.
    pub agent: Value,
    /// For agent fields set from the cloud-config: the cloud-config key that set each.
    pub provenance: Vec<(String, String)>,
    pub mapped: Vec<Mapped>,
    pub not_honoured: Vec<NotHonoured>,
    pub setup: Setup,
}

/// The node setup besides the components: done once at every agent start, in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setup {
    pub hostname: Option<String>,
    pub users: Vec<NewUser>,
    pub ssh_authorized_keys: Vec<String>,
    pub files: Vec<FileToWrite>,
    pub units: Vec<UnitAction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: String,
    pub password_hash: Option<String>,
    pub groups: Vec<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub homedir: Option<String>,
    pub shell: Option<String>,
    pub gecos: Option<String>,
    pub primary_group: Option<String>,
    pub no_create_home: bool,
    pub no_user_group: bool,
    pub system: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileToWrite {
    pub path: String,
    /// Decoded content.
    pub content: Vec<u8>,
    /// Default 0644, as cloudinit.
    pub mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub append: bool,
}

/// systemctl's verbs that cloudinit accepted for `command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitCommand {
    Start,
    Stop,
    Restart,
    Reload,
    TryRestart,
    ReloadOrRestart,
    ReloadOrTryRestart,
}

impl UnitCommand {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "start" => Self::Start,
            "stop" => Self::Stop,
            "restart" => Self::Restart,
            "reload" => Self::Reload,
            "try-restart" => Self::TryRestart,
            "reload-or-restart" => Self::ReloadOrRestart,
            "reload-or-try-restart" => Self::ReloadOrTryRestart,
            _ => return None,
        })
    }

    /// systemctl's name for it.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Reload => "reload",
            Self::TryRestart => "try-restart",
            Self::ReloadOrRestart => "reload-or-restart",
            Self::ReloadOrTryRestart => "reload-or-try-restart",
        }
    }

    /// Whether the unit runs after the command (from a stopped state).
    fn runs(self) -> bool {
        matches!(self, Self::Start | Self::Restart | Self::ReloadOrRestart)
    }
}

/// One of `coreos.units` the agent writes and runs (not etcd2, fleet or flannel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitAction {
    pub name: String,
    /// The unit file; `None`: the unit the host has installed (only drop-ins are added).
    pub content: Option<String>,
    /// `(file name, content)`, in order.
    pub drop_ins: Vec<(String, String)>,
    pub command: Option<UnitCommand>,
    pub enable: bool,
    /// `/run/systemd/system` instead of `/etc/systemd/system`.
    pub runtime: bool,
    pub mask: bool,
}

/// The components the agent runs in place of CoreOS's units.
const ETCD2_UNIT: &str = "etcd2.service";
const FLEET_UNIT: &str = "fleet.service";
const FLANNEL_UNIT: &str = "flanneld.service";

/// Why CoreOS keys the agent does not implement are left out.
fn reason_for(key: &str) -> &'static str {
    match key {
        "coreos.update"
        | "coreos.update.reboot_strategy"
        | "coreos.update.group"
        | "coreos.update.server" => {
            "OS updates and their reboots belong to the host's package manager, not shoal"
        }
        "coreos.locksmith" => "no reboot coordination (locksmith) in shoal",
        "coreos.etcd" => "etcd 0.4 is not supported: use coreos.etcd2",
        "coreos.oem" => "CoreOS's OEM metadata has no meaning here",
        "manage_etc_hosts" => "the agent does not manage /etc/hosts",
        key if key.starts_with("coreos.etcd2.discovery") => {
            "discovery services are not supported: give initial_cluster"
        }
        key if key.starts_with("coreos.etcd2.proxy_") => {
            "the agent has no etcd proxy: a proxy node uses the members' client URLs directly"
        }
        key if key.starts_with("coreos.etcd2.") => {
            "an etcd2 option shoal's store does not implement"
        }
        "coreos.fleet.verbosity" => "fleet's log level: set SHOAL_LOG instead",
        key if key.starts_with("coreos.fleet.") => {
            "a fleet option shoal's fleet does not implement"
        }
        key if key.starts_with("coreos.flannel.") => {
            "a flannel option shoal's overlay does not implement"
        }
        key if key.contains("coreos_ssh_import") => {
            "fetching keys from the network is not done: list them in ssh_authorized_keys"
        }
        _ => "not a cloud-config key the agent knows",
    }
}

#[derive(Default)]
struct Builder {
    agent: Mapping,
    provenance: Vec<(String, String)>,
    mapped: Vec<Mapped>,
    not_honoured: Vec<NotHonoured>,
}

impl Builder {
    /// Sets agent field `field` (dotted) to `value`, from cloud-config key `key`.
    fn set(&mut self, field: &str, value: Value, key: &str, effect: String) {
        insert(&mut self.agent, field, value);
        self.provenance.push((field.to_string(), key.to_string()));
        self.note(key, effect);
    }

    fn note(&mut self, key: &str, effect: String) {
        self.mapped.push(Mapped {
            key: key.to_string(),
            effect,
        });
    }

    fn refuse(&mut self, key: String, reason: impl Into<String>) {
        self.not_honoured.push(NotHonoured {
            key,
            reason: reason.into(),
        });
    }

    /// Names every key of `other` under `section` as not honoured.
    fn others(&mut self, section: &str, other: &Other) {
        for key in other.keys() {
            let key = join(section, key);
            let reason = reason_for(&key);
            self.refuse(key, reason);
        }
    }
}

fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// Sets `path` (dotted) in `map`, creating mappings on the way.
fn insert(map: &mut Mapping, path: &str, value: Value) {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let key = Value::String(head.to_string());
    match rest {
        None => {
            map.insert(key, value);
        }
        Some(rest) => {
            let entry = map
                .entry(key)
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if !entry.is_mapping() {
                *entry = Value::Mapping(Mapping::new());
            }
            if let Value::Mapping(inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// Lays `over` onto `under`, mapping into mapping; other values replace.
fn overlay(under: &mut Mapping, over: &Mapping) {
    for (key, value) in over {
        match (under.get_mut(key), value) {
            (Some(Value::Mapping(inner)), Value::Mapping(over_inner)) => {
                overlay(inner, over_inner);
            }
            _ => {
                under.insert(key.clone(), value.clone());
            }
        }
    }
}

fn string(text: &str) -> Value {
    Value::String(text.to_string())
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

fn string_list(items: &[String]) -> Value {
    Value::Sequence(items.iter().map(|item| string(item)).collect())
}

/// Whether a component unit is asked to run, and the units' other keys the agent cannot honour.
#[derive(Debug, Default, Clone, Copy)]
struct ComponentUnits {
    etcd2: bool,
    fleet: bool,
    flannel: bool,
}

/// Translates a parsed cloud-config.
pub fn translate(config: &CloudConfig) -> Result<Translation, Invalid> {
    let mut builder = Builder::default();
    builder.others("", &config.other);
    builder.others("coreos", &config.coreos.other);
    let mut setup = Setup::default();
    let (components, network_config) = units(&config.coreos.units, &mut builder, &mut setup)?;

    let name = node_name(config)?;
    builder.set(
        "name",
        string(&name.0),
        &name.1,
        format!("the node's name `{}`", name.0),
    );
    let runs_member = etcd2(config.coreos.etcd2.as_ref(), components.etcd2, &mut builder)?;
    let fleet_endpoints = fleet(config.coreos.fleet.as_ref(), components.fleet, &mut builder)?;
    let flannel_endpoints = flannel(
        config.coreos.flannel.as_ref(),
        components.flannel,
        network_config,
        &mut builder,
    )?;
    if !runs_member {
        let endpoints = fleet_endpoints
            .or(flannel_endpoints)
            .or_else(|| proxy_endpoints(config.coreos.etcd2.as_ref()))
            .unwrap_or_else(|| vec!["http://127.0.0.1:2379".to_string()]);
        insert(&mut builder.agent, "role", string("worker"));
        insert(
            &mut builder.agent,
            "store.endpoints",
            string_list(&endpoints),
        );
        builder.note(
            "coreos.etcd2",
            format!(
                "no store member here (role worker): the cluster's store at {}",
                endpoints.join(",")
            ),
        );
    }
    hostname(config.hostname.as_deref(), &mut builder, &mut setup)?;
    users(&config.users, &mut builder, &mut setup)?;
    ssh_authorized_keys(&config.ssh_authorized_keys, &mut builder, &mut setup)?;
    write_files(&config.write_files, &mut builder, &mut setup)?;

    let mut agent = builder.agent;
    if let Some(shoal) = &config.shoal {
        for key in shoal.keys() {
            if let Some(key) = key.as_str() {
                builder.mapped.push(Mapped {
                    key: format!("shoal.{key}"),
                    effect: format!("the agent's own `{key}` setting"),
                });
            }
        }
        overlay(&mut agent, shoal);
    }
    Ok(Translation {
        agent: Value::Mapping(agent),
        provenance: builder.provenance,
        mapped: builder.mapped,
        not_honoured: builder.not_honoured,
        setup,
    })
}

/// The node's name, and the key it came from: etcd2's member name, else the hostname's
/// first label, else `shoal.name`.
fn node_name(config: &CloudConfig) -> Result<(String, String), Invalid> {
    if let Some(name) = config.coreos.etcd2.as_ref().and_then(|e| e.name.clone()) {
        return Ok((name, "coreos.etcd2.name".into()));
    }
    if let Some(hostname) = &config.hostname {
        let label = hostname.split('.').next().unwrap_or_default();
        return Ok((label.to_string(), "hostname".into()));
    }
    if let Some(name) = config
        .shoal
        .as_ref()
        .and_then(|shoal| shoal.get("name"))
        .and_then(Value::as_str)
    {
        return Ok((name.to_string(), "shoal.name".into()));
    }
    Err(invalid(
        "coreos.etcd2.name",
        "the node needs a name: give coreos.etcd2.name or hostname",
    ))
}
