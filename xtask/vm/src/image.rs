//! The guest kernel (Debian's `linux-image-amd64`, fetched once) and the busybox initramfs.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{Error, IoContext, Result, run};

/// The Debian meta-package whose dependency names the kernel package to fetch.
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";
/// Environment variable naming the Debian suite the kernel comes from; `host` means the host's
/// own apt sources (bookworm: 6.1).
pub const KERNEL_SUITE_ENV: &str = "SHOAL_VM_KERNEL_SUITE";
/// The default: bookworm-backports' kernel (6.12). The dataplane attaches its TC programs
/// through TCX, which 6.1 does not have (`bpf_mprog_attach` fails there).
pub const DEFAULT_KERNEL_SUITE: &str = "bookworm-backports";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// Busybox from Debian's busybox-static: the whole userland of the small guest.
const BUSYBOX: &str = "/bin/busybox";
/// Modules the guest loads (with their dependency closure): virtio devices, 9p, the overlay's
/// devices (veth, vxlan, bridge), TC for the dataplane on a 6.1 kernel (no TCX), ext4 for the
/// Debian image's disk.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio-rng",
    "9pnet_virtio",
    "9p",
    "veth",
    "vxlan",
    "bridge",
    "tun",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
    "crc32c_generic",
    "ext4",
];

/// The guest's shell init and the command server it runs, shipped inside the initramfs.
const INIT_SCRIPT: &str = include_str!("../guest/init.sh");
const EXEC_SCRIPT: &str = include_str!("../guest/exec.sh");

/// A Debian kernel unpacked under the cache: an uncompressed vmlinux (qemu boots it through
/// its PVH entry, twice as fast as the bzImage) and its modules.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub version: String,
    pub vmlinux: PathBuf,
    /// Root of the unpacked package: `lib/modules/<version>` lives below it.
    pub root: PathBuf,
}

impl GuestKernel {
    /// Returns the cached kernel, fetching and unpacking it first if needed (one `apt-get
    /// download`, 70 to 110 MB), from [`DEFAULT_KERNEL_SUITE`] or the suite named by
    /// [`KERNEL_SUITE_ENV`].
    pub fn prepare(cache: &Path) -> Result<Self> {
        let dir = cache.join("kernel");
        let suite = std::env::var(KERNEL_SUITE_ENV)
            .ok()
            .filter(|suite| !suite.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_KERNEL_SUITE.to_string());
        let apt = match suite.trim() {
            "host" => Apt::host(),
            suite => Apt::suite(cache, suite)?,
        };
        let current = dir.join(format!("current{}", apt.tag()));
        if let Ok(version) = fs::read_to_string(&current) {
            let kernel = Self::at(&dir, version.trim());
            if kernel.vmlinux.is_file() {
                return Ok(kernel);
            }
        }
        let package = apt.kernel_package_name()?;
        let version = package
            .strip_prefix("linux-image-")
            .ok_or_else(|| Error::Invalid(format!("unexpected kernel package name {package}")))?
            .to_string();
        let kernel = Self::at(&dir, &version);
        fs::create_dir_all(&kernel.root).context(|| format!("creating {}", dir.display()))?;
        let deb = apt.download(&package, &dir)?;
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&kernel.root))?;
        let bzimage = kernel.root.join("boot").join(format!("vmlinuz-{version}"));
        extract_vmlinux(&bzimage, &kernel.vmlinux)?;
        run(Command::new("depmod")
            .arg("-b")
            .arg(&kernel.root)
            .arg(&version))?;
        fs::remove_file(&deb).context(|| format!("removing {}", deb.display()))?;
        fs::write(&current, &version).context(|| format!("writing {}", current.display()))?;
        Ok(kernel)
    }

    fn at(dir: &Path, version: &str) -> Self {
        let base = dir.join(version);
        Self {
            version: version.to_string(),
            vmlinux: base.join("vmlinux"),
            root: base.join("root"),
        }
    }

    /// `lib/modules/<version>` of the unpacked package.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }

    /// Module files (paths relative to [`Self::modules_dir`]) of `modules` and everything they
    /// depend on, in load order, without duplicates.
    pub fn module_closure(&self, modules: &[&str]) -> Result<Vec<PathBuf>> {
        let base = self.modules_dir();
        let mut files: Vec<PathBuf> = Vec::new();
        for module in modules {
            let listing = run(Command::new("modprobe").arg("-d").arg(&self.root).args([
                "-S",
                &self.version,
                "--show-depends",
                module,
            ]))?;
            for path in listing
                .lines()
                .filter_map(|line| line.strip_prefix("insmod "))
                .map(|path| Path::new(path.trim()))
            {
                let relative = path.strip_prefix(&base).map_err(|_| {
                    Error::Invalid(format!(
                        "module {} outside {}",
                        path.display(),
                        base.display()
                    ))
                })?;
                if !files.iter().any(|known| known == relative) {
                    files.push(relative.to_path_buf());
                }
            }
        }
        Ok(files)
    }
}

