//! The member's space: the quota check in front of writes that raises the NOSPACE alarm
//! (etcd's `quotaAlarmer`), and defragmenting.
use crate::error::{EtcdError, StoreError};
use crate::proto::etcdserverpb::AlarmType;
use crate::storage::alarms::AlarmCommand;
use crate::types::Command;

use super::Member;

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
    /// the data file its free pages, and the size counts only what is in use.
    pub async fn defragment(&self) -> Result<(), StoreError> {
        self.shared.defragment();
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.compact())
            .await
            .map_err(|e| StoreError::Engine(format!("defragmenting: {e}")))?
    }
}
