//! The client's own types for records, acknowledgments, topics and start
//! positions, and their conversions to and from the protobuf messages.
//!
//! Invariant: protobuf types stay inside the crate; everything public speaks
//! these types, so that users of the library do not depend on generated code
//! and the wire format can change without breaking them.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use postbox_proto::v1 as pb;
use serde::Serialize;

use crate::error::Error;
use crate::limits::{
    HEADERS_PER_RECORD_MAX, HEADER_FRAMING_BYTES, HEADER_NAME_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX,
    KEY_BYTES_MAX, RECORD_BYTES_MAX, RECORD_FRAMING_BYTES,
};

/// A stored record, as a consumer or fetcher gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The partition it is stored in.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// When the broker appended it, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The partitioning key, if it was published with one.
    pub key: Option<Bytes>,
    /// The idempotency key it was published with.
    pub idempotency_key: Option<Bytes>,
    /// Headers in publish order; names need not be unique.
    pub headers: Vec<(String, Bytes)>,
    /// The payload.
    pub payload: Bytes,
}

impl Record {
    pub(crate) fn from_proto(record: pb::Record) -> Record {
        Record {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: record.key,
            idempotency_key: record.idempotency_key,
            headers: record
                .headers
                .into_iter()
                .map(|header| (header.name, header.value))
                .collect(),
            payload: record.payload,
        }
    }
}

/// A record to publish, built in steps:
/// `OutgoingRecord::new("body").key("order-42").header("type", "created")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    // Read by `wire`, which sizes records on the wire.
    pub(crate) key: Option<Bytes>,
    pub(crate) idempotency_key: Option<Bytes>,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) payload: Bytes,
    pub(crate) partition: Option<u32>,
}

/// Bytes of the idempotency key the producer generates for a record without
/// one: a UUID v7 in its hyphenated text form.
pub(crate) const GENERATED_IDEMPOTENCY_KEY_BYTES: usize = uuid::fmt::Hyphenated::LENGTH;

