//! Every limit of the storage engine, in one place.
//!
//! Each limit is checked before anything it guards is allocated: a length read
//! from disk or received from a caller is compared with its limit first. The
//! relationships between limits are checked at compile time below, so that a
//! change to one cannot silently break another.

/// Largest encoded record (key, idempotency key, headers and payload, with their
/// length fields). 1 MiB, Kafka's default `max.message.bytes`: larger payloads
/// belong in object storage with a reference in the record.
pub const RECORD_BYTES_MAX: u32 = 1024 * 1024;

/// Largest record key. Keys choose partitions and are compared often; a key is an
/// identifier, not a payload.
pub const KEY_BYTES_MAX: u32 = 4 * 1024;

/// Largest idempotency key. A UUID is 16 bytes (36 as text); 128 leaves room for
/// composite keys such as `order-42/charge/3`.
pub const IDEMPOTENCY_KEY_BYTES_MAX: u32 = 128;

/// Most headers on one record.
pub const HEADERS_PER_RECORD_MAX: u32 = 64;

/// Largest header name. Header names are short tags (`content-type`, `trace-id`).
pub const HEADER_NAME_BYTES_MAX: u32 = 256;

/// Most records in one batch. A 1000-record batch of 1 KiB records (the batching
/// producers use on the wire) fits ten times over.
pub const BATCH_RECORDS_MAX: u32 = 10_000;

/// Largest batch frame on disk, header included. Bounds what one append writes and
/// what a reader allocates for one frame.
pub const BATCH_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// Smallest segment size a topic may configure: small enough for tests that roll
/// segments often, large enough to hold a few frames.
pub const SEGMENT_BYTES_MIN: u64 = 4 * 1024;

/// Largest segment size a topic may configure. File positions inside a segment
/// are stored as `u32`, and a segment may exceed its size by one frame.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Default segment size: large enough that rolls are rare, small enough that
/// retention frees space in useful steps.
pub const SEGMENT_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;

/// Topic names: 1 to this many bytes of `[A-Za-z0-9._-]` (Kafka's rule).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Consumer group names follow the topic name rule and length.
pub const GROUP_NAME_BYTES_MAX: usize = TOPIC_NAME_BYTES_MAX;

/// Most partitions in one topic. Each partition holds open files and a writer;
/// more partitions than this is a design problem, not a scaling one.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 1024;

/// Default bytes enqueued but not yet durable per partition, beyond which appends
/// wait: bounds the broker's memory when the disk is slower than the producers.
pub const IN_FLIGHT_BYTES_PER_PARTITION_DEFAULT: u64 = 64 * 1024 * 1024;

/// Default distance in bytes between sparse index entries: a read from any offset
/// scans at most this much before reaching it.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 64 * 1024;

/// Default interval between flushes of a topic with `async` durability.
pub const FSYNC_INTERVAL_MS_DEFAULT: u64 = 1000;

/// Default dedup window: a relay may be down for hours, a week covers a long
/// weekend and then some.
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

/// Default bound on the idempotency keys a topic remembers; past it the oldest are
/// forgotten first, whatever the window says.
pub const DEDUP_KEYS_MAX_DEFAULT: u64 = 10_000_000;

