//! Nodes on a shared L2 underlay segment, each with optional containers behind a bridge.
use std::{net::Ipv4Addr, process::Output};

use ipnetwork::Ipv4Network;

use crate::{
    Error, Result,
    netns::{NAME_PREFIX, Namespace, new_run_id, sweep},
};

/// Name of the underlay interface inside every node and container.
pub const UNDERLAY_IF: &str = "eth0";
/// Name of the bridge inside the switch namespace, and of the container bridge inside nodes.
const SWITCH_BRIDGE: &str = "br0";
const CONTAINER_BRIDGE: &str = "cbr0";

/// Describes a cluster to build.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    containers_per_node: usize,
    underlay: Ipv4Network,
    container_supernet: Option<Ipv4Network>,
    underlay_mtu: u32,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            nodes: 3,
            containers_per_node: 0,
            underlay: Ipv4Network::new(Ipv4Addr::new(10, 99, 0, 0), 24).expect("valid prefix"),
            container_supernet: Some(
                Ipv4Network::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("valid prefix"),
            ),
            underlay_mtu: 1500,
        }
    }
}

impl ClusterBuilder {
    pub fn nodes(mut self, count: usize) -> Self {
        self.nodes = count;
        self
    }

    pub fn containers_per_node(mut self, count: usize) -> Self {
        self.containers_per_node = count;
        self
    }

    /// The underlay segment; node `i` gets host address `i + 1`.
    pub fn underlay(mut self, network: Ipv4Network) -> Self {
        self.underlay = network;
        self
    }

    /// Where container subnets come from: node `i` gets the `/24` number `i + 1` of it and a
    /// bridge `cbr0` holding its first address. `None` leaves containers unaddressed and
    /// unattached (for tests where shoal itself wires them).
    pub fn container_supernet(mut self, network: Option<Ipv4Network>) -> Self {
        self.container_supernet = network;
        self
    }

    pub fn underlay_mtu(mut self, mtu: u32) -> Self {
        self.underlay_mtu = mtu;
        self
    }

    /// Builds the cluster. On error, whatever was already created is removed.
    pub fn build(self) -> Result<Cluster> {
        if let Err(err) = sweep() {
            tracing::warn!("sweeping leftovers of killed runs: {err}");
        }
        let host_capacity = self.underlay.size().saturating_sub(2);
        if self.nodes == 0 || self.nodes as u64 > u64::from(host_capacity) {
            return Err(Error::Layout(format!(
                "{} nodes do not fit in underlay {}",
                self.nodes, self.underlay
            )));
        }
        let run_id = new_run_id();
        let switch = Namespace::create(format!("{NAME_PREFIX}{run_id}-sw"))?;
        switch.ip(["link", "add", SWITCH_BRIDGE, "type", "bridge"])?;
        switch.ip(["link", "set", SWITCH_BRIDGE, "up"])?;
        let mut cluster = Cluster {
            run_id,
            underlay: self.underlay,
            nodes: Vec::new(),
            switch,
        };
        for index in 0..self.nodes {
            let node = cluster.add_node_with(&self, index)?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }
}

/// A running cluster; dropping it removes every namespace, link and process it made.
#[derive(Debug)]
pub struct Cluster {
    run_id: String,
    underlay: Ipv4Network,
    // Field order matters: nodes (and their containers) go before the switch.
    nodes: Vec<Node>,
    switch: Namespace,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    pub fn underlay(&self) -> Ipv4Network {
        self.underlay
    }

    /// The namespace holding the underlay bridge (for captures with tcpdump/tshark).
    pub fn switch(&self) -> &Namespace {
        &self.switch
    }

    /// Routes every node's container subnet via its underlay address on every other node: the
    /// `host-gw` layout, plain routing with no encapsulation.
    pub fn install_host_gw_routes(&self) -> Result<()> {
        for node in &self.nodes {
            for peer in self.nodes.iter().filter(|peer| peer.index != node.index) {
                let Some(subnet) = peer.container_subnet else {
                    continue;
                };
                node.ns.ip([
                    "route",
                    "replace",
                    &subnet.to_string(),
                    "via",
                    &peer.underlay_ip.to_string(),
                ])?;
            }
        }
        Ok(())
    }

    fn add_node_with(&self, spec: &ClusterBuilder, index: usize) -> Result<Node> {
        let ns = Namespace::create(format!("{NAME_PREFIX}{}-n{index}", self.run_id))?;
        let underlay_ip = nth_host(self.underlay, index as u32 + 1)?;
        let switch_port = format!("p{index}");
        ns.ip([
            "link",
            "add",
            UNDERLAY_IF,
            "mtu",
            &spec.underlay_mtu.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &switch_port,
            "netns",
            self.switch.name(),
        ])?;
        self.switch
            .ip(["link", "set", &switch_port, "master", SWITCH_BRIDGE, "up"])?;
        let cidr = format!("{underlay_ip}/{}", self.underlay.prefix());
        ns.ip(["addr", "add", &cidr, "dev", UNDERLAY_IF])?;
        ns.ip(["link", "set", UNDERLAY_IF, "up"])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let container_subnet = spec
            .container_supernet
            .map(|supernet| node_subnet(supernet, index))
            .transpose()?;
        let mut node = Node {
            index,
            name: format!("n{index}"),
            underlay_ip,
            container_subnet,
            containers: Vec::new(),
            ns,
        };
        if let Some(subnet) = container_subnet {
            let gateway = nth_host(subnet, 1)?;
            node.ns
                .ip(["link", "add", CONTAINER_BRIDGE, "type", "bridge"])?;
            node.ns.ip([
                "addr",
                "add",
                &format!("{gateway}/{}", subnet.prefix()),
                "dev",
                CONTAINER_BRIDGE,
            ])?;
            node.ns.ip(["link", "set", CONTAINER_BRIDGE, "up"])?;
        }
        for slot in 0..spec.containers_per_node {
            let container = node.add_container(&self.run_id, slot)?;
            node.containers.push(container);
        }
        Ok(node)
    }
}

/// One machine of the cluster: a namespace with an underlay interface `eth0`.
#[derive(Debug)]
pub struct Node {
    index: usize,
    name: String,
    underlay_ip: Ipv4Addr,
    container_subnet: Option<Ipv4Network>,
    // Containers are dropped before the node's namespace.
    containers: Vec<Container>,
    ns: Namespace,
}

impl Node {
    pub fn index(&self) -> usize {
        self.index
    }

