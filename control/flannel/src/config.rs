//! The network configuration flanneld reads from `<prefix>/config`: flannel's JSON, with its
//! defaults and its validation rules, and the backend section (`vxlan`, `udp`, `host-gw`).
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::{Map, Value};

/// What is wrong with a network configuration, with what is expected instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "network config is not valid JSON ({0}); expected an object such as {{\"Network\": \"10.5.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}"
    )]
    Json(String),
    #[error("network config field {field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("network config has no Network; expected an IPv4 CIDR such as \"10.5.0.0/16\"")]
    MissingNetwork,
    #[error("SubnetLen /{0} is too long: it must be at most /30 (a tunnel and a bridge need room)")]
    SubnetLenTooLong(u8),
    #[error(
        "Network {network} cannot hold four /{subnet_len} subnets: use a SubnetLen of at least /{min}"
    )]
    SubnetLenTooShort {
        network: Ipv4Network,
        subnet_len: u8,
        min: u8,
    },
    #[error("Network {0} is too small: the smallest useful network is a /28")]
    NetworkTooSmall(Ipv4Network),
    #[error("{field} {ip} is outside Network {network}")]
    OutOfNetwork {
        field: &'static str,
        ip: Ipv4Addr,
        network: Ipv4Network,
    },
    #[error("{field} {ip} is not on a /{subnet_len} boundary")]
    Unaligned {
        field: &'static str,
        ip: Ipv4Addr,
        subnet_len: u8,
    },
    #[error("SubnetMin {min} is above SubnetMax {max}")]
    EmptyRange { min: Ipv4Addr, max: Ipv4Addr },
    #[error("unknown backend type {0:?}; expected \"vxlan\", \"udp\" or \"host-gw\"")]
    UnknownBackend(String),
}

/// A validated network configuration, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend: BackendConfig,
}

/// The `Backend` section of the network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    Vxlan(VxlanConfig),
    Udp { port: u16 },
    HostGw,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    pub port: u16,
    pub direct_routing: bool,
    /// Overlay MTU override; `None` means underlay MTU - 50.
    pub mtu: Option<u32>,
}

/// flannel's default ports.
pub const VXLAN_DEFAULT_PORT: u16 = 8472;
pub const UDP_DEFAULT_PORT: u16 = 8285;
/// Bytes VXLAN adds: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Bytes flannel's udp backend adds: outer IPv4 20 + UDP 8.
pub const UDP_OVERHEAD: u32 = 28;

impl BackendConfig {
    /// The name flannel writes into a lease's `BackendType`.
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan(_) => "vxlan",
            BackendConfig::Udp { .. } => "udp",
            BackendConfig::HostGw => "host-gw",
        }
    }

    /// The workload MTU for an underlay interface of `underlay_mtu` bytes.
    pub fn overlay_mtu(&self, underlay_mtu: u32) -> u32 {
        match self {
            BackendConfig::Vxlan(vxlan) => vxlan
                .mtu
                .unwrap_or(underlay_mtu.saturating_sub(VXLAN_OVERHEAD)),
            BackendConfig::Udp { .. } => underlay_mtu.saturating_sub(UDP_OVERHEAD),
            BackendConfig::HostGw => underlay_mtu,
        }
    }
}