/// Longest retention by age a topic may set: a century. Unset means forever;
/// the bound keeps time arithmetic far from overflow.
pub const RETENTION_MS_MAX: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Idempotency keys kept in memory (those not yet checkpointed to the metadata
/// store) per topic before a checkpoint is started. Appends wait when a topic
/// holds twice this many, so dedup memory stays bounded whatever the key count.
pub const DEDUP_MEMORY_KEYS_MAX: usize = 200_000;

/// Longest a group-commit leader waits for the appenders of the previous group
/// before writing a much smaller group: about one fsync on an SSD. It applies
/// only when the new group would hold under half the previous group's frames
/// (so at least three), so a lone appender never waits.
pub const GROUP_COMMIT_LINGER_MAX: std::time::Duration = std::time::Duration::from_micros(200);

/// How far past the end of its data the active segment is zero-filled when a
/// small group commit grows it. On ext4 (and most file systems) an fdatasync
/// after an append that grows the file also commits the new size and block
/// allocation to the journal; an append over blocks already written and synced
/// needs only the data flush. Measured on the development machine (one 1 KiB to
/// 16 KiB write and fdatasync at a time): 1.3 to 1.9 times as many syncs per
/// second over zero-filled space. The zeros ride in the same write and the
/// same fdatasync as the group that triggers them.
pub const PREALLOCATE_STEP_BYTES: u64 = 1024 * 1024;

/// Default most bytes of zeros written ahead of active segments' data,
/// summed over every partition (see `storage::zero_fill`): 64 busy
/// partitions' worth of `PREALLOCATE_STEP_BYTES`, where an idle partition
/// would otherwise cost a step of disk each.
pub const ZERO_FILL_BYTES_MAX_DEFAULT: u64 = 64 * PREALLOCATE_STEP_BYTES;

/// Largest group commit that zero-fills ahead of itself. Writing the zeros costs
/// about as much disk time as a group of their size saves, so it pays only for
/// groups much smaller than `PREALLOCATE_STEP_BYTES`; larger groups just grow
/// the file.
pub const PREALLOCATE_GROUP_BYTES_MAX: u64 = PREALLOCATE_STEP_BYTES / 8;

/// What a probe writes and fdatasyncs in a failed partition's directory
/// before the partition is reopened: as much as a group's zero-fill ahead
/// of its data takes, so that a reopened partition has room for its next
/// append instead of failing again at once.
pub const REOPEN_PROBE_BYTES: u64 = PREALLOCATE_STEP_BYTES;

/// Default first pause before a failed partition is probed and reopened;
/// it doubles after each failed attempt.
pub const REOPEN_BACKOFF_MIN_MS_DEFAULT: u64 = 1_000;

/// Default longest pause between two attempts to reopen a failed partition.
pub const REOPEN_BACKOFF_MAX_MS_DEFAULT: u64 = 30_000;

/// Longest pause between two reopen attempts that can be configured.
pub const REOPEN_BACKOFF_MS_MAX: u64 = 3_600_000;

/// Default newest bytes of each partition's log kept in the page cache before
/// the bytes behind them are handed back to the kernel (see
/// `storage::write_behind`): a quarter to half a second of appends at this
/// machine kind's top rates, so that consumers that keep up read from memory.
pub const PAGE_CACHE_WINDOW_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Least bytes of a log released from the page cache at once (see
/// `storage::write_behind`): fewer, larger calls.
pub const RELEASE_STEP_BYTES: u64 = 2 * 1024 * 1024;

/// Longest an append with idempotency keys waits for a dedup checkpoint to make
/// room in memory before it fails with a limit error (the metadata store is
/// failing or far behind).
pub const DEDUP_ROOM_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Most bytes one read returns (beyond the first frame, which is always whole).
pub const READ_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// Longest name of a fenced producer (a relay's identity), like topic names.
pub const PRODUCER_NAME_BYTES_MAX: usize = TOPIC_NAME_BYTES_MAX;

/// Fenced producers the broker remembers. Each is one small metadata entry
/// and one lock in memory; a deployment has a handful (one per relayed
/// table), so the bound only stops a client that invents names.
pub const FENCED_PRODUCERS_MAX: usize = 10_000;

/// Bytes of records a fetch returns, or a subscription response carries, when
/// the caller does not say (at least one record).
pub const READ_BYTES_DEFAULT: u32 = 1024 * 1024;

/// Longest a fetch waits for records at the end of a partition.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;

/// Largest gRPC message the broker decodes or encodes: just above the largest
/// batch or read plus protobuf framing, so that an oversized batch meets the
/// broker's own check (and its clear message), while a request the broker
/// must buffer whole before it can refuse it stays small.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 20 * 1024 * 1024;

const _: () = assert!(RECORD_BYTES_MAX < BATCH_BYTES_MAX);
const _: () = assert!(READ_BYTES_DEFAULT <= READ_BYTES_MAX);
// A response is cut before it passes its byte target (at most READ_BYTES_MAX),
// so it holds at most that plus one record and its protobuf framing; a publish
// request holds at most a batch plus under 64 bytes of framing per record.
const _: () =
    assert!(READ_BYTES_MAX as usize + 2 * RECORD_BYTES_MAX as usize <= GRPC_MESSAGE_BYTES_MAX);
const _: () =
    assert!(BATCH_BYTES_MAX as usize + 64 * BATCH_RECORDS_MAX as usize <= GRPC_MESSAGE_BYTES_MAX);
const _: () = assert!(KEY_BYTES_MAX < RECORD_BYTES_MAX);
const _: () = assert!(IDEMPOTENCY_KEY_BYTES_MAX < KEY_BYTES_MAX);
// The metadata store lists a checkpoint's keys with one length byte each.
const _: () = assert!(IDEMPOTENCY_KEY_BYTES_MAX <= u8::MAX as u32);
const _: () = assert!((BATCH_BYTES_MAX as u64) <= IN_FLIGHT_BYTES_PER_PARTITION_DEFAULT);
// A segment may exceed its limit by one frame; positions must still fit in u32.
const _: () = assert!(SEGMENT_BYTES_MAX + BATCH_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(READ_BYTES_MAX >= BATCH_BYTES_MAX);