    /// Short name, `n<index>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.underlay_ip
    }

    pub fn container_subnet(&self) -> Option<Ipv4Network> {
        self.container_subnet
    }

    pub fn containers(&self) -> &[Container] {
        &self.containers
    }

    pub fn container(&self, slot: usize) -> &Container {
        &self.containers[slot]
    }

    pub fn ns(&self) -> &Namespace {
        &self.ns
    }

    /// Runs a command in the node and returns its stdout (error on non-zero exit).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        self.ns.exec(program, args)
    }

    /// Runs a command in the node and returns its whole output.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.ns.output(program, args)
    }

    fn add_container(&self, run_id: &str, slot: usize) -> Result<Container> {
        let ns = Namespace::create(format!("{NAME_PREFIX}{run_id}-{}-c{slot}", self.name))?;
        let host_side = format!("vc{slot}");
        self.ns.ip([
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_IF,
            "netns",
            ns.name(),
        ])?;
        self.ns.ip(["link", "set", &host_side, "up"])?;
        ns.ip(["link", "set", UNDERLAY_IF, "up"])?;
        let ip = match self.container_subnet {
            Some(subnet) => {
                let ip = nth_host(subnet, slot as u32 + 2)?;
                let gateway = nth_host(subnet, 1)?;
                self.ns
                    .ip(["link", "set", &host_side, "master", CONTAINER_BRIDGE])?;
                ns.ip([
                    "addr",
                    "add",
                    &format!("{ip}/{}", subnet.prefix()),
                    "dev",
                    UNDERLAY_IF,
                ])?;
                ns.ip(["route", "add", "default", "via", &gateway.to_string()])?;
                Some(ip)
            }
            None => None,
        };
        Ok(Container {
            name: format!("{}-c{slot}", self.name),
            host_side,
            ip,
            ns,
        })
    }
}

/// A workload namespace behind a veth pair: `eth0` inside, `vc<slot>` in its node.
#[derive(Debug)]
pub struct Container {
    name: String,
    host_side: String,
    ip: Option<Ipv4Addr>,
    ns: Namespace,
}

impl Container {
    /// `n<node>-c<slot>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's address, if the cluster addresses containers.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.ip
    }

    /// Name of the veth end inside the node.
    pub fn host_side(&self) -> &str {
        &self.host_side
    }

    pub fn ns(&self) -> &Namespace {
        &self.ns
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        self.ns.exec(program, args)
    }

    pub fn output(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.ns.output(program, args)
    }
}

/// The `n`-th address of `network` (0 is the network address).
fn nth_host(network: Ipv4Network, n: u32) -> Result<Ipv4Addr> {
    if n >= network.size() {
        return Err(Error::Layout(format!("{network} has no host number {n}")));
    }
    Ok(Ipv4Addr::from(u32::from(network.network()) + n))
}

/// Node `index`'s `/24` inside `supernet` (number `index + 1`, so `.0.0/24` stays unused).
fn node_subnet(supernet: Ipv4Network, index: usize) -> Result<Ipv4Network> {
    if supernet.prefix() > 23 {
        return Err(Error::Layout(format!(
            "container supernet {supernet} is smaller than two /24s"
        )));
    }
    let count = 1u32 << (24 - supernet.prefix());
    let number = index as u32 + 1;
    if number >= count {
        return Err(Error::Layout(format!(
            "{supernet} has no /24 for node {index}"
        )));
    }
    let base = u32::from(supernet.network()) + (number << 8);
    Ipv4Network::new(Ipv4Addr::from(base), 24).map_err(|err| Error::Layout(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_subnets_are_distinct_24s() {
        let supernet: Ipv4Network = "10.244.0.0/16".parse().expect("valid");
        assert_eq!(
            node_subnet(supernet, 0).expect("fits").to_string(),
            "10.244.1.0/24"
        );
        assert_eq!(
            node_subnet(supernet, 2).expect("fits").to_string(),
            "10.244.3.0/24"
        );
        assert!(node_subnet(supernet, 255).is_err());
    }

    #[test]
    fn nth_host_stays_inside_the_network() {
        let net: Ipv4Network = "10.99.0.0/30".parse().expect("valid");
        assert_eq!(nth_host(net, 1).expect("fits"), Ipv4Addr::new(10, 99, 0, 1));
        assert!(nth_host(net, 4).is_err());
    }
}
