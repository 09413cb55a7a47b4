//! Conversions between the protobuf types of `postbox.v1` and the engine's.
//!
//! Protocol types stop here: the engine never sees them. Bytes fields are
//! `Bytes` on both sides, so payloads move without copies.

use bytes::Bytes;
use postbox_proto::v1 as pb;
use tonic::Status;

use super::status::status;
use crate::backend::limits::{READ_BYTES_DEFAULT, READ_BYTES_MAX};
use crate::backend::Error;
use crate::backend::PartitionInfo;
use crate::backend::{Durability, TopicConfig};
use crate::backend::{Header, Record, RecordInput};
use crate::backend::{PublishResult, TopicInfo};

/// A read size from a request: 0 means the default; above `READ_BYTES_MAX`
/// is refused rather than quietly cut.
pub fn read_bytes(what: &str, requested: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(READ_BYTES_DEFAULT),
        n if n > READ_BYTES_MAX => Err(status(Error::limit(what, READ_BYTES_MAX.into(), n.into()))),
        n => Ok(n),
    }
}

/// A topic's settings from a create request; absent fields take defaults.
pub fn topic_config(req: &pb::CreateTopicRequest) -> Result<TopicConfig, Status> {
    let defaults = TopicConfig::default();
    let durability = match pb::Durability::try_from(req.durability) {
        Ok(pb::Durability::Unspecified | pb::Durability::Sync) => Durability::Sync,
        Ok(pb::Durability::Async) => Durability::Async,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "durability {} is unknown; use DURABILITY_SYNC or DURABILITY_ASYNC",
                req.durability
            )))
        }
    };
    Ok(TopicConfig {
        partitions: req.partitions.max(1),
        durability,
        fsync_interval_ms: req.fsync_interval_ms.unwrap_or(defaults.fsync_interval_ms),
        segment_bytes: req.segment_bytes.unwrap_or(defaults.segment_bytes),
        retention_ms: req.retention_ms,
        retention_bytes: req.retention_bytes,
        dedup_window_ms: req.dedup_window_ms.unwrap_or(defaults.dedup_window_ms),
        dedup_keys_max: req.dedup_keys_max.unwrap_or(defaults.dedup_keys_max),
    })
}

pub fn topic_info(info: TopicInfo) -> pb::TopicInfo {
    let c = info.config;
    let durability = match c.durability {
        Durability::Sync => pb::Durability::Sync,
        Durability::Async => pb::Durability::Async,
    };
    pb::TopicInfo {
        name: info.name,
        partitions: c.partitions,
        durability: durability.into(),
        fsync_interval_ms: c.fsync_interval_ms,
        segment_bytes: c.segment_bytes,
        retention_ms: c.retention_ms,
        retention_bytes: c.retention_bytes,
        dedup_window_ms: c.dedup_window_ms,
        dedup_keys_max: c.dedup_keys_max,
        partition_info: info.partitions.into_iter().map(partition_info).collect(),
    }
}

fn partition_info(p: PartitionInfo) -> pb::PartitionInfo {
    pb::PartitionInfo {
        partition: p.partition,
        earliest_offset: p.earliest_offset,
        end_offset: p.end_offset,
        size_bytes: p.size_bytes,
        segments: p.segments,
    }
}

pub fn record_input(r: pb::PublishRecord) -> RecordInput {
    RecordInput {
        key: r.key,
        idempotency_key: r.idempotency_key,
        headers: r
            .headers
            .into_iter()
            .map(|h| Header {
                name: Bytes::from(h.name),
                value: h.value,
            })
            .collect(),
        payload: r.payload,
        partition: r.partition,
    }
}

pub fn ack(r: PublishResult) -> pb::PublishAck {
    pb::PublishAck {
        partition: r.partition,
        offset: r.offset,
        duplicate: r.duplicate,
    }
}

pub fn record(partition: u32, r: Record) -> pb::Record {
    pb::Record {
        partition,
        offset: r.offset,
        timestamp_ms: r.timestamp_ms,
        key: r.key,
        idempotency_key: r.idempotency_key,
        headers: r.headers.into_iter().map(header).collect(),
        payload: r.payload,
    }
}

/// Header names are stored as bytes; the API promises UTF-8, which the
/// broker checked on the way in (a name that is not is shown lossily).
fn header(h: Header) -> pb::Header {
    pb::Header {
        name: String::from_utf8_lossy(&h.name).into_owned(),
        value: h.value,
    }
}
