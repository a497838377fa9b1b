//! The shoal binary the guests run: the ordinary, dynamically linked build of `shoal-control`
//! in the workspace's target directory (release by default), shared into the guests with the
//! libraries `ldd` lists for it (see `cluster::prepare_share`). It shares its dependencies'
//! artifacts with every other release build of the workspace (benchmarks), where the static
//! build of before (`+crt-static`, a target triple of its own) shared nothing.
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Environment variable naming a ready shoal binary (skips the build).
pub const BINARY_ENV: &str = "SHOAL_VM_BINARY";

/// Which build of shoal to share into the guests: release by default (under TCG the debug
/// build's agent keeps a guest CPU about 50% busy at rest, the release build 11%).
pub use shoal_harness::binaries::Profile;

/// Brings `shoal` of `profile` up to date (`cargo build -p shoal-control --bin shoal`, a no-op
/// when the workspace build already made it) and returns its path; or the binary named by
/// [`BINARY_ENV`].
pub fn shoal_binary(profile: Profile) -> Result<PathBuf> {
    if let Some(binary) = std::env::var_os(BINARY_ENV).map(PathBuf::from) {
        return if binary.is_file() {
            Ok(binary)
        } else {
            Err(Error::Invalid(format!(
                "{BINARY_ENV}={} is not a file",
                binary.display()
            )))
        };
    }
    Ok(shoal_harness::binaries::build(
        "shoal-control",
        "shoal",
        profile,
    )?)
}

/// Whether an ELF file asks for a program interpreter (`PT_INTERP`: dynamically linked).
pub fn is_dynamic(binary: &Path) -> Result<bool> {
    use crate::IoContext;
    let elf = std::fs::read(binary).context(|| format!("reading {}", binary.display()))?;
    has_interpreter(&elf)
        .ok_or_else(|| Error::Invalid(format!("{} is not a 64-bit ELF file", binary.display())))
}

fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let phoff = usize::try_from(u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let entry_size = usize::from(u16_at(0x36)?);
    let entries = usize::from(u16_at(0x38)?);
    (0..entries)
        .map(|index| {
            let at = phoff + index * entry_size;
            Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?))
        })
        .try_fold(false, |found, kind| Some(found || kind? == PT_INTERP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binaries_are_dynamic_and_busybox_static_is_not() {
        let dynamic = std::fs::read("/bin/sh").expect("/bin/sh");
        assert_eq!(has_interpreter(&dynamic), Some(true));
        if let Ok(busybox) = std::fs::read("/bin/busybox") {
            assert_eq!(has_interpreter(&busybox), Some(false));
        }
        assert_eq!(has_interpreter(b"#!/bin/sh"), None);
    }
}
