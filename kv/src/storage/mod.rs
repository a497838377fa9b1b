//! The store's data: the MVCC key-value state ([`mvcc`]) and its size ([`db_size`]), the alarms
//! ([`alarms`]) and the quota ([`quota`]), users, roles and permissions
//! ([`auth`]) with this member's simple tokens ([`tokens`]), the Raft log on disk ([`log`]) and how
//! far it is durable ([`durable`]), openraft's log storage with the vote, purge point and
//! snapshots in redb ([`store`]), the versioned, CRC-sealed records of that file ([`records`]),
//! the state machine ([`state_machine`]) and the latest applies' events it keeps for watchers
//! ([`recent_events`]). Every directory of the data dir is owner-only
//! (0700, as etcd makes its data dir) and every file in it 0600, whatever the umask.
pub mod alarms;
pub mod auth;
pub mod db_size;
pub mod durable;
pub mod log;
pub mod mvcc;
pub mod quota;
pub mod recent_events;
pub mod records;
pub mod state_machine;
pub mod store;
pub mod tokens;

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the data dir and the directories in it.
const DIR_MODE: u32 = 0o700;
/// Mode of every data file.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) owner-only, and makes an existing one owner-only.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Creates `path` empty and owner-only if it does not exist, and makes it owner-only if it does
/// (before an engine that creates files with the umask's mode opens it).
pub(crate) fn private_file(path: &Path) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))
}
