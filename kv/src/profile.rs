//! Stage timings of the write path, collected only when `SHOAL_KV_PROFILE` is set (for
//! profiling runs; off by default, then every call is one relaxed load).
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicU8 = AtomicU8::new(2);
static SAMPLES: Mutex<BTreeMap<&'static str, Vec<u32>>> = Mutex::new(BTreeMap::new());

pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        0 => false,
        1 => true,
        _ => {
            let on = std::env::var_os("SHOAL_KV_PROFILE").is_some();
            ENABLED.store(u8::from(on), Ordering::Relaxed);
            on
        }
    }
}

/// Records how long `stage` took since `since`.
pub fn record(stage: &'static str, since: Instant) {
    if enabled() {
        record_duration(stage, since.elapsed());
    }
}

pub fn record_duration(stage: &'static str, took: Duration) {
    if !enabled() {
        return;
    }
    let micros = took.as_micros().min(u128::from(u32::MAX)) as u32;
    let mut samples = SAMPLES.lock().unwrap_or_else(|p| p.into_inner());
    samples.entry(stage).or_default().push(micros);
}

/// p50/p90/p99/mean per stage in microseconds since the last call; clears the samples.
pub fn take_report() -> String {
    let mut samples = SAMPLES.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    for (stage, values) in samples.iter_mut() {
        values.sort_unstable();
        let at = |q: f64| values[((values.len() as f64 * q) as usize).min(values.len() - 1)];
        let mean = values.iter().map(|v| u64::from(*v)).sum::<u64>() / values.len() as u64;
        out.push_str(&format!(
            "{stage:<28} n {:>7} p50 {:>6} p90 {:>6} p99 {:>6} mean {:>6} us\n",
            values.len(),
            at(0.5),
            at(0.9),
            at(0.99),
            mean
        ));
    }
    samples.clear();
    out
}
