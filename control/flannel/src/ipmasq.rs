//! `--ip-masq`: flannel's masquerade rules, in an nftables table of their own. Traffic from the
//! overlay to outside it is masqueraded, overlay-internal traffic is not.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use ipnetwork::Ipv4Network;

/// The nftables table holding the rules (one per network namespace).
pub const TABLE: &str = "shoal-flannel";

#[derive(Debug, thiserror::Error)]
pub enum IpMasqError {
    #[error("running nft (install Debian's nftables package)")]
    Spawn(#[source] std::io::Error),
    #[error("nft rejected the masquerade rules: {0}")]
    Rejected(String),
}

/// The ruleset, equivalent to flanneld's iptables MASQUERADE rules:
/// overlay->overlay returns, overlay->outside (not multicast) is masqueraded, outside->this
/// node's subnet returns, host->other overlay subnets is masqueraded.
pub fn ruleset(network: Ipv4Network, subnet: Ipv4Network) -> String {
    format!(
        "table ip {TABLE} {{}}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {network} ip daddr {network} return\n\
         \t\tip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random\n\
         \t\tip saddr != {network} ip daddr {subnet} return\n\
         \t\tip saddr != {network} ip daddr {network} masquerade fully-random\n\
         \t}}\n\
         }}\n"
    )
}

/// Installs (or replaces) the rules in the current network namespace.
pub fn install(network: Ipv4Network, subnet: Ipv4Network) -> Result<(), IpMasqError> {
    nft(&ruleset(network, subnet))
}

/// Removes the rules; absent rules are fine.
pub fn remove() -> Result<(), IpMasqError> {
    nft(&format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"))
}

fn nft(script: &str) -> Result<(), IpMasqError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(IpMasqError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(IpMasqError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(IpMasqError::Spawn)?;
    if !output.status.success() {
        return Err(IpMasqError::Rejected(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
}
