//! A store lease kept alive in the background, for machine heartbeats and the engine's
//! leadership. The lease is reported lost when a keep-alive fails or the store answers that it
//! expired; whoever holds it then steps down or registers again.

use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use shoal_store_client::Chain;
use tokio::{sync::watch, task::JoinHandle};

use crate::store::{Store, StoreResult};

/// A granted lease and the task refreshing it, on one keep-alive stream for its lifetime (a
/// stream per refresh cost every machine a stream open each third of its TTL).
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
    let mut stream = None;
    loop {
        tokio::time::sleep(period).await;
        match keep_alive(&store, id, &mut stream).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::warn!(lease = id, "lease expired in the store");
                let _ = lost.send(true);
                return;
            }
            Err(err) => {
                stream = None;
                tracing::warn!(lease = id, "refreshing lease: {}", Chain(&err));
                if last_ok.elapsed() >= deadline {
                    let _ = lost.send(true);
                    return;
                }
            }
        }
    }
}

/// A lease's keep-alive stream, opened once and used for every refresh.
type KeepAliveStream = (LeaseKeeper, LeaseKeepAliveStream);

/// One keep-alive round trip on `stream` (opened first if there is none, again if the store
/// ended it); `Ok(false)` when the store says the lease is gone.
async fn keep_alive(
    store: &Store,
    id: i64,
    stream: &mut Option<KeepAliveStream>,
) -> StoreResult<bool> {
    for fresh in [stream.is_none(), true] {
        if fresh {
            let mut client = store.client();
            *stream = Some(
                store
                    .call("open keep-alive", client.lease_keep_alive(id))
                    .await?,
            );
        }
        let Some((keeper, responses)) = stream.as_mut() else {
            continue;
        };
        store.call("send keep-alive", keeper.keep_alive()).await?;
        match store.call("await keep-alive", responses.message()).await? {
            Some(response) => return Ok(response.ttl() > 0),
            // The stream ended without an answer: once more on a new one.
            None if !fresh => *stream = None,
            None => break,
        }
    }
    Ok(false)
}

/// Has `shutdown` been signalled? (Reads without holding the borrow across an await.)
pub fn stopped(shutdown: &tokio::sync::watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

/// Resolves once `shutdown` is signalled (or its sender is gone).
pub async fn until_stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
