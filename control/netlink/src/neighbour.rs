//! Neighbour (ARP) entries and the bridge forwarding database.
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::{
    IpVersion,
    packet_route::{
        AddressFamily,
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags,
            NeighbourMessage, NeighbourState,
        },
    },
};

use crate::{
    Netlink, Result,
    error::{ignore_missing, request},
};

/// An IPv4 neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub address: Ipv4Addr,
    /// The link the entry is on.
    pub index: u32,
    /// The resolved MAC, if the entry has one.
    pub mac: Option<[u8; 6]>,
    pub state: NeighbourState,
}

impl Neighbour {
    /// Whether the entry resolves to a MAC the kernel uses: not failed, incomplete or without
    /// address resolution (`ip neigh` leaves out entries in no state as well).
    pub fn is_usable(&self) -> bool {
        self.mac.is_some()
            && !matches!(
                self.state,
                NeighbourState::Failed
                    | NeighbourState::Incomplete
                    | NeighbourState::Noarp
                    | NeighbourState::None
            )
    }
}

/// An entry of a bridge's forwarding database: frames to `mac` leave on port `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub port: u32,
    /// The bridge the entry belongs to (`None` for a device's own `self` entries).
    pub bridge: Option<u32>,
}

impl Netlink {
    /// Every IPv4 neighbour entry (`ip -4 neigh show`).
    pub async fn ipv4_neighbours(&self) -> Result<Vec<Neighbour>> {
        let messages: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_family(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(request("listing IPv4 neighbours"))?;
        Ok(messages.iter().filter_map(neighbour).collect())
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <index> nud permanent`.
    pub async fn replace_neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_local_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(request(format!("setting neighbour {ip} on link {index}")))
    }

    /// A neighbour the kernel keeps resolved on its own (`ip neigh replace <ip> dev <index>
    /// managed extern_learn`), so eBPF FIB lookups towards a peer's underlay address always
    /// find a MAC and the first packets to a new peer are not lost to address resolution.
    pub async fn ensure_managed_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let mut add = self
            .handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .state(NeighbourState::None)
            .flags(NeighbourFlags::ExtLearned)
            .replace();
        add.message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        add.execute()
            .await
            .map_err(request(format!("managing neighbour {ip} on link {index}")))
    }

    /// Deletes a neighbour entry; an entry already gone is fine.
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        ignore_missing(
            self.handle.neighbours().del(message).execute().await,
            format!("deleting neighbour {ip} on link {index}"),
        )
    }

    /// Every bridge FDB entry (`bridge fdb show`).
    pub async fn fdb(&self) -> Result<Vec<FdbEntry>> {
        let mut get = self.handle.neighbours().get();
        get.message_mut().header.family = AddressFamily::Bridge;
        let messages: Vec<NeighbourMessage> = get
            .execute()
            .try_collect()
            .await
            .map_err(request("listing the bridge forwarding database"))?;
        Ok(messages.iter().filter_map(fdb_entry).collect())
    }

    /// The FDB entries of bridge `bridge`'s ports (`bridge fdb show br <bridge>`).
    pub async fn bridge_fdb(&self, bridge: u32) -> Result<Vec<FdbEntry>> {
        let entries = self.fdb().await?;
        Ok(entries
            .into_iter()
            .filter(|entry| entry.bridge == Some(bridge))
            .collect())
    }

    /// `bridge fdb replace <mac> dev <index> dst <remote> self permanent`.
    pub async fn replace_fdb(&self, index: u32, mac: [u8; 6], remote: Ipv4Addr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(index, &mac)
            .destination(IpAddr::V4(remote))
            .flags(NeighbourFlags::Own)
            .replace()
            .execute()
            .await
            .map_err(request(format!(
                "setting FDB entry for {remote} on link {index}"
            )))
    }

    pub async fn delete_fdb(&self, index: u32, mac: [u8; 6], remote: Ipv4Addr) -> Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        message.header.flags = NeighbourFlags::Own;
        message
            .attributes
            .push(NeighbourAttribute::LinkLocalAddress(mac.to_vec()));
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                remote,
            )));
        ignore_missing(
            self.handle.neighbours().del(message).execute().await,
            format!("deleting FDB entry for {remote} on link {index}"),
        )
    }
}

fn neighbour(message: &NeighbourMessage) -> Option<Neighbour> {
    let address = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        })?;
    Some(Neighbour {
        address,
        index: message.header.ifindex,
        mac: link_local_address(message),
        state: message.header.state,
    })
}

fn fdb_entry(message: &NeighbourMessage) -> Option<FdbEntry> {
    Some(FdbEntry {
        mac: link_local_address(message)?,
        port: message.header.ifindex,
        bridge: message
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                NeighbourAttribute::Controller(index) => Some(*index),
                _ => None,
            }),
    })
}

fn link_local_address(message: &NeighbourMessage) -> Option<[u8; 6]> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            NeighbourAttribute::LinkLocalAddress(bytes) => {
                <[u8; 6]>::try_from(bytes.as_slice()).ok()
            }
            _ => None,
        })
}
