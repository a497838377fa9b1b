//! From a parsed cloud-config to the agent's own config (as YAML, so that the agent's
//! validation and defaults apply unchanged) and to the node setup it asks for. Pure: no I/O.
//!
//! etcd2, fleet and flannel run when `coreos.units` starts (or enables) `etcd2.service`,
//! `fleet.service` and `flanneld.service`, as on CoreOS, where their sections only configured
//! those units: the agent runs each of them itself.
use std::{collections::BTreeMap, net::Ipv4Addr};

use base64::Engine as _;
use serde_yaml::{Mapping, Value};
use shoal_scheduler::unit::{UnitFile, UnitName};

use super::schema::{CloudConfig, DropIn, Etcd2, Flannel, Fleet, Other, Unit, User, WriteFile};

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
    for (index, key) in config.ssh_authorized_keys.iter().enumerate() {
        if key.trim().is_empty() {
            return Err(invalid(format!("ssh_authorized_keys[{index}]"), "is empty"));
        }
    }
    if !config.ssh_authorized_keys.is_empty() {
        setup.ssh_authorized_keys = config.ssh_authorized_keys.clone();
        builder.note(
            "ssh_authorized_keys",
            format!(
                "{} key(s) appended to the `core` user's ~/.ssh/authorized_keys (root's if there \
                 is no `core`), each once",
                config.ssh_authorized_keys.len()
            ),
        );
    }
    for (index, file) in config.write_files.iter().enumerate() {
        let key = format!("write_files[{index}]");
        builder.others(&key, &file.other);
        let file = file_to_write(&key, file)?;
        builder.note(
            &key,
            format!(
                "{} {} ({} bytes, mode {:04o}{})",
                if file.append { "append to" } else { "write" },
                file.path,
                file.content.len(),
                file.mode,
                match (&file.owner, &file.group) {
                    (None, None) => String::new(),
                    (user, group) => format!(
                        ", owner {}:{}",
                        user.as_deref().unwrap_or(""),
                        group.as_deref().unwrap_or("")
                    ),
                }
            ),
        );
        setup.files.push(file);
    }

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

