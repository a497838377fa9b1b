//! Network devices: lookups by name and index (with their kind and bridge), settings, and the
//! bridges, veth pairs and VXLAN devices the overlay creates.
use std::{net::Ipv4Addr, os::fd::RawFd};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::{
    LinkBridge, LinkUnspec, LinkVeth, LinkVxlan,
    packet_route::link::{LinkAttribute, LinkInfo as LinkInfoAttribute, LinkMessage},
};

use crate::{
    Netlink, NetlinkError, Result,
    error::{ignore_missing, request},
};

/// A link's identity and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// `veth`, `bridge`, `vxlan`, ... as `ip -d link` names it (`None` for a physical device).
    pub kind: Option<String>,
    /// The bridge (or bond) this link is a port of.
    pub controller: Option<u32>,
}

/// The kernel's names of the link kinds callers ask about (`IFLA_INFO_KIND`).
const KIND_BRIDGE: &str = "bridge";
const KIND_VETH: &str = "veth";

impl LinkInfo {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some(KIND_BRIDGE)
    }

    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some(KIND_VETH)
    }
}

/// Settings of a flannel-style VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub underlay_index: u32,
    pub mtu: u32,
}

impl Netlink {
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        // The kernel answers ENODEV for an unknown name.
        absent_if_not_found(
            links
                .try_next()
                .await
                .map_err(request(format!("looking up link {name}"))),
        )
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        absent_if_not_found(
            links
                .try_next()
                .await
                .map_err(request(format!("looking up link {index}"))),
        )
    }

    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(request("listing links"))?;
        Ok(messages.iter().map(link_info).collect())
    }

    /// The links whose controller is the bridge `bridge`.
    pub async fn bridge_ports(&self, bridge: u32) -> Result<Vec<LinkInfo>> {
        let links = self.links().await?;
        Ok(links
            .into_iter()
            .filter(|link| link.controller == Some(bridge))
            .collect())
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(request(format!("setting link {index} up")))
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(request(format!("setting the MTU of link {index} to {mtu}")))
    }

    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .name(name.to_string())
                    .build(),
            )
            .execute()
            .await
            .map_err(request(format!("renaming link {index} to {name}")))
    }

    pub async fn set_controller(&self, index: u32, bridge: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(bridge).build())
            .execute()
            .await
            .map_err(request(format!(
                "attaching link {index} to bridge {bridge}"
            )))
    }

    pub async fn move_to_netns(&self, index: u32, netns: RawFd) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).setns_by_fd(netns).build())
            .execute()
            .await
            .map_err(request(format!("moving link {index} to another namespace")))
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(request(format!("deleting link {index}")))
    }

    /// Deletes link `index` if it exists.
    pub async fn delete_link_if_exists(&self, index: u32) -> Result<()> {
        ignore_missing(
            self.handle.link().del(index).execute().await,
            format!("deleting link {index}"),
        )
    }

    /// A bridge named `name` holding `gateway` (address and prefix), with `mtu`, up. Creates
    /// what is missing, leaves what is there.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Network,
        mtu: u32,
    ) -> Result<LinkInfo> {
        let link = match self.link_by_name(name).await? {
            Some(link) => link,
            None => {
                self.handle
                    .link()
                    .add(LinkBridge::new(name).mtu(mtu).build())
                    .execute()
                    .await
                    .map_err(request(format!("creating bridge {name}")))?;
                self.existing_link(name).await?
            }
        };
        if link.mtu != mtu {
            self.set_mtu(link.index, mtu).await?;
        }
        self.ensure_address(link.index, gateway).await?;
        self.set_up(link.index).await?;
        Ok(link)
    }

    /// Creates a veth pair in this namespace and returns both ends.
    pub async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        mtu: u32,
    ) -> Result<(LinkInfo, LinkInfo)> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).mtu(mtu).build())
            .execute()
            .await
            .map_err(request(format!("creating veth pair {name}/{peer}")))?;
        Ok((
            self.existing_link(name).await?,
            self.existing_link(peer).await?,
        ))
    }

    /// A VXLAN device as flanneld's vxlan backend makes it: VNI, local underlay address, the
    /// underlay link, destination port, no learning. Re-created if its settings differ.
    pub async fn ensure_vxlan(&self, spec: &VxlanDevice) -> Result<LinkInfo> {
        if let Some(existing) = self.link_by_name(&spec.name).await? {
            if existing.mtu == spec.mtu {
                self.set_up(existing.index).await?;
                return Ok(existing);
            }
            self.delete_link(existing.index).await?;
        }
        let message = LinkVxlan::new(&spec.name, spec.vni)
            .dev(spec.underlay_index)
            .local(spec.local)
            .port(spec.port)
            .learning(false)
            .mtu(spec.mtu)
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(request(format!("creating vxlan device {}", spec.name)))?;
        let link = self.existing_link(&spec.name).await?;
        self.set_up(link.index).await?;
        Ok(link)
    }

    /// The link named `name`, which must exist (it was just created).
    async fn existing_link(&self, name: &str) -> Result<LinkInfo> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::NoLink(name.to_string()))
    }
}

/// A lookup's link, with "no such device" as `None`.
fn absent_if_not_found(found: Result<Option<LinkMessage>>) -> Result<Option<LinkInfo>> {
    match found {
        Ok(message) => Ok(message.as_ref().map(link_info)),
        Err(NetlinkError::NotFound { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

fn link_info(message: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: message.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        kind: None,
        controller: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => info.name = name.clone(),
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::Address(bytes) => info.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Controller(index) => info.controller = Some(*index),
            LinkAttribute::LinkInfo(infos) => {
                info.kind = infos.iter().find_map(|info| match info {
                    LinkInfoAttribute::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    info
}
