//! fleetd's configuration, under fleet's option names. It comes from a fleet config file
//! (`key=value` lines, as fleet's `fleet.conf`), from YAML/JSON (embedded in the agent's config)
//! and from command-line flags, later sources overriding earlier ones.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};
use shoal_store_client::{Credentials, StoreConfig, TlsFiles};

use crate::{agent::service::TimespanError, store::DEFAULT_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    #[error("option {key}: {message}")]
    Value { key: String, message: String },
    #[error("reading {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// fleet's default config file, read when it exists and no other is named.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/fleet/fleet.conf";

/// fleet's default `units_directory`.
pub const DEFAULT_UNITS_DIRECTORY: &str = "/run/fleet/units/";

/// Which unit runtime the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// systemd when it is PID 1, else the built-in supervisor.
    #[default]
    Auto,
    Systemd,
    Supervisor,
}

/// fleetd's settings. Deserialises from YAML with fleet's option names; durations are numbers
/// of seconds or strings such as `"30s"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    pub etcd_servers: Vec<String>,
    pub etcd_key_prefix: String,
    /// `k=v,k=v`.
    #[serde(deserialize_with = "metadata_field")]
    pub metadata: BTreeMap<String, String>,
    pub public_ip: Option<String>,
    #[serde(deserialize_with = "duration_field")]
    pub agent_ttl: Duration,
    #[serde(deserialize_with = "duration_field")]
    pub engine_reconcile_interval: Duration,
    #[serde(deserialize_with = "duration_field")]
    pub etcd_request_timeout: Duration,
    /// CA that signs the store's certificate (TLS).
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for a store that checks clients; goes with `etcd_keyfile`.
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    /// The store user (etcd auth), with `etcd_password`.
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    pub machine_id: Option<String>,
    pub data_dir: PathBuf,
    /// Run only the agent, never the engine (fleet's `disable_engine`).
    pub disable_engine: bool,
    pub unit_runtime: RuntimeKind,
    /// fleet's logging level: above 0, debug logs.
    pub verbosity: u32,
    /// Where the systemd runtime writes unit files (fleet's `units_directory`).
    pub units_directory: PathBuf,
    /// fleet options given here that have no effect in shoal (warned about at start).
    #[serde(skip)]
    pub without_effect: Vec<String>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            etcd_servers: vec!["http://127.0.0.1:2379".into()],
            etcd_key_prefix: DEFAULT_PREFIX.into(),
            metadata: BTreeMap::new(),
            public_ip: None,
            agent_ttl: Duration::from_secs(30),
            engine_reconcile_interval: Duration::from_secs(2),
            etcd_request_timeout: Duration::from_secs(3),
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            etcd_username: None,
            etcd_password: None,
            machine_id: None,
            data_dir: PathBuf::from("/var/lib/shoal/fleet"),
            disable_engine: false,
            unit_runtime: RuntimeKind::Auto,
            verbosity: 0,
            units_directory: PathBuf::from(DEFAULT_UNITS_DIRECTORY),
            without_effect: Vec::new(),
        }
    }
}

