//! What every bench record carries, and the check that each consumer got
//! every published record exactly once.
//!
//! A payload starts with a 20-byte header, little-endian: the producer's
//! number (u32), the record's sequence number within that producer (u64,
//! from 0 with no gaps) and when it was meant to be sent (u64 ns on the
//! bench's clock, [`now_ns`]). The rest is filler up to the record size.
//!
//! The check is two-fold: a bitmap per producer of the sequence numbers seen
//! (duplicates and gaps, exactly), and a sum of the payloads' CRC32s
//! (damage). A run passes only if both agree with what was acknowledged.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

/// Bytes of the header at the start of every payload; the smallest record.
pub const PAYLOAD_HEADER_BYTES: usize = 20;

/// Nanoseconds since the bench's clock started (its first call): shared by
/// producers and consumers of one process, so end-to-end latency needs no
/// clock sync.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Builds record `seq` of `producer`, `size_bytes` long (at least
/// [`PAYLOAD_HEADER_BYTES`]).
pub fn encode(producer: u32, seq: u64, sent_ns: u64, size_bytes: usize) -> Bytes {
    let mut payload = BytesMut::with_capacity(size_bytes);
    payload.put_u32_le(producer);
    payload.put_u64_le(seq);
    payload.put_u64_le(sent_ns);
    // Filler that differs between records, so that a record delivered with
    // another's body fails the checksum.
    payload.put_bytes(seq as u8, size_bytes.saturating_sub(PAYLOAD_HEADER_BYTES));
    payload.freeze()
}

/// A payload's header: (producer, seq, sent_ns), or `None` if it is too short.
pub fn decode(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let header = payload.get(..PAYLOAD_HEADER_BYTES)?;
    let producer = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let seq = u64::from_le_bytes(header[4..12].try_into().ok()?);
    let sent_ns = u64::from_le_bytes(header[12..20].try_into().ok()?);
    Some((producer, seq, sent_ns))
}

/// A payload's contribution to a checksum (order does not matter: the sum of
/// the CRC32s wraps).
pub fn checksum(payload: &[u8]) -> u64 {
    u64::from(crc32fast::hash(payload))
}

/// What the producers had acknowledged: per producer, how many records.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub per_producer: Vec<u64>,
    pub checksum: u64,
}

impl Published {
    pub fn records(&self) -> u64 {
        self.per_producer.iter().sum()
    }
}

/// What one consumer received.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub records: u64,
    pub bytes: u64,
    pub checksum: u64,
    pub duplicates: u64,
    /// Records whose header names no producer of the run, or is cut short.
    pub foreign: u64,
    /// Per producer, a bit per sequence number seen.
    seen: Vec<Vec<u64>>,
}

impl Tally {
    /// Counts one received payload; returns its header if it has one.
    pub fn add(&mut self, payload: &[u8]) -> Option<(u32, u64, u64)> {
        self.records += 1;
        self.bytes += payload.len() as u64;
        self.checksum = self.checksum.wrapping_add(checksum(payload));
        let Some((producer, seq, sent_ns)) = decode(payload) else {
            self.foreign += 1;
            return None;
        };
        let producer_index = producer as usize;
        if self.seen.len() <= producer_index {
            self.seen.resize_with(producer_index + 1, Vec::new);
        }
        let bits = &mut self.seen[producer_index];
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        }
        bits[word] |= 1 << bit;
        Some((producer, seq, sent_ns))
    }

    /// Adds another consumer's tally to this one.
    pub fn merge(&mut self, other: &Tally) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.checksum = self.checksum.wrapping_add(other.checksum);
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
        if self.seen.len() < other.seen.len() {
            self.seen.resize_with(other.seen.len(), Vec::new);
        }
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(theirs) {
                self.duplicates += u64::from((*a & *b).count_ones());
                *a |= *b;
            }
        }
    }

    /// Compares what was received with what was acknowledged.
    pub fn verdict(&self, published: &Published) -> Verdict {
        let mut distinct_expected = 0u64;
        let mut unexpected = self.foreign;
        for (producer, bits) in self.seen.iter().enumerate() {
            let acked = published.per_producer.get(producer).copied().unwrap_or(0);
            for (word_index, word) in bits.iter().enumerate() {
                // The bits of this word whose sequence numbers were acknowledged.
                let acked_bits = acked.saturating_sub(word_index as u64 * 64).min(64);
                let mask = u64::MAX.checked_shr(64 - acked_bits as u32).unwrap_or(0);
                distinct_expected += u64::from((word & mask).count_ones());
                unexpected += u64::from((word & !mask).count_ones());
            }
        }
        let expected = published.records();
        let missing = expected - distinct_expected;
        let checksum_matches = self.checksum == published.checksum;
        Verdict {
            expected,
            received: self.records,
            missing,
            duplicates: self.duplicates,
            unexpected,
            checksum_matches,
            exactly_once: missing == 0
                && self.duplicates == 0
                && unexpected == 0
                && checksum_matches
                && self.records == expected,
        }
    }
}

