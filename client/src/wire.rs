//! What a publish costs: each record's bytes in the encoded `PublishRequest`
//! and in the broker's count, and the bytes of the request's own fields.
//!
//! A publish is bounded twice. The broker counts its records as it stores
//! them ([`OutgoingRecord::encoded_bytes`], against `BATCH_BYTES_MAX` with its
//! batch header); the producer's `max_batch_bytes` bounds the request as it
//! goes on the wire: keys, the idempotency key (a generated one too),
//! headers, the partition, every protobuf tag and length prefix, and the
//! request's topic and fence. [`RecordCost`] carries both measures of one
//! record, so that a batch can be cut by either.
//!
//! Invariants:
//! - [`request_bytes`] plus the [`RecordCost::wire_bytes`] of every record is
//!   exactly `prost::Message::encoded_len` of the `PublishRequest` the
//!   producer sends, once it has given each record its idempotency key.
//! - This module is the only place that arithmetic lives: the producer's
//!   background batcher, `Producer::send_batch` and the CLI's stdin batches
//!   all cut batches with it (through `ProducerConfig::batch_builder`), so a
//!   batch one of them builds is one publish of the others, never split.

use prost::encoding::{encoded_len_varint, key_len};

use crate::limits::{BATCH_BYTES_MAX, MESSAGE_BYTES_MAX};
use crate::types::{Fence, OutgoingRecord, GENERATED_IDEMPOTENCY_KEY_BYTES};

// Field numbers of `proto/postbox/v1/postbox.proto`.
const REQUEST_TOPIC: u32 = 1;
const REQUEST_RECORDS: u32 = 2;
const REQUEST_FENCE: u32 = 3;
const RECORD_KEY: u32 = 1;
const RECORD_IDEMPOTENCY_KEY: u32 = 2;
const RECORD_HEADERS: u32 = 3;
const RECORD_PAYLOAD: u32 = 4;
const RECORD_PARTITION: u32 = 5;
const HEADER_NAME: u32 = 1;
const HEADER_VALUE: u32 = 2;
const FENCE_PRODUCER: u32 = 1;
const FENCE_EPOCH: u32 = 2;

// A batch cut at `max_batch_bytes` (at most BATCH_BYTES_MAX) of encoded
// request is a gRPC message the broker decodes.
const _: () = assert!(BATCH_BYTES_MAX <= MESSAGE_BYTES_MAX);

/// What one record adds to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordCost {
    pub(crate) wire_bytes: usize,
    pub(crate) log_bytes: usize,
}

impl RecordCost {
    /// The cost of `record` as it will be sent: when it has no idempotency
    /// key and `generates_key` holds, with the key the producer generates.
    pub(crate) fn of(record: &OutgoingRecord, generates_key: bool) -> RecordCost {
        let generated_key_bytes = match record.idempotency_key {
            None if generates_key => GENERATED_IDEMPOTENCY_KEY_BYTES,
            _ => 0,
        };
        RecordCost {
            wire_bytes: record_wire_bytes(record, generated_key_bytes),
            log_bytes: record.encoded_bytes() + generated_key_bytes,
        }
    }

    /// Bytes the record adds to the encoded `PublishRequest`: the record
    /// message with its field tag and length prefix.
    pub fn wire_bytes(&self) -> usize {
        self.wire_bytes
    }

    /// Bytes the broker counts for the record against `BATCH_BYTES_MAX`:
    /// [`OutgoingRecord::encoded_bytes`], with a generated idempotency key.
    pub fn log_bytes(&self) -> usize {
        self.log_bytes
    }
}

/// Bytes of a `PublishRequest` to `topic` without its records: the topic and
/// the fence, each with its tag and length prefix.
pub(crate) fn request_bytes(topic: &str, fence: Option<&Fence>) -> usize {
    let fence_bytes = fence.map_or(0, |fence| {
        let body = implicit_bytes_field(FENCE_PRODUCER, fence.producer.len())
            + implicit_varint_field(FENCE_EPOCH, fence.epoch);
        bytes_field(REQUEST_FENCE, body)
    });
    implicit_bytes_field(REQUEST_TOPIC, topic.len()) + fence_bytes
}

/// The record's `PublishRecord` message inside the request's `records`, an
/// idempotency key of `generated_key_bytes` counted when it has none.
fn record_wire_bytes(record: &OutgoingRecord, generated_key_bytes: usize) -> usize {
    let idempotency_key_bytes = match &record.idempotency_key {
        Some(key) => bytes_field(RECORD_IDEMPOTENCY_KEY, key.len()),
        None if generated_key_bytes > 0 => bytes_field(RECORD_IDEMPOTENCY_KEY, generated_key_bytes),
        None => 0,
    };
    let headers_bytes: usize = record
        .headers
        .iter()
        .map(|(name, value)| {
            let body = implicit_bytes_field(HEADER_NAME, name.len())
                + implicit_bytes_field(HEADER_VALUE, value.len());
            bytes_field(RECORD_HEADERS, body)
        })
        .sum();
    let body = record
        .key
        .as_ref()
        .map_or(0, |key| bytes_field(RECORD_KEY, key.len()))
        + idempotency_key_bytes
        + headers_bytes
        + implicit_bytes_field(RECORD_PAYLOAD, record.payload.len())
        + record.partition.map_or(0, |partition| {
            key_len(RECORD_PARTITION) + encoded_len_varint(partition.into())
        });
    bytes_field(REQUEST_RECORDS, body)
}