impl FleetConfig {
    /// Reads a fleet config file (`key=value` lines, `#` comments, values optionally quoted,
    /// `etcd_servers` as a comma list or `["a","b"]`).
    pub fn from_conf_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_conf_text(&file, &text)
    }

    pub fn from_conf_text(file: &str, text: &str) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let syntax = |message: String| ConfigError::Syntax {
                file: file.to_string(),
                line: index + 1,
                message,
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| syntax(format!("expected key=value, got {line:?}")))?;
            config
                .set(key.trim(), value.trim())
                .map_err(|err| syntax(err.to_string()))?;
        }
        Ok(config)
    }

    /// Sets one option from its textual value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let value = unquote(value);
        let bad = |message: String| ConfigError::Value {
            key: key.to_string(),
            message,
        };
        match key {
            "etcd_servers" => self.etcd_servers = parse_list(&value),
            "etcd_key_prefix" => self.etcd_key_prefix = value,
            "metadata" => self.metadata = parse_metadata(&value).map_err(|e| bad(e.to_string()))?,
            "public_ip" => self.public_ip = Some(value).filter(|v| !v.is_empty()),
            "agent_ttl" => {
                self.agent_ttl = parse_duration(&value).map_err(|e| bad(e.to_string()))?
            }
            "engine_reconcile_interval" => {
                self.engine_reconcile_interval =
                    parse_duration(&value).map_err(|e| bad(e.to_string()))?
            }
            "etcd_request_timeout" => {
                self.etcd_request_timeout =
                    parse_duration(&value).map_err(|e| bad(e.to_string()))?
            }
            "etcd_cafile" => self.etcd_cafile = non_empty(value).map(PathBuf::from),
            "etcd_certfile" => self.etcd_certfile = non_empty(value).map(PathBuf::from),
            "etcd_keyfile" => self.etcd_keyfile = non_empty(value).map(PathBuf::from),
            "etcd_username" => self.etcd_username = non_empty(value),
            "etcd_password" => self.etcd_password = non_empty(value),
            "machine_id" => self.machine_id = Some(value).filter(|v| !v.is_empty()),
            "data_dir" => self.data_dir = PathBuf::from(value),
            "disable_engine" => {
                self.disable_engine =
                    crate::unit::parse_bool(&value).map_err(|e| bad(e.to_string()))?
            }
            "unit_runtime" => {
                self.unit_runtime = match value.as_str() {
                    "auto" => RuntimeKind::Auto,
                    "systemd" => RuntimeKind::Systemd,
                    "supervisor" => RuntimeKind::Supervisor,
                    _ => return Err(bad(format!("{value:?} is not auto, systemd or supervisor"))),
                }
            }
            "verbosity" => {
                self.verbosity = value
                    .parse()
                    .map_err(|_| bad(format!("{value:?} is not a non-negative integer")))?
            }
            "units_directory" => self.units_directory = PathBuf::from(value),
            "systemd_user" => {
                if crate::unit::parse_bool(&value).map_err(|e| bad(e.to_string()))? {
                    return Err(bad("systemd --user units are not supported".into()));
                }
            }
            // Accepted as fleet accepts them; they change nothing here, which fleetd says at
            // start (fleet itself ignored verify_units and authorized_keys_file).
            "token_limit"
            | "enable_grpc"
            | "disable_watches"
            | "verify_units"
            | "authorized_keys_file" => {
                if !is_fleet_default(key, &value)
                    && !self.without_effect.iter().any(|known| known == key)
                {
                    self.without_effect.push(key.to_string());
                }
            }
            _ => return Err(bad("unknown option".into())),
        }
        Ok(())
    }

    /// Checks values that would only fail later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError::Value {
            key: key.to_string(),
            message: message.to_string(),
        };
        if self.etcd_servers.is_empty() {
            return Err(bad("etcd_servers", "at least one endpoint is needed"));
        }
        if self.agent_ttl < Duration::from_secs(1) {
            return Err(bad("agent_ttl", "must be at least 1s"));
        }
        if self.engine_reconcile_interval.is_zero() {
            return Err(bad("engine_reconcile_interval", "must be positive"));
        }
        match (&self.etcd_certfile, &self.etcd_keyfile) {
            (Some(_), None) => return Err(bad("etcd_certfile", "needs etcd_keyfile")),
            (None, Some(_)) => return Err(bad("etcd_keyfile", "needs etcd_certfile")),
            _ => {}
        }
        if self.etcd_password.is_some() && self.etcd_username.is_none() {
            return Err(bad("etcd_password", "needs etcd_username"));
        }
        Ok(())
    }

    /// How fleetd reaches the store: its endpoints, request timeout, TLS files and user.
    pub fn store_config(&self) -> StoreConfig {
        let mut config = StoreConfig::new(self.etcd_servers.iter().cloned())
            .with_timeout(self.etcd_request_timeout);
        config.tls = TlsFiles::given(
            self.etcd_cafile.clone(),
            self.etcd_certfile.clone(),
            self.etcd_keyfile.clone(),
        );
        if let Some(user) = &self.etcd_username {
            // fleet: a user without a password authenticates with an empty one.
            config = config.with_credentials(Credentials {
                user: user.clone(),
                password: self.etcd_password.clone().unwrap_or_default(),
            });
        }
        config
    }
}

/// Whether `value` is fleet's default for one of the options without effect here.
fn is_fleet_default(key: &str, value: &str) -> bool {
    match key {
        "token_limit" => value == "100",
        "authorized_keys_file" => value.is_empty(),
        _ => crate::unit::parse_bool(value).is_ok_and(|on| !on),
    }
}

/// fleet's options treat an empty value as unset.
fn non_empty(value: String) -> Option<String> {
    Some(value).filter(|value| !value.is_empty())
}

fn unquote(value: &str) -> String {
    let trimmed = value.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = trimmed
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner.to_string();
        }
    }
    trimmed.to_string()
}

fn parse_list(value: &str) -> Vec<String> {
    let inner = value.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(unquote)
        .filter(|item| !item.is_empty())
        .collect()
}

/// `k=v,k=v` into a map.
/// A `metadata` entry that is not `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata {0:?} is not key=value")]
    NotPair(String),
    #[error("metadata {0:?} needs a key and a value")]
    MissingPart(String),
}

