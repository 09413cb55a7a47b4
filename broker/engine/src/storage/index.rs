//! The sparse index of one segment: offset (and timestamp) to file position.
//!
//! Format version 1, little-endian (see `docs/format.md`):
//!
//! ```text
//! header (8 bytes):  b"PBXI"  u32 version = 1
//! entry  (20 bytes): u32 relative_offset  u32 position  i64 timestamp_ms  u32 crc32 of the 16 bytes before it
//! ```
//!
//! An entry points at the first byte of a frame whose base offset is
//! `segment base + relative_offset`. Entries are strictly increasing in offset
//! and position, and non-decreasing in timestamp (append times are monotonic).
//!
//! Invariant: the index is a cache of the log. It is never the only copy of
//! anything; a missing, short or damaged index is rebuilt by scanning the log,
//! so index writes are not fsynced on the append path (only when a segment is
//! sealed and after recovery truncates it).

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::io::{read_exact_at, VFile};

const MAGIC: &[u8; 4] = b"PBXI";
const VERSION: u32 = 1;
/// Bytes of the index file header.
pub const INDEX_HEADER_BYTES: u64 = 8;
/// Bytes of one index entry.
pub const INDEX_ENTRY_BYTES: u64 = 20;

/// One index entry, in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u32,
    pub timestamp_ms: i64,
}

/// The entries of a segment's index, sorted.
#[derive(Debug, Clone, Default)]
pub struct SparseIndex {
    entries: Vec<IndexEntry>,
}

impl SparseIndex {
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    pub fn last(&self) -> Option<&IndexEntry> {
        self.entries.last()
    }

    pub fn push(&mut self, entry: IndexEntry) {
        debug_assert!(self
            .entries
            .last()
            .is_none_or(|last| last.offset < entry.offset));
        self.entries.push(entry);
    }

