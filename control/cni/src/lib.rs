//! shoal as flannel's CNI plugin: invoked as `flannel` (a symlink in the CNI bin dir) or as
//! `shoal cni`, it answers the CNI protocol (spec 1.0: ADD, CHECK, DEL, VERSION) for flannel's
//! network config, putting containers on this node's overlay subnet through the standard
//! `bridge` and `host-local` plugins, as flannel's own plugin does.
//!
//! [`config`] builds the delegate's config from the network config and subnet.env;
//! [`scratch`] keeps it per container for CHECK and DEL; [`delegate`] runs the delegate from
//! `CNI_PATH`; [`error`] is CNI's error object.

pub mod config;
pub mod delegate;
pub mod error;
pub mod scratch;

use std::io::{Read, Write};

use serde_json::{Map, Value};
use shoal_flannel::subnet_env::{SubnetEnv, SubnetEnvError};

use crate::{
    config::{NetConf, SharedBridge},
    error::{CniError, code},
};

/// The spec versions this plugin speaks (it passes the version on to its delegate).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The version of the error objects when the config names none.
const DEFAULT_VERSION: &str = "1.0.0";

/// The largest network config read from stdin.
const MAX_CONFIG: u64 = 1 << 20;

/// What the runtime asks, from the `CNI_*` environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub cni_path: String,
}

impl Invocation {
    /// Reads `CNI_COMMAND` and, for ADD/CHECK/DEL, the variables they need (as the CNI
    /// library's skeleton requires them).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let required = |name: &str| {
            var(name).filter(|value| !value.is_empty()).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!("{name} env variable missing"),
                )
            })
        };
        let command = required("CNI_COMMAND")?;
        if command == "VERSION" {
            return Ok(Self {
                command,
                container_id: String::new(),
                cni_path: String::new(),
            });
        }
        if matches!(command.as_str(), "ADD" | "CHECK") {
            required("CNI_NETNS")?;
        }
        required("CNI_IFNAME")?;
        Ok(Self {
            container_id: required("CNI_CONTAINERID")?,
            cni_path: required("CNI_PATH")?,
            command,
        })
    }
}

/// Answers one invocation with the network config `stdin`: what to print on success.
pub fn handle(invocation: &Invocation, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
    if invocation.command == "VERSION" {
        return Ok(version_info());
    }
    let conf = NetConf::parse(stdin)?;
    check_version(&conf.cni_version, &invocation.command)?;
    match invocation.command.as_str() {
        "ADD" => add(invocation, &conf),
        "CHECK" => check(invocation, &conf).map(|()| Vec::new()),
        "DEL" => delete(invocation, &conf).map(|()| Vec::new()),
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND {other:?}"),
        )),
    }
}

/// Runs as a CNI plugin: the `CNI_*` environment, the config on stdin, the result or the error
/// object on stdout. The error is returned too, for the exit status.
pub fn run_as_plugin() -> Result<(), CniError> {
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(MAX_CONFIG + 1)
        .read_to_end(&mut stdin);
    let outcome = match read {
        Err(err) => Err(CniError::new(code::IO, "reading the network config").with_details(err)),
        Ok(_) if stdin.len() as u64 > MAX_CONFIG => Err(CniError::new(
            code::DECODE,
            format!("the network config is larger than {MAX_CONFIG} bytes"),
        )),
        Ok(_) => Invocation::from_env(|name| std::env::var(name).ok())
            .and_then(|invocation| handle(&invocation, &stdin)),
    };
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(output) => {
            let _ = stdout.write_all(&output);
            Ok(())
        }
        Err(err) => {
            let _ = writeln!(stdout, "{}", err.to_json(&requested_version(&stdin)));
            Err(err)
        }
    }
}

fn version_info() -> Vec<u8> {
    serde_json::json!({
        "cniVersion": DEFAULT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
    .into_bytes()
}

/// The config's `cniVersion`, when it has a usable one.
fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|config| config.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|version| SUPPORTED_VERSIONS.contains(&version.as_str()))
        .unwrap_or_else(|| DEFAULT_VERSION.to_string())
}

fn check_version(version: &str, command: &str) -> Result<(), CniError> {
    let incompatible = |msg: String| Err(CniError::new(code::INCOMPATIBLE_VERSION, msg));
    if !version.is_empty() && !SUPPORTED_VERSIONS.contains(&version) {
        return incompatible(format!("cniVersion {version:?} is not supported"));
    }
    let before_check = ["", "0.1.0", "0.2.0", "0.3.0", "0.3.1"];
    if command == "CHECK" && before_check.contains(&version) {
        return incompatible("config version does not allow CHECK".into());
    }
    Ok(())
}

/// ADD: the delegate config from subnet.env (and Docker's options beside it: a shared
/// bridge), kept for DEL, then the delegate's ADD.
fn add(invocation: &Invocation, conf: &NetConf) -> Result<Vec<u8>, CniError> {
    conf.validate()?;
    let env = read_subnet_env(conf)?;
    let docker_file = shoal_flannel::docker_opts::path_beside(&conf.subnet_file);
    let shared = SharedBridge::from_docker_options(&docker_file, &env)?;
    let delegate = conf.delegate_config(&env, shared.as_ref())?;
    let bytes = encode(&delegate)?;
    scratch::save(
        &scratch::path(&conf.data_dir, &invocation.container_id)?,
        &bytes,
    )?;
    let plugin = delegate::find(delegate_type(&delegate)?, &invocation.cni_path)?;
    delegate::run(&plugin, "ADD", &bytes)
}

