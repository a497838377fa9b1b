//! KVM or TCG, decided by a bounded test boot, never by the presence of /dev/kvm: on this kind
//! of machine /dev/kvm exists but is a paravirtual KVM on which a normal kernel crawls and dies.
use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    IoContext, Result,
    qemu::{Accel, Vm, VmConfig},
};

/// Environment variable forcing the choice (`kvm` or `tcg`), skipping the probe.
pub const ACCEL_ENV: &str = "SHOAL_VM_ACCEL";
/// How long the KVM test boot may take: a TCG boot reaches userspace in about 2 s.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The outcome of [`choose`]: the accelerator and how it was decided.
#[derive(Debug, Clone)]
pub struct Choice {
    pub accel: Accel,
    pub reason: String,
}

/// Picks the accelerator: from [`ACCEL_ENV`], from the cached probe result in `cache`, or by a
/// test boot of `kernel`/`initramfs` under KVM (cached for next time, keyed by host and guest
/// kernel versions).
pub fn choose(cache: &Path, kernel: &Path, initramfs: &Path) -> Result<Choice> {
    if let Some(accel) = std::env::var(ACCEL_ENV)
        .ok()
        .and_then(|value| Accel::parse(&value))
    {
        return Ok(Choice {
            accel,
            reason: format!("{ACCEL_ENV}={}", accel.name()),
        });
    }
    if !Path::new("/dev/kvm").exists() {
        return Ok(Choice {
            accel: Accel::Tcg,
            reason: "no /dev/kvm".to_string(),
        });
    }
    let key = cache_key(kernel);
    let cached = cache.join("accel");
    if let Some(accel) = fs::read_to_string(&cached).ok().and_then(|text| {
        let (stored_key, accel) = text.trim().rsplit_once(' ')?;
        (stored_key == key).then(|| Accel::parse(accel)).flatten()
    }) {
        return Ok(Choice {
            accel,
            reason: format!("cached KVM probe result ({})", cached.display()),
        });
    }
    let (accel, reason) = probe_kvm(cache, kernel, initramfs)?;
    fs::write(&cached, format!("{key} {}\n", accel.name()))
        .context(|| format!("writing {}", cached.display()))?;
    Ok(Choice { accel, reason })
}

fn cache_key(kernel: &Path) -> String {
    let host = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("host={}|guest={}", host.trim(), kernel.display()).replace(' ', "_")
}

/// Boots the guest under KVM with `shoal.mode=probe`; KVM is good if the probe marker arrives
/// in time.
fn probe_kvm(cache: &Path, kernel: &Path, initramfs: &Path) -> Result<(Accel, String)> {
    let config = VmConfig {
        name: "kvm-probe".to_string(),
        accel: Accel::Kvm,
        memory_mib: 256,
        cpus: 1,
        kernel: kernel.to_path_buf(),
        initramfs: initramfs.to_path_buf(),
        append: format!("{} shoal.mode=probe", crate::qemu::kernel_args()),
        nic: None,
        share: None,
        disk: None,
        console_log: cache.join("kvm-probe.log"),
    };
    let started = Instant::now();
    let vm = Vm::spawn(&config, config.command())?;
    let outcome = vm.wait_marker("probe ok", PROBE_TIMEOUT);
    drop(vm);
    Ok(match outcome {
        Ok(_) => (
            Accel::Kvm,
            format!(
                "KVM test boot reached userspace in {:.1?}",
                started.elapsed()
            ),
        ),
        Err(err) => (
            Accel::Tcg,
            format!(
                "KVM test boot failed ({}), see {}",
                first_line(&err.to_string()),
                config.console_log.display()
            ),
        ),
    })
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
