//! flannel's CNI network config (`"type": "flannel"`, `subnetFile`, `dataDir`, `delegate`,
//! `ipam`) and the delegate config built from it and subnet.env, by the rules of flannel's
//! plugin: `bridge` unless the delegate names another type, the node's subnet as host-local's
//! range, a route to the whole network through the subnet's gateway, the overlay's MTU, `ipMasq` when flannel does not
//! masquerade and `isGateway` for a bridge.
//!
//! On a node where Docker shares its bridge ([`SharedBridge`]: Docker's options beside
//! subnet.env carry `--fixed-cidr`), the delegate joins Docker's bridge instead of making
//! `cni0` with a second copy of the gateway, and host-local hands out only the part of the
//! lease Docker does not.

use std::{net::Ipv4Addr, path::PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value, json};
use shoal_flannel::subnet_env::SubnetEnv;

use crate::error::{CniError, code};

/// Where flannel's plugin keeps each container's delegate config by default.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// The network config on stdin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_subnet_file")]
    pub subnet_file: PathBuf,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub delegate: Option<Map<String, Value>>,
    pub ipam: Option<Map<String, Value>>,
    pub runtime_config: Option<Value>,
    pub prev_result: Option<Value>,
}

fn default_subnet_file() -> PathBuf {
    PathBuf::from(shoal_flannel::subnet_env::DEFAULT_PATH)
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        serde_json::from_slice(bytes).map_err(|err| {
            CniError::new(code::DECODE, "failed to load flannel netconf").with_details(err)
        })
    }

    /// The checks flannel's plugin makes of the config, before anything else.
    pub fn validate(&self) -> Result<(), CniError> {
        let invalid = |msg: &str| Err(CniError::new(code::INVALID_CONFIG, msg));
        if self.name.is_empty() {
            return invalid("the network config has no name");
        }
        let Some(delegate) = &self.delegate else {
            return Ok(());
        };
        if delegate.get("type").is_some_and(|kind| !kind.is_string()) {
            return invalid("'delegate' dictionary, if present, must have (string) 'type' field");
        }
        if delegate.contains_key("name") {
            return invalid(
                "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
            );
        }
        if delegate.contains_key("ipam") {
            return invalid(
                "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel",
            );
        }
        Ok(())
    }

    /// The delegate's config for a container on this node's lease (`env`), beside Docker on
    /// its bridge if `shared`.
    pub fn delegate_config(
        &self,
        env: &SubnetEnv,
        shared: Option<&SharedBridge>,
    ) -> Result<Map<String, Value>, CniError> {
        self.validate()?;
        let mut delegate = self.delegate.clone().unwrap_or_default();
        if let Some(runtime_config) = &self.runtime_config {
            delegate.insert("runtimeConfig".into(), runtime_config.clone());
        }
        delegate.insert("name".into(), json!(self.name));
        delegate.entry("type").or_insert(json!("bridge"));
        // flannel masquerades overlay traffic leaving the network itself, else the bridge must.
        delegate.entry("ipMasq").or_insert(json!(!env.ip_masq));
        delegate.entry("mtu").or_insert(json!(env.mtu));
        if delegate.get("type") == Some(&json!("bridge")) {
            delegate.entry("isGateway").or_insert(json!(true));
            if let Some(shared) = shared {
                delegate.entry("bridge").or_insert(json!(shared.bridge));
            }
        }
        if !self.cni_version.is_empty() {
            delegate.insert("cniVersion".into(), json!(self.cni_version));
        }
        delegate.insert(
            "ipam".into(),
            Value::Object(self.delegate_ipam(env, shared)?),
        );
        Ok(delegate)
    }

    /// host-local (unless `ipam.type` says otherwise) over the node's subnet, with the
    /// config's own routes and one to the whole network.
    fn delegate_ipam(
        &self,
        env: &SubnetEnv,
        shared: Option<&SharedBridge>,
    ) -> Result<Map<String, Value>, CniError> {
        let mut ipam = self.ipam.clone().unwrap_or_default();
        ipam.entry("type").or_insert(json!("host-local"));
        let range = match shared {
            None => json!({ "subnet": env.subnet.to_string() }),
            Some(shared) => json!({
                "subnet": env.subnet.to_string(),
                "rangeStart": shared.first.to_string(),
                "rangeEnd": shared.last.to_string(),
                "gateway": env.gateway().ip().to_string(),
            }),
        };
        ipam.insert("ranges".into(), json!([[range]]));
        let mut routes = match ipam.remove("routes") {
            None => Vec::new(),
            Some(Value::Array(routes)) => routes,
            Some(_) => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "failed to parse ipam.routes: not a list",
                ));
            }
        };
        // flannel leaves the gateway out (the delegate then uses the address's gateway, the
        // same one); naming it lets the CHECK of bridge/ptp before plugins v1.3 match the route
        // (containernetworking/plugins#886).
        routes.push(json!({
            "dst": env.network.to_string(),
            "gw": env.gateway().ip().to_string(),
        }));
        ipam.insert("routes".into(), Value::Array(routes));
        Ok(ipam)
    }
}

/// Docker's bridge on this node, shared with CNI containers: the addresses of the lease left
/// to CNI (Docker allocates the rest, its `--fixed-cidr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBridge {
    pub bridge: String,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

/// Docker's default bridge, the one its `--bip` configures.
pub const DOCKER_BRIDGE: &str = "docker0";

