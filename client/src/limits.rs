//! The client's copies of the broker's limits, and of the record framing the
//! broker counts against them.
//!
//! The client does not depend on the broker crate (it talks to the broker only
//! over gRPC), so it keeps its own copy of each limit it checks before
//! sending: a request the broker would refuse fails at once, with a message
//! naming the limit, instead of after a round trip (or, for a record sent
//! with [`Producer::send`](crate::Producer::send), instead of failing the
//! other records batched with it). Each public constant mirrors the constant
//! of the same name in `postbox_engine::limits` unless its doc says otherwise;
//! an integration test in `tests/` asserts that they are equal.
//!
//! Invariant: the client never refuses what the broker accepts. Sizes are
//! `usize` here (the broker's are mostly `u32`) because the client compares
//! them with lengths in memory.

/// Largest record, as the broker counts it: key, idempotency key, headers and
/// payload with their length fields (see [`OutgoingRecord::encoded_bytes`]).
/// Mirrors `postbox_engine::limits::RECORD_BYTES_MAX`.
///
/// [`OutgoingRecord::encoded_bytes`]: crate::OutgoingRecord::encoded_bytes
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;

/// Largest record key. Mirrors `postbox_engine::limits::KEY_BYTES_MAX`.
pub const KEY_BYTES_MAX: usize = 4 * 1024;

/// Largest idempotency key. Mirrors
/// `postbox_engine::limits::IDEMPOTENCY_KEY_BYTES_MAX`.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Most headers on one record. Mirrors
/// `postbox_engine::limits::HEADERS_PER_RECORD_MAX`.
pub const HEADERS_PER_RECORD_MAX: usize = 64;

/// Largest header name. Mirrors `postbox_engine::limits::HEADER_NAME_BYTES_MAX`.
pub const HEADER_NAME_BYTES_MAX: usize = 256;

/// Most records in one publish. Mirrors
/// `postbox_engine::limits::BATCH_RECORDS_MAX`.
pub const BATCH_RECORDS_MAX: usize = 10_000;

/// Largest publish as the broker counts it: [`BATCH_HEADER_BYTES`] plus every
/// record's encoded bytes. Mirrors `postbox_engine::limits::BATCH_BYTES_MAX`.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Bytes the broker adds to every publish (its batch frame header) before it
/// checks [`BATCH_BYTES_MAX`]. Mirrors
/// `postbox_engine::storage::batch::HEADER_BYTES`.
pub const BATCH_HEADER_BYTES: usize = 40;

/// Largest `max_message_bytes` a subscription may ask for. Mirrors
/// `postbox_engine::limits::READ_BYTES_MAX`.
pub const SUBSCRIBE_MESSAGE_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// Largest gRPC message the client encodes or decodes: just above the
/// largest batch and the largest read response with their protobuf framing,
/// as the broker's own bound on what it encodes and decodes. Mirrors
/// `postbox_engine::limits::GRPC_MESSAGE_BYTES_MAX`.
pub const MESSAGE_BYTES_MAX: usize = 20 * 1024 * 1024;

/// The length fields of every record in the broker's batch format (version
/// 1, `docs/format.md`): record length, key length and idempotency key length
/// (u32 each) and header count (u16). The broker calls it `RECORD_BYTES_MIN`.
pub(crate) const RECORD_FRAMING_BYTES: usize = 4 + 4 + 4 + 2;

/// The length fields of every header: name length (u16), value length (u32).
pub(crate) const HEADER_FRAMING_BYTES: usize = 2 + 4;

const _: () = assert!(RECORD_BYTES_MAX <= BATCH_BYTES_MAX - BATCH_HEADER_BYTES);
const _: () = assert!(KEY_BYTES_MAX < RECORD_BYTES_MAX);
const _: () = assert!(IDEMPOTENCY_KEY_BYTES_MAX < KEY_BYTES_MAX);
// A generated idempotency key (a UUID in text form) must be one the broker accepts.
const _: () = assert!(uuid::fmt::Hyphenated::LENGTH <= IDEMPOTENCY_KEY_BYTES_MAX);
// A read response holds at most READ_BYTES_MAX plus one record and its
// protobuf framing.
const _: () =
    assert!(SUBSCRIBE_MESSAGE_BYTES_MAX as usize + 2 * RECORD_BYTES_MAX <= MESSAGE_BYTES_MAX);
// A publish request holds at most a batch plus under 64 bytes of protobuf
// framing per record.
const _: () = assert!(BATCH_BYTES_MAX + 64 * BATCH_RECORDS_MAX <= MESSAGE_BYTES_MAX);
