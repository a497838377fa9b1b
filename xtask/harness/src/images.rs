//! Container images built here from Debian's packages (no image hub is reachable): a
//! debootstrap root with nginx, one with redis-server, and a busybox root from busybox-static.
//! Each is a root file system tarball for `docker import`, cached under
//! `<target>/images/<name>-<recipe hash>.tar`: it is rebuilt only when its recipe changes, and
//! parallel tests wait on a lock for one build.
use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash, Hasher},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Error, Result, command::run};

/// The Debian release and mirror the roots come from (the one apt uses on these machines).
pub const SUITE: &str = "bookworm";
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// How a root is made.
#[derive(Debug, Clone, Copy, Hash)]
pub enum RootSource {
    /// `debootstrap --variant=minbase` with these packages included.
    Debootstrap(&'static [&'static str]),
    /// Only this package's files (`apt-get download`, `dpkg-deb -x`), then busybox's links.
    BusyboxStatic,
}

/// An image: its name, how its root is made, and the `docker import --change` lines it gets.
#[derive(Debug, Clone, Copy)]
pub struct ImageRecipe {
    pub name: &'static str,
    pub source: RootSource,
    pub changes: &'static [&'static str],
}

/// Debian's nginx (nginx-light) in a minbase root; its logs go to the container's output, as
/// in the official image, so `docker logs` and a unit's journal show the requests.
pub const NGINX: ImageRecipe = ImageRecipe {
    name: "nginx",
    source: RootSource::Debootstrap(&["nginx-light"]),
    changes: &[r#"CMD ["nginx", "-g", "daemon off;"]"#, "EXPOSE 80"],
};

/// Debian's redis-server (with redis-cli) in a minbase root, serving every address.
pub const REDIS: ImageRecipe = ImageRecipe {
    name: "redis",
    source: RootSource::Debootstrap(&["redis-server"]),
    changes: &[
        r#"CMD ["redis-server", "--protected-mode", "no", "--save", ""]"#,
        "EXPOSE 6379",
    ],
};

/// busybox-static's binary and its applet links: sh, wget, nc, httpd...
pub const BUSYBOX: ImageRecipe = ImageRecipe {
    name: "busybox",
    source: RootSource::BusyboxStatic,
    changes: &[r#"CMD ["sh"]"#],
};

/// Every image the tests use.
pub const ALL: [ImageRecipe; 3] = [NGINX, REDIS, BUSYBOX];

/// Bumped when the way roots are trimmed or packed changes.
const RECIPE_VERSION: u32 = 1;

/// Paths removed from debootstrap roots: documentation, translations and apt's caches.
const TRIMMED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf/templates.dat-old",
];

impl ImageRecipe {
    /// The tarball's file name: name and recipe hash.
    pub fn file_name(&self) -> String {
        format!("{}-{:016x}.tar", self.name, self.hash())
    }

    /// What the root is made from (the `docker import` changes are applied at import).
    fn hash(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        (
            RECIPE_VERSION,
            SUITE,
            MIRROR,
            TRIMMED,
            self.name,
            self.source,
        )
            .hash(&mut hasher);
        hasher.finish()
    }
}

/// Where the tarballs are cached: `<target>/images`.
pub fn cache_dir() -> PathBuf {
    crate::binaries::target_dir().join("images")
}

/// The root file system tarball of `recipe`, built first if it is not cached.
pub fn rootfs(recipe: &ImageRecipe) -> Result<PathBuf> {
    let dir = cache_dir();
    fs::create_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
    let tarball = dir.join(recipe.file_name());
    let _lock = BuildLock::take(&dir.join(format!("{}.lock", recipe.name)))?;
    if tarball.is_file() {
        return Ok(tarball);
    }
    let started = std::time::Instant::now();
    let staging = tempfile::Builder::new()
        .prefix(&format!("{}-root.", recipe.name))
        .tempdir_in(&dir)
        .map_err(|source| io_error(&dir, source))?;
    let root = staging.path().join("root");
    match recipe.source {
        RootSource::Debootstrap(packages) => debootstrap(&root, packages)?,
        RootSource::BusyboxStatic => busybox_root(staging.path(), &root)?,
    }
    if recipe.name == NGINX.name {
        logs_to_output(&root)?;
    }
    let partial = tarball.with_extension("partial");
    run(Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&partial)
        .arg("."))?;
    fs::rename(&partial, &tarball).map_err(|source| io_error(&tarball, source))?;
    remove_older_builds(&dir, recipe.name, &tarball);
    eprintln!(
        "built image root {} in {:.1}s",
        tarball.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(tarball)
}

fn debootstrap(root: &Path, packages: &[&str]) -> Result<()> {
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--merged-usr"])
        .arg(format!("--include={}", packages.join(",")))
        .arg(SUITE)
        .arg(root)
        .arg(MIRROR))?;
    for path in TRIMMED {
        let path = root.join(path);
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_error(&path, err));
            }
            _ => {}
        }
    }
    Ok(())
}