/// CHECK: the delegate's CHECK with the config the container was added with and the runtime's
/// `prevResult`.
fn check(invocation: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let path = scratch::path(&conf.data_dir, &invocation.container_id)?;
    let saved = scratch::load(&path)?.ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "container {} was not added to this network",
                invocation.container_id
            ),
        )
    })?;
    let mut delegate = decode(&saved)?;
    for (key, value) in [
        ("prevResult", &conf.prev_result),
        ("runtimeConfig", &conf.runtime_config),
    ] {
        if let Some(value) = value {
            delegate.insert(key.into(), value.clone());
        }
    }
    let plugin = delegate::find(delegate_type(&delegate)?, &invocation.cni_path)?;
    delegate::run(&plugin, "CHECK", &encode(&delegate)?).map(drop)
}

/// DEL: the delegate's DEL with the kept config, which is then forgotten. Nothing kept (never
/// added, already deleted) is success, as the spec wants DEL idempotent.
fn delete(invocation: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let path = scratch::path(&conf.data_dir, &invocation.container_id)?;
    let Some(saved) = scratch::load(&path)? else {
        return Ok(());
    };
    let delegate = match decode(&saved) {
        Ok(delegate) => delegate,
        Err(err) => {
            // As flannel: the interface stays until the node reboots, nothing more can be done.
            tracing::warn!(
                "forgetting an unreadable delegate config {}: {err}",
                path.display()
            );
            return scratch::remove(&path);
        }
    };
    let plugin = delegate::find(delegate_type(&delegate)?, &invocation.cni_path)?;
    delegate::run(&plugin, "DEL", &saved)?;
    scratch::remove(&path)
}

/// subnet.env; missing means flannel has no lease yet, which passes.
fn read_subnet_env(conf: &NetConf) -> Result<SubnetEnv, CniError> {
    SubnetEnv::read(&conf.subnet_file).map_err(|err| {
        let missing = matches!(&err, SubnetEnvError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound);
        let code = if missing { code::TRY_AGAIN_LATER } else { code::IO };
        let cause = std::error::Error::source(&err).map_or(String::new(), ToString::to_string);
        CniError::new(
            code,
            format!(
                "failed to load flannel 'subnet.env' file {}: is shoal flannel running on this node?",
                conf.subnet_file.display()
            ),
        )
        .with_details(cause)
    })
}

fn delegate_type(delegate: &Map<String, Value>) -> Result<&str, CniError> {
    delegate
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "the delegate config has no type"))
}

fn encode(delegate: &Map<String, Value>) -> Result<Vec<u8>, CniError> {
    serde_json::to_vec(delegate).map_err(|err| {
        CniError::new(code::DECODE, "encoding the delegate config").with_details(err)
    })
}

fn decode(bytes: &[u8]) -> Result<Map<String, Value>, CniError> {
    serde_json::from_slice(bytes).map_err(|err| {
        CniError::new(code::DECODE, "reading the kept delegate config").with_details(err)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn invocation(vars: &[(&str, &str)]) -> Result<Invocation, CniError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Invocation::from_env(|name| vars.get(name).cloned())
    }

    #[test]
    fn environment_checked_as_the_skeleton_does() {
        let version = invocation(&[("CNI_COMMAND", "VERSION")]).expect("VERSION needs nothing");
        let info: Value =
            serde_json::from_slice(&handle(&version, b"").expect("version")).expect("json");
        assert_eq!(info["supportedVersions"][5], "1.0.0");
        let err =
            invocation(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).expect_err("no netns");
        assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        assert!(err.msg.contains("CNI_NETNS"), "{err}");
        let del = invocation(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]);
        assert!(del.is_ok(), "DEL needs no netns");
    }

    #[test]
    fn versions_and_a_missing_subnet_env() {
        let dir = tempfile::tempdir().expect("temp dir");
        let add = Invocation {
            command: "ADD".into(),
            container_id: "c1".into(),
            cni_path: "/nonexistent".into(),
        };
        let config = |version: &str| {
            format!(
                r#"{{"cniVersion":"{version}","name":"n","type":"flannel","subnetFile":"{}/subnet.env","dataDir":"{}/data"}}"#,
                dir.path().display(),
                dir.path().display()
            )
        };
        let err = handle(&add, config("9.9.9").as_bytes()).expect_err("unknown version");
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        let check = Invocation {
            command: "CHECK".into(),
            ..add.clone()
        };
        let err = handle(&check, config("0.3.1").as_bytes()).expect_err("CHECK before 0.4.0");
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        let err = handle(&check, config("1.0.0").as_bytes()).expect_err("never added");
        assert_eq!(err.code, code::UNKNOWN_CONTAINER);
        let err = handle(&add, config("1.0.0").as_bytes()).expect_err("no subnet.env");
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        assert!(err.msg.contains("subnet.env"), "{err}");
        let object: Value = serde_json::from_str(&err.to_json("1.0.0")).expect("json");
        assert_eq!(object["code"], 11);
        assert_eq!(object["cniVersion"], "1.0.0");
        let del = Invocation {
            command: "DEL".into(),
            ..add
        };
        assert_eq!(
            handle(&del, config("1.0.0").as_bytes()).expect("DEL of nothing succeeds"),
            b""
        );
        assert_eq!(requested_version(config("0.4.0").as_bytes()), "0.4.0");
        assert_eq!(requested_version(b"garbage"), "1.0.0");
    }
}
