//! A round's fault, by the name the command line uses, injected into the cluster through the
//! harness's nemesis ([`shoal_harness::nemesis`]) while the traffic runs, and healed before the
//! round's checks. `a+b` injects two faults at once (healed in reverse).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use shoal_harness::StoreCluster;
use shoal_harness::nemesis::{self, Fault, Target, points};

use crate::traffic::Clock;

/// Every fault name, with the nemesis fault it stands for (`None`: no fault).
pub const NAMES: [&str; 24] = [
    "none",
    "kill-leader",
    "kill-follower",
    "kill-all",
    "stop-leader",
    "stop-follower",
    "partition-leader",
    "partition-follower",
    "drop-leader-to-follower",
    "drop-follower-to-leader",
    "wipe-follower",
    "blackhole-follower",
    "membership-change",
    "failpoint-append-leader",
    "failpoint-append-follower",
    "failpoint-fsync-slow-leader",
    "failpoint-fsync-follower",
    "failpoint-snapshot-build",
    "failpoint-snapshot-install",
    "failpoint-purge",
    "power-loss-at-append-leader",
    "power-loss-leader",
    "power-loss-follower",
    "power-loss-all",
];

/// The faults `cargo xtask robustness` cycles through by default, one round each: every single
/// fault and two combined.
pub const DEFAULT: [&str; 23] = [
    "none",
    "kill-leader",
    "kill-follower",
    "stop-leader",
    "stop-follower",
    "partition-leader",
    "partition-follower",
    "drop-leader-to-follower",
    "drop-follower-to-leader",
    "wipe-follower",
    "blackhole-follower",
    "membership-change",
    "stop-follower+kill-leader",
    "partition-follower+kill-leader",
    "failpoint-append-leader",
    "failpoint-fsync-slow-leader",
    "failpoint-fsync-follower",
    "failpoint-snapshot-build",
    "failpoint-snapshot-install",
    "failpoint-purge",
    "power-loss-at-append-leader",
    "power-loss-leader",
    "power-loss-all",
];

/// The nemesis fault `name` stands for (`Ok(None)` for `none`). A blackhole's entry count is
/// filled in from the cluster when it is injected.
pub fn parse(name: &str) -> Result<Option<Fault>, String> {
    if let Some((a, b)) = name.split_once('+') {
        let (a, b) = (parse(a)?, parse(b)?);
        return match (a, b) {
            (Some(a), Some(b)) => Ok(Some(Fault::Both(Box::new(a), Box::new(b)))),
            (a, b) => Ok(a.or(b)),
        };
    }
    let failpoint = |target, name: &str, action: &str| Fault::Failpoint {
        target,
        name: name.to_string(),
        action: action.to_string(),
    };
    let fault = match name {
        "none" => return Ok(None),
        "kill-leader" => Fault::Kill(Target::Leader),
        "kill-follower" => Fault::Kill(Target::Follower),
        "kill-all" => Fault::Kill(Target::All),
        "stop-leader" => Fault::Stop(Target::Leader),
        "stop-follower" => Fault::Stop(Target::Follower),
        "partition-leader" => Fault::Partition(Target::Leader),
        "partition-follower" => Fault::Partition(Target::Follower),
        "drop-leader-to-follower" => Fault::OneWayDrop {
            from: Target::Leader,
            to: Target::Follower,
        },
        "drop-follower-to-leader" => Fault::OneWayDrop {
            from: Target::Follower,
            to: Target::Leader,
        },
        "wipe-follower" => Fault::WipeAndRejoin(Target::Follower),
        "blackhole-follower" => Fault::BlackholeUntilSnapshot {
            target: Target::Follower,
            entries: 0,
        },
        "membership-change" => Fault::MembershipChange,
        "failpoint-append-leader" => failpoint(Target::Leader, points::LOG_APPEND, "panic"),
        "failpoint-append-follower" => failpoint(Target::Follower, points::LOG_APPEND, "panic"),
        "failpoint-fsync-slow-leader" => failpoint(Target::Leader, points::LOG_FSYNC, "sleep(300)"),
        "failpoint-fsync-follower" => failpoint(Target::Follower, points::LOG_FSYNC, "panic"),
        "failpoint-snapshot-build" => failpoint(Target::Leader, points::SNAPSHOT_BUILD, "panic"),
        "failpoint-snapshot-install" => {
            failpoint(Target::Follower, points::SNAPSHOT_INSTALL, "panic")
        }
        "failpoint-purge" => failpoint(Target::All, points::LOG_PURGE, "panic"),
        "power-loss-at-append-leader" => {
            failpoint(Target::Leader, points::LOG_POWER_LOSS, "return")
        }
        "power-loss-leader" => Fault::PowerLoss(Target::Leader),
        "power-loss-follower" => Fault::PowerLoss(Target::Follower),
        "power-loss-all" => Fault::PowerLoss(Target::All),
        other => {
            return Err(format!(
                "unknown fault {other:?} (known: {}; `a+b` for two at once)",
                NAMES.join(", ")
            ));
        }
    };
    Ok(Some(fault))
}

