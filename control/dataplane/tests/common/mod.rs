//! Shared setup of the dataplane integration tests: a dataplane running inside a harness node.
#![allow(dead_code)]

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
};

use ipnetwork::Ipv4Network;
use shoal_dataplane::{
    Backend, Config, Counter, Dataplane, DecapHook, MacAddr, RouteTarget, Stats,
};
use shoal_harness::{Cluster, Node, NsWorker};

/// Where test instances pin: a directory of their own, removed by `detach`.
pub const TEST_PIN_ROOT: &str = "/sys/fs/bpf/shoal-tests";

/// A dataplane attached to a node's `eth0`, driven from a thread inside the node.
pub struct NodeDataplane {
    worker: NsWorker,
    dataplane: Option<Dataplane>,
    pub config: Config,
}

impl NodeDataplane {
    /// Attaches shoal's dataplane to `node` with a pin directory unique to this test run.
    pub fn attach(cluster: &Cluster, node: &Node, decap_hook: DecapHook) -> Self {
        let worker = NsWorker::spawn(node.ns()).expect("entering the node");
        let subnet = node.container_subnet().expect("node has a subnet");
        let mut config = Config::new("eth0", node.underlay_ip(), subnet);
        config.pin_root = TEST_PIN_ROOT.into();
        config.instance = format!("{}-{}", cluster.run_id(), node.name());
        config.decap_hook = decap_hook;
        config.route_source = Some(Ipv4Addr::from(u32::from(subnet.network()) + 1));
        let mut this = Self {
            worker,
            dataplane: None,
            config,
        };
        this.reattach();
        this
    }

    /// Loads again as a restarted process would (pinned maps and links taken over).
    pub fn reattach(&mut self) {
        let config = self.config.clone();
        let dataplane = self
            .worker
            .run(move || Dataplane::load_or_attach(config))
            .unwrap_or_else(|err| panic!("attaching the dataplane: {err}"));
        self.dataplane = Some(dataplane);
    }

    /// Drops the handle without detaching (what a crashing agent does).
    pub fn forget(&mut self) {
        self.dataplane = None;
    }

    pub fn vtep_mac(&self) -> MacAddr {
        self.dp().vtep_mac()
    }

    pub fn overlay_mtu(&self, backend: Backend) -> u32 {
        self.dp().overlay_mtu(backend)
    }

    pub fn set_route(&mut self, subnet: Ipv4Network, target: RouteTarget) {
        let mut dataplane = self.dataplane.take().expect("attached");
        let (dataplane, result) = self.worker.run(move || {
            let result = dataplane.set_route(subnet, target);
            (dataplane, result)
        });
        self.dataplane = Some(dataplane);
        result.unwrap_or_else(|err| panic!("setting route {subnet}: {err}"));
    }

    pub fn remove_route(&mut self, subnet: Ipv4Network) {
        let mut dataplane = self.dataplane.take().expect("attached");
        let (dataplane, result) = self.worker.run(move || {
            let result = dataplane.remove_route(subnet);
            (dataplane, result)
        });
        self.dataplane = Some(dataplane);
        result.unwrap_or_else(|err| panic!("removing route {subnet}: {err}"));
    }

    pub fn stats(&self) -> Stats {
        self.dp().stats().expect("reading counters")
    }

    pub fn count(&self, counter: Counter) -> u64 {
        self.stats().get(counter)
    }

    fn dp(&self) -> &Dataplane {
        self.dataplane.as_ref().expect("attached")
    }
}

impl Drop for NodeDataplane {
    fn drop(&mut self) {
        if let Some(dataplane) = self.dataplane.take() {
            let result = self.worker.run(move || dataplane.detach());
            if let Err(err) = result {
                eprintln!("detaching the dataplane: {err}");
            }
        }
    }
}

/// Routes every other node's subnet through `dataplanes[i]` with `backend`.
pub fn mesh(cluster: &Cluster, dataplanes: &mut [NodeDataplane], backend: Backend) {
    let macs: Vec<MacAddr> = dataplanes.iter().map(NodeDataplane::vtep_mac).collect();
    for (index, dataplane) in dataplanes.iter_mut().enumerate() {
        for (peer_index, peer) in cluster.nodes().iter().enumerate() {
            if peer_index == index {
                continue;
            }
            dataplane.set_route(
                peer.container_subnet().expect("subnet"),
                RouteTarget {
                    underlay_ip: peer.underlay_ip(),
                    vtep_mac: macs[peer_index],
                    backend,
                },
            );
        }
    }
}

/// A two-node cluster with one container per node.
pub fn two_nodes() -> Cluster {
    Cluster::builder()
        .nodes(2)
        .containers_per_node(1)
        .build()
        .expect("building the cluster")
}

/// Pings `to` from `from` (a container or node namespace), `count` packets of `size` bytes.
pub fn ping(ns: &shoal_harness::Namespace, to: Ipv4Addr, size: usize, count: u32) -> bool {
    let output = ns
        .output(
            "ping",
            [
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                "-s",
                &size.to_string(),
                "-M",
                "do",
                &to.to_string(),
            ],
        )
        .expect("running ping");
    output.status.success()
}

static PORT: AtomicU32 = AtomicU32::new(0);

/// A TCP/UDP port for test servers, distinct per test in this process.
pub fn test_port() -> u16 {
    20000 + (std::process::id() % 1000) as u16 * 10 + PORT.fetch_add(1, Ordering::Relaxed) as u16
}
