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

/// Raft timing of the guests' store members, in milliseconds (etcd2's unit).
const GUEST_HEARTBEAT_INTERVAL_MS: u32 = 250;
const GUEST_ELECTION_TIMEOUT_MS: u32 = 2500;

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
    heartbeat_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    election_timeout: Option<String>,
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
            heartbeat_interval: is_master.then(|| format!("{GUEST_HEARTBEAT_INTERVAL_MS}ms")),
            election_timeout: is_master.then(|| format!("{GUEST_ELECTION_TIMEOUT_MS}ms")),
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

/// The file a node's description is shared as: the agent's YAML for the small guest, a CoreOS
/// `#cloud-config` for the Debian guest.
pub fn config_file_name(cloud_config: bool) -> &'static str {
    if cloud_config {
        "cloud-config.yaml"
    } else {
        "agent.yaml"
    }
}

/// The `docker.service` drop-in of the CoreOS book's cloud-config (the one `shoal install`
/// writes): dockerd on the node's lease, with the options flannel wrote beside subnet.env.
const DOCKER_DROP_IN: &str = "[Unit]
Requires=shoal.service
After=shoal.service

[Service]
EnvironmentFile=-/run/flannel/docker
ExecStartPre=/usr/local/bin/shoal mk-docker-opts --wait 60 --fixed-cidr
ExecStart=
ExecStart=/usr/sbin/dockerd -H fd:// $DOCKER_OPTS
";

#[derive(Serialize)]
struct CloudConfig<'a> {
    hostname: &'a str,
    coreos: CoreOs,
    /// What CoreOS's keys cannot say, in the agent's own format.
    shoal: ShoalSection,
}

