//! The Raft log on disk: append-only, preallocated segment files of checksummed records, one
//! `write` plus one `fdatasync` per append (the leader's own appends are synced by
//! [`crate::storage::durable`]'s flusher instead, in parallel with replication).
//!
//! Layout: `<data-dir>/raft-log/<first index, 20 digits>.seg`, each preallocated to
//! [`SEGMENT_BYTES`] (so `fdatasync` has no file size to journal) and zeroed by real writes a
//! little ahead of the appends (`ZERO_AHEAD_BYTES`): ext4 and XFS keep fallocated blocks
//! "unwritten" until written, and the first `fdatasync` after writing into one commits the
//! conversion to the journal, which doubled its cost (measured on ext4: 244-311 us per 4 KiB
//! write + fdatasync into fallocated blocks, 127-197 us into zeroed ones). With the zeroing an
//! append only changes data blocks. A segment starts with a header, `[magic "SHOALLOG"][format
//! version u32 LE][4 zero bytes]`, checked once when the log opens (one version per file: a
//! segment is written by one shoal, and the append path pays nothing for it). Records follow it:
//! `[payload length u32 LE][CRC-32 of payload u32 LE][payload: bincode of the entry]`,
//! zero-padded to 8 bytes; a zero header ends the data. A segment without the header (written
//! before there was one) is format version 0 and refused.
//!
//! Recovery reads every segment. Entries must follow each other (index + 1), except right after
//! the purge point, where a snapshot may have skipped ahead. In the newest segment, a record that
//! fails its checksum is a torn write (the crash hit the last, unacknowledged append) when it
//! holds a zeroed 512-byte sector and nothing but zeros follows it: it is cut off. Any other bad
//! record, and any bad record in an older segment, is damage: opening fails with its position.
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::StoreError;
use crate::types::Entry;

/// Bytes preallocated per segment; a new segment starts when an append would not fit.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER_BYTES: usize = 8;
/// What a segment starts with, then its [`FORMAT_VERSION`].
const MAGIC: &[u8; 8] = b"SHOALLOG";
/// The segment format this shoal writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The segment header: magic, format version, 4 zero bytes (records stay 8-byte aligned).
const SEGMENT_HEADER_BYTES: usize = 16;
const ALIGN: usize = 8;
/// How far ahead of the appends the newest segment's blocks are written with zeros: one
/// journal commit per this many bytes of log instead of one per append.
const ZERO_AHEAD_BYTES: u64 = 1024 * 1024;
/// The unit a disk writes atomically; a torn write leaves whole sectors zeroed.
const SECTOR: usize = 512;
/// No payload is larger (a Raft entry holds at most a few MiB of commands).
const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

/// Where an entry's record starts.
#[derive(Debug, Clone, Copy)]
struct Position {
    segment: u64,
    offset: u64,
}

/// One segment file, named by the index of its first record.
struct Segment {
    first: u64,
    file: File,
}

