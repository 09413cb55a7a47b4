//! Where a remembered idempotency key's record lives: the value of every
//! dedup map, run and metadata-store entry. A leaf: it imports nothing of the
//! crate, so the dedup index, its run store and the metadata store can all
//! name it without importing each other.

/// Where a remembered idempotency key's record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupEntry {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
}
