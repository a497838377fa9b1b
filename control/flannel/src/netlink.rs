//! Kernel network state through rtnetlink: links, addresses, routes, neighbours and FDB
//! entries. Every call works in the network namespace of the thread that opened the socket.
use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::RawFd,
};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::{LinkAttribute, LinkMessage},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags,
            NeighbourMessage, NeighbourState,
        },
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
    },
};

/// The `proto` number shoal tags its overlay routes with, so a restart can tell them apart.
pub const ROUTE_PROTOCOL: u8 = 0x5e;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("{action}")]
    Request {
        action: String,
        source: rtnetlink::Error,
    },
    #[error("no link named {0}")]
    NoLink(String),
}

type Result<T, E = NetlinkError> = std::result::Result<T, E>;

fn request(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let action = action.into();
    move |source| NetlinkError::Request { action, source }
}

/// A link's identity and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
}

/// An rtnetlink connection, bound to the network namespace it was opened in.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the current thread's network namespace; its task runs on the
    /// current tokio runtime.
    pub fn open() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(message)) => Ok(Some(link_info(&message))),
            Ok(None) => Ok(None),
            // The kernel answers ENODEV for an unknown name.
            Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::ENODEV => Ok(None),
            Err(err) => Err(request(format!("looking up link {name}"))(err)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(found) => Ok(found.as_ref().map(link_info)),
            Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::ENODEV => Ok(None),
            Err(err) => Err(request(format!("looking up link {index}"))(err)),
        }
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

    /// The IPv4 addresses (with prefix) of a link.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Network>> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(request(format!("listing addresses of link {index}")))?;
        Ok(messages
            .iter()
            .filter_map(|message| {
                let prefix = message.header.prefix_len;
                message
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        AddressAttribute::Local(IpAddr::V4(ip)) => {
                            Ipv4Network::new(*ip, prefix).ok()
                        }
                        _ => None,
                    })
            })
            .collect())
    }

    /// Adds an address unless the link already has it.
    pub async fn ensure_address(&self, index: u32, address: Ipv4Network) -> Result<()> {
        if self.ipv4_addresses(index).await?.contains(&address) {
            return Ok(());
        }
        self.handle
            .address()
            .add(index, IpAddr::V4(address.ip()), address.prefix())
            .execute()
            .await
            .map_err(request(format!("adding {address} to link {index}")))
    }

    /// The link of the IPv4 default route, if there is one.
    pub async fn default_route_link(&self) -> Result<Option<u32>> {
        let routes = self.ipv4_routes().await?;
        Ok(routes
            .iter()
            .filter(|route| route.header.destination_prefix_length == 0)
            .find_map(|route| {
                route
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        RouteAttribute::Oif(index) => Some(*index),
                        _ => None,
                    })
            }))
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
                self.link_by_name(name)
                    .await?
                    .ok_or_else(|| NetlinkError::NoLink(name.to_string()))?
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
        let near = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::NoLink(name.into()))?;
        let far = self
            .link_by_name(peer)
            .await?
            .ok_or_else(|| NetlinkError::NoLink(peer.into()))?;
        Ok((near, far))
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
        let link = self
            .link_by_name(&spec.name)
            .await?
            .ok_or_else(|| NetlinkError::NoLink(spec.name.clone()))?;
        self.set_up(link.index).await?;
        Ok(link)
    }

    /// `ip route replace <dest> via <gateway> [dev <oif> onlink] proto shoal`.
    pub async fn replace_route(&self, route: &OverlayRoute) -> Result<()> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.destination.network(), route.destination.prefix())
            .gateway(route.gateway)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .scope(RouteScope::Universe);
        if let Some(oif) = route.device {
            builder = builder.output_interface(oif).onlink();
        }
        self.handle
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .map_err(request(format!(
                "routing {} via {}",
                route.destination, route.gateway
            )))
    }

    /// Deletes the route to `destination` if it is one of ours; absent routes are fine.
    pub async fn delete_route(&self, destination: Ipv4Network) -> Result<()> {
        for route in self.overlay_routes().await? {
            if route_destination(&route) == Some(destination) {
                self.delete_route_message(route, destination).await?;
            }
        }
        Ok(())
    }

    /// Destinations of every route shoal installed (tagged with [`ROUTE_PROTOCOL`]).
    pub async fn overlay_route_destinations(&self) -> Result<Vec<Ipv4Network>> {
        Ok(self
            .overlay_routes()
            .await?
            .iter()
            .filter_map(route_destination)
            .collect())
    }

    /// Whether `ip` is on a directly connected subnet (no gateway needed).
    pub async fn is_on_link(&self, ip: Ipv4Addr) -> Result<bool> {
        let routes = self.ipv4_routes().await?;
        Ok(routes.iter().any(|route| {
            route.header.scope == RouteScope::Link
                && route_destination(route)
                    .is_some_and(|dest| dest.prefix() > 0 && dest.contains(ip))
        }))
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

    async fn ipv4_routes(&self) -> Result<Vec<RouteMessage>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        self.handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(request("listing IPv4 routes"))
    }

    async fn overlay_routes(&self) -> Result<Vec<RouteMessage>> {
        Ok(self
            .ipv4_routes()
            .await?
            .into_iter()
            .filter(|route| route.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL))
            .collect())
    }

    async fn delete_route_message(
        &self,
        route: RouteMessage,
        destination: Ipv4Network,
    ) -> Result<()> {
        ignore_missing(
            self.handle.route().del(route).execute().await,
            format!("deleting the route to {destination}"),
        )
    }
}

/// A route to a remote subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayRoute {
    pub destination: Ipv4Network,
    pub gateway: Ipv4Addr,
    /// Set for `onlink` routes through a tunnel device.
    pub device: Option<u32>,
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

fn ignore_missing(result: Result<(), rtnetlink::Error>, action: String) -> Result<()> {
    match result {
        Err(rtnetlink::Error::NetlinkError(err))
            if [-libc::ENOENT, -libc::ESRCH, -libc::ENODEV].contains(&err.raw_code()) =>
        {
            Ok(())
        }
        other => other.map_err(request(action)),
    }
}

fn route_destination(route: &RouteMessage) -> Option<Ipv4Network> {
    let prefix = route.header.destination_prefix_length;
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                Ipv4Network::new(*ip, prefix).ok()
            }
            _ => None,
        })
}

fn link_info(message: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: message.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => info.name = name.clone(),
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::Address(bytes) => info.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    info
}