impl NetworkConfig {
    /// Parses and validates flannel's JSON. Like flannel (Go's encoding/json), field names
    /// match case-insensitively.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let value: Value =
            serde_json::from_str(text).map_err(|err| ConfigError::Json(err.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(ConfigError::Json("the top level is not an object".into()));
        };
        let network = match field(&fields, "Network") {
            None | Some(Value::Null) => return Err(ConfigError::MissingNetwork),
            Some(value) => parse_network(value)?,
        };
        let subnet_len = match field(&fields, "SubnetLen") {
            None | Some(Value::Null) => None,
            Some(value) => Some(parse_u8(value, "SubnetLen")?).filter(|len| *len > 0),
        };
        let subnet_len = resolve_subnet_len(network, subnet_len)?;
        let subnet_min = optional_ip(&fields, "SubnetMin")?;
        let subnet_max = optional_ip(&fields, "SubnetMax")?;
        let backend = parse_backend(field(&fields, "Backend"))?;
        let size = 1u32 << (32 - subnet_len);
        let subnet_min = subnet_min.unwrap_or(Ipv4Addr::from(u32::from(network.network()) + size));
        let subnet_max =
            subnet_max.unwrap_or(Ipv4Addr::from(u32::from(network.broadcast()) - (size - 1)));
        check_bound("SubnetMin", subnet_min, network, subnet_len)?;
        check_bound("SubnetMax", subnet_max, network, subnet_len)?;
        if subnet_min > subnet_max {
            return Err(ConfigError::EmptyRange {
                min: subnet_min,
                max: subnet_max,
            });
        }
        Ok(Self {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// Whether `subnet` is one this configuration can hand out.
    pub fn is_compatible(&self, subnet: Ipv4Network) -> bool {
        subnet.prefix() == self.subnet_len
            && subnet.network() >= self.subnet_min
            && subnet.network() <= self.subnet_max
    }
}

/// A field by name, matched case-insensitively like Go's encoding/json.
fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).or_else(|| {
        fields
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn parse_network(value: &Value) -> Result<Ipv4Network, ConfigError> {
    let problem = |problem: String| ConfigError::Field {
        field: "Network",
        problem,
    };
    let text = value.as_str().ok_or_else(|| {
        problem(format!(
            "{value} is not a string; expected a CIDR such as \"10.5.0.0/16\""
        ))
    })?;
    let network: Ipv4Network = text
        .parse()
        .map_err(|err| problem(format!("{text:?} is not an IPv4 CIDR ({err})")))?;
    // flannel masks the address to its network.
    Ipv4Network::new(network.network(), network.prefix()).map_err(|err| problem(err.to_string()))
}

fn parse_u8(value: &Value, name: &'static str) -> Result<u8, ConfigError> {
    value
        .as_u64()
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| ConfigError::Field {
            field: name,
            problem: format!("{value} is not a prefix length between 0 and 32"),
        })
}

fn optional_ip(
    fields: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<Ipv4Addr>, ConfigError> {
    let Some(value) = field(fields, name).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let ip = value
        .as_str()
        .and_then(|text| text.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| ConfigError::Field {
            field: name,
            problem: format!("{value} is not an IPv4 address such as \"10.5.1.0\""),
        })?;
    // flannel treats 0.0.0.0 as "unset".
    Ok(Some(ip).filter(|ip| !ip.is_unspecified()))
}

/// flannel's SubnetLen rules: given lengths must leave room for four subnets and be at most
/// /30; the default is /24 when the network is /22 or larger, else four subnets.
fn resolve_subnet_len(network: Ipv4Network, subnet_len: Option<u8>) -> Result<u8, ConfigError> {
    match subnet_len {
        Some(len) if len > 30 => Err(ConfigError::SubnetLenTooLong(len)),
        Some(len) if len < network.prefix() + 2 => Err(ConfigError::SubnetLenTooShort {
            network,
            subnet_len: len,
            min: network.prefix() + 2,
        }),
        Some(len) => Ok(len),
        None if network.prefix() > 28 => Err(ConfigError::NetworkTooSmall(network)),
        None if network.prefix() <= 22 => Ok(24),
        None => Ok(network.prefix() + 2),
    }
}

fn check_bound(
    name: &'static str,
    ip: Ipv4Addr,
    network: Ipv4Network,
    subnet_len: u8,
) -> Result<(), ConfigError> {
    if !network.contains(ip) {
        return Err(ConfigError::OutOfNetwork {
            field: name,
            ip,
            network,
        });
    }
    let mask = u32::MAX << (32 - subnet_len);
    if u32::from(ip) & mask != u32::from(ip) {
        return Err(ConfigError::Unaligned {
            field: name,
            ip,
            subnet_len,
        });
    }
    Ok(())
}

fn parse_backend(section: Option<&Value>) -> Result<BackendConfig, ConfigError> {
    let empty = Map::new();
    let fields = match section {
        // flannel's default backend when none is given.
        None | Some(Value::Null) => {
            return Ok(BackendConfig::Udp {
                port: UDP_DEFAULT_PORT,
            });
        }
        Some(Value::Object(fields)) => fields,
        Some(other) => {
            return Err(ConfigError::Field {
                field: "Backend",
                problem: format!("{other} is not an object; expected {{\"Type\": \"vxlan\"}}"),
            });
        }
    };
    let kind = match field(fields, "Type") {
        Some(Value::String(kind)) => kind.as_str(),
        None | Some(Value::Null) => "udp",
        Some(other) => {
            return Err(ConfigError::Field {
                field: "Backend.Type",
                problem: format!("{other} is not a string"),
            });
        }
    };
    let fields = if fields.is_empty() { &empty } else { fields };
    match kind {
        "vxlan" => Ok(BackendConfig::Vxlan(VxlanConfig {
            vni: backend_u32(fields, "VNI", "Backend.VNI")?.unwrap_or(1),
            port: backend_port(fields)?.unwrap_or(VXLAN_DEFAULT_PORT),
            direct_routing: backend_bool(fields, "DirectRouting")?,
            mtu: backend_u32(fields, "MTU", "Backend.MTU")?.filter(|mtu| *mtu > 0),
        })),
        "udp" => Ok(BackendConfig::Udp {
            port: backend_port(fields)?.unwrap_or(UDP_DEFAULT_PORT),
        }),
        "host-gw" => Ok(BackendConfig::HostGw),
        other => Err(ConfigError::UnknownBackend(other.to_string())),
    }
}

fn backend_u32(
    fields: &Map<String, Value>,
    name: &str,
    label: &'static str,
) -> Result<Option<u32>, ConfigError> {
    match field(fields, name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ConfigError::Field {
                field: label,
                problem: format!("{value} is not a non-negative integer"),
            }),
    }
}

fn backend_port(fields: &Map<String, Value>) -> Result<Option<u16>, ConfigError> {
    let port = backend_u32(fields, "Port", "Backend.Port")?.filter(|port| *port > 0);
    port.map(|port| {
        u16::try_from(port).map_err(|_| ConfigError::Field {
            field: "Backend.Port",
            problem: format!("{port} is not a UDP port (1-65535)"),
        })
    })
    .transpose()
}

fn backend_bool(fields: &Map<String, Value>, name: &str) -> Result<bool, ConfigError> {
    match field(fields, name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(value)) => Ok(*value),
        Some(other) => Err(ConfigError::Field {
            field: "Backend.DirectRouting",
            problem: format!("{other} is not true or false"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse(text)
    }

    #[test]
    fn defaults_follow_flannel() {
        let config = parse(r#"{"Network": "10.5.0.0/16"}"#).expect("valid");
        assert_eq!(config.subnet_len, 24);
        assert_eq!(config.subnet_min, Ipv4Addr::new(10, 5, 1, 0));
        assert_eq!(config.subnet_max, Ipv4Addr::new(10, 5, 255, 0));
        assert_eq!(config.backend, BackendConfig::Udp { port: 8285 });
    }

    #[test]
    fn small_networks_split_in_four() {
        let config = parse(r#"{"network": "10.5.0.0/26"}"#).expect("valid");
        assert_eq!(config.subnet_len, 28);
        assert_eq!(config.subnet_min, Ipv4Addr::new(10, 5, 0, 16));
        assert_eq!(config.subnet_max, Ipv4Addr::new(10, 5, 0, 48));
    }

    #[test]
    fn vxlan_backend_fields() {
        let config = parse(
            r#"{"Network": "10.5.0.0/16", "SubnetLen": 26,
                "Backend": {"Type": "vxlan", "VNI": 7, "Port": 4789, "DirectRouting": true, "MTU": 1400}}"#,
        )
        .expect("valid");
        assert_eq!(
            config.backend,
            BackendConfig::Vxlan(VxlanConfig {
                vni: 7,
                port: 4789,
                direct_routing: true,
                mtu: Some(1400)
            })
        );
        assert_eq!(config.backend.overlay_mtu(1500), 1400);
        let plain =
            parse(r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}"#).expect("valid");
        assert_eq!(plain.backend.overlay_mtu(1500), 1450);
        assert_eq!(plain.backend.type_name(), "vxlan");
    }

    #[test]
    fn invalid_configs_say_what_is_wrong() {
        let cases = [
            (
                r#"{"Network": "10.5.0.0/16", "SubnetLen": 31}"#,
                "at most /30",
            ),
            (
                r#"{"Network": "10.5.0.0/16", "SubnetLen": 17}"#,
                "at least /18",
            ),
            (r#"{"Network": "10.5.0.0/29"}"#, "too small"),
            (
                r#"{"Network": "10.5.0.0/16", "SubnetMin": "10.6.0.0"}"#,
                "outside Network",
            ),
            (
                r#"{"Network": "10.5.0.0/16", "SubnetMax": "10.5.3.7"}"#,
                "boundary",
            ),
            (
                r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "ipsec"}}"#,
                "unknown backend",
            ),
            (r#"{"Network": "10.5.0.0/16""#, "not valid JSON"),
            (r#"{"SubnetLen": 24}"#, "no Network"),
            (r#"{"Network": "10.5.0.0/33"}"#, "not an IPv4 CIDR"),
            (
                r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "udp", "Port": 70000}}"#,
                "not a UDP port",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn compatible_subnets_are_inside_the_range() {
        let config = parse(
            r#"{"Network": "10.5.0.0/16", "SubnetMin": "10.5.10.0", "SubnetMax": "10.5.20.0"}"#,
        )
        .expect("valid");
        assert!(config.is_compatible("10.5.10.0/24".parse().expect("cidr")));
        assert!(!config.is_compatible("10.5.9.0/24".parse().expect("cidr")));
        assert!(!config.is_compatible("10.5.10.0/25".parse().expect("cidr")));
    }
}