/// busybox-static's files and a link per applet, made by busybox itself inside the root.
fn busybox_root(staging: &Path, root: &Path) -> Result<()> {
    run(Command::new("apt-get")
        .args(["download", "-q", "busybox-static"])
        .current_dir(staging))?;
    let package = fs::read_dir(staging)
        .map_err(|source| io_error(staging, source))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| {
            Error::Fixture(format!(
                "apt-get download left no busybox-static package in {}",
                staging.display()
            ))
        })?;
    run(Command::new("dpkg-deb").arg("-x").arg(&package).arg(root))?;
    for dir in ["usr/bin", "usr/sbin", "tmp", "etc", "proc", "sys", "dev"] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(|source| io_error(&path, source))?;
    }
    for link in ["bin", "sbin"] {
        let path = root.join(link);
        if !path.exists() {
            std::os::unix::fs::symlink(format!("usr/{link}"), &path)
                .map_err(|source| io_error(&path, source))?;
        }
    }
    let busybox = ["usr/bin/busybox", "bin/busybox"]
        .iter()
        .map(|path| root.join(path))
        .find(|path| path.is_file())
        .ok_or_else(|| Error::Fixture("busybox-static has no busybox binary".to_string()))?;
    let inside = Path::new("/").join(busybox.strip_prefix(root).unwrap_or(&busybox));
    run(Command::new("chroot")
        .arg(root)
        .arg(inside)
        .args(["--install", "-s"]))?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(|source| io_error(root, source))?;
    fs::write(root.join("etc/group"), "root:x:0:\n").map_err(|source| io_error(root, source))
}

/// nginx's access and error logs go to the container's stdout and stderr.
fn logs_to_output(root: &Path) -> Result<()> {
    let logs = root.join("var/log/nginx");
    fs::create_dir_all(&logs).map_err(|source| io_error(&logs, source))?;
    for (file, target) in [("access.log", "/dev/stdout"), ("error.log", "/dev/stderr")] {
        let path = logs.join(file);
        if path.exists() || path.is_symlink() {
            fs::remove_file(&path).map_err(|source| io_error(&path, source))?;
        }
        std::os::unix::fs::symlink(target, &path).map_err(|source| io_error(&path, source))?;
    }
    Ok(())
}

/// Tarballs of an image's older recipes are only disk space.
fn remove_older_builds(dir: &Path, name: &str, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|entry| entry.ok().map(|entry| entry.path())) {
        let is_older = path != keep
            && path.extension().is_some_and(|ext| ext == "tar")
            && path
                .file_name()
                .and_then(|file| file.to_str())
                .and_then(|file| file.strip_prefix(name))
                .is_some_and(|rest| rest.starts_with('-') && rest.len() == 1 + 16 + 4);
        if is_older && let Err(err) = fs::remove_file(&path) {
            tracing::warn!("removing {}: {err}", path.display());
        }
    }
}

/// An exclusive `flock` on a file, held until dropped: one build of an image at a time.
struct BuildLock {
    _file: fs::File,
}

impl BuildLock {
    fn take(path: &Path) -> Result<Self> {
        let file = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| io_error(path, source))?;
        // SAFETY: flock(2) on a descriptor we own for the lifetime of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_error(path, std::io::Error::last_os_error()));
        }
        Ok(Self { _file: file })
    }
}

fn io_error(path: &Path, cause: std::io::Error) -> Error {
    Error::io(path, cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_change_changes_the_cached_file() {
        let other = ImageRecipe {
            source: RootSource::Debootstrap(&["nginx-full"]),
            ..NGINX
        };
        assert_ne!(NGINX.file_name(), other.file_name());
        assert_eq!(NGINX.file_name(), NGINX.file_name());
        assert!(NGINX.file_name().starts_with("nginx-") && NGINX.file_name().ends_with(".tar"));
    }
}
