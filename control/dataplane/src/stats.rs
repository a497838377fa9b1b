//! The dataplane's counters: their totals over all CPUs, from a handle or from the pins; and
//! the kernel's run counts and times of its programs.
use std::{fmt, os::fd::OwnedFd, path::Path, time::Duration};

use aya::maps::{MapData, PerCpuArray};
use shoal_dataplane_common::{COUNTERS_MAP, Counter};

use crate::{Error, Result, error::map_error};

/// Counter totals of the dataplane pinned in `pin_dir` (`<pin_root>/<instance>`), read without
/// loading or attaching anything: for a metrics exporter in another process, such as the agent.
pub fn read_pinned_stats(pin_dir: &Path) -> Result<Stats> {
    let place = pin_dir.display().to_string();
    let map_error = |source| map_error(COUNTERS_MAP, &place, source);
    let data = MapData::from_pin(pin_dir.join(COUNTERS_MAP)).map_err(map_error)?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(map_error)?;
    sum_counters(&counters).map_err(map_error)
}

pub(crate) fn sum_counters(
    counters: &PerCpuArray<MapData, u64>,
) -> Result<Stats, aya::maps::MapError> {
    let mut values = Vec::with_capacity(Counter::ALL.len());
    for counter in Counter::ALL {
        let per_cpu = counters.get(&(counter as u32), 0)?;
        values.push(per_cpu.iter().sum());
    }
    Ok(Stats { values })
}

/// Counter totals over all CPUs (`Debug` lists the non-zero ones by name).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Stats {
    values: Vec<u64>,
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .filter(|(_, value)| *value != 0)
                    .map(|(counter, value)| (counter.name(), value)),
            )
            .finish()
    }
}

impl Stats {
    pub fn get(&self, counter: Counter) -> u64 {
        self.values.get(counter as usize).copied().unwrap_or(0)
    }

    /// Every counter with its stable name.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL
            .iter()
            .map(|&counter| (counter, self.get(counter)))
    }

    /// Sum of all `drop_*` counters.
    pub fn drops(&self) -> u64 {
        self.iter()
            .filter(|(counter, _)| counter.name().starts_with("drop_"))
            .map(|(_, value)| value)
            .sum()
    }
}

/// How often one of the dataplane's programs ran and for how long in all, as the kernel counts
/// while BPF run statistics are on ([`enable_program_stats`]); totals since the program was
/// loaded, so a measurement subtracts two readings ([`ProgramRuns::since`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRuns {
    /// The program's name (`shoal_tc_egress`, ...).
    pub program: String,
    pub runs: u64,
    pub run_time: Duration,
}

impl ProgramRuns {
    /// Average nanoseconds per run (0 without runs).
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 {
            return 0.0;
        }
        self.run_time.as_nanos() as f64 / self.runs as f64
    }

    /// The runs between `earlier` (a reading of the same program) and this reading.
    pub fn since(&self, earlier: &ProgramRuns) -> ProgramRuns {
        ProgramRuns {
            program: self.program.clone(),
            runs: self.runs.saturating_sub(earlier.runs),
            run_time: self.run_time.saturating_sub(earlier.run_time),
        }
    }
}

/// Turns on the kernel's per-program run counts and times (`BPF_ENABLE_STATS`, as
/// `kernel.bpf_stats_enabled` does) while the returned descriptor stays open. They cost two clock
/// reads per run of every BPF program on the machine: for measurements, not for production.
pub fn enable_program_stats() -> Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|err| Error::Io {
        context: "enabling BPF run statistics".to_string(),
        source: err.io_error,
    })
}
