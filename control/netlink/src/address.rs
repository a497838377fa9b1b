//! The IPv4 addresses of links.
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::address::AddressAttribute;

use crate::{Netlink, Result, error::request};

impl Netlink {
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
}
