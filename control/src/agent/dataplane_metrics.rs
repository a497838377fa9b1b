//! `/metrics` samples read straight from the eBPF dataplane's pinned counters, so they are
//! right even while the overlay restarts.
use std::{os::unix::fs::MetadataExt, path::PathBuf};

use super::health::MetricsSource;

/// Reads the counters of every dataplane this network namespace pinned under `pin_root`
/// (instances are named `<iface>-ns<netns inode>`).
#[derive(Debug)]
pub struct DataplaneCounters {
    pub pin_root: PathBuf,
}

impl DataplaneCounters {
    fn own_instances(&self) -> Vec<(String, PathBuf)> {
        let Ok(namespace) = std::fs::metadata("/proc/thread-self/ns/net").map(|meta| meta.ino())
        else {
            return Vec::new();
        };
        let suffix = format!("-ns{namespace}");
        let Ok(entries) = std::fs::read_dir(&self.pin_root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.ends_with(&suffix).then(|| (name, entry.path()))
            })
            .collect()
    }
}

impl MetricsSource for DataplaneCounters {
    fn render(&self, out: &mut String) {
        let instances = self.own_instances();
        if instances.is_empty() {
            return;
        }
        out.push_str("# HELP shoal_dataplane_total eBPF dataplane counters (packets, bytes, drops and passes by reason), summed over CPUs.\n");
        out.push_str("# TYPE shoal_dataplane_total counter\n");
        for (instance, pin_dir) in instances {
            match shoal_dataplane::read_pinned_stats(&pin_dir) {
                Ok(stats) => {
                    for (counter, value) in stats.iter() {
                        let name = counter.name();
                        out.push_str(&format!(
                            "shoal_dataplane_total{{instance=\"{instance}\",counter=\"{name}\"}} {value}\n"
                        ));
                    }
                }
                Err(err) => {
                    tracing::debug!(%instance, "reading dataplane counters: {:#}", anyhow::Error::from(err))
                }
            }
        }
    }
}
