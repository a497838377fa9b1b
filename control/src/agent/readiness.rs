//! What "ready" means for a node, checked through the store every second:
//! - `store`: a linearizable read succeeds (the store has quorum);
//! - `overlay`: this node holds a lease, and every lease in the store is programmed (the
//!   overlay has written subnet.env, and the lease count is what every node sees);
//! - `fleet`: this machine is registered.
use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use etcd_client::{Client, GetOptions};
use tokio_util::sync::CancellationToken;

use super::health::Readiness;

/// Where to look for each component's proof of readiness.
#[derive(Debug, Clone)]
pub struct Probes {
    pub endpoints: Vec<String>,
    /// flannel's prefix and this node's public IP, if the overlay runs.
    pub overlay: Option<(String, Option<Ipv4Addr>, std::path::PathBuf)>,
    /// fleet's prefix and this machine's ID, if fleet runs.
    pub fleet: Option<(String, String)>,
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
    pub async fn run(self, readiness: Arc<Readiness>, shutdown: CancellationToken) {
        let mut client: Option<Client> = None;
        loop {
            if client.is_none() {
                client = Client::connect(&self.endpoints, None).await.ok();
            }
            if let Some(connected) = client.as_mut() {
                self.check(connected, &readiness).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn check(&self, client: &mut Client, readiness: &Readiness) {
        match client.get("/shoal/readiness-probe", None).await {
            Ok(reply) => {
                let revision = reply.header().map_or(0, |header| header.revision());
                readiness.set("store", true, format!("quorum, revision {revision}"));
            }
            Err(err) => readiness.set("store", false, format!("no quorum: {err}")),
        }
        if let Some((prefix, public_ip, subnet_file)) = &self.overlay {
            let (ready, detail) = overlay_state(client, prefix, *public_ip, subnet_file).await;
            readiness.set("overlay", ready, detail);
        }
        if let Some((prefix, machine_id)) = &self.fleet {
            let (ready, detail) = fleet_state(client, prefix, machine_id).await;
            readiness.set("fleet", ready, detail);
        }
    }
}

async fn overlay_state(
    client: &mut Client,
    prefix: &str,
    public_ip: Option<Ipv4Addr>,
    subnet_file: &std::path::Path,
) -> (bool, String) {
    let key = format!("{}/subnets/", prefix.trim_end_matches('/'));
    let leases = match client.get(key, Some(GetOptions::new().with_prefix())).await {
        Ok(reply) => reply,
        Err(err) => return (false, format!("listing leases: {err}")),
    };
    let count = leases.kvs().len();
    let own = public_ip.map(|ip| format!("\"PublicIP\":\"{ip}\""));
    let holds_lease = leases.kvs().iter().any(|kv| {
        let value = kv.value_str().unwrap_or_default().replace(' ', "");
        own.as_ref()
            .is_none_or(|needle| value.contains(needle.as_str()))
    });
    if !holds_lease {
        return (false, format!("no lease of this node among {count}"));
    }
    if !subnet_file.exists() {
        return (false, format!("{} not written yet", subnet_file.display()));
    }
    (true, format!("{count} lease(s) in the network"))
}

async fn fleet_state(client: &mut Client, prefix: &str, machine_id: &str) -> (bool, String) {
    let key = format!("{}machines/{machine_id}/object", with_slash(prefix));
    match client.get(key, None).await {
        Ok(reply) if reply.kvs().is_empty() => {
            (false, format!("machine {machine_id} not registered"))
        }
        Ok(_) => (true, format!("machine {machine_id} registered")),
        Err(err) => (false, format!("reading machine {machine_id}: {err}")),
    }
}

fn with_slash(prefix: &str) -> String {
    if prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}
