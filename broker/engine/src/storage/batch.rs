//! Record batches: the unit the log writes, checksums and reads.
//!
//! Format version 1. All integers are little-endian and of fixed width; nothing
//! on disk is a `usize`. `docs/format.md` draws the same layout.
//!
//! ```text
//! frame header (HEADER_BYTES = 40)
//!  0  u32  frame_bytes     whole frame, header included (<= BATCH_BYTES_MAX)
//!  4  u32  crc32           CRC-32 (IEEE, crc32fast) of bytes [8, frame_bytes)
//!  8  u8   version         1
//!  9  u8   flags           0 (reserved)
//! 10  u16  reserved        0
//! 12  u32  record_count    1 ..= BATCH_RECORDS_MAX
//! 16  u64  base_offset     offset of the first record; record i has base_offset + i
//! 24  i64  timestamp_ms    append time of every record in the frame (Unix ms)
//! 32  u64  durable_offset  the partition's durable end offset when the frame was
//!                          enqueued; recovery uses it to tell a torn tail from
//!                          damage to records that were already acknowledged
//! 40  records, record_count times:
//!      u32  record_bytes   bytes of the record after this field
//!      u32  key_len        or 0xFFFF_FFFF for no key
//!      [key_len] key
//!      u32  idem_len       or 0xFFFF_FFFF for no idempotency key
//!      [idem_len] idempotency key
//!      u16  header_count
//!        header_count times: u16 name_len, name, u32 value_len, value
//!      payload             the rest of the record
//! ```
//!
//! Invariants: a frame is only ever written whole and sealed; the CRC covers
//! everything after itself, so a flipped bit anywhere but the length field fails
//! the check, and a wrong length makes the CRC cover the wrong bytes. Every length
//! read from a frame is checked against what remains before it is used.

use bytes::{BufMut, Bytes};

use crate::error::{Error, Result};
use crate::limits::*;

/// The batch format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes of the frame header.
pub const HEADER_BYTES: usize = 40;
/// Bytes of the smallest possible record: its length fields and nothing else.
pub const RECORD_BYTES_MIN: usize = 4 + 4 + 4 + 2;
/// Marks an absent key or idempotency key.
const ABSENT: u32 = u32::MAX;

/// A record header: a name and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: Bytes,
    pub value: Bytes,
}

/// A record as an appender hands it in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordInput {
    /// Chooses the partition (same key, same partition) unless `partition` is set.
    pub key: Option<Bytes>,
    /// A second append with this key within the dedup window appends nothing.
    pub idempotency_key: Option<Bytes>,
    pub headers: Vec<Header>,
    pub payload: Bytes,
    /// An explicit partition, overriding the key.
    pub partition: Option<u32>,
}

/// A stored record, as a reader gets it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub idempotency_key: Option<Bytes>,
    pub headers: Vec<Header>,
    pub payload: Bytes,
}

impl RecordInput {
    /// A record with just a payload.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        RecordInput {
            payload: payload.into(),
            ..RecordInput::default()
        }
    }

    /// Bytes this record takes in a frame, its length prefix included.
    pub fn encoded_bytes(&self) -> u64 {
        let opt = |b: &Option<Bytes>| 4 + b.as_ref().map_or(0, |b| b.len() as u64);
        let headers: u64 = self
            .headers
            .iter()
            .map(|h| 2 + h.name.len() as u64 + 4 + h.value.len() as u64)
            .sum();
        4 + opt(&self.key) + opt(&self.idempotency_key) + 2 + headers + self.payload.len() as u64
    }

    /// Checks this record against every record limit.
    pub fn validate(&self) -> Result<()> {
        if let Some(key) = &self.key {
            check("record key bytes", KEY_BYTES_MAX as u64, key.len() as u64)?;
        }
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() {
                return Err(Error::InvalidArgument(
                    "an idempotency key, when given, must not be empty".into(),
                ));
            }
            check(
                "idempotency key bytes",
                IDEMPOTENCY_KEY_BYTES_MAX as u64,
                key.len() as u64,
            )?;
        }
        check(
            "headers per record",
            HEADERS_PER_RECORD_MAX as u64,
            self.headers.len() as u64,
        )?;
        for header in &self.headers {
            check(
                "header name bytes",
                HEADER_NAME_BYTES_MAX as u64,
                header.name.len() as u64,
            )?;
        }
        check(
            "record bytes",
            RECORD_BYTES_MAX as u64,
            self.encoded_bytes(),
        )
    }
}