impl OutgoingRecord {
    /// A record with this payload, no key and no headers.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        OutgoingRecord {
            key: None,
            idempotency_key: None,
            headers: Vec::new(),
            payload: payload.into(),
            partition: None,
        }
    }

    /// Sets the partitioning key: records with the same key go to the same
    /// partition, in publish order.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the idempotency key. Without one, the producer assigns a UUID v7
    /// (its 36-byte text form) before the first attempt.
    pub fn idempotency_key(mut self, idempotency_key: impl Into<Bytes>) -> Self {
        self.idempotency_key = Some(idempotency_key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends the record to this partition, whatever its key.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The idempotency key, if one is set.
    pub fn idempotency_key_bytes(&self) -> Option<&Bytes> {
        self.idempotency_key.as_ref()
    }

    /// Bytes of data in the record (payload, keys, header names and values),
    /// without any framing: what the producer's `max_queued_bytes` counts.
    pub fn size_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        self.payload.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.idempotency_key.as_ref().map_or(0, Bytes::len)
            + headers
    }

    /// Bytes the record takes in the broker's log, its length fields
    /// included: what the broker checks against [`RECORD_BYTES_MAX`] and
    /// [`BATCH_BYTES_MAX`](crate::BATCH_BYTES_MAX). Counts the idempotency key
    /// only when one is set.
    pub fn encoded_bytes(&self) -> usize {
        self.size_bytes() + RECORD_FRAMING_BYTES + HEADER_FRAMING_BYTES * self.headers.len()
    }

    /// Checks the record against the broker's per-record limits, as the
    /// producer will send it: a record without an idempotency key counts the
    /// UUID the producer generates for it. These are the broker's own checks
    /// ([`RECORD_BYTES_MAX`] first), so the producer refuses before sending
    /// exactly the records the broker would refuse, with INVALID_ARGUMENT.
    pub fn validate(&self) -> Result<(), Error> {
        let generated_key_bytes = match self.idempotency_key {
            Some(_) => 0,
            None => GENERATED_IDEMPOTENCY_KEY_BYTES,
        };
        check_limit(
            "record size in bytes (length fields included)",
            self.encoded_bytes() + generated_key_bytes,
            RECORD_BYTES_MAX,
            "RECORD_BYTES_MAX",
        )?;
        if let Some(key) = &self.key {
            check_limit(
                "record key size in bytes",
                key.len(),
                KEY_BYTES_MAX,
                "KEY_BYTES_MAX",
            )?;
        }
        if let Some(idempotency_key) = &self.idempotency_key {
            if idempotency_key.is_empty() {
                return Err(Error::InvalidArgument(
                    "an idempotency key, when set, must not be empty".into(),
                ));
            }
            check_limit(
                "idempotency key size in bytes",
                idempotency_key.len(),
                IDEMPOTENCY_KEY_BYTES_MAX,
                "IDEMPOTENCY_KEY_BYTES_MAX",
            )?;
        }
        check_limit(
            "header count",
            self.headers.len(),
            HEADERS_PER_RECORD_MAX,
            "HEADERS_PER_RECORD_MAX",
        )?;
        for (name, _) in &self.headers {
            check_limit(
                "header name size in bytes",
                name.len(),
                HEADER_NAME_BYTES_MAX,
                "HEADER_NAME_BYTES_MAX",
            )?;
        }
        Ok(())
    }

    /// The record with an idempotency key: its own, or a fresh UUID v7 in
    /// text form. Called once per record before its first attempt, so that
    /// every retry carries the same key.
    pub(crate) fn with_idempotency_key(mut self) -> Self {
        if self.idempotency_key.is_none() {
            let uuid = uuid::Uuid::now_v7().hyphenated().to_string();
            self.idempotency_key = Some(Bytes::from(uuid));
        }
        self
    }

    pub(crate) fn into_proto(self) -> pb::PublishRecord {
        pb::PublishRecord {
            key: self.key,
            idempotency_key: self.idempotency_key,
            headers: self
                .headers
                .into_iter()
                .map(|(name, value)| pb::Header { name, value })
                .collect(),
            payload: self.payload,
            partition: self.partition,
        }
    }
}

/// Fails with a message naming the broker's limit when `value` is over it.
fn check_limit(what: &str, value: usize, limit: usize, limit_name: &str) -> Result<(), Error> {
    if value <= limit {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{what} is {value}; the broker accepts at most {limit} ({limit_name})"
    )))
}

/// A fenced producer's identity and epoch (see `ProducerConfig::fence`): the
/// broker remembers each producer's highest epoch and refuses older ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// 1 to 249 characters of `[A-Za-z0-9._-]`, like topic names.
    pub producer: String,
    /// Raised by each new instance, for example a leadership term.
    pub epoch: u64,
}

impl Fence {
    pub(crate) fn to_proto(&self) -> pb::Fence {
        pb::Fence {
            producer: self.producer.clone(),
            epoch: self.epoch,
        }
    }
}

/// When a publish is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the records are written and fdatasync'ed (the default).
    #[default]
    Sync,
    /// After the records are written to the page cache; flushed every
    /// `fsync_interval_ms`. A power loss may lose the last interval.
    Async,
}

impl Durability {
    fn into_proto(self) -> pb::Durability {
        match self {
            Durability::Sync => pb::Durability::Sync,
            Durability::Async => pb::Durability::Async,
        }
    }

    fn from_proto(value: i32) -> Durability {
        // The broker never reports UNSPECIFIED; if it did, SYNC is what it means.
        match pb::Durability::try_from(value) {
            Ok(pb::Durability::Async) => Durability::Async,
            _ => Durability::Sync,
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Sync => "sync",
            Durability::Async => "async",
        })
    }
}

impl FromStr for Durability {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "sync" => Ok(Durability::Sync),
            "async" => Ok(Durability::Async),
            other => Err(Error::InvalidArgument(format!(
                "durability must be sync or async, not {other:?}"
            ))),
        }
    }
}

