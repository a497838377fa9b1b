//! Taking this node's lease the way flannel's local manager does: reuse the lease (or
//! reservation) holding our public IP, else the previous subnet, else a random free one;
//! create-if-absent, retried when another node wins the race; renewed before it expires.
use std::{net::Ipv4Addr, time::Duration};

use ipnetwork::Ipv4Network;

use super::{
    config::NetworkConfig,
    lease::{Lease, LeaseAttrs, pick_free_subnet, within},
    registry::{Registry, RegistryError},
    sync::Snapshot,
};
use shoal_store_client::Chain;

/// flannel's lease lifetime.
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often a create races before giving up (flannel's raceRetries).
const RACE_RETRIES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("no free subnet left between {min} and {max}")]
    OutOfSubnets { min: Ipv4Addr, max: Ipv4Addr },
    #[error("lost the race for a free subnet {RACE_RETRIES} times in a row")]
    Races,
    #[error("lease on {0} was lost (the store no longer knows its etcd lease)")]
    Lost(Ipv4Network),
}

/// The lease this node holds.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnLease {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    /// 0 for a reservation (no expiry, nothing to renew).
    pub etcd_lease: i64,
    pub ttl: Duration,
    /// The leases listed to take this one: the lease sync can start from them.
    pub snapshot: Snapshot,
    /// How many create-if-absent transactions another node won before this one held a lease.
    pub races: usize,
}

/// Acquires a lease for `attrs.public_ip`.
///
/// The etcd lease the key will live under does not depend on the list, so it is granted while
/// the list is read (one round trip less per node), and kept across lost races: a node that
/// loses one lists again and tries another subnet under the same etcd lease. It is revoked
/// when the node ends up needing none (a reservation) or fails.
pub async fn acquire(
    registry: &mut Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Network>,
    ttl: Duration,
) -> Result<OwnLease, AcquireError> {
    let mut granter = registry.clone();
    let (mut listed, granted) = tokio::join!(registry.list(), granter.grant(ttl));
    let etcd_lease = granted?;
    for races in 0..RACE_RETRIES {
        let outcome = match listed {
            Ok(snapshot) => {
                let held = Held { etcd_lease, ttl };
                try_acquire(registry, config, attrs, previous, held, snapshot).await
            }
            Err(err) => Err(err.into()),
        };
        match outcome {
            Ok(Some(lease)) => {
                if lease.etcd_lease != etcd_lease {
                    registry.revoke(etcd_lease).await;
                }
                return Ok(OwnLease { races, ..lease });
            }
            Ok(None) => listed = registry.list().await,
            Err(err) => {
                registry.revoke(etcd_lease).await;
                return Err(err);
            }
        }
    }
    registry.revoke(etcd_lease).await;
    Err(AcquireError::Races)
}

/// The etcd lease granted for the key, and its lifetime.
#[derive(Clone, Copy)]
struct Held {
    etcd_lease: i64,
    ttl: Duration,
}

/// One try from one list: `None` when another node created the chosen subnet first.
async fn try_acquire(
    registry: &mut Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Network>,
    Held { etcd_lease, ttl }: Held,
    (leases, revision): (Vec<Lease>, i64),
) -> Result<Option<OwnLease>, AcquireError> {
    let mine = leases
        .iter()
        .find(|lease| lease.attrs.public_ip == attrs.public_ip)
        .map(|lease| (lease.subnet, lease.is_reservation()));
    if let Some((subnet, reservation)) = mine {
        if config.is_compatible(subnet) {
            tracing::info!(%subnet, reservation, "reusing the lease of this node's public IP");
            // A reservation stays one: no etcd lease, nothing to renew.
            let etcd_lease = if reservation { 0 } else { etcd_lease };
            registry.update(subnet, attrs, etcd_lease).await?;
            return Ok(Some(OwnLease {
                subnet,
                attrs: attrs.clone(),
                etcd_lease,
                ttl,
                snapshot: Snapshot { leases, revision },
                races: 0,
            }));
        }
        tracing::info!(%subnet, "this node's lease does not fit the network config; deleting it");
        registry.delete(subnet).await?;
    }
    // A key outside the network is no node's lease (a `0.0.0.0/0` one would leave no subnet
    // free).
    let taken: Vec<Ipv4Network> = leases
        .iter()
        .map(|lease| lease.subnet)
        .filter(|subnet| within(config.network, *subnet))
        .collect();
    let reusable =
        previous.filter(|subnet| config.is_compatible(*subnet) && !taken.contains(subnet));
    let subnet = match reusable {
        Some(subnet) => {
            tracing::info!(%subnet, "reusing the previous subnet");
            subnet
        }
        None => pick_free_subnet(config, &taken).ok_or(AcquireError::OutOfSubnets {
            min: config.subnet_min,
            max: config.subnet_max,
        })?,
    };
    if registry.create(subnet, attrs, etcd_lease).await? {
        tracing::info!(%subnet, "acquired a new lease");
        Ok(Some(OwnLease {
            subnet,
            attrs: attrs.clone(),
            etcd_lease,
            ttl,
            snapshot: Snapshot { leases, revision },
            races: 0,
        }))
    } else {
        tracing::debug!(%subnet, "another node took the subnet first; retrying");
        Ok(None)
    }
}

/// Keeps the lease alive: renews it `renew_margin` before it would expire, retrying failures
/// every minute (or sooner if the lease would expire first), through another store member if
/// the one in use is gone. Returns only when the lease is gone.
pub async fn keep_renewed(
    mut registry: Registry,
    lease: OwnLease,
    renew_margin: Duration,
) -> AcquireError {
    if lease.etcd_lease == 0 {
        // A reservation never expires.
        return std::future::pending().await;
    }
    let mut remaining = lease.ttl;
    loop {
        tokio::time::sleep(
            remaining
                .saturating_sub(renew_margin)
                .max(Duration::from_secs(1)),
        )
        .await;
        match registry.keep_alive(lease.etcd_lease).await {
            Ok(0) => return AcquireError::Lost(lease.subnet),
            Ok(ttl) => {
                remaining = Duration::from_secs(ttl.unsigned_abs());
                tracing::info!(subnet = %lease.subnet, "lease renewed for {remaining:?}");
            }
            Err(err) => {
                tracing::error!(subnet = %lease.subnet, "renewing the lease: {}; retrying", Chain(&err));
                registry.fail_over().await;
                remaining = renew_margin
                    + Duration::from_secs(60).min(renew_margin / 2 + Duration::from_secs(1));
            }
        }
    }
}
