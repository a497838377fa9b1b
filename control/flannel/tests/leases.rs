//! Lease semantics against a real etcd 3.4 on loopback: flannel's key layout and JSON, the
//! 24 h etcd lease, create-if-absent races, reservations, restarts, and a watch that loses no
//! update.
mod common;

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{FlannelKeys, PREFIX};
use ipnetwork::Ipv4Network;
use shoal_flannel::{
    acquire::{self, AcquireError, LEASE_TTL},
    backend::BackendResult,
    config::NetworkConfig,
    lease::{Lease, LeaseAttrs},
    registry::{Registry, StoreOptions},
    sync::{LeaseScope, LeaseSync, PeerSink, WatchTally},
};
use shoal_harness::{StoreCluster, StoreKind};

fn attrs(public_ip: Ipv4Addr) -> LeaseAttrs {
    LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: "host-gw".into(),
        backend_data: None,
        backend_v6_data: None,
    }
}

/// Node `10.99.0.<host>` takes its lease as `shoal flannel` starts: no previous subnet, the
/// 24 h etcd lease.
async fn acquire_as(
    registry: &mut Registry,
    config: &NetworkConfig,
    host: u8,
) -> Result<acquire::OwnLease, AcquireError> {
    acquire::acquire(
        registry,
        config,
        &attrs(Ipv4Addr::new(10, 99, 0, host)),
        None,
        LEASE_TTL,
    )
    .await
}

async fn registry(etcd: &StoreCluster) -> Registry {
    Registry::connect(&StoreOptions {
        endpoints: vec![etcd.endpoint()],
        prefix: PREFIX.into(),
        ..StoreOptions::default()
    })
    .await
    .expect("connecting to etcd")
}

async fn leases_are_written_as_flannel_writes_them(kind: StoreKind) {
    let etcd = common::store(kind).start();
    let mut registry = registry(&etcd).await;
    let config =
        NetworkConfig::parse(r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}"#)
            .expect("valid");
    let own = acquire_as(&mut registry, &config, 1)
        .await
        .expect("acquired");
    let leases = etcd.leases();
    assert_eq!(leases.len(), 1);
    let (key, value) = &leases[0];
    assert_eq!(
        key,
        &format!("{PREFIX}/subnets/{}-24", own.subnet.network())
    );
    assert_eq!(
        value,
        r#"{"PublicIP":"10.99.0.1","PublicIPv6":null,"BackendType":"host-gw"}"#
    );
    let ttl = etcd
        .ctl(&["lease", "timetolive", &format!("{:x}", own.etcd_lease)])
        .expect("timetolive");
    let granted: u64 = ttl
        .split("granted with TTL(")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("unexpected etcdctl output {ttl:?}"));
    assert_eq!(granted, 24 * 3600);
    assert!(config.is_compatible(own.subnet));
    assert_ne!(
        own.subnet.network(),
        Ipv4Addr::new(10, 5, 0, 0),
        "the first subnet is skipped"
    );
}

async fn restarts_keep_the_subnet_and_reservations_are_never_taken(kind: StoreKind) {
    let etcd = common::store(kind).start();
    let mut registry = registry(&etcd).await;
    // Four subnets: 10.5.0.4/30 .. 10.5.0.12/30 minus the first; .8 is reserved (no lease).
    let config =
        NetworkConfig::parse(r#"{"Network": "10.5.0.0/28", "SubnetLen": 30}"#).expect("valid");
    etcd.put(
        &format!("{PREFIX}/subnets/10.5.0.8-30"),
        r#"{"PublicIP":"10.99.0.200","BackendType":"host-gw"}"#,
    );
    let first = acquire_as(&mut registry, &config, 1)
        .await
        .expect("first node");
    let second = acquire_as(&mut registry, &config, 2)
        .await
        .expect("second node");
    let reserved: Ipv4Network = "10.5.0.8/30".parse().expect("cidr");
    assert_ne!(first.subnet, reserved);
    assert_ne!(second.subnet, reserved);
    assert_ne!(first.subnet, second.subnet);
    let third = acquire_as(&mut registry, &config, 3).await;
    assert!(
        matches!(third, Err(AcquireError::OutOfSubnets { .. })),
        "{third:?}"
    );
    // A restart (same public IP) gets the same subnet back.
    let again = acquire_as(&mut registry, &config, 1)
        .await
        .expect("restarted node");
    assert_eq!(again.subnet, first.subnet);
    // The reservation's owner gets its reservation, still without an etcd lease.
    let owner = acquire_as(&mut registry, &config, 200)
        .await
        .expect("reservation owner");
    assert_eq!(owner.subnet, reserved);
    assert_eq!(owner.etcd_lease, 0);
    // A node whose lease expired comes back on its previous subnet (from subnet.env).
    registry.delete(second.subnet).await.expect("deleted");
    let back = acquire::acquire(
        &mut registry,
        &config,
        &attrs(Ipv4Addr::new(10, 99, 0, 9)),
        Some(second.subnet),
        LEASE_TTL,
    )
    .await
    .expect("previous subnet");
    assert_eq!(back.subnet, second.subnet);
}

async fn concurrent_nodes_never_share_a_subnet(kind: StoreKind) {
    let etcd = common::store(kind).start();
    let config =
        NetworkConfig::parse(r#"{"Network": "10.5.0.0/24", "SubnetLen": 28}"#).expect("valid");
    let mut tasks = Vec::new();
    for node in 1..=15u8 {
        let mut registry = registry(&etcd).await;
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            acquire_as(&mut registry, &config, node).await
        }));
    }
    let mut subnets = HashSet::new();
    for task in tasks {
        let lease = task.await.expect("task").expect("every node gets a subnet");
        assert!(
            subnets.insert(lease.subnet),
            "{} handed out twice",
            lease.subnet
        );
    }
    assert_eq!(subnets.len(), 15);
    assert_eq!(etcd.leases().len(), 15);
    // 15 nodes for 15 subnets race often; each keeps the one etcd lease it granted across its
    // lost races, so exactly one per key is left.
    assert_eq!(etcd_leases(&etcd), 15);
}

