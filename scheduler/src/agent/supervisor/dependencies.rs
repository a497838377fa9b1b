//! systemd's `BindsTo=` and `PartOf=` between units of the built-in supervisor.
//!
//! A unit bound to X is stopped whenever X leaves the active state (it stops, fails or is
//! stopped); a unit that is part of X is stopped when X is stopped or unloaded. A unit
//! bound to X that is asked to start while X is not active waits, and starts once X is
//! active: systemd would pull X in; in fleet, `MachineOf=` places X here and X starts itself.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{mpsc, oneshot};

use super::command::Command;
use crate::{agent::runtime::UnitStatus, unit::UnitFile};

/// The dependency links of one loaded unit.
pub(super) struct Link {
    pub binds_to: Vec<String>,
    pub part_of: Vec<String>,
    pub status: Arc<Mutex<UnitStatus>>,
    pub commands: mpsc::UnboundedSender<Command>,
}

#[derive(Default)]
struct Entry {
    link: Option<Link>,
    waiting_to_start: bool,
}

/// The links of every loaded unit, shared by the supervisor and its actors.
#[derive(Default)]
pub(super) struct Dependencies {
    units: Mutex<HashMap<String, Entry>>,
}

/// The unit names listed by `key` in the `[Unit]` section (space-separated, repeatable).
pub(super) fn unit_list(unit: &UnitFile, key: &str) -> Vec<String> {
    unit.values("Unit", key)
        .iter()
        .flat_map(|assignment| assignment.value.split_whitespace())
        .map(str::to_string)
        .collect()
}

impl Dependencies {
    pub fn register(&self, name: &str, link: Link) {
        if let Ok(mut units) = self.units.lock() {
            units.entry(name.to_string()).or_default().link = Some(link);
        }
    }

    pub fn remove(&self, name: &str) {
        if let Ok(mut units) = self.units.lock() {
            units.remove(name);
        }
    }

    /// Whether `name` may start now; if not, it is marked to start once its bindings are active.
    pub fn may_start(&self, name: &str) -> bool {
        let Ok(mut units) = self.units.lock() else {
            return true;
        };
        let binds_to = match units.get(name).and_then(|entry| entry.link.as_ref()) {
            Some(link) => link.binds_to.clone(),
            None => return true,
        };
        let ready = binds_to.iter().all(|bound| is_active(&units, bound));
        if let Some(entry) = units.get_mut(name) {
            entry.waiting_to_start = !ready;
        }
        ready
    }

    /// A stop request for `name` (not a start) cancels a pending start.
    pub fn cancel_start(&self, name: &str) {
        if let Ok(mut units) = self.units.lock()
            && let Some(entry) = units.get_mut(name)
        {
            entry.waiting_to_start = false;
        }
    }

    /// `name` is being stopped or unloaded on request: stop the units that are part of it.
    pub fn stopping(&self, name: &str) {
        self.stop_dependents(name, |link| link.part_of.iter().any(|unit| unit == name));
    }

    /// `name` changed from `previous` to `current` active state.
    pub fn state_changed(&self, name: &str, previous: &str, current: &str) {
        let was_up = matches!(previous, "active" | "activating" | "reloading");
        if was_up && matches!(current, "inactive" | "failed" | "deactivating") {
            self.stop_dependents(name, |link| link.binds_to.iter().any(|unit| unit == name));
        }
        if current == "active" && previous != "active" {
            self.start_waiting();
        }
    }

    fn stop_dependents(&self, name: &str, depends: impl Fn(&Link) -> bool) {
        let Ok(mut units) = self.units.lock() else {
            return;
        };
        for (dependent, entry) in units.iter_mut() {
            let Some(link) = entry.link.as_ref().filter(|link| depends(link)) else {
                continue;
            };
            entry.waiting_to_start = false;
            let up = link.status.lock().is_ok_and(|status| {
                status.started || matches!(status.active_state.as_str(), "active" | "activating")
            });
            if !up {
                continue;
            }
            tracing::info!(unit = %dependent, "supervisor: stopping, {name} went down");
            if let Ok(mut status) = link.status.lock() {
                status.started = false;
            }
            let (done, _ignored) = oneshot::channel();
            let _ = link.commands.send(Command::Stop(done));
        }
    }

    fn start_waiting(&self) {
        let Ok(mut units) = self.units.lock() else {
            return;
        };
        let ready: Vec<String> = units
            .iter()
            .filter(|(_, entry)| entry.waiting_to_start)
            .filter_map(|(name, entry)| Some((name, entry.link.as_ref()?)))
            .filter(|(_, link)| link.binds_to.iter().all(|bound| is_active(&units, bound)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in ready {
            let Some(entry) = units.get_mut(&name) else {
                continue;
            };
            entry.waiting_to_start = false;
            if let Some(link) = &entry.link {
                tracing::info!(unit = %name, "supervisor: starting, its BindsTo= units are active");
                let _ = link.commands.send(Command::Start);
            }
        }
    }
}

fn is_active(units: &HashMap<String, Entry>, name: &str) -> bool {
    units
        .get(name)
        .and_then(|entry| entry.link.as_ref())
        .is_some_and(|link| {
            link.status
                .lock()
                .is_ok_and(|status| status.active_state == "active")
        })
}
