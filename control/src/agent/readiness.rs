//! What "ready" means for a node, checked every second, and the numbers `/metrics` reports
//! from the same look:
//! - `store`: a linearizable read succeeds (the store has quorum);
//! - `overlay`: this node holds a lease, subnet.env is written, and every other node's lease
//!   has its overlay route in this node's kernel;
//! - `fleet`: this machine is registered.
//!
//! Each check reads as the store user of the component it checks (the overlay's, fleet's; the
//! store's own as the agent's least privileged user), so a node needs no admin certificate to
//! be ready. Connections are made again (to the first member that answers) after a check found
//! no quorum, and every request is bounded by the store client's timeout.
use std::{net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use ipnetwork::Ipv4Network;
use shoal_store_client::{Chain, StoreClient, StoreConfig, StoreError, etcd_client::GetOptions};
use tokio_util::sync::CancellationToken;

use super::health::{Gauges, Readiness};

/// Where to look for each component's proof of readiness.
#[derive(Debug, Clone)]
pub struct Probes {
    /// How to reach the store (endpoints, TLS, credentials) for its own check.
    pub store: StoreConfig,
    /// The key the store's check reads (one `store`'s user may read).
    pub probe_key: String,
    pub overlay: Option<OverlayProbe>,
    pub fleet: Option<FleetProbe>,
}

#[derive(Debug, Clone)]
pub struct OverlayProbe {
    /// The overlay's own store identity.
    pub store: StoreConfig,
    pub prefix: String,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct FleetProbe {
    /// fleet's own store identity.
    pub store: StoreConfig,
    pub prefix: String,
    pub machine_id: String,
}

impl Probes {
    pub fn declare(&self, readiness: &Readiness) {
        readiness.declare("store", "not reached yet");
        if self.overlay.is_some() {
            readiness.declare("overlay", "no lease yet");
        }
        if self.fleet.is_some() {
            readiness.declare("fleet", "machine not registered yet");
        }
    }

    /// Checks every second until `shutdown`.
    pub async fn run(
        self,
        readiness: Arc<Readiness>,
        gauges: Arc<Gauges>,
        shutdown: CancellationToken,
    ) {
        let mut store = Connection::new(&self.store);
        let mut overlay = self
            .overlay
            .as_ref()
            .map(|probe| Connection::new(&probe.store));
        let mut fleet = self
            .fleet
            .as_ref()
            .map(|probe| Connection::new(&probe.store));
        loop {
            let quorum = self.check_store(&mut store, &readiness, &gauges).await;
            if let (Some(probe), Some(connection)) = (&self.overlay, &mut overlay) {
                let (ready, detail) = match connection.client().await {
                    Ok(client) => overlay_state(client, probe, &gauges).await,
                    Err(err) => (false, format!("listing leases: {}", Chain(&err))),
                };
                readiness.set("overlay", ready, detail);
            }
            if let (Some(probe), Some(connection)) = (&self.fleet, &mut fleet) {
                let (ready, detail) = match connection.client().await {
                    Ok(client) => fleet_state(client, probe, &gauges).await,
                    Err(err) => (
                        false,
                        format!("reading machine {}: {}", probe.machine_id, Chain(&err)),
                    ),
                };
                readiness.set("fleet", ready, detail);
            }
            if !quorum {
                // The member in use lost quorum or is gone: look for one that answers.
                for connection in [Some(&mut store), overlay.as_mut(), fleet.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    connection.forget();
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// The store's own check; whether it had quorum.
    async fn check_store(
        &self,
        store: &mut Connection,
        readiness: &Readiness,
        gauges: &Gauges,
    ) -> bool {
        let (quorum, detail) = match store.client().await {
            Ok(client) => store_state(client, &self.probe_key, gauges).await,
            Err(err) => {
                gauges.set(
                    "shoal_store_up",
                    "Whether a linearizable read succeeds.",
                    0.0,
                );
                (false, format!("no quorum: {}", Chain(&err)))
            }
        };
        readiness.set("store", quorum, detail);
        quorum
    }
}

/// One identity's connection to the store, made when first needed.
struct Connection {
    config: StoreConfig,
    client: Option<StoreClient>,
}

impl Connection {
    fn new(config: &StoreConfig) -> Self {
        Self {
            config: config.clone(),
            client: None,
        }
    }

    async fn client(&mut self) -> Result<&StoreClient, StoreError> {
        let client = match self.client.take() {
            Some(client) => client,
            None => StoreClient::connect(&self.config).await?,
        };
        Ok(self.client.insert(client))
    }

    fn forget(&mut self) {
        self.client = None;
    }
}

async fn store_state(store: &StoreClient, key: &str, gauges: &Gauges) -> (bool, String) {
    let mut client = store.client();
    let read = store.call("linearizable read", client.get(key, None)).await;
    let status = store.call("status", client.status()).await;
    if let Ok(status) = &status {
        gauges.set(
            "shoal_store_db_size_bytes",
            "Size of the store's database.",
            status.db_size() as f64,
        );
        gauges.set(
            "shoal_store_raft_index",
            "Raft index of this node's store endpoint.",
            status.raft_index() as f64,
        );
        gauges.set(
            "shoal_store_raft_term",
            "Raft term of this node's store endpoint.",
            status.raft_term() as f64,
        );
        let leader = status
            .header()
            .is_some_and(|header| header.member_id() == status.leader());
        gauges.set(
            "shoal_store_is_leader",
            "Whether this node's store endpoint is the Raft leader.",
            f64::from(u8::from(leader)),
        );
    }
    gauges.set(
        "shoal_store_up",
        "Whether a linearizable read succeeds.",
        f64::from(u8::from(read.is_ok())),
    );
    match read {
        Ok(reply) => {
            let revision = reply.header().map_or(0, |header| header.revision());
            gauges.set(
                "shoal_store_revision",
                "Current revision of the store.",
                revision as f64,
            );
            (true, format!("quorum, revision {revision}"))
        }
        Err(err) => (false, format!("no quorum: {}", Chain(&err))),
    }
}

async fn overlay_state(
    store: &StoreClient,
    probe: &OverlayProbe,
    gauges: &Gauges,
) -> (bool, String) {
    let key = format!("{}/subnets/", probe.prefix.trim_end_matches('/'));
    let mut client = store.client();
    let listing = client.get(key.as_str(), Some(GetOptions::new().with_prefix()));
    let leases = match store.call("listing leases", listing).await {
        Ok(reply) => reply,
        Err(err) => return (false, Chain(&err).to_string()),
    };
    gauges.set(
        "shoal_overlay_leases",
        "Subnet leases in the network.",
        leases.kvs().len() as f64,
    );
    let own_marker = probe.public_ip.map(|ip| format!("\"PublicIP\":\"{ip}\""));
    let mut own = None;
    let mut remote = Vec::new();
    for kv in leases.kvs() {
        let Some(subnet) = kv
            .key_str()
            .ok()
            .and_then(|k| k.strip_prefix(key.as_str()))
            .and_then(parse_lease_subnet)
        else {
            continue;
        };
        let value = kv.value_str().unwrap_or_default().replace(' ', "");
        match &own_marker {
            Some(marker) if value.contains(marker.as_str()) => own = Some(subnet),
            _ => remote.push(subnet),
        }
    }
    let Some(own) = own else {
        return (
            false,
            format!("no lease of this node among {}", leases.kvs().len()),
        );
    };
    if !probe.subnet_file.exists() {
        return (
            false,
            format!("{} not written yet", probe.subnet_file.display()),
        );
    }
    let routed = match kernel_route_destinations() {
        Ok(routed) => routed,
        Err(err) => return (false, format!("reading /proc/net/route: {err}")),
    };
    let missing: Vec<String> = remote
        .iter()
        .filter(|s| !routed.contains(s))
        .map(ToString::to_string)
        .collect();
    gauges.set(
        "shoal_overlay_routes_missing",
        "Leases of other nodes without an overlay route here.",
        missing.len() as f64,
    );
    if !missing.is_empty() {
        return (
            false,
            format!("lease {own}; no route yet to {}", missing.join(", ")),
        );
    }
    (
        true,
        format!("lease {own}; routes to all {} other lease(s)", remote.len()),
    )
}

/// Destinations of this network namespace's IPv4 routes, whichever backend installed them.
fn kernel_route_destinations() -> std::io::Result<Vec<Ipv4Network>> {
    let table = std::fs::read_to_string("/proc/net/route")?;
    Ok(parse_route_table(&table))
}

/// `/proc/net/route`: destination and mask are hex in host (little-endian) byte order.
fn parse_route_table(table: &str) -> Vec<Ipv4Network> {
    let hex = |field: &str| {
        u32::from_str_radix(field, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.swap_bytes()))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let destination = hex(fields.get(1)?)?;
            let mask = hex(fields.get(7)?)?;
            Ipv4Network::with_netmask(destination, mask).ok()
        })
        .collect()
}

/// `10.244.41.0-24` (flannel's lease key) as a network.
fn parse_lease_subnet(name: &str) -> Option<Ipv4Network> {
    let (ip, len) = name.split_once('-')?;
    Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()
}

async fn fleet_state(store: &StoreClient, probe: &FleetProbe, gauges: &Gauges) -> (bool, String) {
    let prefix = with_slash(&probe.prefix);
    let keys_only = || Some(GetOptions::new().with_prefix().with_keys_only());
    let mut client = store.client();
    let jobs = client.get(format!("{prefix}job/"), keys_only());
    if let Ok(jobs) = store.call("listing jobs", jobs).await {
        let units = jobs
            .kvs()
            .iter()
            .filter(|kv| kv.key().ends_with(b"/object"))
            .count();
        gauges.set(
            "shoal_fleet_units",
            "Units submitted to the cluster.",
            units as f64,
        );
    }
    let machines = client.get(format!("{prefix}machines/"), keys_only());
    if let Ok(machines) = store.call("listing machines", machines).await {
        gauges.set(
            "shoal_fleet_machines",
            "Machines registered with fleet.",
            machines.kvs().len() as f64,
        );
    }
    let key = format!("{prefix}machines/{}/object", probe.machine_id);
    let reading = format!("reading machine {}", probe.machine_id);
    match store.call(&reading, client.get(key, None)).await {
        Ok(reply) if reply.kvs().is_empty() => (
            false,
            format!("machine {} not registered", probe.machine_id),
        ),
        Ok(_) => (true, format!("machine {} registered", probe.machine_id)),
        Err(err) => (false, Chain(&err).to_string()),
    }
}

fn with_slash(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_route_table_parses() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0000F40A\t0000F40A\t0007\t0\t0\t0\t00FFFFFF\t1450\t0\t0\n\
                     eth0\t0000630A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            parse_route_table(table),
            [
                "10.244.0.0/24".parse().expect("net"),
                "10.99.0.0/24".parse().expect("net")
            ]
        );
    }

    #[test]
    fn lease_keys_name_their_subnet() {
        assert_eq!(
            parse_lease_subnet("10.244.41.0-24"),
            "10.244.41.0/24".parse().ok()
        );
        assert_eq!(parse_lease_subnet("10.244.41.0"), None);
        assert_eq!(parse_lease_subnet("x-24"), None);
    }
}
