//! Builds the eBPF object with the `bpf` toolchain (Debian's rustc, linked by `cargo xtask setup`)
//! so that a plain `cargo build` produces it. The object lands in `$OUT_DIR/shoal-dataplane`.
//!
//! aya-build puts its nested cargo build under `OUT_DIR`, which differs between `cargo clippy`,
//! `cargo build`/nextest and `cargo test --doc`, so each of them would rebuild `core` for BPF
//! (minutes on two cores). We point it at one directory per profile instead,
//! `<target>/<profile>/ebpf`, serialise users of that directory with a file lock, and copy the
//! object into the real `OUT_DIR`.
use std::{
    env,
    fs::{self, File},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};

const EBPF_PACKAGE: &str = "shoal-dataplane-ebpf";

fn main() -> Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let shared_dir = shared_ebpf_dir(&out_dir)?;
    fs::create_dir_all(&shared_dir)
        .with_context(|| format!("creating {}", shared_dir.display()))?;
    let lock_path = shared_dir.with_extension("lock");
    let lock =
        File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    build_into(&shared_dir)?;
    copy_objects(&shared_dir, &out_dir)
}

/// `OUT_DIR` is `<target>/<profile>/build/<package>-<hash>/out`: the shared directory sits in
/// `<target>/<profile>`, beside `build`.
fn shared_ebpf_dir(out_dir: &Path) -> Result<PathBuf> {
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .ok_or_else(|| anyhow!("unexpected OUT_DIR layout: {}", out_dir.display()))?;
    Ok(profile_dir.join("ebpf"))
}

fn build_into(shared_dir: &Path) -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dataplane-ebpf");
    // Debian's rustc is a stable compiler; -Z build-std=core needs the bootstrap switch. aya-build
    // reads its output directory from OUT_DIR. It passes every line the nested cargo prints on
    // as a `warning:` of this build; a quiet nested cargo prints only real diagnostics.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe {
        env::set_var("RUSTC_BOOTSTRAP", "1");
        env::set_var("OUT_DIR", shared_dir);
        env::set_var("CARGO_TERM_QUIET", "true");
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("bpf"),
    )
}

/// Copies the built objects (the regular files aya-build left in the shared directory).
fn copy_objects(shared_dir: &Path, out_dir: &Path) -> Result<()> {
    let entries =
        fs::read_dir(shared_dir).with_context(|| format!("reading {}", shared_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", shared_dir.display()))?;
        if entry.file_type()?.is_file() {
            let destination = out_dir.join(entry.file_name());
            fs::copy(entry.path(), &destination).with_context(|| {
                format!(
                    "copying {} to {}",
                    entry.path().display(),
                    destination.display()
                )
            })?;
        }
    }
    Ok(())
}
