//! The member's space: the quota check in front of writes that raises the NOSPACE alarm
//! (etcd's `quotaAlarmer`), and defragmenting.
use std::time::Duration;

use crate::error::{EtcdError, StoreError};
use crate::proto::etcdserverpb::AlarmType;
use crate::storage::alarms::AlarmCommand;
use crate::types::Command;

use super::{Member, REQUEST_TIMEOUT};

impl Member {
    /// Refuses a write of `cost` that does not fit the quota, raising this member's NOSPACE
    /// alarm through Raft first, as etcd does before it answers "database space exceeded".
    pub async fn check_quota(&self, cost: u64) -> Result<(), EtcdError> {
        if self.config.quota.available(&self.shared.db_size, cost) {
            return Ok(());
        }
        tracing::warn!(
            size = self.shared.db_size.size(),
            quota = self.config.quota.bytes(),
            cost,
            "a write exceeds the backend quota; raising the NOSPACE alarm"
        );
        let raise = Command::Alarm(AlarmCommand::Activate {
            member: self.id,
            alarm: AlarmType::Nospace as i32,
        });
        if let Err(e) = self.propose(raise).await {
            tracing::warn!("raising the NOSPACE alarm: {e}");
        }
        Err(EtcdError::NoSpace)
    }

    /// etcd's defragment of this member: the history gives back the memory compaction freed,
    /// the data file a snapshot of the state as it is now and then its free pages, and the size
    /// counts only what is in use.
    pub async fn defragment(&self) -> Result<(), StoreError> {
        self.shared.defragment();
        self.snapshot_applied_state().await?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.compact())
            .await
            .map_err(|e| StoreError::Engine(format!("defragmenting: {e}")))?
    }

    /// Stores a Raft snapshot of the state as applied now: the data file holds the last
    /// snapshot, and openraft takes one only as entries apply, so when one was still being
    /// built as the last entries (a compaction among them) applied, the file keeps the state
    /// from before the compaction until more writes come, and compacting the file gives
    /// nothing back.
    async fn snapshot_applied_state(&self) -> Result<(), StoreError> {
        let mut metrics = self.raft.metrics();
        let Some(applied) = metrics.borrow().last_applied.map(|l| l.index) else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            if metrics
                .borrow()
                .snapshot
                .is_some_and(|s| s.index >= applied)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Engine(format!(
                    "defragmenting: no snapshot at index {applied} within {REQUEST_TIMEOUT:?}"
                )));
            }
            // Ignored while another snapshot is being built: asked again until one is stored.
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| StoreError::Engine(format!("defragmenting: {e}")))?;
            let _ = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
        }
    }
}
