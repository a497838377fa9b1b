//! Who this machine is: its ID and the address it is reached at.

use std::{
    net::{IpAddr, ToSocketAddrs, UdpSocket},
    path::Path,
};

const SYSTEM_MACHINE_ID: &str = "/etc/machine-id";
const GENERATED_MACHINE_ID: &str = "machine-id";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("machine ID {0:?} must be 32 lowercase hexadecimal characters")]
    InvalidMachineId(String),
    #[error("persisting generated machine ID in {path}")]
    Persist {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The machine ID: the one given, else /etc/machine-id, else one generated once and kept in
/// `data_dir`.
pub fn machine_id(given: Option<&str>, data_dir: &Path) -> Result<String, IdentityError> {
    if let Some(id) = given.map(str::trim).filter(|id| !id.is_empty()) {
        return validate(id);
    }
    if let Some(id) = read_id(Path::new(SYSTEM_MACHINE_ID)) {
        return Ok(id);
    }
    let path = data_dir.join(GENERATED_MACHINE_ID);
    if let Some(id) = read_id(&path) {
        return Ok(id);
    }
    let id = generate_id();
    let persist = |source| IdentityError::Persist {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(persist)?;
    std::fs::write(&path, format!("{id}\n")).map_err(persist)?;
    Ok(id)
}

fn validate(id: &str) -> Result<String, IdentityError> {
    let valid = id.len() == 32
        && id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    if valid {
        Ok(id.to_string())
    } else {
        Err(IdentityError::InvalidMachineId(id.to_string()))
    }
}

fn read_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    validate(text.trim()).ok()
}

fn generate_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The local address used to reach the store: what other machines will see. Connecting a UDP
/// socket sends nothing; it only asks the kernel for a route.
pub fn detect_public_ip(etcd_endpoints: &[String]) -> Option<IpAddr> {
    for endpoint in etcd_endpoints {
        let host_port = endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        let Ok(mut addresses) = host_port.to_socket_addrs() else {
            continue;
        };
        let Some(address) = addresses.next() else {
            continue;
        };
        let bind = if address.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(bind).ok()?;
        if socket.connect(address).is_ok()
            && let Ok(local) = socket.local_addr()
        {
            return Some(local.ip());
        }
    }
    None
}

/// The variables CoreOS's `/etc/environment` gave every unit: the machine's public and private
/// IPv4 addresses. The private one is the address that routes to the store, the public one
/// fleet's `public_ip` (else the private one). A variable without an IPv4 address is left out.
pub fn coreos_environment(
    public_ip: Option<&str>,
    private_ip: Option<IpAddr>,
) -> Vec<(String, String)> {
    let private = private_ip.filter(IpAddr::is_ipv4).map(|ip| ip.to_string());
    let public = public_ip
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .filter(IpAddr::is_ipv4)
        .map(|ip| ip.to_string())
        .or_else(|| private.clone());
    [
        ("COREOS_PUBLIC_IPV4", public),
        ("COREOS_PRIVATE_IPV4", private),
    ]
    .into_iter()
    .filter_map(|(name, value)| Some((name.to_string(), value?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_id_must_be_32_hex() {
        assert!(
            machine_id(
                Some("0123456789abcdef0123456789abcdef"),
                Path::new("/nonexistent")
            )
            .is_ok()
        );
        assert!(matches!(
            machine_id(Some("node1"), Path::new("/nonexistent")),
            Err(IdentityError::InvalidMachineId(_))
        ));
    }

    #[test]
    fn coreos_addresses_from_public_ip_and_route() {
        let route = "10.0.0.7".parse().ok();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            coreos_environment(Some("192.0.2.1"), route),
            env(&[
                ("COREOS_PUBLIC_IPV4", "192.0.2.1"),
                ("COREOS_PRIVATE_IPV4", "10.0.0.7")
            ])
        );
        assert_eq!(
            coreos_environment(None, route),
            env(&[
                ("COREOS_PUBLIC_IPV4", "10.0.0.7"),
                ("COREOS_PRIVATE_IPV4", "10.0.0.7")
            ])
        );
        assert_eq!(
            coreos_environment(Some("fd00::1"), "fd00::2".parse().ok()),
            env(&[])
        );
    }

    #[test]
    fn generated_id_is_persisted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(GENERATED_MACHINE_ID);
        let first = generate_id();
        std::fs::write(&path, &first).expect("write");
        assert_eq!(read_id(&path), Some(first));
        assert_eq!(generate_id().len(), 32);
    }
}
