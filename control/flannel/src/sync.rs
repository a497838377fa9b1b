//! Keeps a node in sync with every lease: list, then watch from the list's revision + 1 so no
//! update falls between the two (flannel issue #1145); on a watch error, a cancelled watch or a
//! compacted revision, list again and reconcile (a full resync). A failed watch or list fails
//! over to another store member first, in case the one in use is gone.
//!
//! A lease becomes a route, so the store must not be able to redirect the host's own traffic:
//! only leases inside the overlay network that overlap none of the underlay's connected
//! subnets are programmed ([`LeaseScope`]); any other is ignored with a warning.
use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ipnetwork::Ipv4Network;

use super::{
    backend::{Backend, BackendResult},
    lease::{Lease, overlaps, within},
    registry::{LeaseEvent, Registry, RegistryError},
};
use shoal_store_client::Chain;

/// Receives the peers' leases as they come and go. Implementations write `async fn`; the sync
/// is generic over its sink, so a call costs no boxed future (a node makes one per peer event).
pub trait PeerSink: Send {
    fn upsert(&mut self, lease: &Lease) -> impl Future<Output = BackendResult<()>> + Send;
    fn remove(&mut self, lease: &Lease) -> impl Future<Output = BackendResult<()>> + Send;
    /// After a full list: everything not in `keep` may be dropped.
    fn resynced(&mut self, keep: &[Ipv4Network]) -> impl Future<Output = BackendResult<()>> + Send;
}

impl PeerSink for Box<dyn Backend + '_> {
    async fn upsert(&mut self, lease: &Lease) -> BackendResult<()> {
        self.add_peer(lease).await
    }

    async fn remove(&mut self, lease: &Lease) -> BackendResult<()> {
        self.remove_peer(lease).await
    }

    async fn resynced(&mut self, keep: &[Ipv4Network]) -> BackendResult<()> {
        self.prune(keep).await
    }
}

/// Every lease at one store revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub leases: Vec<Lease>,
    pub revision: i64,
}

/// Why the watch loop stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("this node's lease on {0} was deleted or expired")]
    OwnLeaseRemoved(Ipv4Network),
}

/// Which peer subnets may become routes on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseScope {
    /// The overlay network (`Network` of the config): every lease lies inside it.
    pub network: Ipv4Network,
    /// The underlay's connected subnets: a lease covering one would take the host's own
    /// traffic (a `0.0.0.0/0` lease would replace the default route).
    pub underlay: Vec<Ipv4Network>,
}

impl LeaseScope {
    /// Why `subnet` must not be programmed, or `None` when it may.
    pub fn refusal(&self, subnet: Ipv4Network) -> Option<String> {
        if !within(self.network, subnet) {
            return Some(format!("outside the network {}", self.network));
        }
        self.underlay
            .iter()
            .find(|underlay| overlaps(**underlay, subnet))
            .map(|underlay| format!("overlapping the underlay subnet {underlay}"))
    }

    fn admits(&self, subnet: Ipv4Network) -> bool {
        match self.refusal(subnet) {
            None => true,
            Some(reason) => {
                tracing::warn!(%subnet, "ignoring a lease {reason}");
                false
            }
        }
    }
}

/// What lease watches delivered: responses that carried events, and their events. Shared by
/// any number of [`LeaseSync`]s (a benchmark's simulated nodes), so counted atomically.
#[derive(Debug, Default)]
pub struct WatchTally {
    responses: AtomicU64,
    events: AtomicU64,
}

impl WatchTally {
    /// Watch responses that carried at least one event.
    pub fn responses(&self) -> u64 {
        self.responses.load(Ordering::Relaxed)
    }

    /// Events those responses carried.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    fn record(&self, events: usize) {
        if events > 0 {
            self.responses.fetch_add(1, Ordering::Relaxed);
            self.events.fetch_add(events as u64, Ordering::Relaxed);
        }
    }
}

/// Follows every lease of the network, except this node's own.
#[derive(Debug)]
pub struct LeaseSync {
    registry: Registry,
    own: Ipv4Network,
    scope: LeaseScope,
    known: KnownLeases,
    tally: Option<Arc<WatchTally>>,
}

