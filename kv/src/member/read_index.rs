//! Batched ReadIndex: a linearizable read waits until this member applied everything committed
//! when it arrived. Concurrent reads share one leadership confirmation round on the leader
//! (asked over the peer network from a follower).
use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::{Member, REQUEST_TIMEOUT};
use crate::error::EtcdError;
use crate::peer::ForwardRpc;

pub(super) type ReadWaiter = oneshot::Sender<Result<u64, EtcdError>>;

impl Member {
    pub(super) async fn read_index_here(&self) -> Result<u64, Option<u64>> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map(|l| l.index).unwrap_or_default()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => Err(f.leader_id),
            Err(e) => {
                tracing::debug!("confirming leadership: {e}");
                Err(None)
            }
        }
    }

    /// Waits until this member has applied everything committed when the read arrived.
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        let index = self.read_index().await?;
        self.wait_applied(index).await
    }

    /// The commit index a linearizable read must wait for. Concurrent callers share one
    /// confirmation round; a round only serves reads that arrived before it started.
    async fn read_index(&self) -> Result<u64, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.read_requests
            .send(tx)
            .await
            .map_err(|_| EtcdError::Internal("the read-index batcher stopped".to_string()))?;
        rx.await
            .map_err(|_| EtcdError::Internal("the read-index batcher stopped".to_string()))?
    }

    /// Serves read-index requests in rounds (see [`Member::read_index`]).
    pub(super) async fn run_read_batcher(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<ReadWaiter>,
    ) {
        while let Some(first) = requests.recv().await {
            let mut waiters = vec![first];
            while let Ok(more) = requests.try_recv() {
                waiters.push(more);
            }
            let result = self.read_index_round().await;
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
        }
    }

    async fn read_index_round(&self) -> Result<u64, EtcdError> {
        self.on_leader(
            || async { self.read_index_here().await.map(Ok) },
            |node| {
                self.pool
                    .call(node, ForwardRpc::ReadIndex, &(), REQUEST_TIMEOUT)
            },
        )
        .await
    }
}