/// Settings of a new topic. `None` leaves a setting to the broker's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    /// Number of partitions, fixed for the topic's life (0 means 1).
    pub partitions: u32,
    /// When publishes are acknowledged.
    pub durability: Durability,
    /// Flush interval of `async` topics.
    pub fsync_interval_ms: Option<u64>,
    /// Size at which a segment file rolls.
    pub segment_bytes: Option<u64>,
    /// Sealed segments older than this are deleted.
    pub retention_ms: Option<u64>,
    /// The oldest sealed segments are deleted while a partition is larger.
    pub retention_bytes: Option<u64>,
    /// How long an idempotency key is remembered.
    pub dedup_window_ms: Option<u64>,
    /// Most idempotency keys remembered per topic.
    pub dedup_keys_max: Option<u64>,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            partitions: 1,
            durability: Durability::Sync,
            fsync_interval_ms: None,
            segment_bytes: None,
            retention_ms: None,
            retention_bytes: None,
            dedup_window_ms: None,
            dedup_keys_max: None,
        }
    }
}

impl TopicSettings {
    pub(crate) fn into_proto(self, name: &str) -> pb::CreateTopicRequest {
        pb::CreateTopicRequest {
            name: name.to_owned(),
            partitions: self.partitions,
            durability: self.durability.into_proto().into(),
            fsync_interval_ms: self.fsync_interval_ms,
            segment_bytes: self.segment_bytes,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            dedup_window_ms: self.dedup_window_ms,
            dedup_keys_max: self.dedup_keys_max,
        }
    }
}

/// A topic's settings and partitions, as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// When publishes are acknowledged.
    pub durability: Durability,
    /// Flush interval of `async` topics.
    pub fsync_interval_ms: u64,
    /// Size at which a segment file rolls.
    pub segment_bytes: u64,
    /// Age retention, if any.
    pub retention_ms: Option<u64>,
    /// Size retention per partition, if any.
    pub retention_bytes: Option<u64>,
    /// How long an idempotency key is remembered.
    pub dedup_window_ms: u64,
    /// Most idempotency keys remembered.
    pub dedup_keys_max: u64,
    /// One entry per partition, by partition id.
    pub partition_info: Vec<PartitionInfo>,
}

impl TopicInfo {
    pub(crate) fn from_proto(info: pb::TopicInfo) -> TopicInfo {
        TopicInfo {
            name: info.name,
            partitions: info.partitions,
            durability: Durability::from_proto(info.durability),
            fsync_interval_ms: info.fsync_interval_ms,
            segment_bytes: info.segment_bytes,
            retention_ms: info.retention_ms,
            retention_bytes: info.retention_bytes,
            dedup_window_ms: info.dedup_window_ms,
            dedup_keys_max: info.dedup_keys_max,
            partition_info: info
                .partition_info
                .into_iter()
                .map(PartitionInfo::from_proto)
                .collect(),
        }
    }
}

/// One partition's extent and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionInfo {
    /// The partition id.
    pub partition: u32,
    /// The oldest offset still stored.
    pub earliest_offset: u64,
    /// The offset the next record will get.
    pub end_offset: u64,
    /// Bytes of segment files.
    pub size_bytes: u64,
    /// Number of segment files.
    pub segments: u32,
}

impl PartitionInfo {
    fn from_proto(info: pb::PartitionInfo) -> PartitionInfo {
        PartitionInfo {
            partition: info.partition,
            earliest_offset: info.earliest_offset,
            end_offset: info.end_offset,
            size_bytes: info.size_bytes,
            segments: info.segments,
        }
    }
}

/// Records read by one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The records, in offset order.
    pub records: Vec<Record>,
    /// The offset to fetch next.
    pub next_offset: u64,
    /// The partition's oldest stored offset when the fetch answered.
    pub earliest_offset: u64,
    /// The partition's end offset when the fetch answered.
    pub end_offset: u64,
}

impl Fetched {
    pub(crate) fn from_proto(response: pb::FetchResponse) -> Fetched {
        Fetched {
            records: response
                .records
                .into_iter()
                .map(Record::from_proto)
                .collect(),
            next_offset: response.next_offset,
            earliest_offset: response.earliest_offset,
            end_offset: response.end_offset,
        }
    }
}