fn check(what: &str, limit: u64, actual: u64) -> Result<()> {
    if actual > limit {
        return Err(Error::limit(what, limit, actual));
    }
    Ok(())
}

/// Checks a batch's record count and total size; each record must already be valid.
pub fn validate_batch(records: &[RecordInput]) -> Result<()> {
    if records.is_empty() {
        return Err(Error::InvalidArgument(
            "a batch needs at least one record".into(),
        ));
    }
    check(
        "records per batch",
        BATCH_RECORDS_MAX as u64,
        records.len() as u64,
    )?;
    let bytes = HEADER_BYTES as u64 + records.iter().map(RecordInput::encoded_bytes).sum::<u64>();
    check("batch bytes", BATCH_BYTES_MAX as u64, bytes)
}

/// A frame whose records are encoded but whose offsets are not yet assigned.
/// The body's CRC is computed here, outside any lock; sealing adds the header.
#[derive(Debug)]
pub struct UnsealedBatch {
    buf: Vec<u8>,
    record_count: u32,
    body_crc: crc32fast::Hasher,
}

impl UnsealedBatch {
    /// Encodes valid records (see [`validate_batch`]) into a frame body.
    pub fn encode(records: &[&RecordInput]) -> Self {
        let bytes: u64 = records.iter().map(|r| r.encoded_bytes()).sum();
        let mut buf = Vec::with_capacity(HEADER_BYTES + bytes as usize);
        buf.resize(HEADER_BYTES, 0);
        for record in records {
            encode_record(&mut buf, record);
        }
        let mut body_crc = crc32fast::Hasher::new();
        body_crc.update(&buf[HEADER_BYTES..]);
        UnsealedBatch {
            buf,
            record_count: records.len() as u32,
            body_crc,
        }
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Bytes of the whole frame.
    pub fn frame_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Writes the header and the CRC; the frame is then ready for the disk.
    pub fn seal(mut self, base_offset: u64, timestamp_ms: i64, durable_offset: u64) -> Bytes {
        let frame_bytes = self.buf.len() as u32;
        let header = &mut self.buf[..HEADER_BYTES];
        header[0..4].copy_from_slice(&frame_bytes.to_le_bytes());
        header[8] = FORMAT_VERSION;
        header[9] = 0;
        header[10..12].copy_from_slice(&0u16.to_le_bytes());
        header[12..16].copy_from_slice(&self.record_count.to_le_bytes());
        header[16..24].copy_from_slice(&base_offset.to_le_bytes());
        header[24..32].copy_from_slice(&timestamp_ms.to_le_bytes());
        header[32..40].copy_from_slice(&durable_offset.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[8..HEADER_BYTES]);
        crc.combine(&self.body_crc);
        let crc = crc.finalize();
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        Bytes::from(self.buf)
    }
}

fn encode_record(buf: &mut Vec<u8>, record: &RecordInput) {
    let record_bytes = record.encoded_bytes() - 4;
    buf.put_u32_le(record_bytes as u32);
    for part in [&record.key, &record.idempotency_key] {
        match part {
            Some(bytes) => {
                buf.put_u32_le(bytes.len() as u32);
                buf.put_slice(bytes);
            }
            None => buf.put_u32_le(ABSENT),
        }
    }
    buf.put_u16_le(record.headers.len() as u16);
    for header in &record.headers {
        buf.put_u16_le(header.name.len() as u16);
        buf.put_slice(&header.name);
        buf.put_u32_le(header.value.len() as u32);
        buf.put_slice(&header.value);
    }
    buf.put_slice(&record.payload);
}

/// A frame header, parsed and structurally checked (not yet CRC-checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_bytes: u32,
    pub crc: u32,
    pub record_count: u32,
    pub base_offset: u64,
    pub timestamp_ms: i64,
    pub durable_offset: u64,
}