/// The open log: where every entry lives and the segment being appended to.
pub struct LogFile {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    positions: BTreeMap<u64, Position>,
    /// The next append's offset in the newest segment.
    end: u64,
    /// Up to where the newest segment's blocks have been written (with data or zeros).
    zeroed: u64,
    /// Up to where the newest segment is known to be on disk (fdatasync'ed); older segments are
    /// synced whole before the next one starts. What a power loss keeps.
    synced: u64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn damaged(path: &Path, offset: usize, what: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged(format!(
        "raft log {} at offset {offset}: {what}",
        path.display()
    ))
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// fdatasync of `file`; whether the data really reached the disk (the `raftlog::skip_fsync`
/// failpoint pretends it did, see [`crate::failpoints`]).
pub(crate) fn sync_data(file: &File) -> Result<bool, StoreError> {
    fail::fail_point!("raftlog::fsync", |_| Err(injected("raftlog::fsync")));
    fail::fail_point!("raftlog::skip_fsync", |_| Ok(false));
    file.sync_data()?;
    Ok(true)
}

/// The I/O error a failpoint's `return` stands for.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected(point: &str) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("failpoint {point}")))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Extends `file` with zeroed, allocated blocks up to [`SEGMENT_BYTES`].
fn preallocate(file: &File, from: u64) -> Result<(), StoreError> {
    if from < SEGMENT_BYTES {
        use std::os::fd::AsRawFd;
        nix::fcntl::posix_fallocate(file.as_raw_fd(), from as i64, (SEGMENT_BYTES - from) as i64)
            .map_err(|e| StoreError::Io(std::io::Error::from(e)))?;
    }
    Ok(())
}

fn segment_header(version: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0; SEGMENT_HEADER_BYTES];
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    header[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&version.to_le_bytes());
    header
}

/// Refuses a segment of another format (version 0: no header, written before there was one).
fn check_segment_header(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let found = match bytes.get(..SEGMENT_HEADER_BYTES) {
        Some(header) if header.starts_with(MAGIC) => {
            let version = &header[MAGIC.len()..MAGIC.len() + 4];
            u32::from_le_bytes([version[0], version[1], version[2], version[3]])
        }
        _ => 0,
    };
    if found != FORMAT_VERSION {
        return Err(StoreError::UnknownFormat {
            path: path.display().to_string(),
            found,
            expected: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// Entries encoded as consecutive records.
struct Encoded {
    bytes: Vec<u8>,
    /// Each entry's index and record offset in `bytes`.
    offsets: Vec<(u64, usize)>,
}

fn encode_records(entries: &[Entry]) -> Result<Encoded, StoreError> {
    // Sized first (cheap: a request's protobuf encoding is made once and kept), so the buffer is
    // allocated once instead of doubling through the records.
    let mut size = 0usize;
    for entry in entries {
        let payload = usize::try_from(bincode::serialized_size(entry)?).unwrap_or(0);
        size = size.saturating_add(align(HEADER_BYTES.saturating_add(payload)));
    }
    let mut buf = Vec::with_capacity(size);
    let mut offsets = Vec::with_capacity(entries.len());
    for entry in entries {
        let start = buf.len();
        offsets.push((entry.log_id.index, start));
        // The payload is encoded in place after room for its header, which is filled in then.
        buf.resize(start + HEADER_BYTES, 0);
        bincode::serialize_into(&mut buf, entry)?;
        let payload = &buf[start + HEADER_BYTES..];
        let len = u32::try_from(payload.len())
            .map_err(|_| StoreError::Io(std::io::Error::other("a log entry over 4 GiB")))?;
        let crc = crc32fast::hash(payload);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        buf.resize(align(buf.len()), 0);
    }
    Ok(Encoded {
        bytes: buf,
        offsets,
    })
}

/// What reading one segment found.
struct Scanned {
    entries: Vec<(Entry, usize)>,
    /// Where the data ends (the next append goes here).
    end: usize,
    /// A torn record was found at `end` and must be cut off.
    torn: bool,
}

/// Whether `bytes[from..to]` holds a zeroed sector: a whole one, or the record's last partial one
/// if it is long enough not to be a run of zeros in the data.
fn has_zeroed_sector(bytes: &[u8], from: usize, to: usize) -> bool {
    const MIN_ZEROED_TAIL: usize = 32;
    let mut start = from.div_ceil(SECTOR) * SECTOR;
    while start < to {
        let stop = (start + SECTOR).min(to);
        let long_enough = stop - start == SECTOR || stop - start >= MIN_ZEROED_TAIL;
        if long_enough && all_zero(&bytes[start..stop]) {
            return true;
        }
        start += SECTOR;
    }
    false
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Reads the records after a segment's header; `newest` allows a torn last record.
fn scan(path: &Path, bytes: &[u8], newest: bool) -> Result<Scanned, StoreError> {
    let mut entries = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset + HEADER_BYTES <= bytes.len() {
        let header = &bytes[offset..offset + HEADER_BYTES];
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 && crc == 0 {
            if all_zero(&bytes[offset..]) {
                return Ok(Scanned {
                    entries,
                    end: offset,
                    torn: false,
                });
            }
            return Err(damaged(path, offset, "zeroed record followed by data"));
        }
        let stop = offset + HEADER_BYTES + len;
        if len > MAX_RECORD_BYTES || stop > bytes.len() {
            return Err(damaged(
                path,
                offset,
                format!("record length {len} is impossible"),
            ));
        }
        let payload = &bytes[offset + HEADER_BYTES..stop];
        if crc32fast::hash(payload) != crc {
            let torn = newest
                && has_zeroed_sector(bytes, offset + HEADER_BYTES, stop)
                && all_zero(&bytes[stop..]);
            if torn {
                return Ok(Scanned {
                    entries,
                    end: offset,
                    torn: true,
                });
            }
            return Err(damaged(path, offset, "record fails its checksum"));
        }
        let entry: Entry = bincode::deserialize(payload)
            .map_err(|e| damaged(path, offset, format!("undecodable record: {e}")))?;
        entries.push((entry, offset));
        offset = align(stop);
    }
    if all_zero(&bytes[offset.min(bytes.len())..]) {
        return Ok(Scanned {
            entries,
            end: offset.min(bytes.len()),
            torn: false,
        });
    }
    Err(damaged(path, offset, "truncated record header"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut firsts = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let name = item?.file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        let first = stem.parse().map_err(|_| {
            StoreError::Damaged(format!(
                "raft log: unexpected file {name} in {}",
                dir.display()
            ))
        })?;
        firsts.push(first);
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Writes this shoal's header at the start of a segment and syncs it.
fn write_segment_header(file: &File) -> Result<(), StoreError> {
    file.write_all_at(&segment_header(FORMAT_VERSION), 0)?;
    file.sync_all()?;
    Ok(())
}

fn open_segment(path: &Path) -> Result<File, StoreError> {
    Ok(OpenOptions::new().read(true).write(true).open(path)?)
}

impl LogFile {
    /// Opens the log in `dir` (created if missing) and returns it with every entry after
    /// `last_purged`, in order.
    pub fn open(dir: &Path, last_purged: Option<u64>) -> Result<(LogFile, Vec<Entry>), StoreError> {
        super::private_dir(dir)?;
        let firsts = list_segments(dir)?;
        let mut log = LogFile {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            positions: BTreeMap::new(),
            end: 0,
            zeroed: 0,
            synced: 0,
        };
        let mut entries: Vec<Entry> = Vec::new();
        for (n, first) in firsts.iter().enumerate() {
            let path = segment_path(dir, *first);
            let bytes = std::fs::read(&path)?;
            let newest = n + 1 == firsts.len();
            let file = open_segment(&path)?;
            if newest && all_zero(&bytes) {
                // Created, but the crash came before its header was on disk: it holds nothing.
                write_segment_header(&file)?;
            } else {
                check_segment_header(&path, &bytes)?;
            }
            let scanned = scan(&path, &bytes, newest)?;
            if scanned.torn {
                tracing::warn!(
                    "raft log {}: cutting off a torn write at offset {}",
                    path.display(),
                    scanned.end
                );
                file.set_len(scanned.end as u64)?;
                preallocate(&file, scanned.end as u64)?;
                file.sync_all()?;
            }
            for (entry, offset) in scanned.entries {
                log.accept(&path, &mut entries, entry, *first, offset, last_purged)?;
            }
            if newest {
                // What was read may have been only in the page cache of a process that was
                // killed: it counts as on disk from now on, so make it so.
                file.sync_data()?;
            }
            log.end = scanned.end as u64;
            log.zeroed = log.end;
            log.synced = log.end;
            log.segments.insert(
                *first,
                Segment {
                    first: *first,
                    file,
                },
            );
        }
        Ok((log, entries))
    }

    /// Checks that `entry` follows the previous one and records where it lives.
    fn accept(
        &mut self,
        path: &Path,
        entries: &mut Vec<Entry>,
        entry: Entry,
        segment: u64,
        offset: usize,
        last_purged: Option<u64>,
    ) -> Result<(), StoreError> {
        let index = entry.log_id.index;
        let purged = last_purged.is_some_and(|p| index <= p);
        let follows = match entries.last() {
            Some(previous) => previous.log_id.index + 1 == index,
            None => true,
        };
        let after_purge = last_purged.is_some_and(|p| index == p + 1);
        if !purged && !follows && !after_purge {
            let previous = entries.last().map(|e| e.log_id.index).unwrap_or_default();
            return Err(damaged(
                path,
                offset,
                format!("entry {index} follows entry {previous}"),
            ));
        }
        if purged {
            entries.clear();
            return Ok(());
        }
        if after_purge {
            entries.clear();
        }
        self.positions.insert(
            index,
            Position {
                segment,
                offset: offset as u64,
            },
        );
        entries.push(entry);
        Ok(())
    }

    /// Writes `entries` (which follow the last one) and waits until they are on disk.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.write(entries)?;
        self.sync()
    }

    /// Waits until everything written is on disk.
    fn sync(&mut self) -> Result<(), StoreError> {
        let t = std::time::Instant::now();
        if let Ok((_, file)) = self.active()
            && sync_data(file)?
        {
            self.synced = self.end;
            crate::metrics::metrics()
                .wal_fsync
                .observe(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Where the next append goes: the newest segment (by its first index) and the offset in
    /// it. A sync that began at this point and succeeded covers everything before it
    /// ([`LogFile::mark_synced`]).
    pub fn write_position(&self) -> (Option<u64>, u64) {
        let newest = self.segments.last_key_value().map(|(first, _)| *first);
        (newest, self.end)
    }

    /// A sync that began at `position` ([`LogFile::write_position`]) succeeded.
    pub fn mark_synced(&mut self, position: (Option<u64>, u64)) {
        if position.0 == self.write_position().0 && position.1 <= self.end {
            self.synced = self.synced.max(position.1);
        }
    }

    /// A power loss: the newest segment loses what was written after its last fdatasync
    /// (older segments were synced whole). The log must not be used afterwards.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub(crate) fn drop_unsynced_tail(&mut self) -> Result<(), StoreError> {
        let synced = self.synced;
        let (_, file) = self.active()?;
        file.set_len(synced)?;
        preallocate(file, synced)?;
        self.end = synced;
        self.zeroed = synced;
        Ok(())
    }

    /// A handle that syncs what is written so far without holding the log: only the newest
    /// segment can hold unsynced data (starting a segment syncs the one before).
    pub fn sync_handle(&self) -> Result<Option<File>, StoreError> {
        match self.active() {
            Ok((_, file)) => Ok(Some(file.try_clone()?)),
            Err(_) => Ok(None),
        }
    }

    /// Writes `entries` (which follow the last one) without waiting for the disk: they are in
    /// the page cache, safe from a crash of this process but not of the machine until a sync.
    pub fn write(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return Ok(());
        };
        fail::fail_point!("raftlog::append", |_| Err(injected("raftlog::append")));
        let Encoded {
            bytes: buf,
            offsets,
        } = encode_records(entries)?;
        let holds_records = self.end > SEGMENT_HEADER_BYTES as u64;
        let full = holds_records && self.end + buf.len() as u64 > SEGMENT_BYTES;
        if full || self.segments.is_empty() {
            self.start_segment(first)?;
        }
        self.zero_ahead(self.end + buf.len() as u64)?;
        let (segment, file) = self.active()?;
        file.write_all_at(&buf, self.end)?;
        for (index, offset) in offsets {
            let offset = self.end + offset as u64;
            self.positions.insert(index, Position { segment, offset });
        }
        self.end += buf.len() as u64;
        Ok(())
    }

    /// Before an append that ends at `to` passes the zeroed blocks, writes zeros into the
    /// newest segment from `to` on, [`ZERO_AHEAD_BYTES`] far (the append itself covers the blocks
    /// before `to`). The bytes read as zeros already (preallocated): this only turns them into
    /// written blocks, which the next sync makes durable together with the data.
    fn zero_ahead(&mut self, to: u64) -> Result<(), StoreError> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        if to <= self.zeroed {
            return Ok(());
        }
        let stop = (to + ZERO_AHEAD_BYTES).min(SEGMENT_BYTES).max(to);
        let (_, file) = self.active()?;
        let mut offset = to;
        while offset < stop {
            let len = (stop - offset).min(ZEROS.len() as u64) as usize;
            file.write_all_at(&ZEROS[..len], offset)?;
            offset += len as u64;
        }
        self.zeroed = stop;
        Ok(())
    }

    fn active(&self) -> Result<(u64, &File), StoreError> {
        let (first, segment) = self
            .segments
            .last_key_value()
            .ok_or_else(|| StoreError::Damaged("raft log has no segment".to_string()))?;
        Ok((*first, &segment.file))
    }

    /// Seals the newest segment and starts an empty one for entries from `first` on.
    fn start_segment(&mut self, first: u64) -> Result<(), StoreError> {
        if let Ok((_, file)) = self.active() {
            file.sync_all()?;
        }
        let path = segment_path(&self.dir, first);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(super::FILE_MODE)
            .open(&path)?;
        preallocate(&file, 0)?;
        write_segment_header(&file)?;
        sync_dir(&self.dir)?;
        self.segments.insert(first, Segment { first, file });
        self.end = SEGMENT_HEADER_BYTES as u64;
        self.zeroed = self.end;
        self.synced = self.end;
        Ok(())
    }

    /// The index of the newest entry the log holds, if it holds any.
    pub fn last_index(&self) -> Option<u64> {
        self.positions.last_key_value().map(|(index, _)| *index)
    }

    /// Removes every entry from `index` on (entries a new leader overwrites) and syncs what
    /// stays; whether there was anything to remove.
    pub fn truncate(&mut self, index: u64) -> Result<bool, StoreError> {
        let Some(position) = self.positions.get(&index).copied() else {
            return Ok(false);
        };
        let later: Vec<u64> = self
            .segments
            .range(position.segment + 1..)
            .map(|(first, _)| *first)
            .collect();
        for first in later {
            self.segments.remove(&first);
            std::fs::remove_file(segment_path(&self.dir, first))?;
        }
        let segment = self.segments.get(&position.segment).ok_or_else(|| {
            StoreError::Damaged(format!("raft log segment {} is gone", position.segment))
        })?;
        segment.file.set_len(position.offset)?;
        preallocate(&segment.file, position.offset)?;
        segment.file.sync_all()?;
        sync_dir(&self.dir)?;
        self.positions.split_off(&index);
        self.end = position.offset;
        self.zeroed = position.offset;
        self.synced = position.offset;
        Ok(true)
    }

    /// Forgets entries up to `index` (in a snapshot now) and deletes segments holding only those.
    /// The caller records the purge point durably first.
    pub fn purge(&mut self, index: u64) -> Result<(), StoreError> {
        let kept = self.positions.split_off(&(index + 1));
        self.positions = kept;
        let newest = self.segments.last_key_value().map(|(first, _)| *first);
        let mut obsolete = Vec::new();
        for (first, segment) in &self.segments {
            if Some(*first) == newest {
                break;
            }
            let still_used = self
                .positions
                .first_key_value()
                .is_some_and(|(_, p)| p.segment <= segment.first);
            if !still_used {
                obsolete.push(*first);
            }
        }
        for first in &obsolete {
            self.segments.remove(first);
            std::fs::remove_file(segment_path(&self.dir, *first))?;
        }
        if !obsolete.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::test_entry as entry;
    use crate::types::{Command, LogId};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let firsts = list_segments(dir).expect("segments");
        assert_eq!(firsts.len(), 1);
        segment_path(dir, firsts[0])
    }

    #[test]
    fn appends_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, loaded) = LogFile::open(dir.path(), None).expect("open");
        assert!(loaded.is_empty());
        log.append(&[entry(1, 1), entry(2, 1)]).expect("append");
        log.append(&[entry(3, 1)]).expect("append");
        drop(log);
        let (mut log, loaded) = LogFile::open(dir.path(), None).expect("reopen");
        assert_eq!(indexes(&loaded), vec![1, 2, 3]);
        log.append(&[entry(4, 2)]).expect("append after reopening");
        let (_, loaded) = LogFile::open(dir.path(), None).expect("reopen");
        assert_eq!(indexes(&loaded), vec![1, 2, 3, 4]);
        assert_eq!(loaded[3].log_id.leader_id.term, 2);
    }

    #[test]
    fn a_power_loss_keeps_what_was_synced_and_drops_what_was_only_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1), entry(2, 1)]).expect("append");
        log.write(&[entry(3, 1)]).expect("write without sync");
        let flushed_from = log.write_position();
        log.write(&[entry(4, 1)]).expect("write without sync");
        log.mark_synced(flushed_from); // a flush that began before entry 4 was written
        log.write(&[entry(5, 1)]).expect("write without sync");
        log.drop_unsynced_tail().expect("power loss");
        drop(log);
        let (_, loaded) = LogFile::open(dir.path(), None).expect("reopen");
        assert_eq!(indexes(&loaded), vec![1, 2, 3]);
    }

    #[test]
    fn truncate_then_append_overwrites_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .expect("append");
        log.truncate(2).expect("truncate");
        log.append(&[entry(2, 2)]).expect("append");
        let (_, loaded) = LogFile::open(dir.path(), None).expect("reopen");
        assert_eq!(indexes(&loaded), vec![1, 2]);
        assert_eq!(loaded[1].log_id.leader_id.term, 2);
    }

    #[test]
    fn purge_skips_ahead_and_drops_old_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1), entry(2, 1)]).expect("append");
        // A snapshot installed from the leader moves the purge point past the local log.
        log.purge(10).expect("purge");
        log.append(&[entry(11, 2)]).expect("append");
        let (_, loaded) = LogFile::open(dir.path(), Some(10)).expect("reopen");
        assert_eq!(indexes(&loaded), vec![11]);
    }

    #[test]
    fn big_appends_start_new_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1)]).expect("append");
        log.end = SEGMENT_BYTES - 8; // as if the segment were full
        log.append(&[entry(2, 1)]).expect("append");
        assert_eq!(list_segments(dir.path()).expect("list"), vec![1, 2]);
        log.purge(1).expect("purge");
        assert_eq!(list_segments(dir.path()).expect("list"), vec![2]);
        let (_, loaded) = LogFile::open(dir.path(), Some(1)).expect("reopen");
        assert_eq!(indexes(&loaded), vec![2]);
    }

    /// Byte ranges of `file` the filesystem reports as allocated but unwritten (FIEMAP), or
    /// `None` where it cannot say (tmpfs, or a filesystem without unwritten extents).
    fn unwritten_ranges(file: &File) -> Option<Vec<(u64, u64)>> {
        use std::os::fd::AsRawFd;
        const FS_IOC_FIEMAP: nix::libc::c_ulong = 0xC020_660B;
        const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
        const EXTENTS: usize = 64;
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Extent {
            logical: u64,
            physical: u64,
            length: u64,
            reserved64: [u64; 2],
            flags: u32,
            reserved: [u32; 3],
        }
        #[repr(C)]
        struct Fiemap {
            start: u64,
            length: u64,
            flags: u32,
            mapped_extents: u32,
            extent_count: u32,
            reserved: u32,
            extents: [Extent; EXTENTS],
        }
        let mut map = Fiemap {
            start: 0,
            length: u64::MAX,
            flags: 1, // FIEMAP_FLAG_SYNC
            mapped_extents: 0,
            extent_count: EXTENTS as u32,
            reserved: 0,
            extents: [Extent::default(); EXTENTS],
        };
        // SAFETY: `map` is a valid, writable fiemap with room for `extent_count` extents.
        let rc = unsafe { nix::libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut map) };
        if rc != 0 {
            return None;
        }
        let extents = &map.extents[..map.mapped_extents as usize];
        Some(
            extents
                .iter()
                .filter(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0)
                .map(|e| (e.logical, e.logical + e.length))
                .collect(),
        )
    }

    #[test]
    fn appends_write_into_blocks_already_written_so_a_sync_journals_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let probe = File::create(dir.path().join("probe")).expect("probe");
        preallocate(&probe, 0).expect("preallocate");
        if unwritten_ranges(&probe).is_none_or(|ranges| ranges.is_empty()) {
            return; // this filesystem has no unwritten blocks to avoid
        }
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1)]).expect("append");
        let file = File::open(only_segment(dir.path())).expect("segment");
        let written_ahead = log.end + ZERO_AHEAD_BYTES;
        let unwritten = unwritten_ranges(&file).expect("fiemap");
        assert!(!unwritten.is_empty(), "the whole segment was written");
        assert!(
            unwritten.iter().all(|(start, _)| *start >= written_ahead),
            "unwritten blocks {unwritten:?} within {written_ahead} bytes of the start"
        );
        for index in 2..=3 {
            log.append(&[entry(index, 1)]).expect("append");
        }
        assert_eq!(unwritten_ranges(&file).expect("fiemap"), unwritten);
        drop(log);
        let (_, loaded) = LogFile::open(dir.path(), None).expect("reopen");
        assert_eq!(indexes(&loaded), vec![1, 2, 3]);
    }

    #[test]
    fn a_torn_last_record_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1)]).expect("append");
        let big = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 2),
            payload: EntryPayload::Normal(Command::Batch(vec![Command::Compact(7); 600])),
        };
        let start = log.end as usize;
        log.append(&[big]).expect("append");
        let stop = log.end as usize;
        drop(log);
        // The crash kept the record's first sector and lost the rest.
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        let kept_to = start.div_ceil(SECTOR) * SECTOR + SECTOR;
        assert!(kept_to < stop, "the record must span sectors");
        bytes[kept_to..stop].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let (mut log, loaded) = LogFile::open(dir.path(), None).expect("reopen");
        assert_eq!(indexes(&loaded), vec![1]);
        log.append(&[entry(2, 2)]).expect("append after the cut");
        let (_, loaded) = LogFile::open(dir.path(), None).expect("reopen");
        assert_eq!(indexes(&loaded), vec![1, 2]);
    }

    #[test]
    fn a_damaged_record_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .expect("append");
        let second = log.positions[&2].offset as usize;
        drop(log);
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[second + HEADER_BYTES + 2] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let error = LogFile::open(dir.path(), None).err().expect("must fail");
        let message = error.to_string();
        assert!(message.contains("damaged"), "{message}");
        assert!(message.contains("checksum"), "{message}");
        assert!(message.contains(&format!("offset {second}")), "{message}");
    }

    #[test]
    fn a_damaged_last_record_without_zeroed_sectors_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1), entry(2, 1)]).expect("append");
        let last = log.positions[&2].offset as usize;
        drop(log);
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[last + HEADER_BYTES] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        assert!(LogFile::open(dir.path(), None).is_err());
    }

    #[test]
    fn a_segment_of_another_format_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1)]).expect("append");
        drop(log);
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&segment_header(FORMAT_VERSION + 1));
        std::fs::write(&path, &bytes).expect("write");
        let error = LogFile::open(dir.path(), None).err().expect("must fail");
        assert_eq!(
            error.to_string(),
            format!(
                "data file {} has format version {}, this shoal reads {}",
                path.display(),
                FORMAT_VERSION + 1,
                FORMAT_VERSION
            )
        );
    }

    #[test]
    fn a_segment_without_a_header_is_version_0_and_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1), entry(2, 1)]).expect("append");
        drop(log);
        // A segment as shoal wrote it before segments had a header: records from offset 0.
        let path = only_segment(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.drain(..SEGMENT_HEADER_BYTES);
        std::fs::write(&path, &bytes).expect("write");
        let error = LogFile::open(dir.path(), None).err().expect("must fail");
        let message = error.to_string();
        assert!(
            message.contains("has format version 0, this shoal reads 1"),
            "{message}"
        );
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn a_new_segment_whose_header_never_reached_the_disk_is_taken_as_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = LogFile::open(dir.path(), None).expect("open");
        log.append(&[entry(1, 1)]).expect("append");
        drop(log);
        let path = only_segment(dir.path());
        std::fs::write(&path, vec![0; 4096]).expect("write");
        let (mut log, loaded) = LogFile::open(dir.path(), None).expect("reopen");
        assert!(loaded.is_empty());
        log.append(&[entry(1, 2)]).expect("append");
        let (_, loaded) = LogFile::open(dir.path(), None).expect("reopen");
        assert_eq!(indexes(&loaded), vec![1]);
    }
}
