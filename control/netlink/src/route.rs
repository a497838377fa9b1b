//! IPv4 routes: the overlay's routes to remote subnets (tagged with [`ROUTE_PROTOCOL`]) and
//! plain gateway routes with an MTU and a preferred source.
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    },
};

use crate::{
    Netlink, Result,
    error::{ignore_missing, request},
};

/// The `proto` number shoal tags its overlay routes with, so a restart can tell them apart.
pub const ROUTE_PROTOCOL: u8 = 0x5e;

/// A route to a remote subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayRoute {
    pub destination: Ipv4Network,
    pub gateway: Ipv4Addr,
    /// Set for `onlink` routes through a tunnel device.
    pub device: Option<u32>,
}

/// `ip route replace <destination> via <gateway> dev <device> onlink [mtu <mtu>] [src <source>]`:
/// a route as `ip` installs it (protocol `boot`), not tagged as an overlay route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Network,
    pub gateway: Ipv4Addr,
    /// The device the gateway is on-link on.
    pub device: u32,
    pub mtu: Option<u32>,
    /// Preferred source of locally originated traffic (must be a local address).
    pub source: Option<Ipv4Addr>,
}

/// A route as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstalledRoute {
    pub gateway: Option<Ipv4Addr>,
    pub device: Option<u32>,
    pub mtu: Option<u32>,
    pub source: Option<Ipv4Addr>,
}

impl Netlink {
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
        self.add_route(builder.build(), route.destination, route.gateway)
            .await
    }

    /// Adds or replaces an on-link gateway route (see [`Route`]).
    pub async fn replace_gateway_route(&self, route: &Route) -> Result<()> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.destination.network(), route.destination.prefix())
            .gateway(route.gateway)
            .output_interface(route.device)
            .onlink()
            .protocol(RouteProtocol::Boot)
            .scope(RouteScope::Universe);
        if let Some(source) = route.source {
            builder = builder.pref_source(source);
        }
        let mut message = builder.build();
        if let Some(mtu) = route.mtu {
            message
                .attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        self.add_route(message, route.destination, route.gateway)
            .await
    }

    /// Deletes the routes to `destination` through link `device`, whoever installed them;
    /// absent routes are fine.
    pub async fn delete_routes_via(&self, destination: Ipv4Network, device: u32) -> Result<()> {
        for route in self.ipv4_routes().await? {
            if route_destination(&route) == Some(destination)
                && route_device(&route) == Some(device)
            {
                self.delete_route_message(route, destination).await?;
            }
        }
        Ok(())
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

    /// The IPv4 routes to `destination` (a default route has none, so it is not listed).
    pub async fn routes_to(&self, destination: Ipv4Network) -> Result<Vec<InstalledRoute>> {
        Ok(self
            .ipv4_routes()
            .await?
            .iter()
            .filter(|route| route_destination(route) == Some(destination))
            .map(installed_route)
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

    /// The link of the IPv4 default route, if there is one.
    pub async fn default_route_link(&self) -> Result<Option<u32>> {
        let routes = self.ipv4_routes().await?;
        Ok(routes
            .iter()
            .filter(|route| route.header.destination_prefix_length == 0)
            .find_map(route_device))
    }

    async fn add_route(
        &self,
        message: RouteMessage,
        destination: Ipv4Network,
        gateway: Ipv4Addr,
    ) -> Result<()> {
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(request(format!("routing {destination} via {gateway}")))
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

fn installed_route(route: &RouteMessage) -> InstalledRoute {
    let mut installed = InstalledRoute {
        gateway: None,
        device: None,
        mtu: None,
        source: None,
    };
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => installed.gateway = Some(*ip),
            RouteAttribute::Oif(index) => installed.device = Some(*index),
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => installed.source = Some(*ip),
            RouteAttribute::Metrics(metrics) => {
                installed.mtu = metrics.iter().find_map(|metric| match metric {
                    RouteMetric::Mtu(mtu) => Some(*mtu),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    installed
}

fn route_device(route: &RouteMessage) -> Option<u32> {
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Oif(index) => Some(*index),
            _ => None,
        })
}
