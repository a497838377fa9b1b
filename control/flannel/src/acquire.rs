//! Taking this node's lease the way flannel's local manager does: reuse the lease (or
//! reservation) holding our public IP, else the previous subnet, else a random free one;
//! create-if-absent, retried when another node wins the race; renewed before it expires.
use std::{net::Ipv4Addr, time::Duration};

use ipnetwork::Ipv4Network;

use super::{
    config::NetworkConfig,
    lease::{LeaseAttrs, pick_free_subnet, within},
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
}

/// Acquires a lease for `attrs.public_ip`.
pub async fn acquire(
    registry: &mut Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Network>,
    ttl: Duration,
) -> Result<OwnLease, AcquireError> {
    for _ in 0..RACE_RETRIES {
        if let Some(lease) = try_acquire(registry, config, attrs, previous, ttl).await? {
            return Ok(lease);
        }
    }
    Err(AcquireError::Races)
}

async fn try_acquire(
    registry: &mut Registry,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Network>,
    ttl: Duration,
) -> Result<Option<OwnLease>, AcquireError> {
    let (leases, revision) = registry.list().await?;
    if let Some(mine) = leases
        .iter()
        .find(|lease| lease.attrs.public_ip == attrs.public_ip)
    {
        if config.is_compatible(mine.subnet) {
            let lease_ttl = (!mine.is_reservation()).then_some(ttl);
            tracing::info!(subnet = %mine.subnet, reservation = mine.is_reservation(), "reusing the lease of this node's public IP");
            let etcd_lease = registry.update(mine.subnet, attrs, lease_ttl).await?;
            return Ok(Some(OwnLease {
                subnet: mine.subnet,
                attrs: attrs.clone(),
                etcd_lease,
                ttl,
                snapshot: Snapshot {
                    leases: leases.clone(),
                    revision,
                },
            }));
        }
        tracing::info!(subnet = %mine.subnet, "this node's lease does not fit the network config; deleting it");
        registry.delete(mine.subnet).await?;
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
    match registry.create(subnet, attrs, ttl).await? {
        Some(etcd_lease) => {
            tracing::info!(%subnet, "acquired a new lease");
            Ok(Some(OwnLease {
                subnet,
                attrs: attrs.clone(),
                etcd_lease,
                ttl,
                snapshot: Snapshot { leases, revision },
            }))
        }
        None => {
            tracing::debug!(%subnet, "another node took the subnet first; retrying");
            Ok(None)
        }
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