pub fn parse_metadata(value: &str) -> Result<BTreeMap<String, String>, MetadataError> {
    let mut metadata = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, val) = pair
            .split_once('=')
            .ok_or_else(|| MetadataError::NotPair(pair.to_string()))?;
        let (key, val) = (key.trim(), val.trim());
        if key.is_empty() || val.is_empty() {
            return Err(MetadataError::MissingPart(pair.to_string()));
        }
        metadata.insert(key.to_string(), val.to_string());
    }
    Ok(metadata)
}

/// `30`, `1.5`, `30s`, `500ms`, `1m`.
pub fn parse_duration(value: &str) -> Result<Duration, TimespanError> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Ok(Duration::from_secs_f64(seconds));
    }
    crate::agent::service::parse_timespan(value)
}

fn duration_field<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Seconds(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Ok(Duration::from_secs_f64(seconds))
        }
        Raw::Seconds(seconds) => Err(serde::de::Error::custom(format!(
            "{seconds} is not a duration"
        ))),
        Raw::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
    }
}

fn metadata_field<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Map(BTreeMap<String, String>),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Text(text) => parse_metadata(&text).map_err(serde::de::Error::custom),
        Raw::Map(map) => Ok(map),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_conf_file_with_quotes_and_lists() {
        let text = "# fleet.conf\netcd_servers=[\"http://10.0.0.1:2379\",\"http://10.0.0.2:2379\"]\n\
                    metadata=\"region=us-east,rack=r1\"\npublic_ip=\"10.0.0.5\"\nagent_ttl=\"10s\"\n\
                    engine_reconcile_interval=0.5\n";
        let config = FleetConfig::from_conf_text("fleet.conf", text).expect("parses");
        assert_eq!(
            config.etcd_servers,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(config.metadata.get("rack").map(String::as_str), Some("r1"));
        assert_eq!(config.public_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(config.agent_ttl, Duration::from_secs(10));
        assert_eq!(config.engine_reconcile_interval, Duration::from_millis(500));
    }

    #[test]
    fn conf_errors_name_file_and_line() {
        let err = FleetConfig::from_conf_text("f.conf", "agent_ttl=10s\nbogus=1\n").unwrap_err();
        assert_eq!(err.to_string(), "f.conf:2: option bogus: unknown option");
        let err = FleetConfig::from_conf_text("f.conf", "metadata=rack\n").unwrap_err();
        assert!(
            err.to_string().starts_with("f.conf:1: option metadata:"),
            "{err}"
        );
    }

    #[test]
    fn tls_files_and_user_reach_the_store_config() {
        let text = "etcd_servers=10.0.0.1:2379\netcd_cafile=/etc/ssl/etcd/ca.pem\n\
                    etcd_certfile=/etc/ssl/etcd/client.pem\netcd_keyfile=\"/etc/ssl/etcd/client-key.pem\"\n\
                    etcd_username=fleet\netcd_password=secret\netcd_request_timeout=2s\n";
        let config = FleetConfig::from_conf_text("fleet.conf", text).expect("parses");
        config.validate().expect("valid");
        let store = config.store_config();
        assert_eq!(
            store.tls,
            Some(TlsFiles {
                ca: Some("/etc/ssl/etcd/ca.pem".into()),
                cert: Some("/etc/ssl/etcd/client.pem".into()),
                key: Some("/etc/ssl/etcd/client-key.pem".into()),
            })
        );
        assert_eq!(
            store.credentials,
            Some(Credentials {
                user: "fleet".into(),
                password: "secret".into()
            })
        );
        assert_eq!(store.timeout, Duration::from_secs(2));
        let urls: Vec<String> = store
            .parsed_endpoints()
            .expect("valid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(urls, ["https://10.0.0.1:2379"]);
        let plain = FleetConfig::from_conf_text("fleet.conf", "etcd_cafile=\n").expect("parses");
        assert_eq!(plain.store_config().tls, None);
        assert_eq!(plain.store_config().credentials, None);
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let config =
            FleetConfig::from_conf_text("f.conf", "etcd_certfile=/c.pem\n").expect("parses");
        let err = config.validate().expect_err("no key");
        assert_eq!(err.to_string(), "option etcd_certfile: needs etcd_keyfile");
    }

    #[test]
    fn yaml_with_fleet_names() {
        let yaml = "etcd_servers: [\"http://127.0.0.1:2379\"]\nmetadata: \"role=web\"\nagent_ttl: 5\n\
                    engine_reconcile_interval: 1s\ndata_dir: /tmp/x\n";
        let config: FleetConfig = serde_yaml::from_str(yaml).expect("parses");
        assert_eq!(config.agent_ttl, Duration::from_secs(5));
        assert_eq!(config.engine_reconcile_interval, Duration::from_secs(1));
        assert_eq!(config.metadata.get("role").map(String::as_str), Some("web"));
        assert!(serde_yaml::from_str::<FleetConfig>("agent_tll: 5\n").is_err());
    }
}
