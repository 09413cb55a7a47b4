//! The broker's acknowledgment of a published record, as the client hands
//! it back: from a publish, or inside the error of a batch published only in
//! part (`Error::PartlyPublished`).
//!
//! A module of its own because `error` holds acknowledgments and `types`
//! uses `error`: neither may import the other.

use bytes::Bytes;

/// The broker's acknowledgment of one published record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The partition the record is stored in.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// True when the idempotency key was seen before: nothing was appended,
    /// and `partition` and `offset` are the first record's.
    pub duplicate: bool,
    /// The idempotency key the record was published with.
    pub idempotency_key: Bytes,
}
