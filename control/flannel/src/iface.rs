//! Choosing the underlay interface and public IP as flanneld does: `--iface` (names or
//! addresses, first match wins), then `--iface-regex`, else the default route's interface;
//! `--public-ip` overrides the advertised address.
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use regex::Regex;

use shoal_netlink::{LinkInfo, Netlink, NetlinkError};

use super::backend::Underlay;

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("--iface-regex {pattern:?} is not a valid regular expression")]
    Regex {
        pattern: String,
        source: regex::Error,
    },
    #[error("no interface matches {0}; pass --iface with an interface name or address that exists")]
    NotFound(String),
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
}

/// Interface selection, from flanneld's flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IfaceSelection {
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
}

/// Finds the underlay interface, its IPv4 address and MTU.
pub async fn select(netlink: &Netlink, selection: &IfaceSelection) -> Result<Underlay, IfaceError> {
    let (link, address) = find_link(netlink, selection).await?;
    let connected = netlink
        .ipv4_addresses(link.index)
        .await?
        .into_iter()
        .filter_map(|address| Ipv4Network::new(address.network(), address.prefix()).ok())
        .collect();
    Ok(Underlay {
        index: link.index,
        public_ip: selection.public_ip.unwrap_or(address),
        name: link.name,
        mtu: link.mtu,
        connected,
    })
}

async fn find_link(
    netlink: &Netlink,
    selection: &IfaceSelection,
) -> Result<(LinkInfo, Ipv4Addr), IfaceError> {
    let links = netlink.links().await?;
    for wanted in &selection.iface {
        if let Some(found) = match_name_or_address(netlink, &links, wanted).await? {
            return Ok(found);
        }
    }
    if !selection.iface.is_empty() {
        return Err(IfaceError::NotFound(format!(
            "--iface {}",
            selection.iface.join(",")
        )));
    }
    for pattern in &selection.iface_regex {
        let regex = Regex::new(pattern).map_err(|source| IfaceError::Regex {
            pattern: pattern.clone(),
            source,
        })?;
        for link in &links {
            for address in netlink.ipv4_addresses(link.index).await? {
                if regex.is_match(&link.name) || regex.is_match(&address.ip().to_string()) {
                    return Ok((link.clone(), address.ip()));
                }
            }
        }
    }
    if !selection.iface_regex.is_empty() {
        return Err(IfaceError::NotFound(format!(
            "--iface-regex {}",
            selection.iface_regex.join(",")
        )));
    }
    default_link(netlink, &links).await
}

async fn match_name_or_address(
    netlink: &Netlink,
    links: &[LinkInfo],
    wanted: &str,
) -> Result<Option<(LinkInfo, Ipv4Addr)>, IfaceError> {
    let wanted_ip: Option<Ipv4Addr> = wanted.parse().ok();
    for link in links {
        let addresses = netlink.ipv4_addresses(link.index).await?;
        match wanted_ip {
            Some(ip) if addresses.iter().any(|address| address.ip() == ip) => {
                return Ok(Some((link.clone(), ip)));
            }
            None if link.name == wanted => {
                let address = addresses
                    .first()
                    .ok_or_else(|| IfaceError::NoAddress(link.name.clone()))?;
                return Ok(Some((link.clone(), address.ip())));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The default route's interface; without a default route (as in an isolated namespace), the
/// first non-loopback interface with an IPv4 address.
async fn default_link(
    netlink: &Netlink,
    links: &[LinkInfo],
) -> Result<(LinkInfo, Ipv4Addr), IfaceError> {
    if let Some(index) = netlink.default_route_link().await?
        && let Some(link) = links.iter().find(|link| link.index == index)
        && let Some(address) = netlink.ipv4_addresses(index).await?.first()
    {
        return Ok((link.clone(), address.ip()));
    }
    for link in links.iter().filter(|link| link.name != "lo") {
        if let Some(address) = netlink.ipv4_addresses(link.index).await?.first() {
            return Ok((link.clone(), address.ip()));
        }
    }
    Err(IfaceError::NotFound(
        "a default route or any IPv4 interface".into(),
    ))
}
