//! Finding the workspace's own binaries for tests and benchmarks that run them as processes.
//!
//! The one rule: a binary is taken from the profile directory of the running executable (a test
//! runs from `target/<profile>/deps/`, a benchmark from `target/<profile>/`), and built there
//! first with `cargo build -p <package> --bin <name>` (`$CARGO`, else `cargo` if on the PATH),
//! so it is never stale. Cargo's build lock makes parallel tests wait for one build.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// Binary `name` of `package`, in the running executable's profile directory (built there when
/// cargo is at hand); panics saying how to build it when it is missing.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    let profile_dir = profile_dir();
    let path = profile_dir.join(name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    build(&cargo, &profile_dir, package, name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p {package} --bin {name}`",
        path.display()
    );
    path
}

/// `target/<profile>` of the running executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running executable");
    let dir = exe.parent().expect("an executable has a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn build(cargo: &str, profile_dir: &Path, package: &str, name: &str) {
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", name])
        .arg("--manifest-path")
        .arg(workspace_manifest());
    // Cargo gives a running test its package's variables; build scripts that watch one (ring
    // watches CARGO_MANIFEST_DIR) would rerun, and everything above them be rebuilt, twice:
    // here, then again by the next plain `cargo build`.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(is_package_variable) {
            cmd.env_remove(key);
        }
    }
    if let (Some(profile), Some(target_dir)) = (profile_dir.file_name(), profile_dir.parent()) {
        let profile = match profile.to_str() {
            Some("debug") => "dev",
            Some(other) => other,
            None => "dev",
        };
        cmd.args(["--profile", profile])
            .arg("--target-dir")
            .arg(target_dir);
    }
    match cmd.status() {
        Ok(status) => assert!(
            status.success(),
            "cargo build -p {package} --bin {name} failed"
        ),
        // No cargo here (e.g. a copied test binary): the binary must already be there.
        Err(err) => eprintln!("not building {name} ({cargo}: {err})"),
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
