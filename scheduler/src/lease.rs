//! A store lease kept alive in the background, for machine heartbeats and the engine's
//! leadership. The lease is reported lost when a keep-alive fails or the store answers that it
//! expired; whoever holds it then steps down or registers again.

use std::time::Duration;

use shoal_store_client::Chain;
use tokio::{sync::watch, task::JoinHandle};

use crate::store::{Store, StoreResult};

/// A granted lease and the task refreshing it.
pub struct KeptLease {
    id: i64,
    lost: watch::Receiver<bool>,
    refresher: JoinHandle<()>,
    store: Store,
}

impl KeptLease {
    /// Grants a lease of `ttl` and refreshes it every third of it.
    pub async fn grant(store: &Store, ttl: Duration) -> StoreResult<Self> {
        let mut client = store.client();
        let seconds = ttl.as_secs().max(1) as i64;
        let granted = store
            .call("grant lease", client.lease_grant(seconds, None))
            .await?;
        let id = granted.id();
        let (lost_tx, lost) = watch::channel(false);
        let refresher = tokio::spawn(refresh(store.clone(), id, ttl, lost_tx));
        Ok(Self {
            id,
            lost,
            refresher,
            store: store.clone(),
        })
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease is lost.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Gives the lease back: its keys disappear at once.
    pub async fn revoke(self) {
        self.refresher.abort();
        let mut client = self.store.client();
        if let Err(err) = self
            .store
            .call("revoke lease", client.lease_revoke(self.id))
            .await
        {
            tracing::debug!(lease = self.id, "revoking lease: {}", Chain(&err));
        }
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

async fn refresh(store: Store, id: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let period = (ttl / 3).max(Duration::from_millis(200));
    let deadline = ttl;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(period).await;
        match keep_alive_once(&store, id).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::warn!(lease = id, "lease expired in the store");
                let _ = lost.send(true);
                return;
            }
            Err(err) => {
                tracing::warn!(lease = id, "refreshing lease: {}", Chain(&err));
                if last_ok.elapsed() >= deadline {
                    let _ = lost.send(true);
                    return;
                }
            }
        }
    }
}

/// One keep-alive round trip; `Ok(false)` when the store says the lease is gone.
async fn keep_alive_once(store: &Store, id: i64) -> StoreResult<bool> {
    let mut client = store.client();
    let (mut keeper, mut responses) = store
        .call("open keep-alive", client.lease_keep_alive(id))
        .await?;
    store.call("send keep-alive", keeper.keep_alive()).await?;
    let response = store.call("await keep-alive", responses.message()).await?;
    Ok(response.is_some_and(|r| r.ttl() > 0))
}

/// Has `shutdown` been signalled? (Reads without holding the borrow across an await.)
pub fn stopped(shutdown: &tokio::sync::watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

/// Resolves once `shutdown` is signalled (or its sender is gone).
pub async fn until_stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
