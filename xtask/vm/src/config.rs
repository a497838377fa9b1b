//! The per-node agent configuration (`/etc/shoal/agent.yaml` in the guest). Everything about
//! its format is in [`agent_yaml`], so aligning with `shoal agent`'s parser is one edit.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;

use crate::{Error, Result};

/// etcd v3 client port of the store on master nodes.
pub const STORE_CLIENT_PORT: u16 = 2379;
/// Raft peer port of the store on master nodes.
pub const STORE_PEER_PORT: u16 = 2380;
/// The agent's health, readiness and metrics endpoint (`/healthz`, `/readyz`, `/metrics`).
pub const HEALTH_PORT: u16 = 9901;
/// The overlay network written to the store on first start.
pub const OVERLAY_NETWORK: &str = "10.244.0.0/16";
pub const OVERLAY_SUBNET_LEN: u8 = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Worker,
}

/// One node as the cluster sees it.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    pub name: String,
    pub address: Ipv4Addr,
    pub role: Role,
    pub metadata: BTreeMap<String, String>,
    /// TLS and auth, with the node's certificates in [`GUEST_PKI`].
    pub secure: bool,
    /// Docker runs on the node (the Debian image): its `docker0`, configured from subnet.env,
    /// holds the subnet's gateway, so the agent makes no bridge of its own, and flannel
    /// masquerades (Docker's options then say `--ip-masq=false`), as on CoreOS.
    pub docker: bool,
}

/// Where a guest keeps its node's certificates (what its agent's `pki` names).
pub const GUEST_PKI: &str = "/etc/shoal/pki";

impl NodeLayout {
    fn scheme(&self) -> &'static str {
        if self.secure { "https" } else { "http" }
    }

    pub fn client_url(&self) -> String {
        format!("{}://{}:{STORE_CLIENT_PORT}", self.scheme(), self.address)
    }

    pub fn peer_url(&self) -> String {
        format!("{}://{}:{STORE_PEER_PORT}", self.scheme(), self.address)
    }
}

/// The agent's YAML (`control/src/agent/config.rs` is its parser: flat node fields, then the
/// `store`, `network`, `fleet` and `health` sections).
#[derive(Serialize)]
struct AgentConfig<'a> {
    name: &'a str,
    role: Role,
    metadata: &'a BTreeMap<String, String>,
    public_ip: Ipv4Addr,
    iface: &'static str,
    data_dir: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pki: Option<&'static str>,
    store: StoreSection,
    network: NetworkSection,
    fleet: FleetSection,
    health: HealthSection,
}

const GUEST_HEARTBEAT_INTERVAL: &str = "250ms";
const GUEST_ELECTION_TIMEOUT: &str = "2500ms";

#[derive(Serialize)]
struct StoreSection {
    /// Masters: the static bootstrap cluster, `name=peer-url,...` of every master.
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_client_urls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen_peer_urls: Option<String>,
    /// Client URLs of the masters (what workers, fleet and flannel use).
    endpoints: Vec<String>,
    /// Masters: Raft timing for emulated (TCG) guests, where etcd's 100 ms heartbeats time out
    /// (`timeout after 100ms when AppendEntries` in the guests' logs) and cost elections.
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_interval: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    election_timeout: Option<&'static str>,
}

