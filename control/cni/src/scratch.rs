//! The delegate config each container was added with, kept in `dataDir/<container ID>` (as
//! flannel's plugin keeps it) so that CHECK and DEL reach the same delegate with the same
//! settings even after subnet.env changed.

use std::{
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use crate::error::{CniError, code};

/// The file of `container_id` in `data_dir`, once the ID is known not to leave the directory.
pub fn path(data_dir: &Path, container_id: &str) -> Result<PathBuf, CniError> {
    let valid = !container_id.is_empty()
        && !container_id.starts_with('.')
        && container_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !valid {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_CONTAINERID {container_id:?} is not a valid container ID"),
        ));
    }
    Ok(data_dir.join(container_id))
}

/// Saves the delegate config (directory 0700, file 0600, synced).
pub fn save(path: &Path, config: &[u8]) -> Result<(), CniError> {
    let io = |err: std::io::Error| {
        CniError::new(code::IO, format!("saving {}", path.display())).with_details(err)
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(config).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The saved config, `None` when there is none (never added, or already deleted).
pub fn load(path: &Path) -> Result<Option<Vec<u8>>, CniError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => {
            Err(CniError::new(code::IO, format!("reading {}", path.display())).with_details(err))
        }
    }
}

/// Forgets a container's config; already gone is fine.
pub fn remove(path: &Path) -> Result<(), CniError> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(CniError::new(code::IO, format!("removing {}", path.display())).with_details(err))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn container_ids_stay_inside_the_data_dir() {
        let dir = Path::new("/var/lib/cni/flannel");
        assert_eq!(
            path(dir, "abc_1.2-3").expect("valid"),
            dir.join("abc_1.2-3")
        );
        for bad in ["", "../etc", "a/b", ".hidden"] {
            let err = path(dir, bad).expect_err(bad);
            assert_eq!(err.code, code::INVALID_ENVIRONMENT);
        }
    }

    #[test]
    fn saved_privately_loaded_and_removed_idempotently() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = path(&dir.path().join("flannel"), "c1").expect("valid");
        assert_eq!(load(&file).expect("absent is fine"), None);
        save(&file, b"{}").expect("saved");
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&file).expect("read"), Some(b"{}".to_vec()));
        remove(&file).expect("removed");
        remove(&file).expect("removing twice is fine");
    }
}