/// The outcome of the exactly-once check.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub expected: u64,
    pub received: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Records no producer of the run acknowledged (a sequence number past
    /// the acknowledged ones, or a damaged header).
    pub unexpected: u64,
    pub checksum_matches: bool,
    pub exactly_once: bool,
}

impl Verdict {
    /// Why the run failed its check, in a line; `None` if it passed.
    pub fn failure(&self) -> Option<String> {
        if self.exactly_once {
            return None;
        }
        Some(format!(
            "expected {} records, received {} ({} missing, {} duplicates, {} unexpected, checksum {})",
            self.expected,
            self.received,
            self.missing,
            self.duplicates,
            self.unexpected,
            if self.checksum_matches { "matches" } else { "differs" }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(records: &[Bytes], producers: usize) -> Published {
        let mut published = Published {
            per_producer: vec![0; producers],
            checksum: 0,
        };
        for record in records {
            let (producer, _, _) = decode(record).expect("header");
            published.per_producer[producer as usize] += 1;
            published.checksum = published.checksum.wrapping_add(checksum(record));
        }
        published
    }

    #[test]
    fn every_record_once_passes_in_any_order_across_consumers() {
        let records: Vec<Bytes> = (0..2u32)
            .flat_map(|p| (0..100u64).map(move |s| encode(p, s, 7, 64)))
            .collect();
        let (mut a, mut b) = (Tally::default(), Tally::default());
        for (i, record) in records.iter().rev().enumerate() {
            if i % 3 == 0 {
                a.add(record)
            } else {
                b.add(record)
            };
        }
        a.merge(&b);
        let verdict = a.verdict(&published(&records, 2));
        assert!(verdict.exactly_once, "{verdict:?}");
    }

    #[test]
    fn a_duplicate_a_gap_or_a_damaged_body_fails() {
        let records: Vec<Bytes> = (0..10u64).map(|s| encode(0, s, 0, 32)).collect();
        let expected = published(&records, 1);

        let mut duplicated = Tally::default();
        for r in &records {
            duplicated.add(r);
        }
        duplicated.add(&records[3]);
        assert_eq!(duplicated.verdict(&expected).duplicates, 1);
        assert!(!duplicated.verdict(&expected).exactly_once);

        let mut gap = Tally::default();
        for r in &records[1..] {
            gap.add(r);
        }
        assert_eq!(gap.verdict(&expected).missing, 1);

        let mut damaged = Tally::default();
        for r in &records[1..] {
            damaged.add(r);
        }
        let mut body = records[0].to_vec();
        body[31] ^= 1;
        damaged.add(&body);
        let verdict = damaged.verdict(&expected);
        assert!(
            !verdict.checksum_matches && !verdict.exactly_once,
            "{verdict:?}"
        );

        // A record past what was acknowledged (here: 70 records across two
        // bitmap words, 66 acknowledged).
        let many: Vec<Bytes> = (0..70u64).map(|s| encode(0, s, 0, 32)).collect();
        let mut acked = published(&many[..66], 1);
        let mut past = Tally::default();
        for r in &many[..67] {
            past.add(r);
        }
        acked.checksum = acked.checksum.wrapping_add(checksum(&many[66]));
        let verdict = past.verdict(&acked);
        assert_eq!((verdict.unexpected, verdict.missing), (1, 0), "{verdict:?}");
        assert!(!verdict.exactly_once);

        let mut duplicate_across_consumers = Tally::default();
        for r in &records {
            duplicate_across_consumers.add(r);
        }
        let mut other = Tally::default();
        other.add(&records[5]);
        duplicate_across_consumers.merge(&other);
        assert_eq!(duplicate_across_consumers.verdict(&expected).duplicates, 1);
    }
}