#[derive(Serialize)]
struct NetworkSection {
    /// Written to `/coreos.com/network/config` on first start if absent (flannel's format).
    config: FlannelNetwork,
    #[serde(skip_serializing_if = "Option::is_none")]
    bridge: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ip_masq: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct FlannelNetwork {
    network: &'static str,
    subnet_len: u8,
    backend: FlannelBackend,
}

#[derive(Serialize)]
struct FlannelBackend {
    #[serde(rename = "Type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct FleetSection {
    agent_ttl: &'static str,
    engine: bool,
}

#[derive(Serialize)]
struct HealthSection {
    listen: String,
}

/// The YAML of node `node` in a cluster made of `nodes` (masters run the store, every node runs
/// the overlay, the fleet agent and an engine candidate).
pub fn agent_yaml(node: &NodeLayout, nodes: &[NodeLayout]) -> Result<String> {
    let masters: Vec<&NodeLayout> = nodes.iter().filter(|n| n.role == Role::Master).collect();
    if masters.is_empty() {
        return Err(Error::Invalid(
            "a cluster needs at least one master".to_string(),
        ));
    }
    let is_master = node.role == Role::Master;
    let config = AgentConfig {
        name: &node.name,
        role: node.role,
        metadata: &node.metadata,
        public_ip: node.address,
        iface: "eth0",
        data_dir: "/var/lib/shoal",
        pki: node.secure.then_some(GUEST_PKI),
        store: StoreSection {
            initial_cluster: is_master.then(|| {
                masters
                    .iter()
                    .map(|m| format!("{}={}", m.name, m.peer_url()))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            listen_client_urls: is_master.then(|| node.client_url()),
            listen_peer_urls: is_master.then(|| node.peer_url()),
            endpoints: masters.iter().map(|m| m.client_url()).collect(),
            heartbeat_interval: is_master.then_some(GUEST_HEARTBEAT_INTERVAL),
            election_timeout: is_master.then_some(GUEST_ELECTION_TIMEOUT),
        },
        network: NetworkSection {
            config: FlannelNetwork {
                network: OVERLAY_NETWORK,
                subnet_len: OVERLAY_SUBNET_LEN,
                backend: FlannelBackend { kind: "vxlan" },
            },
            bridge: node.docker.then_some(""),
            ip_masq: node.docker,
        },
        fleet: FleetSection {
            agent_ttl: "30s",
            engine: true,
        },
        health: HealthSection {
            listen: format!("0.0.0.0:{HEALTH_PORT}"),
        },
    };
    let yaml = serde_yaml::to_string(&config).map_err(|err| Error::Encode {
        what: format!("the agent config of {}", node.name),
        message: err.to_string(),
    })?;
    Ok(format!(
        "#shoal-config\n# {} of a vm-cluster, written by `cargo xtask vm-cluster`.\n{yaml}",
        node.name
    ))
}

/// Parses `key=value,key=value` metadata (fleet's `--metadata` syntax).
pub fn parse_metadata(text: &str) -> Result<BTreeMap<String, String>> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| Error::Invalid(format!("metadata `{pair}` is not key=value")))?;
            Ok((key.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(index: u8, role: Role) -> NodeLayout {
        NodeLayout {
            name: format!("n{index}"),
            address: Ipv4Addr::new(10, 97, 0, 10 + index),
            role,
            metadata: parse_metadata(&format!("compute=web,rack=rack{index}")).expect("valid"),
            secure: false,
            docker: false,
        }
    }

    #[test]
    fn masters_form_the_initial_cluster_and_workers_only_use_it() {
        let nodes = [node(1, Role::Master), node(2, Role::Worker)];
        let worker: serde_yaml::Value =
            serde_yaml::from_str(&agent_yaml(&nodes[1], &nodes).expect("yaml")).expect("parse");
        assert_eq!(worker["role"], "worker");
        assert_eq!(worker["metadata"]["rack"], "rack2");
        assert_eq!(worker["store"]["endpoints"][0], "http://10.97.0.11:2379");
        assert!(worker["store"].get("initial_cluster").is_none());
        assert!(worker["store"].get("listen_client_urls").is_none());
        let master: serde_yaml::Value =
            serde_yaml::from_str(&agent_yaml(&nodes[0], &nodes).expect("yaml")).expect("parse");
        assert_eq!(
            master["store"]["initial_cluster"],
            "n1=http://10.97.0.11:2380"
        );
        assert_eq!(
            master["store"]["listen_peer_urls"],
            "http://10.97.0.11:2380"
        );
        assert_eq!(master["network"]["config"]["Backend"]["Type"], "vxlan");
        assert_eq!(master["health"]["listen"], "0.0.0.0:9901");
    }

    #[test]
    fn a_secure_cluster_names_its_pki_and_speaks_https() {
        let mut master = node(1, Role::Master);
        master.secure = true;
        let nodes = [master];
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&agent_yaml(&nodes[0], &nodes).expect("yaml")).expect("parse");
        assert_eq!(yaml["pki"], GUEST_PKI);
        assert_eq!(
            yaml["store"]["initial_cluster"],
            "n1=https://10.97.0.11:2380"
        );
        assert_eq!(yaml["store"]["endpoints"][0], "https://10.97.0.11:2379");
    }

    #[test]
    fn a_cluster_without_masters_is_refused() {
        let nodes = [node(1, Role::Worker)];
        assert!(agent_yaml(&nodes[0], &nodes).is_err());
    }

    #[test]
    fn metadata_parses_fleet_syntax() {
        let parsed = parse_metadata("compute=db, rack=rack3").expect("valid");
        assert_eq!(parsed["compute"], "db");
        assert_eq!(parsed["rack"], "rack3");
        assert!(parse_metadata("broken").is_err());
    }
}
