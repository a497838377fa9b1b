//! The data dir is owner-only (0700, as etcd makes it) and every file in it 0600, whatever the
//! umask of the process that starts the member.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use shoal_kv::member::{Config, Member};

/// Every directory and file under `dir` (itself included) with its permission bits.
fn modes(dir: &Path, found: &mut Vec<(String, bool, u32)>) {
    let metadata = std::fs::metadata(dir).expect("metadata");
    found.push((
        dir.display().to_string(),
        true,
        metadata.permissions().mode() & 0o777,
    ));
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            modes(&path, found);
        } else {
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            found.push((path.display().to_string(), false, mode & 0o777));
        }
    }
}

#[tokio::test]
async fn data_dir_and_files_are_owner_only_under_a_permissive_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("m0.etcd");
    let config = Config::local("m0", data_dir.clone(), 0, 0);
    let running = Member::start(config).await.expect("member starts");
    // The first log segment appears with the first entry (the new cluster's membership).
    let log_dir = data_dir.join("raft-log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(&log_dir)
        .expect("log dir")
        .next()
        .is_none()
    {
        assert!(std::time::Instant::now() < deadline, "no log segment");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    running.shutdown().await;
    let mut found = Vec::new();
    modes(&data_dir, &mut found);
    for (path, _, mode) in &found {
        println!("{mode:o} {path}");
    }
    assert!(
        found.iter().any(|(path, ..)| path.ends_with(".seg")),
        "a log segment"
    );
    assert!(
        found.iter().any(|(path, ..)| path.ends_with(".redb")),
        "the data file"
    );
    for (path, is_dir, mode) in found {
        assert_eq!(mode, if is_dir { 0o700 } else { 0o600 }, "{path}");
    }
}
