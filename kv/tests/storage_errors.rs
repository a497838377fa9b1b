//! A member whose disk fails (here: fills up) stops, as etcd does, instead of staying up with
//! its Raft stopped; the rest of the cluster goes on.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Clients;
use shoal_harness::StoreKind;

/// Room for the first 64 MiB log segment, the data file and a few 1 MiB values.
const TMPFS_MEGABYTES: u64 = 72;

/// A tmpfs of a few megabytes mounted on a directory, unmounted (lazily) on drop, also when the
/// test fails.
struct SmallTmpfs {
    path: PathBuf,
}

impl SmallTmpfs {
    fn mount(path: &Path, megabytes: u64) -> SmallTmpfs {
        std::fs::create_dir_all(path).expect("the mount point");
        let options = format!("size={megabytes}m,mode=0700");
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", path.display()));
        SmallTmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A follower's data dir on a 72 MiB tmpfs (its first log segment takes 64 MiB): 1 MiB values
/// fill it. Its Raft core stops on the write error; the member must then exit non-zero with the
/// cause, not keep serving stale reads as a zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_disk_fills_up_exits_and_the_others_keep_serving() {
    let mut cluster = common::start_with(StoreKind::ShoalKv, 3, &["--snapshot-count", "20"]).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.kill(follower);
    // The follower's files move to the tmpfs as they are (a wiped data dir would be another
    // member to the leader).
    let data_dir = cluster.specs[follower].data_dir.clone();
    let moved = data_dir.with_extension("before-tmpfs");
    std::fs::rename(&data_dir, &moved).expect("moving the follower's data dir");
    let _tmpfs = SmallTmpfs::mount(&data_dir, TMPFS_MEGABYTES);
    copy_tree(&moved, &data_dir);
    cluster.restart(follower);

    let mut client = cluster.client(leader).await;
    let value = vec![b'x'; 1024 * 1024];
    for n in 0..40 {
        client
            .put(format!("big/{n}"), value.clone(), None)
            .await
            .expect("the leader and the other follower take the write");
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = cluster.exit_status(follower) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the member with a full disk is still running 40 s later:\n{}",
            cluster.log(follower)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = cluster.log(follower);
    assert!(!status.success(), "it exited with {status}:\n{log}");
    assert!(
        log.contains("No space left on device"),
        "the cause is not in its log:\n{log}"
    );
    let last_words = log
        .lines()
        .find(|line| line.starts_with("Error:"))
        .unwrap_or_else(|| panic!("no error printed at exit:\n{log}"));
    assert!(
        last_words.contains("stopped serving: its Raft stopped")
            && last_words.contains(&data_dir.display().to_string()),
        "the error does not say what stopped and which file failed: {last_words}"
    );
    println!("the full member exited with {status}: {last_words}");

    client
        .put("after", "1", None)
        .await
        .expect("the cluster still writes");
    let mut survivor = cluster.client(other).await;
    let got = survivor.get("after", None).await.expect("read");
    assert_eq!(got.kvs().len(), 1);
}

/// Copies the files under `from` to `to` (directories made), as they are.
fn copy_tree(from: &Path, to: &Path) {
    for file in common::data_files(from) {
        let relative = file.strip_prefix(from).expect("under the data dir");
        let target = to.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).expect("a directory of the data dir");
        }
        std::fs::copy(&file, &target).expect("copying a data file");
    }
}
