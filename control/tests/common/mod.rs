//! Fixtures for the agent tests: the `shoal` binary, its log filter and `wait_for`. (The
//! overlay's fixtures moved with its tests to `control/flannel/tests/common`.)

use std::time::{Duration, Instant};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
/// Log filter for spawned shoal processes (netlink-packet-route warns about every newer-kernel
/// attribute it does not know).
pub const QUIET_LOG: &str = "info,netlink_packet_route=error";

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