/// Maps `coreos.etcd2`; whether this node runs a store member.
fn etcd2(etcd2: Option<&Etcd2>, started: bool, builder: &mut Builder) -> Result<bool, Invalid> {
    let Some(etcd2) = etcd2 else {
        return Ok(started);
    };
    builder.others("coreos.etcd2", &etcd2.other);
    let proxy = match etcd2.proxy.as_deref() {
        None | Some("off") => false,
        Some("on" | "readonly") => true,
        Some(other) => {
            return Err(invalid(
                "coreos.etcd2.proxy",
                format!("`{other}` is not on, readonly or off"),
            ));
        }
    };
    if proxy {
        builder.note(
            "coreos.etcd2.proxy",
            "this node uses the cluster's store without a member (role worker)".into(),
        );
    }
    if !started || proxy {
        if !started {
            builder.note(
                "coreos.etcd2",
                "etcd2.service is not started by coreos.units: no store member here".into(),
            );
        }
        return Ok(false);
    }
    let text =
        |builder: &mut Builder, field: &str, value: &Option<String>, key: &str, what: &str| {
            if let Some(value) = value {
                builder.set(
                    field,
                    string(value),
                    &format!("coreos.etcd2.{key}"),
                    format!("{what} `{value}` ({field})"),
                );
            }
        };
    text(
        builder,
        "store.initial_cluster",
        &etcd2.initial_cluster,
        "initial_cluster",
        "the store's initial cluster",
    );
    if let Some(state) = &etcd2.initial_cluster_state
        && state != "new"
        && state != "existing"
    {
        return Err(invalid(
            "coreos.etcd2.initial_cluster_state",
            format!("`{state}` is not new or existing"),
        ));
    }
    text(
        builder,
        "store.initial_cluster_state",
        &etcd2.initial_cluster_state,
        "initial_cluster_state",
        "initial cluster state",
    );
    text(
        builder,
        "store.initial_cluster_token",
        &etcd2.initial_cluster_token,
        "initial_cluster_token",
        "cluster token",
    );
    text(
        builder,
        "store.listen_client_urls",
        &etcd2.listen_client_urls,
        "listen_client_urls",
        "the member listens for clients on",
    );
    text(
        builder,
        "store.advertise_client_urls",
        &etcd2.advertise_client_urls,
        "advertise_client_urls",
        "the member advertises client URLs",
    );
    text(
        builder,
        "store.listen_peer_urls",
        &etcd2.listen_peer_urls,
        "listen_peer_urls",
        "the member listens for peers on",
    );
    text(
        builder,
        "store.initial_advertise_peer_urls",
        &etcd2.initial_advertise_peer_urls,
        "initial_advertise_peer_urls",
        "the member advertises peer URLs",
    );
    text(
        builder,
        "store.data_dir",
        &etcd2.data_dir,
        "data_dir",
        "the member's data in",
    );
    for (value, key, field) in [
        (
            etcd2.heartbeat_interval,
            "heartbeat_interval",
            "store.heartbeat_interval",
        ),
        (
            etcd2.election_timeout,
            "election_timeout",
            "store.election_timeout",
        ),
    ] {
        if let Some(ms) = value {
            builder.set(
                field,
                string(&format!("{ms}ms")),
                &format!("coreos.etcd2.{key}"),
                format!("Raft {key} {ms}ms ({field})"),
            );
        }
    }
    member_tls(
        builder,
        "server_tls",
        [
            "cert_file",
            "key_file",
            "trusted_ca_file",
            "client_cert_auth",
        ],
        [&etcd2.cert_file, &etcd2.key_file, &etcd2.trusted_ca_file],
        etcd2.client_cert_auth,
    )?;
    member_tls(
        builder,
        "peer_tls",
        [
            "peer_cert_file",
            "peer_key_file",
            "peer_trusted_ca_file",
            "peer_client_cert_auth",
        ],
        [
            &etcd2.peer_cert_file,
            &etcd2.peer_key_file,
            &etcd2.peer_trusted_ca_file,
        ],
        etcd2.peer_client_cert_auth,
    )?;
    builder.note(
        "coreos.etcd2",
        "this node runs a member of the store (role master)".into(),
    );
    Ok(true)
}

/// etcd's TLS flags for one listener: `store.<section>`.
fn member_tls(
    builder: &mut Builder,
    section: &str,
    keys: [&str; 4],
    [cert, key, ca]: [&Option<String>; 3],
    client_cert_auth: bool,
) -> Result<(), Invalid> {
    let (cert, key) = match (cert, key) {
        (None, None) => {
            if ca.is_some() || client_cert_auth {
                return Err(invalid(
                    format!("coreos.etcd2.{}", keys[0]),
                    format!("{} needs {} and {}", keys[2], keys[0], keys[1]),
                ));
            }
            return Ok(());
        }
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(invalid(
                format!("coreos.etcd2.{}", keys[0]),
                format!("needs {}", keys[1]),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                format!("coreos.etcd2.{}", keys[1]),
                format!("needs {}", keys[0]),
            ));
        }
    };
    let mut tls = Mapping::new();
    tls.insert(string("cert_file"), string(cert));
    tls.insert(string("key_file"), string(key));
    if let Some(ca) = ca {
        tls.insert(string("trusted_ca_file"), string(ca));
    }
    tls.insert(string("client_cert_auth"), Value::Bool(client_cert_auth));
    let field = format!("store.{section}");
    insert(&mut builder.agent, &field, Value::Mapping(tls));
    let listener = if section == "peer_tls" {
        "peer"
    } else {
        "client"
    };
    for (index, name) in keys.iter().enumerate() {
        let given = match index {
            0 => true,
            1 => true,
            2 => ca.is_some(),
            _ => client_cert_auth,
        };
        if given {
            let key = format!("coreos.etcd2.{name}");
            builder.provenance.push((
                format!("{field}.{}", name.trim_start_matches("peer_")),
                key.clone(),
            ));
            builder.note(&key, format!("the member's {listener} TLS ({field})"));
        }
    }
    Ok(())
}

