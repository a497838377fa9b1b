//! Waiting for Ctrl-C or `vm-cluster down` (SIGTERM) without a signal handler: the signals are
//! blocked in every thread and collected with `sigtimedwait`.
use std::time::Duration;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it starts later;
/// call it first thing in `main`. (qemu children get an empty mask back, see `qemu::Vm`.)
pub fn block_termination() {
    let set = termination_set();
    // SAFETY: changes this thread's signal mask only, from a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits up to `timeout` for one of the blocked termination signals; returns its number.
pub fn wait_termination(timeout: Duration) -> Option<i32> {
    let set = termination_set();
    let limit = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: valid set and timespec; no siginfo is requested.
    let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &limit) };
    (signal > 0).then_some(signal)
}