/// apt, either as the host has it configured or with a private sources list and state
/// directory naming one other Debian suite (the host's apt configuration is left alone).
struct Apt {
    options: Vec<String>,
    suite: Option<String>,
}

impl Apt {
    fn host() -> Self {
        Self {
            options: vec!["-o".into(), "APT::Sandbox::User=root".into()],
            suite: None,
        }
    }

    /// A private apt for `suite`, its package lists fetched once under `cache/apt-<suite>`.
    fn suite(cache: &Path, suite: &str) -> Result<Self> {
        let dir = cache.join(format!("apt-{suite}"));
        let lists = dir.join("lists");
        let sources = dir.join("sources.list");
        for needed in [lists.join("partial"), dir.join("cache/archives/partial")] {
            fs::create_dir_all(&needed).context(|| format!("creating {}", needed.display()))?;
        }
        fs::write(&sources, format!("deb {DEBIAN_MIRROR} {suite} main\n"))
            .context(|| format!("writing {}", sources.display()))?;
        let option =
            |key: &str, value: &Path| vec!["-o".to_string(), format!("{key}={}", value.display())];
        let mut options = Self::host().options;
        options.extend(option("Dir::Etc::SourceList", &sources));
        options.extend(option("Dir::Etc::SourceParts", Path::new("/dev/null")));
        options.extend(option("Dir::State::Lists", &lists));
        options.extend(option("Dir::Cache", &dir.join("cache")));
        let apt = Self {
            options,
            suite: Some(suite.to_string()),
        };
        let fetched = fs::read_dir(&lists)
            .map(|entries| entries.count() > 1)
            .unwrap_or(false);
        if !fetched {
            run(Command::new("apt-get")
                .args(&apt.options)
                .args(["update", "-q"]))?;
        }
        Ok(apt)
    }

    /// Suffix of the cache's `current` file for this source.
    fn tag(&self) -> String {
        self.suite
            .as_ref()
            .map(|s| format!("-{s}"))
            .unwrap_or_default()
    }

    fn kernel_package_name(&self) -> Result<String> {
        let listing = run(Command::new("apt-cache")
            .args(&self.options)
            .args(["depends", KERNEL_META_PACKAGE]))?;
        listing
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .find(|name| name.starts_with("linux-image-"))
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "`apt-cache depends {KERNEL_META_PACKAGE}` names no linux-image package"
                ))
            })
    }

    /// `apt-get download` into `dir`; returns the .deb it fetched.
    fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        run(Command::new("apt-get")
            .args(&self.options)
            .args(["download", "-q", package])
            .current_dir(dir))?;
        let prefix = format!("{package}_");
        fs::read_dir(dir)
            .context(|| format!("listing {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".deb"))
            })
            .ok_or_else(|| Error::Invalid(format!("apt-get download left no {package} .deb")))
    }
}

/// Unpacks the vmlinux ELF from a bzImage: the boot header locates the compressed payload
/// (`payload_offset`/`payload_length`); Debian compresses it with xz (6.1) or zstd (6.12).
/// The kernel appends the uncompressed size (4 bytes) after the compressed stream.
fn extract_vmlinux(bzimage: &Path, vmlinux: &Path) -> Result<()> {
    let image = fs::read(bzimage).context(|| format!("reading {}", bzimage.display()))?;
    let payload = bzimage_payload(&image)
        .ok_or_else(|| Error::Invalid(format!("{} is not a bzImage", bzimage.display())))?;
    let (stream, decompress): (&[u8], &[&str]) = if payload.starts_with(b"\xfd7zXZ\0") {
        (payload, &["xz", "-dc", "--single-stream"])
    } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
        (
            &payload[..payload.len().saturating_sub(4)],
            &["zstd", "-dcq"],
        )
    } else {
        return Err(Error::Invalid(format!(
            "{}: payload is neither xz nor zstd",
            bzimage.display()
        )));
    };
    let compressed = vmlinux.with_extension("compressed");
    fs::write(&compressed, stream).context(|| format!("writing {}", compressed.display()))?;
    let output = fs::File::create(vmlinux).context(|| format!("creating {}", vmlinux.display()))?;
    run(Command::new(decompress[0])
        .args(&decompress[1..])
        .arg(&compressed)
        .stdout(output))?;
    fs::remove_file(&compressed).context(|| format!("removing {}", compressed.display()))
}