#[derive(Serialize)]
struct CoreOs {
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd2: Option<Etcd2>,
    fleet: Fleet,
    flannel: Flannel,
    units: Vec<CloudUnit>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Etcd2 {
    name: String,
    initial_cluster: String,
    initial_cluster_state: &'static str,
    initial_advertise_peer_urls: String,
    listen_peer_urls: String,
    listen_client_urls: String,
    advertise_client_urls: String,
    /// Milliseconds, as etcd2's flags.
    heartbeat_interval: u32,
    election_timeout: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Fleet {
    public_ip: Ipv4Addr,
    metadata: String,
    etcd_servers: String,
    agent_ttl: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Flannel {
    interface: &'static str,
    etcd_prefix: &'static str,
    etcd_endpoints: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ip_masq: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct CloudUnit {
    name: &'static str,
    command: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    drop_ins: Vec<DropIn>,
}

#[derive(Serialize)]
struct DropIn {
    name: &'static str,
    content: String,
}

#[derive(Serialize)]
struct ShoalSection {
    data_dir: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pki: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<ShoalNetwork>,
    health: HealthSection,
}

#[derive(Serialize)]
struct ShoalNetwork {
    bridge: &'static str,
}

/// Node `node`'s `#cloud-config`, as the CoreOS book's nodes were described: `coreos.etcd2` on
/// masters, `coreos.fleet` (public IP, metadata), `coreos.flannel`, and `coreos.units` starting
/// etcd2, fleet, flanneld (whose drop-in sets the network config) and docker.service with
/// flannel's drop-in. The agent runs the same components as from [`agent_yaml`].
pub fn cloud_config_yaml(node: &NodeLayout, nodes: &[NodeLayout]) -> Result<String> {
    let masters: Vec<&NodeLayout> = nodes.iter().filter(|n| n.role == Role::Master).collect();
    if masters.is_empty() {
        return Err(Error::Invalid(
            "a cluster needs at least one master".to_string(),
        ));
    }
    let endpoints = masters
        .iter()
        .map(|m| m.client_url())
        .collect::<Vec<_>>()
        .join(",");
    let is_master = node.role == Role::Master;
    let etcd2 = is_master.then(|| Etcd2 {
        name: node.name.clone(),
        initial_cluster: masters
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(","),
        initial_cluster_state: "new",
        initial_advertise_peer_urls: node.peer_url(),
        listen_peer_urls: node.peer_url(),
        listen_client_urls: node.client_url(),
        advertise_client_urls: node.client_url(),
        heartbeat_interval: GUEST_HEARTBEAT_INTERVAL_MS,
        election_timeout: GUEST_ELECTION_TIMEOUT_MS,
    });
    let network = format!(
        "{{ \"Network\": \"{OVERLAY_NETWORK}\", \"SubnetLen\": {OVERLAY_SUBNET_LEN}, \"Backend\": {{ \"Type\": \"vxlan\" }} }}"
    );
    let mut units = Vec::new();
    if is_master {
        units.push(CloudUnit {
            name: "etcd2.service",
            command: "start",
            drop_ins: Vec::new(),
        });
    }
    units.push(CloudUnit {
        name: "fleet.service",
        command: "start",
        drop_ins: Vec::new(),
    });
    units.push(CloudUnit {
        name: "flanneld.service",
        command: "start",
        drop_ins: vec![DropIn {
            name: "50-network-config.conf",
            content: format!(
                "[Service]\nExecStartPre=/usr/bin/etcdctl set /coreos.com/network/config '{network}'\n"
            ),
        }],
    });
    if node.docker {
        units.push(CloudUnit {
            name: "docker.service",
            command: "start",
            drop_ins: vec![DropIn {
                name: "40-flannel.conf",
                content: DOCKER_DROP_IN.to_string(),
            }],
        });
    }
    let config = CloudConfig {
        hostname: &node.name,
        coreos: CoreOs {
            etcd2,
            fleet: Fleet {
                public_ip: node.address,
                metadata: node
                    .metadata
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect::<Vec<_>>()
                    .join(","),
                etcd_servers: endpoints.clone(),
                agent_ttl: "30s",
            },
            flannel: Flannel {
                interface: "eth0",
                etcd_prefix: "/coreos.com/network",
                etcd_endpoints: endpoints,
                ip_masq: node.docker,
            },
            units,
        },
        shoal: ShoalSection {
            data_dir: "/var/lib/shoal",
            pki: node.secure.then_some(GUEST_PKI),
            network: node.docker.then_some(ShoalNetwork { bridge: "" }),
            health: HealthSection {
                listen: format!("0.0.0.0:{HEALTH_PORT}"),
            },
        },
    };
    let yaml = serde_yaml::to_string(&config).map_err(|err| Error::Encode {
        what: format!("the cloud-config of {}", node.name),
        message: err.to_string(),
    })?;
    Ok(format!(
        "#cloud-config\n# {} of a vm-cluster, written by `cargo xtask vm-cluster`: `shoal install` puts it\n\
         # in place for shoal.service's `shoal agent --config`.\n{yaml}",
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
    fn cloud_configs_start_the_books_units_with_the_nodes_metadata() {
        let mut nodes = [node(1, Role::Master), node(2, Role::Worker)];
        for node in &mut nodes {
            node.docker = true;
        }
        let master = cloud_config_yaml(&nodes[0], &nodes).expect("yaml");
        assert!(master.starts_with("#cloud-config\n"), "{master}");
        let master: serde_yaml::Value = serde_yaml::from_str(&master).expect("parse");
        assert_eq!(master["coreos"]["etcd2"]["name"], "n1");
        assert_eq!(
            master["coreos"]["etcd2"]["initial-cluster"],
            "n1=http://10.97.0.11:2380"
        );
        assert_eq!(
            master["coreos"]["fleet"]["metadata"],
            "compute=web,rack=rack1"
        );
        assert_eq!(master["coreos"]["flannel"]["ip-masq"], true);
        let units: Vec<&str> = master["coreos"]["units"]
            .as_sequence()
            .expect("units")
            .iter()
            .filter_map(|unit| unit["name"].as_str())
            .collect();
        assert_eq!(
            units,
            [
                "etcd2.service",
                "fleet.service",
                "flanneld.service",
                "docker.service"
            ]
        );
        assert_eq!(master["shoal"]["network"]["bridge"], "");
        let worker: serde_yaml::Value =
            serde_yaml::from_str(&cloud_config_yaml(&nodes[1], &nodes).expect("yaml"))
                .expect("parse");
        assert!(worker["coreos"].get("etcd2").is_none());
        assert_eq!(
            worker["coreos"]["fleet"]["etcd-servers"],
            "http://10.97.0.11:2379"
        );
    }

    #[test]
    fn metadata_parses_fleet_syntax() {
        let parsed = parse_metadata("compute=db, rack=rack3").expect("valid");
        assert_eq!(parsed["compute"], "db");
        assert_eq!(parsed["rack"], "rack3");
        assert!(parse_metadata("broken").is_err());
    }
}