/// The peers' leases by subnet. Hashed with foldhash (seeded per map), not SipHash: a node
/// hashes every peer's subnet on each event and each list, and the keys are the store's lease
/// keys, not an attacker's choice of many. Each lease is boxed: the table grows by doubling as
/// peers arrive, and moving a 16-byte slot per peer costs a node far less than moving the
/// ~100-byte lease itself.
pub type KnownLeases = HashMap<Ipv4Network, Box<Lease>, foldhash::fast::RandomState>;

/// A list's leases by subnet, while it is compared with what the node knows.
type ListedLeases = HashMap<Ipv4Network, Lease, foldhash::fast::RandomState>;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl LeaseSync {
    pub fn new(registry: Registry, own: Ipv4Network, scope: LeaseScope) -> Self {
        Self {
            registry,
            own,
            scope,
            known: KnownLeases::default(),
            tally: None,
        }
    }

    /// Counts what this sync's watches deliver into `tally`.
    pub fn with_tally(mut self, tally: Arc<WatchTally>) -> Self {
        self.tally = Some(tally);
        self
    }

    /// The peers' leases known right now.
    pub fn known(&self) -> &KnownLeases {
        &self.known
    }

    /// Runs until this node's own lease disappears (or forever; cancel by dropping).
    pub async fn run<S: PeerSink>(&mut self, sink: &mut S) -> SyncError {
        self.run_from(None, sink).await
    }

    /// Like [`LeaseSync::run`], starting from a list already taken (the one the lease was
    /// acquired from) instead of listing again.
    pub async fn run_from<S: PeerSink>(
        &mut self,
        mut snapshot: Option<Snapshot>,
        sink: &mut S,
    ) -> SyncError {
        let mut backoff = Duration::from_millis(100);
        loop {
            let listed = match snapshot.take() {
                Some(snapshot) => Ok(self.apply_snapshot(snapshot, sink).await),
                None => self.resync(sink).await,
            };
            match listed {
                Ok(revision) => {
                    backoff = Duration::from_millis(100);
                    match self.follow(revision + 1, sink).await {
                        Ok(Some(end)) => return end,
                        Ok(None) => tracing::warn!("lease watch ended; resyncing"),
                        Err(err) => {
                            tracing::warn!("lease watch failed: {}; resyncing", Chain(&err));
                            self.registry.fail_over().await;
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(
                        "listing leases failed: {}; retrying in {backoff:?}",
                        Chain(&err)
                    );
                    self.registry.fail_over().await;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Lists every lease and brings the sink in line: adds new and changed ones, removes the
    /// ones that vanished. Returns the revision of the list.
    pub async fn resync<S: PeerSink>(&mut self, sink: &mut S) -> Result<i64, RegistryError> {
        let (leases, revision) = self.registry.list().await?;
        Ok(self
            .apply_snapshot(Snapshot { leases, revision }, sink)
            .await)
    }

    async fn apply_snapshot<S: PeerSink>(&mut self, snapshot: Snapshot, sink: &mut S) -> i64 {
        let Snapshot { leases, revision } = snapshot;
        let current: ListedLeases = leases
            .into_iter()
            .filter(|lease| lease.subnet != self.own && self.scope.admits(lease.subnet))
            .map(|lease| (lease.subnet, lease))
            .collect();
        let gone: Vec<Ipv4Network> = self
            .known
            .keys()
            .filter(|subnet| !current.contains_key(subnet))
            .copied()
            .collect();
        for subnet in gone {
            self.forget(sink, subnet).await;
        }
        // One allocation for a first list of every lease, instead of growing through it.
        self.known
            .reserve(current.len().saturating_sub(self.known.len()));
        for lease in current.into_values() {
            self.learn(sink, lease).await;
        }
        let keep: Vec<Ipv4Network> = self.known.keys().copied().collect();
        if let Err(err) = sink.resynced(&keep).await {
            tracing::warn!("pruning state of vanished leases: {}", Chain(&err));
        }
        tracing::debug!(revision, peers = keep.len(), "leases resynced");
        revision
    }

    /// Applies watch events from `start_revision` on. `Ok(None)` when the watch ends or is
    /// cancelled (compaction included) and a resync is needed.
    async fn follow<S: PeerSink>(
        &mut self,
        start_revision: i64,
        sink: &mut S,
    ) -> Result<Option<SyncError>, RegistryError> {
        let mut stream = self.registry.watch(start_revision).await?;
        loop {
            let Some(response) = stream.message().await? else {
                return Ok(None);
            };
            if response.canceled || response.compact_revision > 0 {
                tracing::warn!(
                    compact_revision = response.compact_revision,
                    reason = response.cancel_reason,
                    "lease watch cancelled"
                );
                return Ok(None);
            }
            if let Some(tally) = &self.tally {
                tally.record(response.events.len());
            }
            for event in Registry::decode_events(&response.events) {
                if let Some(end) = self.apply(sink, event).await {
                    return Ok(Some(end));
                }
            }
        }
    }

    async fn apply<S: PeerSink>(&mut self, sink: &mut S, event: LeaseEvent) -> Option<SyncError> {
        match event {
            LeaseEvent::Deleted(subnet) if subnet == self.own => {
                Some(SyncError::OwnLeaseRemoved(subnet))
            }
            LeaseEvent::Put(lease) if lease.subnet == self.own => None,
            LeaseEvent::Put(lease) if !self.scope.admits(lease.subnet) => None,
            LeaseEvent::Deleted(subnet) => {
                self.forget(sink, subnet).await;
                None
            }
            LeaseEvent::Put(lease) => {
                self.learn(sink, lease).await;
                None
            }
        }
    }

    async fn learn<S: PeerSink>(&mut self, sink: &mut S, lease: Lease) {
        // One hash per event: the entry is looked up once, checked, and filled in place.
        let entry = self.known.entry(lease.subnet);
        if let Entry::Occupied(known) = &entry
            && known.get().attrs == lease.attrs
        {
            return;
        }
        tracing::info!(subnet = %lease.subnet, public_ip = %lease.attrs.public_ip, "peer lease added");
        match sink.upsert(&lease).await {
            Ok(()) => {
                entry.insert_entry(Box::new(lease));
            }
            // Not remembered, so the next event or resync for this subnet tries again.
            Err(err) => {
                tracing::error!(subnet = %lease.subnet, "programming peer: {}", Chain(&err))
            }
        }
    }

    async fn forget<S: PeerSink>(&mut self, sink: &mut S, subnet: Ipv4Network) {
        let Some(lease) = self.known.remove(&subnet) else {
            return;
        };
        tracing::info!(%subnet, public_ip = %lease.attrs.public_ip, "peer lease removed");
        if let Err(err) = sink.remove(&lease).await {
            tracing::error!(%subnet, "removing peer: {}", Chain(&err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Network {
        text.parse().expect("CIDR")
    }

    #[test]
    fn the_tally_counts_only_responses_that_carry_events() {
        let tally = WatchTally::default();
        for events in [0, 3, 0, 1] {
            tally.record(events);
        }
        assert_eq!((tally.responses(), tally.events()), (2, 4));
    }

    #[test]
    fn only_leases_inside_the_network_and_off_the_underlay_are_admitted() {
        let scope = LeaseScope {
            network: net("10.0.0.0/8"),
            underlay: vec![net("10.99.0.0/24")],
        };
        assert_eq!(scope.refusal(net("10.5.3.0/24")), None);
        for bogus in ["0.0.0.0/0", "10.0.0.0/7", "192.168.1.0/24", "11.0.0.0/24"] {
            let reason = scope.refusal(net(bogus)).expect(bogus);
            assert!(
                reason.contains("outside the network 10.0.0.0/8"),
                "{reason}"
            );
        }
        for bogus in ["10.99.0.0/24", "10.99.0.128/25", "10.96.0.0/12"] {
            let reason = scope.refusal(net(bogus)).expect(bogus);
            assert!(reason.contains("underlay subnet 10.99.0.0/24"), "{reason}");
        }
    }
}