impl SharedBridge {
    /// From Docker's options file beside subnet.env: `None` without a `--fixed-cidr` (Docker,
    /// if any, takes the whole lease on a bridge of its own, as with flannel).
    pub fn from_docker_options(
        docker_file: &std::path::Path,
        env: &SubnetEnv,
    ) -> Result<Option<Self>, CniError> {
        use shoal_flannel::docker_opts::{cni_range, read_fixed_cidr};
        let Some(docker) = read_fixed_cidr(docker_file) else {
            return Ok(None);
        };
        let (first, last) = cni_range(env.subnet, docker).ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "Docker's --fixed-cidr={docker} in {} leaves no part of the lease {} to CNI",
                    docker_file.display(),
                    env.subnet
                ),
            )
        })?;
        Ok(Some(Self {
            bridge: DOCKER_BRIDGE.to_string(),
            first,
            last,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ip_masq: bool) -> SubnetEnv {
        SubnetEnv {
            network: "10.1.0.0/16".parse().expect("cidr"),
            subnet: "10.1.74.0/24".parse().expect("cidr"),
            mtu: 1450,
            ip_masq,
        }
    }

    #[test]
    fn defaults_as_flannels_plugin() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel"}"#)
            .expect("parses");
        assert_eq!(conf.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(conf.data_dir, PathBuf::from("/var/lib/cni/flannel"));
        let delegate = conf.delegate_config(&env(true), None).expect("valid");
        assert_eq!(
            Value::Object(delegate),
            json!({
                "cniVersion": "1.0.0",
                "name": "cbr0",
                "type": "bridge",
                "ipMasq": false,
                "mtu": 1450,
                "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.1.74.0/24"}]],
                    "routes": [{"dst": "10.1.0.0/16", "gw": "10.1.74.1"}],
                },
            })
        );
    }

    #[test]
    fn the_delegate_and_ipam_settings_given_are_kept() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"flannel",
                 "delegate":{"bridge":"cni9","ipMasq":true,"hairpinMode":true},
                 "ipam":{"dataDir":"/tmp/x","routes":[{"dst":"0.0.0.0/0"}]},
                 "runtimeConfig":{"portMappings":[]}}"#,
        )
        .expect("parses");
        let delegate = conf.delegate_config(&env(false), None).expect("valid");
        assert_eq!(delegate["bridge"], json!("cni9"));
        assert_eq!(delegate["ipMasq"], json!(true));
        assert_eq!(delegate["hairpinMode"], json!(true));
        assert_eq!(delegate["runtimeConfig"], json!({"portMappings": []}));
        assert_eq!(
            delegate["ipam"],
            json!({
                "type": "host-local",
                "dataDir": "/tmp/x",
                "ranges": [[{"subnet": "10.1.74.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.1.0.0/16", "gw": "10.1.74.1"}],
            })
        );
        let ptp = NetConf::parse(br#"{"name":"n","delegate":{"type":"ptp"}}"#).expect("parses");
        let delegate = ptp.delegate_config(&env(false), None).expect("valid");
        assert!(!delegate.contains_key("isGateway"));
        assert!(!delegate.contains_key("cniVersion"));
    }

    #[test]
    fn beside_docker_the_delegate_joins_docker0_with_the_upper_half() {
        let dir = tempfile::tempdir().expect("temp dir");
        let docker_file = dir.path().join("docker");
        let env = env(true);
        assert_eq!(
            SharedBridge::from_docker_options(&docker_file, &env).expect("no file"),
            None
        );
        std::fs::write(
            &docker_file,
            "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450 --fixed-cidr=10.1.74.0/25\"\n",
        )
        .expect("write");
        let shared = SharedBridge::from_docker_options(&docker_file, &env)
            .expect("valid")
            .expect("shared");
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel"}"#)
            .expect("parses");
        let delegate = conf.delegate_config(&env, Some(&shared)).expect("valid");
        assert_eq!(delegate["bridge"], json!("docker0"));
        assert_eq!(delegate["isGateway"], json!(true));
        assert_eq!(
            delegate["ipam"]["ranges"],
            json!([[{
                "subnet": "10.1.74.0/24",
                "rangeStart": "10.1.74.128",
                "rangeEnd": "10.1.74.254",
                "gateway": "10.1.74.1",
            }]])
        );
        std::fs::write(&docker_file, "DOCKER_OPTS=\" --fixed-cidr=10.9.0.0/25\"\n").expect("write");
        let err = SharedBridge::from_docker_options(&docker_file, &env).expect_err("foreign");
        assert_eq!(err.code, code::INVALID_CONFIG);
    }

    #[test]
    fn bad_configs_are_refused_with_codes() {
        let decode = NetConf::parse(b"{not json").expect_err("bad json");
        assert_eq!(decode.code, code::DECODE);
        for (text, expected) in [
            (r#"{"name":"n","delegate":{"name":"x"}}"#, "'name' field"),
            (r#"{"name":"n","delegate":{"ipam":{}}}"#, "'ipam' field"),
            (r#"{"name":"n","delegate":{"type":7}}"#, "(string) 'type'"),
            (r#"{"type":"flannel"}"#, "no name"),
            (r#"{"name":"n","ipam":{"routes":"x"}}"#, "ipam.routes"),
        ] {
            let conf = NetConf::parse(text.as_bytes()).expect("parses");
            let err = conf.delegate_config(&env(false), None).expect_err(text);
            assert_eq!(err.code, code::INVALID_CONFIG, "{text}");
            assert!(err.msg.contains(expected), "{} for {text}", err.msg);
        }
    }
}
