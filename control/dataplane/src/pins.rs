//! bpffs and the pins the dataplane keeps there.
use std::{ffi::CString, io, path::Path};

use crate::{Error, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs on `/sys/fs/bpf` unless something already provides it there.
pub(crate) fn ensure_bpffs(pin_root: &Path) -> Result<()> {
    let mount_point = Path::new("/sys/fs/bpf");
    if !pin_root.starts_with(mount_point) || is_bpffs(mount_point) {
        return Ok(());
    }
    let target = CString::new("/sys/fs/bpf").expect("no NUL in a literal");
    let fstype = CString::new("bpf").expect("no NUL in a literal");
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Io {
            context: "mounting bpffs on /sys/fs/bpf".into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) fills a zeroed plain C struct.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path pointer and output struct.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

pub(crate) fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            context: format!("removing pin {}", path.display()),
            source,
        }),
    }
}

/// Removes every pin in `dir`, then `dir` itself.
pub(crate) fn remove_pins(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                context: format!("listing pins in {}", dir.display()),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        remove_file_if_exists(&entry.path())?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            context: format!("removing pin directory {}", dir.display()),
            source,
        }),
    }
}
