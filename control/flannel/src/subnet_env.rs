//! `subnet.env`, the file Docker and CNI read: written atomically (temp file + rename) with
//! FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU and FLANNEL_IPMASQ.
use std::{
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnetwork::Ipv4Network;

use shoal_store_client::Chain;

/// Where flannel writes subnet.env unless told otherwise (`--subnet-file`).
pub const DEFAULT_PATH: &str = "/run/flannel/subnet.env";

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Invalid { path: PathBuf, source: ParseError },
}

/// What is wrong with the text of a subnet.env.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("no {0}")]
    Missing(&'static str),
    #[error("{key} is not an IPv4 CIDR")]
    Cidr {
        key: &'static str,
        source: ipnetwork::IpNetworkError,
    },
    #[error("FLANNEL_MTU is not a number")]
    Mtu(#[source] std::num::ParseIntError),
}

/// The contents of subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Network,
    /// The node's subnet; flannel writes its first host address (`10.5.34.1/24`).
    pub subnet: Ipv4Network,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The first host address of the subnet with the subnet's prefix: the bridge address.
    pub fn gateway(&self) -> Ipv4Network {
        gateway_of(self.subnet)
    }

    pub fn render(&self) -> String {
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            self.gateway(),
            self.mtu,
            self.ip_masq
        )
    }

    /// Writes the file atomically, creating its directory.
    pub fn write(&self, path: &Path) -> Result<(), SubnetEnvError> {
        write_atomically(path, self.render().as_bytes())
    }

    pub fn read(path: &Path) -> Result<Self, SubnetEnvError> {
        let text = std::fs::read_to_string(path).map_err(|source| SubnetEnvError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| SubnetEnvError::Invalid {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let value = |name: &'static str| {
            text.lines()
                .filter_map(|line| line.trim().split_once('='))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.trim().to_string())
                .ok_or(ParseError::Missing(name))
        };
        let cidr = |key: &'static str| -> Result<Ipv4Network, ParseError> {
            value(key)?
                .parse()
                .map_err(|source| ParseError::Cidr { key, source })
        };
        let network = cidr("FLANNEL_NETWORK")?;
        let subnet = cidr("FLANNEL_SUBNET")?;
        let subnet = Ipv4Network::new(subnet.network(), subnet.prefix()).map_err(|source| {
            ParseError::Cidr {
                key: "FLANNEL_SUBNET",
                source,
            }
        })?;
        let mtu = value("FLANNEL_MTU")?.parse().map_err(ParseError::Mtu)?;
        let ip_masq = value("FLANNEL_IPMASQ")
            .map(|v| v == "true")
            .unwrap_or(false);
        Ok(Self {
            network,
            subnet,
            mtu,
            ip_masq,
        })
    }
}

/// Writes a node-facing file (subnet.env, Docker's options) whole or not at all: a temp file in
/// the same directory (created if needed), synced, then renamed over `path`.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), SubnetEnvError> {
    let error = |source| SubnetEnvError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(error)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(error)?;
    temp.write_all(contents).map_err(error)?;
    temp.as_file().sync_all().map_err(error)?;
    temp.persist(path).map_err(|err| error(err.error))?;
    Ok(())
}

/// `10.5.34.0/24` -> `10.5.34.1/24`.
pub fn gateway_of(subnet: Ipv4Network) -> Ipv4Network {
    let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    Ipv4Network::new(first, subnet.prefix()).unwrap_or(subnet)
}

/// The subnet a previous run wrote, if the file exists and parses.
pub fn previous_subnet(path: &Path) -> Option<Ipv4Network> {
    match SubnetEnv::read(path) {
        Ok(env) => Some(env.subnet),
        Err(SubnetEnvError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(err) => {
            tracing::warn!("ignoring the previous subnet file: {}", Chain(&err));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_flannel_format() {
        let env = SubnetEnv {
            network: "10.5.0.0/16".parse().expect("cidr"),
            subnet: "10.5.34.0/24".parse().expect("cidr"),
            mtu: 1450,
            ip_masq: true,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.34.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/flannel/subnet.env");
        env.write(&path).expect("written");
        assert_eq!(SubnetEnv::read(&path).expect("read"), env);
        assert_eq!(previous_subnet(&path), Some(env.subnet));
        assert_eq!(previous_subnet(&dir.path().join("missing")), None);
    }
}