/// A length-delimited field (bytes, string or message) that is sent: tag,
/// length, content.
fn bytes_field(tag: u32, content_bytes: usize) -> usize {
    key_len(tag) + encoded_len_varint(content_bytes as u64) + content_bytes
}

/// A proto3 string or bytes field without presence: not sent when empty.
fn implicit_bytes_field(tag: u32, content_bytes: usize) -> usize {
    if content_bytes == 0 {
        0
    } else {
        bytes_field(tag, content_bytes)
    }
}

/// A proto3 integer field without presence: not sent when zero.
fn implicit_varint_field(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use postbox_proto::v1 as pb;
    use prost::Message;

    use crate::limits::{HEADER_NAME_BYTES_MAX, KEY_BYTES_MAX, RECORD_BYTES_MAX};

    /// Records of every shape: each optional field absent, empty, small and
    /// at sizes where a length prefix grows a byte.
    fn varied_records() -> Vec<OutgoingRecord> {
        let long = |bytes: usize| Bytes::from(vec![b'x'; bytes]);
        vec![
            OutgoingRecord::new(""),
            OutgoingRecord::new("payload"),
            OutgoingRecord::new(long(127)),
            OutgoingRecord::new(long(128)),
            OutgoingRecord::new(long(16_384)),
            OutgoingRecord::new(long(RECORD_BYTES_MAX - 64)),
            OutgoingRecord::new("keyed").key("customer-7"),
            OutgoingRecord::new("empty key").key(""),
            OutgoingRecord::new("long key").key(long(KEY_BYTES_MAX)),
            OutgoingRecord::new("own key").idempotency_key("order-42"),
            OutgoingRecord::new("header").header("type", "created"),
            OutgoingRecord::new("empty header").header("", ""),
            OutgoingRecord::new("long header").header("h".repeat(HEADER_NAME_BYTES_MAX), long(300)),
            (0..64).fold(OutgoingRecord::new("many headers"), |record, i| {
                record.header(format!("h{i}"), "v")
            }),
            OutgoingRecord::new("partition 0").partition(0),
            OutgoingRecord::new("partition 300").partition(300),
            OutgoingRecord::new("partition max").partition(u32::MAX),
            OutgoingRecord::new(long(2_000))
                .key("k")
                .idempotency_key(long(128))
                .header("trace", vec![0u8, 1, 2])
                .header("type", "")
                .partition(7),
        ]
    }

    /// The request the producer sends: every record with its idempotency
    /// key, generated where it has none and the producer generates them.
    fn request(
        topic: &str,
        fence: Option<&Fence>,
        records: &[OutgoingRecord],
        generates_keys: bool,
    ) -> pb::PublishRequest {
        let records = records
            .iter()
            .cloned()
            .map(|record| {
                if generates_keys {
                    record.with_idempotency_key().into_proto()
                } else {
                    record.into_proto()
                }
            })
            .collect();
        pb::PublishRequest {
            topic: topic.to_owned(),
            records,
            fence: fence.map(Fence::to_proto),
        }
    }

    fn computed_bytes(
        topic: &str,
        fence: Option<&Fence>,
        records: &[OutgoingRecord],
        generates_keys: bool,
    ) -> usize {
        let records: usize = records
            .iter()
            .map(|record| RecordCost::of(record, generates_keys).wire_bytes())
            .sum();
        request_bytes(topic, fence) + records
    }

    #[test]
    fn wire_bytes_are_the_encoded_length_of_the_request_sent() {
        let fences = [
            None,
            Some(Fence {
                producer: "relay.orders".into(),
                epoch: 0,
            }),
            Some(Fence {
                producer: "relay".into(),
                epoch: u64::MAX,
            }),
        ];
        let topics = ["t", "orders.created", &"n".repeat(249)];
        for topic in topics {
            for fence in &fences {
                for generates_keys in [true, false] {
                    // Each record alone, then all of them in one request.
                    let records = varied_records();
                    let singles = records.iter().map(std::slice::from_ref);
                    for batch in singles.chain([records.as_slice()]) {
                        let request = request(topic, fence.as_ref(), batch, generates_keys);
                        assert_eq!(
                            computed_bytes(topic, fence.as_ref(), batch, generates_keys),
                            request.encoded_len(),
                            "{} record(s) to {topic:?}, fence {fence:?}, generated keys \
                             {generates_keys}",
                            batch.len()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn log_bytes_are_the_brokers_count_of_the_record_sent() {
        for record in varied_records() {
            let sent = record.clone().with_idempotency_key();
            assert_eq!(
                RecordCost::of(&record, true).log_bytes(),
                sent.encoded_bytes()
            );
            assert_eq!(
                RecordCost::of(&record, false).log_bytes(),
                record.encoded_bytes()
            );
        }
    }
}
