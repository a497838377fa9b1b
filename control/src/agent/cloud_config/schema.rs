//! The keys of a CoreOS cloud-config the agent reads, as coreos-cloudinit spelled them (keys
//! are compared with `-` read as `_`, as cloudinit did). Keys outside these types are kept in
//! `other` maps so that the agent can name each one it does not honour.
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

/// Keys a section has that the agent does not read, by name.
pub type Other = BTreeMap<String, Value>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CloudConfig {
    #[serde(deserialize_with = "scalar_opt")]
    pub hostname: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub users: Vec<User>,
    pub write_files: Vec<WriteFile>,
    pub coreos: CoreOs,
    /// The agent's own settings for what cloud-config cannot say (machine ID, health
    /// endpoint, pki, bpffs pins, ...), in the agent's YAML format, laid over the mapped ones.
    pub shoal: Option<serde_yaml::Mapping>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CoreOs {
    pub etcd2: Option<Etcd2>,
    pub fleet: Option<Fleet>,
    pub flannel: Option<Flannel>,
    pub units: Vec<Unit>,
    #[serde(flatten)]
    pub other: Other,
}

/// `coreos.etcd2`: etcd2's flags without their `--`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Etcd2 {
    #[serde(deserialize_with = "scalar_opt")]
    pub name: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub initial_cluster: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub initial_cluster_state: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub initial_cluster_token: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub listen_client_urls: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub advertise_client_urls: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub listen_peer_urls: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub initial_advertise_peer_urls: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub data_dir: Option<String>,
    /// Milliseconds, as etcd's flag.
    pub heartbeat_interval: Option<u64>,
    /// Milliseconds, as etcd's flag.
    pub election_timeout: Option<u64>,
    #[serde(deserialize_with = "scalar_opt")]
    pub cert_file: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub key_file: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub trusted_ca_file: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub client_cert_auth: bool,
    #[serde(deserialize_with = "scalar_opt")]
    pub peer_cert_file: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub peer_key_file: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub peer_trusted_ca_file: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub peer_client_cert_auth: bool,
    /// `on` or `readonly`: this node runs no member and uses the cluster (a worker).
    #[serde(deserialize_with = "scalar_opt")]
    pub proxy: Option<String>,
    #[serde(flatten)]
    pub other: Other,
}

/// `coreos.fleet`: fleet's config options.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Fleet {
    /// `k=v,k=v`.
    #[serde(deserialize_with = "scalar_opt")]
    pub metadata: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub public_ip: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_servers: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_cafile: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_certfile: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_keyfile: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_username: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_password: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_key_prefix: Option<String>,
    /// A Go duration (`30s`).
    #[serde(deserialize_with = "scalar_opt")]
    pub agent_ttl: Option<String>,
    /// Seconds.
    pub engine_reconcile_interval: Option<f64>,
    /// Seconds.
    pub etcd_request_timeout: Option<f64>,
    #[serde(deserialize_with = "flag")]
    pub disable_engine: bool,
    #[serde(flatten)]
    pub other: Other,
}

/// `coreos.flannel`: flanneld's options.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Flannel {
    #[serde(deserialize_with = "scalar_opt")]
    pub interface: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub public_ip: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_prefix: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_endpoints: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_cafile: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_certfile: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_keyfile: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_username: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub etcd_password: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub ip_masq: bool,
    #[serde(deserialize_with = "scalar_opt")]
    pub subnet_file: Option<String>,
    #[serde(flatten)]
    pub other: Other,
}

/// One of `coreos.units`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Unit {
    pub name: String,
    #[serde(deserialize_with = "scalar_opt")]
    pub command: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub enable: bool,
    #[serde(deserialize_with = "flag")]
    pub runtime: bool,
    #[serde(deserialize_with = "flag")]
    pub mask: bool,
    pub content: Option<String>,
    pub drop_ins: Vec<DropIn>,
    #[serde(flatten)]
    pub other: Other,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct DropIn {
    pub name: String,
    pub content: String,
    #[serde(flatten)]
    pub other: Other,
}

/// One of `write_files`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WriteFile {
    pub path: String,
    pub content: String,
    /// Octal, `0644` or `644` (YAML may read it as the number 644: the digits count).
    #[serde(deserialize_with = "scalar_opt")]
    pub permissions: Option<String>,
    /// `user`, `user:group` or `:group`.
    #[serde(deserialize_with = "scalar_opt")]
    pub owner: Option<String>,
    /// `b64`/`base64`, `gz`/`gzip`, or both (`gz+b64`, `gzip+base64`, ...).
    #[serde(deserialize_with = "scalar_opt")]
    pub encoding: Option<String>,
    /// cloud-init's `append`: add to the end of an existing file.
    #[serde(deserialize_with = "flag")]
    pub append: bool,
    #[serde(flatten)]
    pub other: Other,
}

/// One of `users`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct User {
    pub name: String,
    #[serde(deserialize_with = "scalar_opt")]
    pub passwd: Option<String>,
    pub groups: Vec<String>,
    pub ssh_authorized_keys: Vec<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub homedir: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub shell: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub gecos: Option<String>,
    #[serde(deserialize_with = "scalar_opt")]
    pub primary_group: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub no_create_home: bool,
    #[serde(deserialize_with = "flag")]
    pub no_user_group: bool,
    #[serde(deserialize_with = "flag")]
    pub system: bool,
    #[serde(flatten)]
    pub other: Other,
}

/// A string-valued key that YAML may have read as a number or a boolean (`agent-ttl: 30`,
/// `permissions: 0644`): its text, as Go's YAML decoder gave a string field.
fn scalar_opt<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text)),
        Value::Number(number) => Ok(Some(number.to_string())),
        Value::Bool(flag) => Ok(Some(flag.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, found {}",
            kind(&other)
        ))),
    }
}

/// A boolean key, also as the strings `"true"`/`"false"` (flannel's `ip_masq` is a string
/// in cloudinit).
fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(false),
        Value::Bool(flag) => Ok(flag),
        Value::String(text) => match text.trim() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" | "" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "expected true or false, found `{other}`"
            ))),
        },
        other => Err(serde::de::Error::custom(format!(
            "expected true or false, found {}",
            kind(&other)
        ))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