fn bzimage_payload(image: &[u8]) -> Option<&[u8]> {
    const SETUP_SECTS: usize = 0x1f1;
    const HEADER_MAGIC: std::ops::Range<usize> = 0x202..0x206;
    const PAYLOAD_OFFSET: usize = 0x248;
    const PAYLOAD_LENGTH: usize = 0x24c;
    if image.get(HEADER_MAGIC)? != b"HdrS" {
        return None;
    }
    let setup_sectors = match *image.get(SETUP_SECTS)? {
        0 => 4,
        sectors => usize::from(sectors),
    };
    let read_u32 = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = image.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    };
    let start = (setup_sectors + 1) * 512 + read_u32(PAYLOAD_OFFSET)?;
    image.get(start..start + read_u32(PAYLOAD_LENGTH)?)
}

/// Builds the initramfs (an uncompressed newc cpio: nothing to decompress at boot) at `out`:
/// busybox, the guest modules with their `modules.dep`, the init and the command server.
pub fn build_initramfs(kernel: &GuestKernel, out: &Path) -> Result<()> {
    let staging = out.with_extension("staging");
    if staging.exists() {
        fs::remove_dir_all(&staging).context(|| format!("removing {}", staging.display()))?;
    }
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "etc",
        "root",
        "mnt/shoal",
        "newroot",
        "var",
    ] {
        let path = staging.join(dir);
        fs::create_dir_all(&path).context(|| format!("creating {}", path.display()))?;
    }
    copy(Path::new(BUSYBOX), &staging.join("bin/busybox"))?;
    write_executable(&staging.join("init"), INIT_SCRIPT)?;
    write_executable(&staging.join("bin/shoal-exec"), EXEC_SCRIPT)?;
    let modules_dir = staging.join("lib/modules").join(&kernel.version);
    // Decompressed here: busybox's modprobe first hands a compressed module to the kernel
    // ("Invalid ELF header magic"), then unpacks it itself, which costs seconds under TCG.
    for module in kernel.module_closure(GUEST_MODULES)? {
        copy_module(
            &kernel.modules_dir().join(&module),
            &modules_dir.join(&module),
        )?;
    }
    for index in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let source = kernel.modules_dir().join(index);
        if source.is_file() {
            copy(&source, &modules_dir.join(index))?;
        }
    }
    run(Command::new("depmod")
        .arg("-b")
        .arg(&staging)
        .arg(&kernel.version))?;
    pack_cpio(&staging, out)?;
    fs::remove_dir_all(&staging).context(|| format!("removing {}", staging.display()))
}

fn pack_cpio(dir: &Path, out: &Path) -> Result<()> {
    let archive = fs::File::create(out).context(|| format!("creating {}", out.display()))?;
    let mut find = Command::new("find");
    find.args([".", "-print0"])
        .current_dir(dir)
        .stdout(Stdio::piped());
    let mut finder = shoal_harness::command::spawn(&mut find)?;
    let names = finder
        .stdout
        .take()
        .ok_or_else(|| Error::Invalid("find has no stdout".to_string()))?;
    let packed = run(Command::new("cpio")
        .args(["--null", "--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(dir)
        .stdin(names)
        .stdout(archive));
    let found = finder.wait().context(|| "waiting for find".to_string())?;
    packed?;
    if !found.success() {
        return Err(Error::Invalid(format!("find in {} failed", dir.display())));
    }
    Ok(())
}

/// Copies a kernel module, decompressing `.ko.xz`/`.ko.zst` (busybox's modprobe loads only
/// plain `.ko`; `depmod` then indexes the `.ko` name).
pub(crate) fn copy_module(from: &Path, to: &Path) -> Result<()> {
    let decompressor = match from.extension().and_then(|ext| ext.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return copy(from, to),
    };
    let plain = to.with_extension("");
    if let Some(parent) = plain.parent() {
        fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
    }
    let output = fs::File::create(&plain).context(|| format!("creating {}", plain.display()))?;
    run(Command::new(decompressor)
        .arg("-dcq")
        .arg(from)
        .stdout(output))?;
    Ok(())
}

pub(crate) fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
    }
    fs::copy(from, to)
        .map(drop)
        .context(|| format!("copying {} to {}", from.display(), to.display()))
}

pub(crate) fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .context(|| format!("chmod {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bzimage_payload_follows_the_boot_header() {
        let mut image = vec![0u8; 4096];
        image[0x1f1] = 2;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&6u32.to_le_bytes());
        let start = 3 * 512 + 100;
        image[start..start + 6].copy_from_slice(b"\xfd7zXZ\0");
        assert_eq!(bzimage_payload(&image), Some(&b"\xfd7zXZ\0"[..]));
    }

    #[test]
    fn bzimage_payload_rejects_other_files() {
        assert_eq!(bzimage_payload(&[0u8; 1024]), None);
        assert_eq!(bzimage_payload(b"short"), None);
    }
}