/// Whether `fault` cuts the network between members (the cluster must be isolated).
pub fn needs_isolation(fault: &Fault) -> bool {
    match fault {
        Fault::Partition(_) | Fault::OneWayDrop { .. } | Fault::BlackholeUntilSnapshot { .. } => {
            true
        }
        Fault::Both(a, b) => needs_isolation(a) || needs_isolation(b),
        _ => false,
    }
}

/// Whether `fault` needs shoal kv built with failpoints (etcd 3.4's Debian build has none).
pub fn needs_failpoints(fault: &Fault) -> bool {
    match fault {
        Fault::Failpoint { .. } | Fault::PowerLoss(_) => true,
        Fault::Both(a, b) => needs_failpoints(a) || needs_failpoints(b),
        _ => false,
    }
}

/// `fault` with what depends on the cluster filled in (a blackhole's entry count).
fn for_cluster(fault: Fault, cluster: &StoreCluster) -> Fault {
    match fault {
        Fault::BlackholeUntilSnapshot { target, .. } => Fault::BlackholeUntilSnapshot {
            target,
            entries: nemesis::snapshot_entries(cluster),
        },
        Fault::Both(a, b) => Fault::Both(
            Box::new(for_cluster(*a, cluster)),
            Box::new(for_cluster(*b, cluster)),
        ),
        other => other,
    }
}

/// What a round's fault did.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    /// The name it was asked for by.
    pub name: String,
    /// What the nemesis says it hit, e.g. `kill -9 leader (bravo)`.
    pub description: String,
    /// When it began and when it was healed (ns on the history's clock).
    pub at: u64,
    pub healed_at: u64,
    /// Injecting or healing failed (a store that does not come back fails its round).
    pub error: Option<String>,
}

/// The cluster under test, shared between the runner and the fault task.
pub type SharedCluster = Arc<Mutex<StoreCluster>>;

/// Injects the fault `name` stands for after `delay`, holds it for `hold`, and heals it (the
/// nemesis returns once every running member answers).
pub async fn inject(
    cluster: SharedCluster,
    name: String,
    delay: Duration,
    hold: Duration,
    clock: Clock,
) -> Injected {
    tokio::time::sleep(delay).await;
    let mut injected = Injected {
        name: name.clone(),
        description: "nothing injected".to_string(),
        at: clock.now(),
        healed_at: 0,
        error: None,
    };
    let fault = match parse(&name) {
        Ok(Some(fault)) => fault,
        Ok(None) => {
            injected.healed_at = clock.now();
            return injected;
        }
        Err(err) => {
            injected.error = Some(err);
            return injected;
        }
    };
    let started = blocking(&cluster, move |c| {
        let fault = for_cluster(fault, c);
        fault.inject(c)
    })
    .await;
    match started {
        Ok(active) => {
            injected.description = active.description().to_string();
            tokio::time::sleep(hold).await;
            let healed = blocking(&cluster, move |c| active.heal(c)).await;
            injected.error = healed.err().map(|err| err.to_string());
        }
        Err(err) => injected.error = Some(format!("injecting: {err}")),
    }
    injected.healed_at = clock.now();
    injected
}

/// Runs `f` on the cluster off the async runtime (the harness blocks while it waits).
pub async fn blocking<T: Send + 'static>(
    cluster: &SharedCluster,
    f: impl FnOnce(&mut StoreCluster) -> T + Send + 'static,
) -> T {
    let cluster = cluster.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut cluster)
    });
    match task.await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_and_combinations_join_two_faults() {
        for name in NAMES.iter().chain(&DEFAULT) {
            parse(name).unwrap_or_else(|err| panic!("{name}: {err}"));
        }
        let both = parse("stop-follower+kill-leader").expect("parses");
        assert!(matches!(both, Some(Fault::Both(..))));
        assert!(parse("kill-everything").is_err());
    }

    #[test]
    fn network_faults_need_isolation_and_power_loss_needs_failpoints() {
        let fault = |name| parse(name).expect("parses").expect("a fault");
        assert!(needs_isolation(&fault("partition-follower+kill-leader")));
        assert!(!needs_isolation(&fault("kill-leader")));
        assert!(needs_failpoints(&fault("power-loss-all")));
        assert!(!needs_failpoints(&fault("wipe-follower")));
    }
}