/// The members' client URLs of a proxy's `initial_cluster`: each peer URL's host on 2379.
fn proxy_endpoints(etcd2: Option<&Etcd2>) -> Option<Vec<String>> {
    let cluster = etcd2?.initial_cluster.as_deref()?;
    let endpoints: Vec<String> = cluster
        .split(',')
        .filter_map(|member| {
            let url = member.split_once('=')?.1.trim();
            let (scheme, rest) = url.split_once("://")?;
            let host = rest.split('/').next()?;
            let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
            Some(format!("{scheme}://{host}:2379"))
        })
        .collect();
    (!endpoints.is_empty()).then_some(endpoints)
}

/// Store TLS and auth of a component (fleet's or flannel's `etcd_*`) into `<section>.store`.
struct EtcdClient<'a> {
    cafile: &'a Option<String>,
    certfile: &'a Option<String>,
    keyfile: &'a Option<String>,
    username: &'a Option<String>,
    password: &'a Option<String>,
}

fn etcd_client(
    builder: &mut Builder,
    section: &str,
    cloud: &str,
    client: EtcdClient<'_>,
) -> Result<(), Invalid> {
    let mut tls = Mapping::new();
    for (value, key, field) in [
        (client.cafile, "etcd_cafile", "ca_file"),
        (client.certfile, "etcd_certfile", "cert_file"),
        (client.keyfile, "etcd_keyfile", "key_file"),
    ] {
        if let Some(path) = value {
            tls.insert(string(field), string(path));
            let agent_field = format!("{section}.store.tls.{field}");
            builder
                .provenance
                .push((agent_field.clone(), format!("{cloud}.{key}")));
            builder.note(
                &format!("{cloud}.{key}"),
                format!("store TLS `{path}` ({agent_field})"),
            );
        }
    }
    if !tls.is_empty() {
        insert(
            &mut builder.agent,
            &format!("{section}.store.tls"),
            Value::Mapping(tls),
        );
    }
    match (client.username, client.password) {
        (None, None) => {}
        (Some(user), Some(password)) => {
            let mut auth = Mapping::new();
            auth.insert(string("username"), string(user));
            auth.insert(string("password"), string(password));
            insert(
                &mut builder.agent,
                &format!("{section}.store.auth"),
                Value::Mapping(auth),
            );
            let field = format!("{section}.store.auth");
            builder
                .provenance
                .push((field.clone(), format!("{cloud}.etcd_username")));
            builder.note(
                &format!("{cloud}.etcd_username"),
                format!("store user `{user}` ({field})"),
            );
            builder.note(
                &format!("{cloud}.etcd_password"),
                format!("its password ({field})"),
            );
        }
        (Some(_), None) => {
            return Err(invalid(
                format!("{cloud}.etcd_username"),
                "needs etcd_password",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                format!("{cloud}.etcd_password"),
                "needs etcd_username",
            ));
        }
    }
    Ok(())
}

