//! A network namespace per store member, so the network between members can be cut while
//! clients on the host still reach every member.
//!
//! ```text
//!  host: sh<pid>x<n> (198.18.X.1/24) ──veth── switch namespace <run>-sw: bridge br0
//!                                                  │            │            │
//!                                      eth0 (198.18.X.2)   eth0 (.3)    eth0 (.4)
//!                                      member namespaces <run>-m0, -m1, -m2, ...
//! ```
//!
//! Addresses come from 198.18.0.0/15, the range RFC 2544 sets aside for tests; a run takes a
//! /24 of it that no host interface uses yet. Names carry the run id (pid and counter), like the
//! namespaces of [`crate::Cluster`]. Dropping an [`Isolation`] deletes its namespaces (and so
//! every veth, the host's end included), also when a test panics; what a killed run left is
//! removed by [`crate::sweep`].
use std::net::Ipv4Addr;
use std::process::Command;

use ipnetwork::Ipv4Network;

use crate::command::run;
use crate::netns::{NAME_PREFIX, Namespace, new_run_id, sweep};
use crate::{Error, Result};

/// The test-only range member addresses come from (RFC 2544).
fn range() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(198, 18, 0, 0), 15).expect("a valid prefix")
}
const BRIDGE: &str = "br0";
/// The member's interface inside its namespace.
const MEMBER_IF: &str = "eth0";

/// Namespaces of one isolated store cluster: a switch with a bridge, one namespace per member
/// slot, and a veth from the host to the bridge.
#[derive(Debug)]
pub struct Isolation {
    subnet: Ipv4Network,
    // Field order matters: members go before the switch.
    members: Vec<Namespace>,
    switch: Namespace,
}

impl Isolation {
    /// `slots` member namespaces on a new bridge, each with its address, and the host's route
    /// to them.
    pub fn create(slots: usize) -> Result<Self> {
        if let Err(err) = sweep() {
            tracing::warn!("sweeping leftovers of killed runs: {err}");
        }
        let run_id = new_run_id();
        let subnet = free_subnet(&run_id)?;
        if slots + 2 > subnet.size() as usize {
            return Err(Error::Layout(format!(
                "{slots} members do not fit {subnet}"
            )));
        }
        let switch = Namespace::create(format!("{NAME_PREFIX}{run_id}-sw"))?;
        switch.ip(["link", "add", BRIDGE, "type", "bridge"])?;
        switch.ip(["link", "set", BRIDGE, "up"])?;
        let mut isolation = Isolation {
            subnet,
            members: Vec::new(),
            switch,
        };
        isolation.connect_host(&run_id)?;
        for slot in 0..slots {
            let ns = isolation.add_member(&run_id, slot)?;
            isolation.members.push(ns);
        }
        Ok(isolation)
    }

    /// The /24 this cluster's addresses are in.
    pub fn subnet(&self) -> Ipv4Network {
        self.subnet
    }

    /// The host's address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        host(self.subnet, 1)
    }

    /// Member slot `i`'s address.
    pub fn member_ip(&self, i: usize) -> Ipv4Addr {
        host(self.subnet, i as u32 + 2)
    }

    /// Every member slot's address, by slot.
    pub fn member_ips(&self) -> Vec<Ipv4Addr> {
        (0..self.members.len()).map(|i| self.member_ip(i)).collect()
    }

    /// Member slot `i`'s namespace.
    pub fn namespace(&self, i: usize) -> &Namespace {
        &self.members[i]
    }

    /// How many member slots there are.
    pub fn slots(&self) -> usize {
        self.members.len()
    }

    /// The namespace holding the bridge (for captures).
    pub fn switch(&self) -> &Namespace {
        &self.switch
    }

    /// A veth from the host to the bridge, the host's end holding `.1`.
    fn connect_host(&self, run_id: &str) -> Result<()> {
        // Interface names have at most 15 bytes: `sh<pid>x<n>` fits any Linux pid.
        let host_if = format!("sh{run_id}");
        run(Command::new("ip").args([
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "host",
            "netns",
            self.switch.name(),
        ]))?;
        self.switch
            .ip(["link", "set", "host", "master", BRIDGE, "up"])?;
        let cidr = format!("{}/{}", self.host_ip(), self.subnet.prefix());
        run(Command::new("ip").args(["addr", "add", &cidr, "dev", &host_if]))?;
        run(Command::new("ip").args(["link", "set", &host_if, "up"]))?;
        Ok(())
    }

    fn add_member(&self, run_id: &str, slot: usize) -> Result<Namespace> {
        let ns = Namespace::create(format!("{NAME_PREFIX}{run_id}-m{slot}"))?;
        let port = format!("p{slot}");
        ns.ip([
            "link",
            "add",
            MEMBER_IF,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            self.switch.name(),
        ])?;
        self.switch
            .ip(["link", "set", &port, "master", BRIDGE, "up"])?;
        let cidr = format!("{}/{}", self.member_ip(slot), self.subnet.prefix());
        ns.ip(["addr", "add", &cidr, "dev", MEMBER_IF])?;
        ns.ip(["link", "set", MEMBER_IF, "up"])?;
        Ok(ns)
    }
}

/// Address `n` of `subnet`.
fn host(subnet: Ipv4Network, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + n)
}

/// A /24 of [`range`] that no host address is in, starting from one the run id picks (so
/// parallel runs start apart).
fn free_subnet(run_id: &str) -> Result<Ipv4Network> {
    let used = run(Command::new("ip").args(["-o", "-4", "addr", "show"]))?;
    let range = range();
    let count = 1u32 << (24 - range.prefix());
    let seed = run_id.bytes().fold(0u32, |hash, b| {
        hash.wrapping_mul(31).wrapping_add(u32::from(b))
    });
    (0..count)
        .map(|k| (seed.wrapping_add(k)) % count)
        .map(|number| {
            let base = u32::from(range.network()) + (number << 8);
            Ipv4Network::new(Ipv4Addr::from(base), 24).expect("a /24")
        })
        .find(|subnet| !used.contains(&format!(" {}.", prefix_text(*subnet))))
        .ok_or_else(|| Error::Layout(format!("no free /24 left in {range}")))
}

/// `a.b.c` of a /24.
fn prefix_text(subnet: Ipv4Network) -> String {
    let [a, b, c, _] = subnet.network().octets();
    format!("{a}.{b}.{c}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_24s_of_the_test_range() {
        let subnet = free_subnet("123x4").expect("a free /24");
        assert_eq!(subnet.prefix(), 24);
        assert!(range().contains(subnet.network()));
        assert_eq!(prefix_text(subnet).split('.').count(), 3);
    }
}