    pub fn truncate(&mut self, len: usize) {
        self.entries.truncate(len);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The last entry at or before `offset`.
    pub fn floor(&self, offset: u64) -> Option<&IndexEntry> {
        let at = self.entries.partition_point(|e| e.offset <= offset);
        at.checked_sub(1).map(|i| &self.entries[i])
    }

    /// The last entry whose frame was appended strictly before `timestamp_ms`: a
    /// scan from there finds the first frame at or after it.
    pub fn floor_before_timestamp(&self, timestamp_ms: i64) -> Option<&IndexEntry> {
        let at = self
            .entries
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        at.checked_sub(1).map(|i| &self.entries[i])
    }
}

/// Encodes one entry for a segment starting at `base_offset`.
pub fn encode_entry(entry: &IndexEntry, base_offset: u64) -> [u8; INDEX_ENTRY_BYTES as usize] {
    let mut out = [0u8; INDEX_ENTRY_BYTES as usize];
    let relative = (entry.offset - base_offset) as u32;
    out[0..4].copy_from_slice(&relative.to_le_bytes());
    out[4..8].copy_from_slice(&entry.position.to_le_bytes());
    out[8..16].copy_from_slice(&entry.timestamp_ms.to_le_bytes());
    let crc = crc32fast::hash(&out[0..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The file header of a new index.
pub fn file_header() -> [u8; INDEX_HEADER_BYTES as usize] {
    let mut out = [0u8; INDEX_HEADER_BYTES as usize];
    out[0..4].copy_from_slice(MAGIC);
    out[4..8].copy_from_slice(&VERSION.to_le_bytes());
    out
}

/// File position of entry number `i`.
pub fn entry_position(i: usize) -> u64 {
    INDEX_HEADER_BYTES + i as u64 * INDEX_ENTRY_BYTES
}

/// Loads the longest valid prefix of an index file: entries whose CRC holds,
/// that increase strictly, and that point inside a log of `log_bytes`. Returns
/// an empty index when the header is wrong or the file is implausibly large.
pub fn load(
    file: &Arc<dyn VFile>,
    path: &Path,
    base_offset: u64,
    log_bytes: u64,
) -> io::Result<SparseIndex> {
    let len = file.size_bytes()?;
    // Each entry points at a distinct frame of at least a header's size.
    let max_entries = log_bytes / super::batch::HEADER_BYTES as u64 + 1;
    if len < INDEX_HEADER_BYTES || len > entry_position(max_entries as usize) {
        return Ok(SparseIndex::default());
    }
    let mut bytes = vec![0u8; len as usize];
    read_exact_at(file.as_ref(), &mut bytes, 0)?;
    if &bytes[0..4] != MAGIC || bytes[4..8] != VERSION.to_le_bytes() {
        tracing::warn!(path = %path.display(), "index header is damaged; rebuilding the index");
        return Ok(SparseIndex::default());
    }
    let mut index = SparseIndex::default();
    for raw in bytes[INDEX_HEADER_BYTES as usize..].chunks_exact(INDEX_ENTRY_BYTES as usize) {
        let crc = u32::from_le_bytes([raw[16], raw[17], raw[18], raw[19]]);
        if crc32fast::hash(&raw[0..16]) != crc {
            break;
        }
        let relative = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let position = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[8..16]);
        let entry = IndexEntry {
            offset: base_offset + relative as u64,
            position,
            timestamp_ms: i64::from_le_bytes(ts),
        };
        let increasing = index.last().is_none_or(|last| {
            last.offset < entry.offset
                && last.position < entry.position
                && last.timestamp_ms <= entry.timestamp_ms
        });
        if !increasing || entry.position as u64 >= log_bytes {
            break;
        }
        index.push(entry);
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, position: u32, timestamp_ms: i64) -> IndexEntry {
        IndexEntry {
            offset,
            position,
            timestamp_ms,
        }
    }

    #[test]
    fn floor_finds_the_entry_at_or_before() {
        let mut index = SparseIndex::default();
        for (i, e) in [entry(10, 0, 5), entry(20, 100, 6), entry(30, 200, 9)]
            .into_iter()
            .enumerate()
        {
            index.push(e);
            assert_eq!(index.len(), i + 1);
        }
        assert_eq!(index.floor(9), None);
        assert_eq!(index.floor(10).map(|e| e.offset), Some(10));
        assert_eq!(index.floor(29).map(|e| e.offset), Some(20));
        assert_eq!(index.floor(1000).map(|e| e.offset), Some(30));
        assert_eq!(index.floor_before_timestamp(5), None);
        assert_eq!(index.floor_before_timestamp(7).map(|e| e.offset), Some(20));
        assert_eq!(
            index.floor_before_timestamp(100).map(|e| e.offset),
            Some(30)
        );
    }

    #[test]
    fn encoded_entries_roundtrip_and_damage_stops_the_prefix() {
        let fs = crate::testing::sim::SimFs::new();
        let path = Path::new("/i.index");
        let file = super::super::io::Vfs::open(&fs, path, true).expect("open");
        let entries = [entry(1000, 0, 1), entry(1010, 500, 2), entry(1020, 900, 2)];
        let mut bytes = file_header().to_vec();
        for e in &entries {
            bytes.extend_from_slice(&encode_entry(e, 1000));
        }
        file.write_all_at(&[&bytes], 0).expect("write");
        let loaded = load(&file, path, 1000, 2000).expect("load");
        assert_eq!(loaded.entries(), &entries);
        // An entry pointing past the log end ends the valid prefix.
        assert_eq!(load(&file, path, 1000, 800).expect("load").len(), 2);
        // A flipped bit in the second entry keeps only the first.
        bytes[entry_position(1) as usize + 5] ^= 4;
        file.write_all_at(&[&bytes], 0).expect("write");
        assert_eq!(
            load(&file, path, 1000, 2000).expect("load").entries(),
            &entries[..1]
        );
        // A damaged header discards everything.
        bytes[0] = b'X';
        file.write_all_at(&[&bytes], 0).expect("write");
        assert!(load(&file, path, 1000, 2000).expect("load").is_empty());
    }
}