/// Maps `coreos.fleet`; fleet's store endpoints if it names them.
fn fleet(
    fleet: Option<&Fleet>,
    started: bool,
    builder: &mut Builder,
) -> Result<Option<Vec<String>>, Invalid> {
    insert(&mut builder.agent, "fleet.enabled", Value::Bool(started));
    let Some(fleet) = fleet else { return Ok(None) };
    if !started {
        builder.note(
            "coreos.fleet",
            "fleet.service is not started by coreos.units: fleet does not run here".into(),
        );
    }
    builder.others("coreos.fleet", &fleet.other);
    if let Some(text) = &fleet.metadata {
        let metadata =
            parse_metadata(text).map_err(|message| invalid("coreos.fleet.metadata", message))?;
        let mut map = Mapping::new();
        for (key, value) in &metadata {
            map.insert(string(key), string(value));
        }
        builder.set(
            "metadata",
            Value::Mapping(map),
            "coreos.fleet.metadata",
            format!("fleet machine metadata {text} (metadata)"),
        );
    }
    public_ip(builder, &fleet.public_ip, "coreos.fleet.public_ip")?;
    let endpoints = fleet.etcd_servers.as_deref().map(list);
    if let Some(endpoints) = &endpoints {
        builder.set(
            "fleet.store.endpoints",
            string_list(endpoints),
            "coreos.fleet.etcd_servers",
            format!(
                "fleet's store endpoints {} (fleet.store.endpoints)",
                endpoints.join(",")
            ),
        );
    }
    etcd_client(
        builder,
        "fleet",
        "coreos.fleet",
        EtcdClient {
            cafile: &fleet.etcd_cafile,
            certfile: &fleet.etcd_certfile,
            keyfile: &fleet.etcd_keyfile,
            username: &fleet.etcd_username,
            password: &fleet.etcd_password,
        },
    )?;
    if let Some(prefix) = &fleet.etcd_key_prefix {
        builder.set(
            "fleet.key_prefix",
            string(prefix),
            "coreos.fleet.etcd_key_prefix",
            format!("fleet's key prefix {prefix} (fleet.key_prefix)"),
        );
    }
    if let Some(ttl) = &fleet.agent_ttl {
        humantime::parse_duration(ttl).map_err(|err| {
            invalid(
                "coreos.fleet.agent_ttl",
                format!("`{ttl}` is not a duration such as 30s: {err}"),
            )
        })?;
        builder.set(
            "fleet.agent_ttl",
            string(ttl),
            "coreos.fleet.agent_ttl",
            format!("fleet agent TTL {ttl} (fleet.agent_ttl)"),
        );
    }
    for (value, key) in [
        (fleet.engine_reconcile_interval, "engine_reconcile_interval"),
        (fleet.etcd_request_timeout, "etcd_request_timeout"),
    ] {
        if let Some(seconds) = value {
            if !(seconds.is_finite() && seconds > 0.0) {
                return Err(invalid(
                    format!("coreos.fleet.{key}"),
                    "must be a positive number of seconds",
                ));
            }
            let ms = (seconds * 1000.0).round() as u64;
            builder.set(
                &format!("fleet.{key}"),
                string(&format!("{ms}ms")),
                &format!("coreos.fleet.{key}"),
                format!("{seconds}s (fleet.{key})"),
            );
        }
    }
    if fleet.disable_engine {
        builder.set(
            "fleet.engine",
            Value::Bool(false),
            "coreos.fleet.disable_engine",
            "no engine candidate on this node (fleet.engine: false)".into(),
        );
    }
    Ok(endpoints)
}

fn public_ip(builder: &mut Builder, value: &Option<String>, key: &str) -> Result<(), Invalid> {
    let Some(text) = value else { return Ok(()) };
    let ip: Ipv4Addr = text
        .parse()
        .map_err(|_| invalid(key, format!("`{text}` is not an IPv4 address (write the address itself; $public_ipv4 is not substituted)")))?;
    let existing = builder
        .agent
        .get("public_ip")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(existing) = existing
        && existing != ip.to_string()
    {
        return Err(invalid(
            key,
            format!("differs from the public IP {existing} given elsewhere: the node has one"),
        ));
    }
    builder.set(
        "public_ip",
        string(&ip.to_string()),
        key,
        format!("the node's public address {ip} (public_ip)"),
    );
    Ok(())
}

