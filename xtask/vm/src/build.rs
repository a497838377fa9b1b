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

/// Whether an ELF file asks for a program interpreter (i.e. is dynamically linked).
pub fn is_dynamic(binary: &Path) -> Result<bool> {
    use crate::IoContext;
    let elf = std::fs::read(binary).context(|| format!("reading {}", binary.display()))?;
    Ok(elf
        .windows(b"/lib64/ld-linux".len())
        .any(|w| w == b"/lib64/ld-linux"))
}
