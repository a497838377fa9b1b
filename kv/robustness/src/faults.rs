//! The faults a round injects into a [`StoreCluster`] while the traffic runs, and how each is
//! healed before the round's checks.
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use shoal_harness::StoreCluster;

use crate::traffic::{Clock, connect};

/// A fault, by the name the command line uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// No fault: the baseline round.
    None,
    /// kill -9 of the leader, restarted after a pause.
    KillLeader,
    /// kill -9 of a follower, restarted after a pause.
    KillFollower,
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::None, Fault::KillLeader, Fault::KillFollower];

    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
        }
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault {name:?} (known: {})", names.join(", "))
            })
    }
}

/// What a round's fault did.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    pub fault: Fault,
    /// Which member, by name, if one.
    pub target: Option<String>,
    /// When it began and when it was healed (ns on the history's clock).
    pub at: u64,
    pub healed_at: u64,
    pub detail: String,
}

/// The cluster under test, shared between the runner and the fault task.
pub type SharedCluster = Arc<Mutex<StoreCluster>>;

/// Injects `fault` after `delay`, holds it for `hold`, heals it, and waits until every member
/// answers again.
pub async fn inject(
    cluster: SharedCluster,
    fault: Fault,
    delay: Duration,
    hold: Duration,
    clock: Clock,
) -> Injected {
    tokio::time::sleep(delay).await;
    let at = clock.now();
    let (target, detail) = match fault {
        Fault::None => (None, "nothing injected".to_string()),
        Fault::KillLeader | Fault::KillFollower => {
            let victim = pick_member(&cluster, fault == Fault::KillLeader).await;
            blocking(&cluster, move |c| c.kill(victim)).await;
            tokio::time::sleep(hold).await;
            let name = blocking(&cluster, move |c| {
                c.spawn(victim);
                c.wait_member_ready(victim);
                c.specs[victim].name.clone()
            })
            .await;
            (Some(name), format!("SIGKILL, restarted after {hold:?}"))
        }
    };
    blocking(&cluster, |c| c.wait_ready()).await;
    Injected {
        fault,
        target,
        at,
        healed_at: clock.now(),
        detail,
    }
}

/// Runs `f` on the cluster off the async runtime (the harness blocks while it waits).
pub async fn blocking<T: Send + 'static>(
    cluster: &SharedCluster,
    f: impl FnOnce(&mut StoreCluster) -> T + Send + 'static,
) -> T {
    let cluster = cluster.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut cluster)
    });
    match task.await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// The leader's index (as the members report it), or a follower's.
async fn pick_member(cluster: &SharedCluster, leader: bool) -> usize {
    let endpoints = blocking(cluster, |c| c.endpoints()).await;
    let leader_index = leader_index(&endpoints).await.unwrap_or(0);
    if leader {
        leader_index
    } else {
        (leader_index + 1) % endpoints.len()
    }
}

/// The index of the member every answering member names as leader.
pub async fn leader_index(endpoints: &[String]) -> Option<usize> {
    let mut ids = Vec::new();
    let mut leader = None;
    for endpoint in endpoints {
        let status = match connect(std::slice::from_ref(endpoint)).await {
            Ok(mut client) => client.status().await.ok(),
            Err(_) => None,
        };
        ids.push(status.as_ref().and_then(|s| s.header()).map(|h| h.member_id()));
        leader = leader.or(status.map(|s| s.leader()));
    }
    let leader = leader?;
    ids.iter().position(|id| *id == Some(leader))
}
