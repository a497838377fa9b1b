//! The store's size as etcd reports it (`dbSize`, `dbSizeInUse`) and as the quota
//! (`--quota-backend-bytes`) measures it.
//!
//! shoal keeps its state in memory, so the size is defined as the size the state would have as
//! etcd's bbolt file: every row of the `key` bucket (a 17-byte revision key, 18 for a tombstone,
//! and the mvccpb `KeyValue`, plus bbolt's 16-byte leaf element header) and of the `lease` bucket,
//! in 4 KiB pages filled as bbolt fills sequential keys (90 %), on top of the pages an empty
//! database takes. [`super::mvcc::Mvcc::row_bytes`] keeps the row sum exact as writes and
//! compactions apply. *In use* is that size now; the *size* is the largest it has been since this
//! member started or last defragmented, as a bbolt file keeps the pages a compaction freed until
//! a defragment rewrites it.
use std::sync::atomic::{AtomicU64, Ordering};

/// bbolt's page size on x86-64 Linux.
pub const PAGE: u64 = 4096;
/// What an empty etcd 3.4 database takes (meta pages, freelist, the bucket roots).
pub const EMPTY_DB: u64 = 5 * PAGE;
/// How full bbolt fills pages of sequential keys (etcd's `UnsafeSeqPut`).
const FILL_PERCENT: u64 = 90;

/// Bytes in use for `row_bytes` of rows.
pub fn in_use(row_bytes: u64) -> u64 {
    let per_page = PAGE * FILL_PERCENT / 100;
    EMPTY_DB + row_bytes.div_ceil(per_page) * PAGE
}

/// This member's database size, read without locks (the quota check, Status, `/metrics`).
#[derive(Debug)]
pub struct DbSize {
    in_use: AtomicU64,
    high_water: AtomicU64,
}

impl Default for DbSize {
    fn default() -> Self {
        DbSize {
            in_use: AtomicU64::new(EMPTY_DB),
            high_water: AtomicU64::new(EMPTY_DB),
        }
    }
}

impl DbSize {
    /// The state now takes `row_bytes` of rows (after an apply).
    pub fn observe(&self, row_bytes: u64) {
        let bytes = in_use(row_bytes);
        self.in_use.store(bytes, Ordering::Relaxed);
        self.high_water.fetch_max(bytes, Ordering::Relaxed);
    }

    /// The state was replaced (a start, a snapshot installed) or rewritten (a defragment): the
    /// size is what is in use.
    pub fn reset(&self, row_bytes: u64) {
        let bytes = in_use(row_bytes);
        self.in_use.store(bytes, Ordering::Relaxed);
        self.high_water.store(bytes, Ordering::Relaxed);
    }

    /// etcd's `dbSize`: the pages the file holds, freed ones included.
    pub fn size(&self) -> u64 {
        self.high_water
            .load(Ordering::Relaxed)
            .max(self.in_use.load(Ordering::Relaxed))
    }

    /// etcd's `dbSizeInUse`.
    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_keeps_freed_pages_until_a_defragment() {
        let size = DbSize::default();
        assert_eq!((size.size(), size.in_use()), (EMPTY_DB, EMPTY_DB));
        size.observe(1_000_000);
        let full = size.size();
        assert!(full > 1_000_000);
        size.observe(10_000);
        assert_eq!(size.size(), full, "a compaction frees pages, not the file");
        assert!(size.in_use() < 20_000 + EMPTY_DB);
        size.reset(10_000);
        assert_eq!(size.size(), size.in_use());
    }
}