/// fleet's `k=v,k=v`.
fn parse_metadata(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(format!("`{pair}` has an empty key"));
            }
            Ok((key.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Maps `coreos.flannel`; flannel's store endpoints if it names them.
fn flannel(
    flannel: Option<&Flannel>,
    started: bool,
    network_config: Option<(String, serde_json::Value, String)>,
    builder: &mut Builder,
) -> Result<Option<Vec<String>>, Invalid> {
    insert(&mut builder.agent, "network.enabled", Value::Bool(started));
    if flannel.is_some() && !started {
        builder.note(
            "coreos.flannel",
            "flanneld.service is not started by coreos.units: no overlay here".into(),
        );
    }
    let prefix = flannel.and_then(|f| f.etcd_prefix.clone());
    if let Some((key, json, from)) = network_config {
        let expected = format!(
            "{}/config",
            prefix
                .as_deref()
                .unwrap_or("/coreos.com/network")
                .trim_end_matches('/')
        );
        if key != expected {
            return Err(invalid(
                from,
                format!(
                    "sets `{key}`, but the network config of this node's prefix is `{expected}`"
                ),
            ));
        }
        let yaml: Value =
            serde_yaml::to_value(&json).map_err(|err| invalid(from.clone(), err.to_string()))?;
        builder.set(
            "network.config",
            yaml,
            &from,
            format!("flannel's network config {json} (network.config, written if absent)"),
        );
    }
    let Some(flannel) = flannel else {
        return Ok(None);
    };
    builder.others("coreos.flannel", &flannel.other);
    if let Some(iface) = &flannel.interface {
        builder.set(
            "iface",
            string(iface),
            "coreos.flannel.interface",
            format!("the overlay's underlay interface {iface} (iface)"),
        );
    }
    public_ip(builder, &flannel.public_ip, "coreos.flannel.public_ip")?;
    if let Some(prefix) = &prefix {
        builder.set(
            "network.prefix",
            string(prefix),
            "coreos.flannel.etcd_prefix",
            format!("the network's store prefix {prefix} (network.prefix)"),
        );
    }
    let endpoints = flannel.etcd_endpoints.as_deref().map(list);
    if let Some(endpoints) = &endpoints {
        builder.set(
            "network.store.endpoints",
            string_list(endpoints),
            "coreos.flannel.etcd_endpoints",
            format!(
                "the overlay's store endpoints {} (network.store.endpoints)",
                endpoints.join(",")
            ),
        );
    }
    etcd_client(
        builder,
        "network",
        "coreos.flannel",
        EtcdClient {
            cafile: &flannel.etcd_cafile,
            certfile: &flannel.etcd_certfile,
            keyfile: &flannel.etcd_keyfile,
            username: &flannel.etcd_username,
            password: &flannel.etcd_password,
        },
    )?;
    if flannel.ip_masq {
        builder.set(
            "network.ip_masq",
            Value::Bool(true),
            "coreos.flannel.ip_masq",
            "masquerade traffic leaving the overlay (network.ip_masq)".into(),
        );
    }
    if let Some(file) = &flannel.subnet_file {
        builder.set(
            "network.subnet_file",
            string(file),
            "coreos.flannel.subnet_file",
            format!("subnet.env at {file} (network.subnet_file)"),
        );
    }
    Ok(endpoints)
}

/// Sorts `coreos.units` into the components the agent runs and the units it writes and runs;
/// returns flannel's network config if a flanneld.service drop-in sets it as CoreOS's docs did
/// (`ExecStartPre=/usr/bin/etcdctl set /coreos.com/network/config '{...}'`).
#[allow(clippy::type_complexity)]
fn units(
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
                    format!("`{text}` is not start, stop, restart, reload, try-restart, reload-or-restart or reload-or-try-restart"),
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
                format!("the agent runs {} itself: {rest} setting(s) of drop-in {} have nothing to act on", unit.name, drop_in.name),
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

fn hostname(
    hostname: Option<&str>,
    builder: &mut Builder,
    setup: &mut Setup,
) -> Result<(), Invalid> {
    let Some(hostname) = hostname else {
        return Ok(());
    };
    let valid = !hostname.is_empty()
        && hostname.len() <= 64
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid {
        return Err(invalid(
            "hostname",
            format!("`{hostname}` is not a host name"),
        ));
    }
    setup.hostname = Some(hostname.to_string());
    builder.note(
        "hostname",
        format!("the host name set to `{hostname}` (sethostname, where permitted)"),
    );
    Ok(())
}

fn users(users: &[User], builder: &mut Builder, setup: &mut Setup) -> Result<(), Invalid> {
    for (index, user) in users.iter().enumerate() {
        let key = format!("users[{index}]");
        builder.others(&key, &user.other);
        let valid_name = !user.name.is_empty()
            && user.name.len() <= 32
            && !user.name.starts_with('-')
            && user
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}` is not a user name", user.name),
            ));
        }
        builder.note(
            &key,
            format!(
                "user `{}` created with useradd if absent{}{}",
                user.name,
                if user.groups.is_empty() {
                    String::new()
                } else {
                    format!(", in groups {}", user.groups.join(","))
                },
                if user.ssh_authorized_keys.is_empty() {
                    String::new()
                } else {
                    format!(", {} ssh key(s)", user.ssh_authorized_keys.len())
                }
            ),
        );
        setup.users.push(NewUser {
            name: user.name.clone(),
            password_hash: user.passwd.clone(),
            groups: user.groups.clone(),
            ssh_authorized_keys: user.ssh_authorized_keys.clone(),
            homedir: user.homedir.clone(),
            shell: user.shell.clone(),
            gecos: user.gecos.clone(),
            primary_group: user.primary_group.clone(),
            no_create_home: user.no_create_home,
            no_user_group: user.no_user_group,
            system: user.system,
        });
    }
    Ok(())
}

fn file_to_write(key: &str, file: &WriteFile) -> Result<FileToWrite, Invalid> {
    if !file.path.starts_with('/') {
        return Err(invalid(
            format!("{key}.path"),
            format!("`{}` is not an absolute path", file.path),
        ));
    }
    let content = decode(&file.content, file.encoding.as_deref())
        .map_err(|message| invalid(format!("{key}.content"), message))?;
    let mode = match &file.permissions {
        None => 0o644,
        Some(text) => parse_mode(text).ok_or_else(|| {
            invalid(
                format!("{key}.permissions"),
                format!("`{text}` is not an octal mode such as 0644"),
            )
        })?,
    };
    let (owner, group) = match file.owner.as_deref() {
        None | Some("") => (None, None),
        Some(owner) => {
            let (user, group) = owner.split_once(':').unwrap_or((owner, ""));
            let some = |text: &str| (!text.is_empty()).then(|| text.to_string());
            (some(user), some(group))
        }
    };
    Ok(FileToWrite {
        path: file.path.clone(),
        content,
        mode,
        owner,
        group,
        append: file.append,
    })
}

/// `0644`, `644`, `0755`, `1777`: three or four octal digits, with an optional leading 0.
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.trim();
    let digits = if digits.len() == 5 {
        digits.strip_prefix('0')?
    } else {
        digits
    };
    if !(3..=4).contains(&digits.len()) || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

/// cloudinit's encodings: base64, gzip, or gzip inside base64.
fn decode(content: &str, encoding: Option<&str>) -> Result<Vec<u8>, String> {
    let base64 = |text: &str| {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|err| format!("not base64: {err}"))
    };
    let gunzip = |bytes: &[u8]| {
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|err| format!("not gzip: {err}"))?;
        if out.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("more than {MAX_FILE_BYTES} bytes once unpacked"));
        }
        Ok(out)
    };
    match encoding.unwrap_or("") {
        "" => Ok(content.as_bytes().to_vec()),
        "b64" | "base64" => base64(content),
        "gz" | "gzip" => gunzip(content.as_bytes()),
        "gz+base64" | "gzip+base64" | "gz+b64" | "gzip+b64" => gunzip(&base64(content)?),
        other => Err(format!(
            "unknown encoding `{other}` (b64, base64, gz, gzip, gz+b64, gzip+base64, ...)"
        )),
    }
}

/// A file written by cloud-config is at most this big once decoded (a gzip bomb stops here).
const MAX_FILE_BYTES: u64 = 64 << 20;