impl FrameHeader {
    /// One past the offset of the frame's last record.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + self.record_count as u64
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Why bytes read back are not a valid frame. Each is damage (or a torn
/// tail), never a request's fault: limits hold on disk as at the door.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("shorter than a frame header")]
    ShorterThanHeader,
    #[error("shorter than its length field says")]
    ShorterThanLength,
    #[error("unknown batch format version {0}")]
    UnknownVersion(u8),
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("record count {0} is outside 1..={BATCH_RECORDS_MAX}")]
    RecordCount(u32),
    #[error("frame length {frame_bytes} is outside {min_bytes}..={BATCH_BYTES_MAX}")]
    FrameLength { frame_bytes: u32, min_bytes: u64 },
    #[error("base offset overflows")]
    BaseOffsetOverflow,
    /// Recovery relies on the durable offset, so an impossible one is damage.
    #[error("durable offset {durable_offset} is past the base offset {base_offset}")]
    DurablePastBase {
        durable_offset: u64,
        base_offset: u64,
    },
    #[error("CRC mismatch")]
    CrcMismatch,
    #[error("record {0} runs past the frame")]
    RecordPastFrame(u32),
    #[error("record {index}: {error}")]
    Record { index: u32, error: RecordError },
    #[error("bytes left over after the last record")]
    TrailingBytes,
}

/// Why one record of a CRC-checked frame does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated length field")]
    TruncatedLength,
    #[error("a field runs past its record")]
    FieldPastRecord,
    #[error("key longer than {KEY_BYTES_MAX} bytes")]
    KeyTooLong,
    #[error("idempotency key outside 1..={IDEMPOTENCY_KEY_BYTES_MAX} bytes")]
    IdempotencyKeyLength,
    #[error("{0} headers, over the limit of {HEADERS_PER_RECORD_MAX}")]
    TooManyHeaders(u32),
}

