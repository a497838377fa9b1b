//! The shoal binary the guests run: a static glibc build, so the busybox guest needs no
//! loader or shared libraries.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Error, Result, run_visible, workspace_root};

/// Environment variable naming a ready static shoal binary (skips the build).
pub const BINARY_ENV: &str = "SHOAL_VM_BINARY";
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `shoal` statically (`cargo build --release --target x86_64-unknown-linux-gnu -p
/// shoal-control` with `+crt-static`) and returns its path; or the binary named by
/// [`BINARY_ENV`].
pub fn static_shoal() -> Result<PathBuf> {
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
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run_visible(
        Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                TARGET,
                "-p",
                "shoal-control",
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .current_dir(workspace_root()),
    )?;
    let binary = target_dir().join(TARGET).join("release").join("shoal");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(Error::Invalid(format!(
            "cargo build succeeded but left no {}",
            binary.display()
        )))
    }
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace) or `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
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
