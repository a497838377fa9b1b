//! The shoal binary the guests run: the ordinary, dynamically linked build of `shoal-control`
//! in the workspace's target directory (release by default), shared into the guests with the
//! libraries `ldd` lists for it (see `cluster::prepare_share`). It shares its dependencies'
//! artifacts with every other release build of the workspace (benchmarks), where the static
//! build of before (`+crt-static`, a target triple of its own) shared nothing.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Error, Result, run_visible, workspace_root};

/// Environment variable naming a ready shoal binary (skips the build).
pub const BINARY_ENV: &str = "SHOAL_VM_BINARY";

/// Which build of shoal to share into the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// `cargo build`: already there after a test build, but under TCG its agent keeps the guest
    /// CPU about 50% busy at rest (release: 11%) and the store misses 3 s client deadlines.
    Debug,
    /// `cargo build --release`: what clusters and the VM tests run.
    #[default]
    Release,
}

impl Profile {
    fn directory(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

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
    let target = target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "-p", "shoal-control", "--bin", "shoal"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(workspace_root());
    if profile == Profile::Release {
        build.arg("--release");
    }
    run_visible(&mut build)?;
    let binary = target.join(profile.directory()).join("shoal");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(Error::Invalid(format!(
            "cargo build succeeded but left no {}",
            binary.display()
        )))
    }
}

/// Cargo's target directory: the one the running program was built into (a test binary lives
/// in `<target>/<profile>/deps`, xtask in `<target>/<profile>`), else `CARGO_TARGET_DIR` or
/// `target/`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| target_of_executable(&exe))
        .unwrap_or_else(configured_target_dir)
}

fn target_of_executable(exe: &Path) -> Option<PathBuf> {
    let mut dir = exe.parent()?;
    if dir.ends_with("deps") {
        dir = dir.parent()?;
    }
    let is_profile_dir = dir.ends_with("debug") || dir.ends_with("release");
    let target = dir.parent()?;
    (is_profile_dir && target.join("CACHEDIR.TAG").is_file()).then(|| target.to_path_buf())
}

fn configured_target_dir() -> PathBuf {
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
    fn the_target_directory_is_found_from_test_and_tool_executables() {
        let temp = tempfile::tempdir().expect("temp dir");
        let target = temp.path().join("target");
        let deps = target.join("debug/deps");
        std::fs::create_dir_all(&deps).expect("deps");
        std::fs::write(
            target.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .expect("tag");
        assert_eq!(
            target_of_executable(&deps.join("scenario-0123")),
            Some(target.clone())
        );
        assert_eq!(
            target_of_executable(&target.join("release/xtask")),
            Some(target.clone())
        );
        assert_eq!(target_of_executable(&temp.path().join("debug/qemu")), None);
    }

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
