//! bbolt's file format (go.etcd.io/bbolt, the database etcd keeps its state in), enough to
//! write a database of top-level buckets and read one back: two meta pages (with their FNV-1a
//! checksums), a freelist page, and branch/leaf pages for the root bucket and for each bucket.
//! The writer lays every bucket out in its own pages (never inline) and leaves the freelist
//! empty; the reader also understands inline buckets, as bbolt writes small ones.
use std::collections::BTreeMap;

/// One bucket's keys and values, in key order.
pub type Bucket = BTreeMap<Vec<u8>, Vec<u8>>;
/// A database: its top-level buckets by name.
pub type Database = BTreeMap<Vec<u8>, Bucket>;

const PAGE_SIZE: usize = 4096;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const META_CHECKSUMMED: usize = 56;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;
/// Deeper than any tree a real file has; stops a damaged file's cycle of pages.
const MAX_DEPTH: usize = 64;

/// Why a file is not a readable bbolt database.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("not a bbolt database: {0}")]
    NotBolt(String),
    #[error("damaged bbolt database: {0}")]
    Damaged(String),
}

fn damaged(what: impl Into<String>) -> BoltError {
    BoltError::Damaged(what.into())
}

/// bbolt's checksum of a meta page: FNV-1a 64 over the fields before the checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Writes `db` as a bbolt file image.
pub fn write(db: &Database) -> Vec<u8> {
    let mut writer = Writer {
        file: vec![0; 3 * PAGE_SIZE],
    };
    writer.page_header(2, FREELIST_PAGE, 0, 0);
    let mut root_entries = Vec::with_capacity(db.len());
    for (name, bucket) in db {
        let entries: Vec<Element> = bucket
            .iter()
            .map(|(k, v)| Element {
                flags: 0,
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        let root = writer.tree(entries);
        let mut header = root.to_le_bytes().to_vec();
        header.extend_from_slice(&0u64.to_le_bytes());
        root_entries.push(Element {
            flags: BUCKET_LEAF,
            key: name.clone(),
            value: header,
        });
    }
    let root = writer.tree(root_entries);
    let high_water = (writer.file.len() / PAGE_SIZE) as u64;
    for (pgid, txid) in [(0u64, 0u64), (1, 1)] {
        writer.meta(pgid, root, high_water, txid);
    }
    writer.file
}

struct Element {
    flags: u32,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Element {
    fn leaf_size(&self) -> usize {
        ELEMENT + self.key.len() + self.value.len()
    }
}

struct Writer {
    file: Vec<u8>,
}

impl Writer {
    fn page_header(&mut self, pgid: u64, flags: u16, count: usize, overflow: usize) {
        let at = pgid as usize * PAGE_SIZE;
        let header = &mut self.file[at..at + PAGE_HEADER];
        header[0..8].copy_from_slice(&pgid.to_le_bytes());
        header[8..10].copy_from_slice(&flags.to_le_bytes());
        header[10..12].copy_from_slice(&(count as u16).to_le_bytes());
        header[12..16].copy_from_slice(&(overflow as u32).to_le_bytes());
    }

    fn meta(&mut self, pgid: u64, root: u64, high_water: u64, txid: u64) {
        self.page_header(pgid, META_PAGE, 0, 0);
        let mut meta = Vec::with_capacity(64);
        meta.extend_from_slice(&MAGIC.to_le_bytes());
        meta.extend_from_slice(&VERSION.to_le_bytes());
        meta.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        meta.extend_from_slice(&0u32.to_le_bytes());
        meta.extend_from_slice(&root.to_le_bytes());
        meta.extend_from_slice(&0u64.to_le_bytes());
        meta.extend_from_slice(&2u64.to_le_bytes());
        meta.extend_from_slice(&high_water.to_le_bytes());
        meta.extend_from_slice(&txid.to_le_bytes());
        meta.extend_from_slice(&fnv1a64(&meta).to_le_bytes());
        let at = pgid as usize * PAGE_SIZE + PAGE_HEADER;
        self.file[at..at + meta.len()].copy_from_slice(&meta);
    }

    /// Writes a B+tree of `entries` (sorted) and returns its root page.
    fn tree(&mut self, entries: Vec<Element>) -> u64 {
        let mut level: Vec<(Vec<u8>, u64)> = pack(entries, Element::leaf_size)
            .into_iter()
            .map(|node| {
                let first = node.first().map(|e| e.key.clone()).unwrap_or_default();
                (first, self.leaf(&node))
            })
            .collect();
        while level.len() > 1 {
            level = pack(level, |(key, _)| ELEMENT + key.len())
                .into_iter()
                .map(|node| {
                    let first = node.first().map(|(k, _)| k.clone()).unwrap_or_default();
                    (first, self.branch(&node))
                })
                .collect();
        }
        level.first().map(|(_, pgid)| *pgid).unwrap_or_default()
    }

    /// Appends a page (with overflow pages for what does not fit) and returns its id.
    fn allocate(&mut self, size: usize) -> (u64, usize) {
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        let pgid = (self.file.len() / PAGE_SIZE) as u64;
        self.file.resize(self.file.len() + pages * PAGE_SIZE, 0);
        (pgid, pages - 1)
    }

    fn leaf(&mut self, node: &[Element]) -> u64 {
        let size = PAGE_HEADER + node.iter().map(Element::leaf_size).sum::<usize>();
        let (pgid, overflow) = self.allocate(size);
        self.page_header(pgid, LEAF_PAGE, node.len(), overflow);
        let page = pgid as usize * PAGE_SIZE;
        let mut data = PAGE_HEADER + node.len() * ELEMENT;
        for (i, element) in node.iter().enumerate() {
            let at = page + PAGE_HEADER + i * ELEMENT;
            let pos = (data - (PAGE_HEADER + i * ELEMENT)) as u32;
            let fields = [
                element.flags,
                pos,
                element.key.len() as u32,
                element.value.len() as u32,
            ];
            for (j, field) in fields.iter().enumerate() {
                self.file[at + 4 * j..at + 4 * j + 4].copy_from_slice(&field.to_le_bytes());
            }
            for bytes in [&element.key, &element.value] {
                self.file[page + data..page + data + bytes.len()].copy_from_slice(bytes);
                data += bytes.len();
            }
        }
        pgid
    }

    fn branch(&mut self, node: &[(Vec<u8>, u64)]) -> u64 {
        let size = PAGE_HEADER + node.iter().map(|(k, _)| ELEMENT + k.len()).sum::<usize>();
        let (pgid, overflow) = self.allocate(size);
        self.page_header(pgid, BRANCH_PAGE, node.len(), overflow);
        let page = pgid as usize * PAGE_SIZE;
        let mut data = PAGE_HEADER + node.len() * ELEMENT;
        for (i, (key, child)) in node.iter().enumerate() {
            let at = page + PAGE_HEADER + i * ELEMENT;
            let pos = (data - (PAGE_HEADER + i * ELEMENT)) as u32;
            self.file[at..at + 4].copy_from_slice(&pos.to_le_bytes());
            self.file[at + 4..at + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
            self.file[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
            self.file[page + data..page + data + key.len()].copy_from_slice(key);
            data += key.len();
        }
        pgid
    }
}

/// Splits items into nodes of at most a page each (an item larger than a page gets its own).
fn pack<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut nodes: Vec<Vec<T>> = vec![Vec::new()];
    let mut used = PAGE_HEADER;
    for item in items {
        let item_size = size(&item);
        let full = nodes.last().is_some_and(|n| !n.is_empty()) && used + item_size > PAGE_SIZE;
        if full {
            nodes.push(Vec::new());
            used = PAGE_HEADER;
        }
        used += item_size;
        if let Some(node) = nodes.last_mut() {
            node.push(item);
        }
    }
    nodes
}

/// Reads a bbolt file image: its top-level buckets (nested buckets are refused).
pub fn read(file: &[u8]) -> Result<Database, BoltError> {
    let meta = newest_meta(file)?;
    let reader = Reader {
        file,
        page_size: meta.page_size,
    };
    let mut db = Database::new();
    for (name, value, flags) in reader.tree(meta.root, 0)? {
        if flags & BUCKET_LEAF == 0 {
            return Err(damaged("a key outside any bucket"));
        }
        db.insert(name, reader.bucket(&value)?);
    }
    Ok(db)
}

struct Meta {
    page_size: usize,
    root: u64,
    txid: u64,
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The valid meta page with the highest transaction id (bbolt keeps two, written in turn).
fn newest_meta(file: &[u8]) -> Result<Meta, BoltError> {
    let first = parse_meta(file, 0);
    let page_size = match &first {
        Ok(meta) => meta.page_size,
        Err(_) => PAGE_SIZE,
    };
    let second = parse_meta(file, page_size);
    match (first, second) {
        (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
        (Ok(meta), Err(_)) | (Err(_), Ok(meta)) => Ok(meta),
        (Err(e), Err(_)) => Err(e),
    }
}

fn parse_meta(file: &[u8], at: usize) -> Result<Meta, BoltError> {
    let meta = file
        .get(at + PAGE_HEADER..at + PAGE_HEADER + 64)
        .ok_or_else(|| BoltError::NotBolt("the file is shorter than its meta pages".into()))?;
    let field = |offset| le_u64(meta, offset).unwrap_or_default();
    if le_u32(meta, 0) != Some(MAGIC) {
        return Err(BoltError::NotBolt("no bbolt magic number".into()));
    }
    if le_u32(meta, 4) != Some(VERSION) {
        return Err(BoltError::NotBolt("unknown bbolt format version".into()));
    }
    if field(META_CHECKSUMMED) != fnv1a64(&meta[..META_CHECKSUMMED]) {
        return Err(damaged("meta page checksum mismatch"));
    }
    let page_size = le_u32(meta, 8).unwrap_or_default() as usize;
    if !(512..=1 << 16).contains(&page_size) {
        return Err(damaged(format!("page size {page_size}")));
    }
    if field(40).saturating_mul(page_size as u64) > file.len() as u64 {
        return Err(damaged(format!(
            "the file ends before its last page ({} pages of {page_size} bytes, {} bytes)",
            field(40),
            file.len()
        )));
    }
    Ok(Meta {
        page_size,
        root: field(16),
        txid: field(48),
    })
}

struct Reader<'a> {
    file: &'a [u8],
    page_size: usize,
}

type Entry = (Vec<u8>, Vec<u8>, u32);

impl Reader<'_> {
    /// A bucket's keys and values from its header (and inline page, if it has one).
    fn bucket(&self, value: &[u8]) -> Result<Bucket, BoltError> {
        let root = le_u64(value, 0).ok_or_else(|| damaged("a bucket header is cut short"))?;
        let entries = if root == 0 {
            leaf_entries(&value[BUCKET_HEADER.min(value.len())..])?
        } else {
            self.tree(root, 0)?
        };
        entries
            .into_iter()
            .map(|(k, v, flags)| match flags & BUCKET_LEAF {
                0 => Ok((k, v)),
                _ => Err(BoltError::NotBolt(
                    "nested buckets are not part of etcd's layout".into(),
                )),
            })
            .collect()
    }

    /// The page `pgid` with its overflow pages.
    fn page(&self, pgid: u64) -> Result<&[u8], BoltError> {
        let start = (pgid as usize)
            .checked_mul(self.page_size)
            .filter(|s| pgid >= 2 && s + PAGE_HEADER <= self.file.len())
            .ok_or_else(|| damaged(format!("page {pgid} lies outside the file")))?;
        let overflow = le_u32(self.file, start + 12).unwrap_or_default() as usize;
        let end = start + (overflow + 1) * self.page_size;
        self.file
            .get(start..end)
            .ok_or_else(|| damaged(format!("page {pgid} runs past the end of the file")))
    }

    /// Every leaf entry under page `pgid`, in key order.
    fn tree(&self, pgid: u64, depth: usize) -> Result<Vec<Entry>, BoltError> {
        if depth > MAX_DEPTH {
            return Err(damaged("the page tree loops"));
        }
        let page = self.page(pgid)?;
        let flags = u16::from_le_bytes([page[8], page[9]]);
        match flags {
            LEAF_PAGE => leaf_entries(page),
            BRANCH_PAGE => {
                let mut entries = Vec::new();
                for child in branch_children(page)? {
                    entries.extend(self.tree(child, depth + 1)?);
                }
                Ok(entries)
            }
            other => Err(damaged(format!(
                "page {pgid} has flags {other:#x} where a tree page belongs"
            ))),
        }
    }
}

fn count(page: &[u8]) -> Result<usize, BoltError> {
    let count = page
        .get(10..12)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize)
        .ok_or_else(|| damaged("a page header is cut short"))?;
    if PAGE_HEADER + count * ELEMENT > page.len() {
        return Err(damaged("a page holds more elements than fit"));
    }
    Ok(count)
}

fn slice_at(page: &[u8], at: usize, len: usize) -> Result<&[u8], BoltError> {
    page.get(at..at.saturating_add(len))
        .ok_or_else(|| damaged("an element points outside its page"))
}

fn leaf_entries(page: &[u8]) -> Result<Vec<Entry>, BoltError> {
    let mut entries = Vec::new();
    for i in 0..count(page)? {
        let at = PAGE_HEADER + i * ELEMENT;
        let field = |j: usize| le_u32(page, at + 4 * j).unwrap_or_default() as usize;
        let (flags, pos, ksize, vsize) = (field(0) as u32, field(1), field(2), field(3));
        let key = slice_at(page, at + pos, ksize)?;
        let value = slice_at(page, at + pos + ksize, vsize)?;
        entries.push((key.to_vec(), value.to_vec(), flags));
    }
    Ok(entries)
}

fn branch_children(page: &[u8]) -> Result<Vec<u64>, BoltError> {
    (0..count(page)?)
        .map(|i| {
            le_u64(page, PAGE_HEADER + i * ELEMENT + 8)
                .ok_or_else(|| damaged("a branch element is cut short"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(keys: usize, value_len: usize) -> Database {
        let mut db = Database::new();
        let bucket: Bucket = (0..keys)
            .map(|i| (format!("key{i:06}").into_bytes(), vec![i as u8; value_len]))
            .collect();
        db.insert(b"key".to_vec(), bucket);
        db.insert(b"empty".to_vec(), Bucket::new());
        db.insert(
            b"meta".to_vec(),
            [(b"one".to_vec(), vec![1u8; 9000])].into_iter().collect(),
        );
        db
    }

    #[test]
    fn a_written_database_reads_back_with_branches_and_overflow_pages() {
        let db = sample(5000, 40);
        let file = write(&db);
        assert_eq!(file.len() % PAGE_SIZE, 0);
        assert_eq!(read(&file).expect("read"), db);
    }

    #[test]
    fn a_cut_file_is_refused() {
        let file = write(&sample(2000, 10));
        let error = read(&file[..file.len() - PAGE_SIZE]).expect_err("must fail");
        assert!(error.to_string().contains("ends before"), "{error}");
    }

    #[test]
    fn a_damaged_meta_page_falls_back_to_the_other_and_both_damaged_is_refused() {
        let db = sample(10, 10);
        let mut file = write(&db);
        file[PAGE_HEADER + 20] ^= 1;
        assert_eq!(read(&file).expect("the other meta"), db);
        file[PAGE_SIZE + PAGE_HEADER + 20] ^= 1;
        assert!(read(&file).is_err());
    }
}