/// How many etcd leases the store holds.
fn etcd_leases(etcd: &StoreCluster) -> usize {
    let listed = etcd.ctl(&["lease", "list"]).expect("etcdctl lease list");
    listed
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("unexpected etcdctl output {listed:?}"))
}

async fn an_etcd_lease_granted_but_not_needed_is_revoked(kind: StoreKind) {
    let etcd = common::store(kind).start();
    let mut registry = registry(&etcd).await;
    // Three subnets (10.5.0.4/30 .. 10.5.0.12/30), each reserved (no etcd lease).
    let config =
        NetworkConfig::parse(r#"{"Network": "10.5.0.0/28", "SubnetLen": 30}"#).expect("valid");
    for (slot, owner) in [(4, 200), (8, 201), (12, 202)] {
        etcd.put(
            &format!("{PREFIX}/subnets/10.5.0.{slot}-30"),
            &format!(r#"{{"PublicIP":"10.99.0.{owner}","BackendType":"host-gw"}}"#),
        );
    }
    let owner = acquire_as(&mut registry, &config, 200)
        .await
        .expect("reservation owner");
    assert_eq!(owner.etcd_lease, 0);
    let refused = acquire_as(&mut registry, &config, 1).await;
    assert!(
        matches!(refused, Err(AcquireError::OutOfSubnets { .. })),
        "{refused:?}"
    );
    assert_eq!(etcd_leases(&etcd), 0);
}

/// Records what the watch delivers, shared with the test.
#[derive(Default, Clone)]
struct Table {
    peers: Arc<Mutex<HashMap<Ipv4Network, Lease>>>,
}

impl Table {
    fn subnets(&self) -> HashSet<Ipv4Network> {
        self.peers
            .lock()
            .expect("table lock")
            .keys()
            .copied()
            .collect()
    }
}

impl PeerSink for Table {
    async fn upsert(&mut self, lease: &Lease) -> BackendResult<()> {
        self.peers
            .lock()
            .expect("table lock")
            .insert(lease.subnet, lease.clone());
        Ok(())
    }

    async fn remove(&mut self, lease: &Lease) -> BackendResult<()> {
        self.peers.lock().expect("table lock").remove(&lease.subnet);
        Ok(())
    }

    async fn resynced(&mut self, keep: &[Ipv4Network]) -> BackendResult<()> {
        self.peers
            .lock()
            .expect("table lock")
            .retain(|subnet, _| keep.contains(subnet));
        Ok(())
    }
}

async fn the_watch_loses_no_update_between_list_and_watch(kind: StoreKind) {
    let etcd = common::store(kind).start();
    let config = NetworkConfig::parse(r#"{"Network": "10.5.0.0/16"}"#).expect("valid");
    let mut writer = registry(&etcd).await;
    let own = acquire::acquire(
        &mut writer,
        &config,
        &attrs(Ipv4Addr::new(10, 99, 1, 1)),
        None,
        LEASE_TTL,
    )
    .await
    .expect("own lease");
    let table = Table::default();
    let mut sink = table.clone();
    let scope = LeaseScope {
        network: config.network,
        underlay: Vec::new(),
    };
    let tally = Arc::new(WatchTally::default());
    let mut sync =
        LeaseSync::new(registry(&etcd).await, own.subnet, scope).with_tally(tally.clone());
    let watcher = tokio::spawn(async move { sync.run(&mut sink).await });
    // Writes racing with the watcher's first list and the start of its watch.
    let mut expected = HashSet::new();
    for node in 2..=60u8 {
        let lease = acquire::acquire(
            &mut writer,
            &config,
            &attrs(Ipv4Addr::new(10, 99, 1, node)),
            None,
            LEASE_TTL,
        )
        .await
        .expect("peer lease");
        expected.insert(lease.subnet);
    }
    let removed: Vec<Ipv4Network> = expected.iter().take(5).copied().collect();
    for subnet in &removed {
        writer.delete(*subnet).await.expect("deleted");
        expected.remove(subnet);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while table.subnets() != expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        table.subnets(),
        expected,
        "the watcher's view differs from the store"
    );
    // Our own lease going away ends the sync with a clear reason.
    writer.delete(own.subnet).await.expect("deleted own lease");
    let end = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("watcher stops")
        .expect("watcher task");
    assert!(end.to_string().contains("was deleted or expired"), "{end}");
    // The deletions came after the watcher's list, so through its watch, and the tally saw
    // them: at least one event per response that carried any.
    assert!(tally.events() > removed.len() as u64, "{tally:?}");
    assert!(
        (1..=tally.events()).contains(&tally.responses()),
        "{tally:?}"
    );
}

/// Every test above, once against etcd 3.4 and once against shoal kv.
macro_rules! per_store {
    ($($name:ident),* $(,)?) => {
        mod etcd {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::StoreKind::Etcd).await
            })*
        }
        mod shoal_kv {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::StoreKind::ShoalKv).await
            })*
        }
    };
}

per_store!(
    leases_are_written_as_flannel_writes_them,
    restarts_keep_the_subnet_and_reservations_are_never_taken,
    concurrent_nodes_never_share_a_subnet,
    an_etcd_lease_granted_but_not_needed_is_revoked,
    the_watch_loses_no_update_between_list_and_watch,
);