/// Parses and checks a header: version, reserved bytes, and lengths within limits.
/// Returns the reason when the bytes cannot be a frame header.
pub fn parse_header(bytes: &[u8; HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
    let header = FrameHeader {
        frame_bytes: le_u32(bytes, 0),
        crc: le_u32(bytes, 4),
        record_count: le_u32(bytes, 12),
        base_offset: le_u64(bytes, 16),
        timestamp_ms: le_u64(bytes, 24) as i64,
        durable_offset: le_u64(bytes, 32),
    };
    if bytes[8] != FORMAT_VERSION {
        return Err(FrameError::UnknownVersion(bytes[8]));
    }
    if bytes[9] != 0 || bytes[10] != 0 || bytes[11] != 0 {
        return Err(FrameError::ReservedNotZero);
    }
    if header.record_count == 0 || header.record_count > BATCH_RECORDS_MAX {
        return Err(FrameError::RecordCount(header.record_count));
    }
    let min_bytes = HEADER_BYTES as u64 + header.record_count as u64 * RECORD_BYTES_MIN as u64;
    if (header.frame_bytes as u64) < min_bytes || header.frame_bytes > BATCH_BYTES_MAX {
        return Err(FrameError::FrameLength {
            frame_bytes: header.frame_bytes,
            min_bytes,
        });
    }
    if header
        .base_offset
        .checked_add(header.record_count as u64)
        .is_none()
    {
        return Err(FrameError::BaseOffsetOverflow);
    }
    // The durable end when a frame was enqueued never passes the frame's own
    // offset: recovery relies on this field, so an impossible value is damage.
    if header.durable_offset > header.base_offset {
        return Err(FrameError::DurablePastBase {
            durable_offset: header.durable_offset,
            base_offset: header.base_offset,
        });
    }
    Ok(header)
}

/// Whether a whole frame's CRC holds.
pub fn crc_holds(frame: &[u8], header: &FrameHeader) -> bool {
    crc32fast::hash(&frame[8..]) == header.crc
}

/// Decodes the records of a CRC-checked frame whose offsets fall in `wanted`,
/// sharing the frame's bytes, and appends them to `out`.
pub fn decode_records(
    frame: &Bytes,
    header: &FrameHeader,
    wanted: std::ops::Range<u64>,
    out: &mut Vec<Record>,
) -> Result<(), FrameError> {
    out.reserve(header.record_count as usize);
    let mut at = HEADER_BYTES;
    for i in 0..header.record_count {
        let record_bytes = read_u32(frame, &mut at)
            .map_err(|error| FrameError::Record { index: i, error })?
            as usize;
        let end = at
            .checked_add(record_bytes)
            .filter(|end| *end <= frame.len())
            .ok_or(FrameError::RecordPastFrame(i))?;
        let offset = header.base_offset + i as u64;
        if wanted.contains(&offset) {
            let record = decode_record(frame, at, end)
                .map_err(|error| FrameError::Record { index: i, error })?;
            out.push(Record {
                offset,
                timestamp_ms: header.timestamp_ms,
                ..record
            });
        }
        at = end;
    }
    if at != frame.len() {
        return Err(FrameError::TrailingBytes);
    }
    Ok(())
}

fn read_u32(buf: &[u8], at: &mut usize) -> Result<u32, RecordError> {
    let bytes = buf.get(*at..*at + 4).ok_or(RecordError::TruncatedLength)?;
    *at += 4;
    Ok(le_u32(bytes, 0))
}

fn read_u16(buf: &[u8], at: &mut usize) -> Result<u16, RecordError> {
    let bytes = buf.get(*at..*at + 2).ok_or(RecordError::TruncatedLength)?;
    *at += 2;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}

/// `len` bytes of `frame` at `at`, not past `end`, sharing the frame's memory.
fn read_slice(frame: &Bytes, at: &mut usize, len: usize, end: usize) -> Result<Bytes, RecordError> {
    let stop = at
        .checked_add(len)
        .filter(|stop| *stop <= end)
        .ok_or(RecordError::FieldPastRecord)?;
    let slice = frame.slice(*at..stop);
    *at = stop;
    Ok(slice)
}

fn read_optional(frame: &Bytes, at: &mut usize, end: usize) -> Result<Option<Bytes>, RecordError> {
    match read_u32(&frame[..end], at)? {
        ABSENT => Ok(None),
        len => read_slice(frame, at, len as usize, end).map(Some),
    }
}

/// Decodes the record in `frame[start..end]`; its fields share the frame's
/// memory (no copy, and no temporary slice of the record itself).
fn decode_record(frame: &Bytes, start: usize, end: usize) -> Result<Record, RecordError> {
    let mut at = start;
    let key = read_optional(frame, &mut at, end)?;
    let idempotency_key = read_optional(frame, &mut at, end)?;
    // Limits hold on disk as at the door: what was never accepted is damage.
    if key
        .as_ref()
        .is_some_and(|k| k.len() > KEY_BYTES_MAX as usize)
    {
        return Err(RecordError::KeyTooLong);
    }
    if idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > IDEMPOTENCY_KEY_BYTES_MAX as usize)
    {
        return Err(RecordError::IdempotencyKeyLength);
    }
    let header_count = read_u16(&frame[..end], &mut at)? as u32;
    if header_count > HEADERS_PER_RECORD_MAX {
        return Err(RecordError::TooManyHeaders(header_count));
    }
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let name_len = read_u16(&frame[..end], &mut at)? as usize;
        let name = read_slice(frame, &mut at, name_len, end)?;
        let value_len = read_u32(&frame[..end], &mut at)? as usize;
        let value = read_slice(frame, &mut at, value_len, end)?;
        headers.push(Header { name, value });
    }
    Ok(Record {
        offset: 0,
        timestamp_ms: 0,
        key,
        idempotency_key,
        headers,
        payload: frame.slice(at..end),
    })
}