/// Where a subscription starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest record still stored.
    Earliest,
    /// Only records appended after the subscription started.
    Latest,
    /// The group's committed offset (earliest where it never committed).
    Committed,
    /// This offset in every subscribed partition.
    Offset(u64),
    /// The first record appended at or after this time, ms since the epoch.
    Timestamp(i64),
}

impl StartFrom {
    pub(crate) fn into_proto(self) -> pb::subscribe_request::Start {
        use pb::subscribe_request::Start;
        match self {
            StartFrom::Earliest => Start::Position(pb::StartPosition::Earliest.into()),
            StartFrom::Latest => Start::Position(pb::StartPosition::Latest.into()),
            StartFrom::Committed => Start::Position(pb::StartPosition::Committed.into()),
            StartFrom::Offset(offset) => Start::Offset(offset),
            StartFrom::Timestamp(timestamp_ms) => Start::TimestampMs(timestamp_ms),
        }
    }
}

impl FromStr for StartFrom {
    type Err = Error;

    /// `earliest`, `latest`, `committed`, or an offset.
    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            "committed" => Ok(StartFrom::Committed),
            other => other.parse().map(StartFrom::Offset).map_err(|_| {
                Error::InvalidArgument(format!(
                    "start must be earliest, latest, committed or an offset, not {other:?}"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_idempotency_key_is_uuid_v7_text_and_kept() {
        let record = OutgoingRecord::new("x").with_idempotency_key();
        let key = record.idempotency_key_bytes().cloned().unwrap_or_default();
        assert_eq!(key.len(), 36);
        let parsed = std::str::from_utf8(&key)
            .ok()
            .and_then(|text| uuid::Uuid::parse_str(text).ok());
        assert_eq!(parsed.map(|uuid| uuid.get_version_num()), Some(7));
        // A second call keeps the key: retries reuse it.
        assert_eq!(record.clone().with_idempotency_key(), record);
    }

    #[test]
    fn explicit_idempotency_key_is_not_replaced() {
        let record = OutgoingRecord::new("x")
            .idempotency_key("order-42")
            .with_idempotency_key();
        assert_eq!(
            record.idempotency_key_bytes(),
            Some(&Bytes::from("order-42"))
        );
    }

    #[test]
    fn size_counts_payload_keys_and_headers() {
        let record = OutgoingRecord::new("12345")
            .key("ab")
            .idempotency_key("xyz")
            .header("h", "vv");
        assert_eq!(record.size_bytes(), 5 + 2 + 3 + 1 + 2);
    }

    #[test]
    fn encoded_size_adds_the_length_fields_the_broker_counts() {
        let record = OutgoingRecord::new("12345")
            .key("ab")
            .idempotency_key("xyz")
            .header("h", "vv");
        // As `postbox_engine::RecordInput::encoded_bytes`: record length, key
        // length and key, idempotency key length and key, header count,
        // header name length, name, value length, value, payload.
        assert_eq!(
            record.encoded_bytes(),
            4 + (4 + 2) + (4 + 3) + 2 + (2 + 1 + 4 + 2) + 5
        );
        assert_eq!(OutgoingRecord::new("").encoded_bytes(), 4 + 4 + 4 + 2);
    }

    fn invalid_message(record: &OutgoingRecord) -> String {
        match record.validate() {
            Err(Error::InvalidArgument(message)) => message,
            other => format!("not InvalidArgument: {other:?}"),
        }
    }

    #[test]
    fn record_size_is_checked_just_under_and_just_over_the_limit() {
        // With its own one-byte idempotency key: 14 bytes of length fields.
        let payload_max = RECORD_BYTES_MAX - RECORD_FRAMING_BYTES - 1;
        let at_limit = OutgoingRecord::new(vec![0u8; payload_max]).idempotency_key("k");
        assert_eq!(at_limit.encoded_bytes(), RECORD_BYTES_MAX);
        assert_eq!(at_limit.validate(), Ok(()));
        let over = OutgoingRecord::new(vec![0u8; payload_max + 1]).idempotency_key("k");
        assert_eq!(
            invalid_message(&over),
            "record size in bytes (length fields included) is 1048577; the broker accepts \
             at most 1048576 (RECORD_BYTES_MAX)"
        );
    }

    #[test]
    fn record_size_counts_the_idempotency_key_the_producer_will_generate() {
        let payload_max = RECORD_BYTES_MAX - RECORD_FRAMING_BYTES - 36;
        assert_eq!(
            OutgoingRecord::new(vec![0u8; payload_max]).validate(),
            Ok(())
        );
        let over = OutgoingRecord::new(vec![0u8; payload_max + 1]);
        assert!(invalid_message(&over).contains("RECORD_BYTES_MAX"));
        // Exactly what the producer sends, once it added the key.
        assert_eq!(
            OutgoingRecord::new(vec![0u8; payload_max])
                .with_idempotency_key()
                .encoded_bytes(),
            RECORD_BYTES_MAX
        );
    }

    #[test]
    fn record_size_is_checked_before_the_other_limits() {
        let both =
            OutgoingRecord::new(vec![0u8; RECORD_BYTES_MAX]).key(vec![0u8; KEY_BYTES_MAX + 1]);
        assert!(invalid_message(&both).contains("(RECORD_BYTES_MAX)"));
    }

    #[test]
    fn per_record_limits_are_checked_at_and_over_each_and_named() {
        let record = || OutgoingRecord::new("x");
        let cases = [
            (
                record().key(vec![1u8; KEY_BYTES_MAX]),
                record().key(vec![1u8; KEY_BYTES_MAX + 1]),
                "KEY_BYTES_MAX",
            ),
            (
                record().idempotency_key(vec![1u8; IDEMPOTENCY_KEY_BYTES_MAX]),
                record().idempotency_key(vec![1u8; IDEMPOTENCY_KEY_BYTES_MAX + 1]),
                "IDEMPOTENCY_KEY_BYTES_MAX",
            ),
            (
                (0..HEADERS_PER_RECORD_MAX).fold(record(), |r, _| r.header("h", "v")),
                (0..=HEADERS_PER_RECORD_MAX).fold(record(), |r, _| r.header("h", "v")),
                "HEADERS_PER_RECORD_MAX",
            ),
            (
                record().header("h".repeat(HEADER_NAME_BYTES_MAX), "v"),
                record().header("h".repeat(HEADER_NAME_BYTES_MAX + 1), "v"),
                "HEADER_NAME_BYTES_MAX",
            ),
        ];
        for (at_limit, over, limit_name) in cases {
            assert_eq!(at_limit.validate(), Ok(()), "{limit_name}");
            let message = invalid_message(&over);
            assert!(message.contains(&format!("({limit_name})")), "{message}");
        }
        let empty_key = record().idempotency_key("");
        assert!(invalid_message(&empty_key).contains("must not be empty"));
    }

    #[test]
    fn start_from_parses_names_and_offsets() {
        assert_eq!(
            "earliest".parse::<StartFrom>().ok(),
            Some(StartFrom::Earliest)
        );
        assert_eq!("latest".parse::<StartFrom>().ok(), Some(StartFrom::Latest));
        assert_eq!(
            "committed".parse::<StartFrom>().ok(),
            Some(StartFrom::Committed)
        );
        assert_eq!("42".parse::<StartFrom>().ok(), Some(StartFrom::Offset(42)));
        assert!("-1".parse::<StartFrom>().is_err());
        assert!("first".parse::<StartFrom>().is_err());
    }

    #[test]
    fn durability_parses_and_displays() {
        assert_eq!("sync".parse::<Durability>().ok(), Some(Durability::Sync));
        assert_eq!("async".parse::<Durability>().ok(), Some(Durability::Async));
        assert!("fast".parse::<Durability>().is_err());
        assert_eq!(Durability::Async.to_string(), "async");
    }
}
