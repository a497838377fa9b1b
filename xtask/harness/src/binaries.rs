//! Finding the workspace's own binaries, for tests, benchmarks and VM clusters that run them.
//!
//! The one rule: a binary is built first with `cargo build -p <package> --bin <name>` (`$CARGO`,
//! else `cargo`) into the target directory the running program was built into, so it is never
//! stale; tests take the profile they run in, callers that want another (the release build the
//! VM guests run) name it. Cargo's build lock makes parallel tests wait for one build.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{Error, Result, command::run_visible};

/// `SHOAL_LOG` for the shoal processes tests spawn: netlink-packet-route warns about every
/// newer-kernel attribute it does not know.
pub const QUIET_LOG: &str = "info,netlink_packet_route=error";

/// `shoal-kv`, the store alone (package `shoal-kv`).
pub fn shoal_kv() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| workspace_binary("shoal-kv", "shoal-kv"))
        .clone()
}

/// `shoal`, the node binary (package `shoal-control`).
pub fn shoal() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| workspace_binary("shoal-control", "shoal"))
        .clone()
}

/// Binary `name` of `package`, in the running executable's profile (built there when cargo is at
/// hand); panics saying how to build it when it is missing.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    match build(package, name, running_profile()) {
        Ok(path) => path,
        Err(err) => panic!("{err}: run `cargo build -p {package} --bin {name}`"),
    }
}

/// A cargo profile of the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// `cargo build`: what tests run.
    #[default]
    Debug,
    /// `cargo build --release`: what benchmarks and VM clusters run.
    Release,
}

impl Profile {
    /// Its directory under the target directory.
    pub fn directory(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }

    fn cargo_name(self) -> &'static str {
        match self {
            Profile::Debug => "dev",
            Profile::Release => "release",
        }
    }
}

/// Brings binary `name` of `package` in `profile` up to date in the workspace's target directory
/// (`cargo build --quiet`, a no-op when it is current) and returns its path. Without cargo (a
/// copied test binary) the binary must already be there.
pub fn build(package: &str, name: &str, profile: Profile) -> Result<PathBuf> {
    let target = target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", name])
        .args(["--profile", profile.cargo_name()])
        .arg("--manifest-path")
        .arg(workspace_manifest())
        .arg("--target-dir")
        .arg(&target);
    // Cargo gives a running test its package's variables; build scripts that watch one (ring
    // watches CARGO_MANIFEST_DIR) would rerun, and everything above them be rebuilt, twice:
    // here, then again by the next plain `cargo build`.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_package_variable) {
            cmd.env_remove(key);
        }
    }
    match run_visible(&mut cmd) {
        Err(Error::Spawn { cause, .. }) => eprintln!("not building {name} ({cargo}: {cause})"),
        result => result?,
    }
    let path = target.join(profile.directory()).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing(path))
    }
}

/// The profile the running executable was built in.
fn running_profile() -> Profile {
    let exe = std::env::current_exe().unwrap_or_default();
    let in_release = exe
        .ancestors()
        .take(3)
        .any(|dir| dir.file_name().is_some_and(|name| name == "release"));
    if in_release {
        Profile::Release
    } else {
        Profile::Debug
    }
}

/// Cargo's target directory: the one the running program was built into (a test binary lives in
/// `<target>/<profile>/deps`, a tool in `<target>/<profile>`), else `CARGO_TARGET_DIR` or the
/// workspace's `target/`.
pub fn target_dir() -> PathBuf {
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
    let workspace = workspace_manifest()
        .parent()
        .map_or_else(PathBuf::new, Path::to_path_buf);
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// Whether `key` is one of the variables cargo sets for one package's crate (and so for its
/// tests), rather than for every build.
fn is_package_variable(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

/// The workspace's Cargo.toml (this crate lives in `xtask/harness`).
fn workspace_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml")
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
}