/// Decodes one frame from the front of `bytes`: header, CRC, records. For tests
/// and tools; the log reads frames through `segment::FrameReader`.
pub fn decode_frame(bytes: &Bytes) -> Result<(FrameHeader, Vec<Record>), FrameError> {
    let head: &[u8; HEADER_BYTES] = bytes
        .get(..HEADER_BYTES)
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::ShorterThanHeader)?;
    let header = parse_header(head)?;
    let frame = bytes
        .get(..header.frame_bytes as usize)
        .ok_or(FrameError::ShorterThanLength)?;
    if !crc_holds(frame, &header) {
        return Err(FrameError::CrcMismatch);
    }
    let frame = bytes.slice(..header.frame_bytes as usize);
    let mut records = Vec::new();
    decode_records(&frame, &header, 0..u64::MAX, &mut records)?;
    Ok((header, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(payload: &[u8]) -> RecordInput {
        RecordInput {
            key: Some(Bytes::from_static(b"k")),
            idempotency_key: Some(Bytes::from_static(b"id-1")),
            headers: vec![Header {
                name: Bytes::from_static(b"content-type"),
                value: Bytes::from_static(b"text/plain"),
            }],
            payload: Bytes::copy_from_slice(payload),
            partition: None,
        }
    }

    fn roundtrip(records: &[RecordInput]) -> Vec<Record> {
        let refs: Vec<&RecordInput> = records.iter().collect();
        let frame = UnsealedBatch::encode(&refs).seal(100, 1_700_000_000_000, 90);
        let (header, decoded) = decode_frame(&frame).expect("decodes");
        assert_eq!(header.base_offset, 100);
        assert_eq!(header.durable_offset, 90);
        assert_eq!(header.frame_bytes as usize, frame.len());
        decoded
    }

    #[test]
    fn roundtrip_keeps_every_field() {
        let input = vec![record(b"hello"), RecordInput::new("plain"), record(b"")];
        let out = roundtrip(&input);
        for (i, (got, want)) in out.iter().zip(&input).enumerate() {
            assert_eq!(got.offset, 100 + i as u64);
            assert_eq!(got.timestamp_ms, 1_700_000_000_000);
            assert_eq!(got.key, want.key);
            assert_eq!(got.idempotency_key, want.idempotency_key);
            assert_eq!(got.headers, want.headers);
            assert_eq!(got.payload, want.payload);
        }
    }

    #[test]
    fn record_limit_just_under_and_over() {
        let overhead = RecordInput::new("").encoded_bytes();
        let at_limit = RecordInput::new(vec![7u8; (RECORD_BYTES_MAX as u64 - overhead) as usize]);
        assert_eq!(at_limit.encoded_bytes(), RECORD_BYTES_MAX as u64);
        assert!(at_limit.validate().is_ok());
        assert_eq!(
            roundtrip(std::slice::from_ref(&at_limit))[0].payload,
            at_limit.payload
        );
        let over = RecordInput::new(vec![7u8; (RECORD_BYTES_MAX as u64 - overhead + 1) as usize]);
        let msg = over.validate().expect_err("over").to_string();
        assert!(msg.contains(&RECORD_BYTES_MAX.to_string()), "{msg}");
    }

    #[test]
    fn key_and_header_limits_just_under_and_over() {
        let mut r = RecordInput::new("x");
        r.key = Some(vec![1; KEY_BYTES_MAX as usize].into());
        assert!(r.validate().is_ok());
        r.key = Some(vec![1; KEY_BYTES_MAX as usize + 1].into());
        assert!(r.validate().is_err());
        r.key = None;
        r.idempotency_key = Some(vec![1; IDEMPOTENCY_KEY_BYTES_MAX as usize].into());
        assert!(r.validate().is_ok());
        r.idempotency_key = Some(vec![1; IDEMPOTENCY_KEY_BYTES_MAX as usize + 1].into());
        assert!(r.validate().is_err());
        r.idempotency_key = Some(Bytes::new());
        assert!(r.validate().is_err());
        r.idempotency_key = None;
        let header = Header {
            name: vec![b'h'; HEADER_NAME_BYTES_MAX as usize].into(),
            value: Bytes::new(),
        };
        r.headers = vec![header.clone(); HEADERS_PER_RECORD_MAX as usize];
        assert!(r.validate().is_ok());
        r.headers.push(header.clone());
        assert!(r.validate().is_err());
        r.headers = vec![Header {
            name: vec![b'h'; HEADER_NAME_BYTES_MAX as usize + 1].into(),
            value: Bytes::new(),
        }];
        assert!(r.validate().is_err());
    }

    #[test]
    fn batch_limits_just_under_and_over() {
        let small = RecordInput::new("");
        let at_count = vec![small.clone(); BATCH_RECORDS_MAX as usize];
        assert!(validate_batch(&at_count).is_ok());
        assert_eq!(roundtrip(&at_count).len(), BATCH_RECORDS_MAX as usize);
        let over_count = vec![small; BATCH_RECORDS_MAX as usize + 1];
        assert!(validate_batch(&over_count).is_err());
        assert!(validate_batch(&[]).is_err());

        // Fill a batch to exactly BATCH_BYTES_MAX with records of at most RECORD_BYTES_MAX.
        let overhead = RecordInput::new("").encoded_bytes();
        let big = RecordInput::new(vec![1u8; (RECORD_BYTES_MAX as u64 - overhead) as usize]);
        let full = (BATCH_BYTES_MAX as u64 - HEADER_BYTES as u64) / RECORD_BYTES_MAX as u64;
        let mut records = vec![big.clone(); full as usize - 1];
        let used = HEADER_BYTES as u64 + (full - 1) * RECORD_BYTES_MAX as u64;
        let rest = BATCH_BYTES_MAX as u64 - used;
        records.push(RecordInput::new(vec![2u8; (rest - overhead) as usize]));
        assert!(validate_batch(&records).is_ok());
        let out = roundtrip(&records);
        assert_eq!(out.len(), records.len());
        records.last_mut().expect("non-empty").payload =
            vec![2u8; (rest - overhead + 1) as usize].into();
        let msg = validate_batch(&records).expect_err("over").to_string();
        assert!(msg.contains(&BATCH_BYTES_MAX.to_string()), "{msg}");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let frame = UnsealedBatch::encode(&[&record(b"payload")]).seal(5, 1, 0);
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.to_vec();
                damaged[byte] ^= 1 << bit;
                assert!(
                    decode_frame(&Bytes::from(damaged)).is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn huge_length_field_allocates_nothing() {
        let mut frame = UnsealedBatch::encode(&[&record(b"x")])
            .seal(0, 0, 0)
            .to_vec();
        frame[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_frame(&Bytes::from(frame)).expect_err("rejected");
        assert!(
            matches!(
                err,
                FrameError::FrameLength {
                    frame_bytes: u32::MAX,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("frame length"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&Bytes::from(bytes));
        }

        #[test]
        fn decoder_never_panics_on_a_valid_header_with_garbage_records(
            count in 1u32..20, body in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            // A frame whose CRC holds but whose records are nonsense must be
            // refused with a reason, not a panic or an over-read.
            let mut frame = vec![0u8; HEADER_BYTES];
            frame.extend_from_slice(&body);
            let len = frame.len() as u32;
            frame[0..4].copy_from_slice(&len.to_le_bytes());
            frame[8] = FORMAT_VERSION;
            frame[12..16].copy_from_slice(&count.to_le_bytes());
            let crc = crc32fast::hash(&frame[8..]);
            frame[4..8].copy_from_slice(&crc.to_le_bytes());
            let _ = decode_frame(&Bytes::from(frame));
        }

        #[test]
        fn roundtrip_arbitrary_records(
            records in proptest::collection::vec(
                (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 1..40)),
                 proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..10),
                                            proptest::collection::vec(any::<u8>(), 0..10)), 0..4),
                 proptest::collection::vec(any::<u8>(), 0..300)),
                1..20)
        ) {
            let input: Vec<RecordInput> = records.into_iter().map(|(key, idem, headers, payload)| RecordInput {
                key: key.map(Bytes::from),
                idempotency_key: idem.map(Bytes::from),
                headers: headers.into_iter().map(|(n, v)| Header { name: n.into(), value: v.into() }).collect(),
                payload: payload.into(),
                partition: None,
            }).collect();
            let out = roundtrip(&input);
            prop_assert_eq!(out.len(), input.len());
            for (got, want) in out.iter().zip(&input) {
                prop_assert_eq!(&got.key, &want.key);
                prop_assert_eq!(&got.idempotency_key, &want.idempotency_key);
                prop_assert_eq!(&got.headers, &want.headers);
                prop_assert_eq!(&got.payload, &want.payload);
            }
        }
    }
}
