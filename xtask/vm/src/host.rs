//! Whether this host can boot VM clusters, and whether the VM tests should: the test command
//! (`cargo xtask test`, nextest) runs them whenever qemu is usable, and they skip, saying why,
//! when it is not or when a developer opts out.
use crate::{image::GuestKernel, qemu};

/// Environment variable of the VM tests: `0` (or `false`, `no`, `off`) turns them off; unset
/// or anything else leaves them on when the host can run them.
pub const VM_TESTS_ENV: &str = "SHOAL_VM_TESTS";

/// Why the VM tests cannot or should not run here; `None` when they run. May fetch the guest
/// kernel (once, into the cache), since a kernel that cannot be obtained is a reason to skip.
pub fn vm_tests_skip_reason() -> Option<String> {
    if let Some(value) = std::env::var_os(VM_TESTS_ENV)
        && opted_out(&value.to_string_lossy())
    {
        return Some(format!(
            "{VM_TESTS_ENV}={} turns them off",
            value.to_string_lossy()
        ));
    }
    cluster_skip_reason()
}

/// Why a VM cluster cannot boot here, if it cannot: qemu or its firmware missing, not root
/// (namespaces and taps), no tun device, or no guest kernel.
pub fn cluster_skip_reason() -> Option<String> {
    if !qemu::available() {
        return Some(format!(
            "{} or {} is not installed (cargo xtask setup installs qemu-system-x86)",
            qemu::QEMU,
            qemu::QBOOT
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (a cluster needs a network namespace and taps)".to_string());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (the VMs' taps need it)".to_string());
    }
    if let Err(err) = GuestKernel::prepare(&crate::cache_dir()) {
        return Some(format!("no guest kernel could be obtained: {err}"));
    }
    None
}

fn opted_out(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "0" | "false" | "no" | "off"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_explicit_negatives_opt_out() {
        for value in ["0", "false", "NO", " off "] {
            assert!(opted_out(value), "{value:?}");
        }
        for value in ["1", "yes", "", "true"] {
            assert!(!opted_out(value), "{value:?}");
        }
    }
}
