//! The Postbox storage engine: a durable, segmented, append-only log with
//! topics, partitions, group commit, crash recovery, idempotent appends,
//! consumer offsets, fences and retention.
//!
//! It knows nothing about gRPC or protobuf: the crate has no network
//! dependency, and `postbox-broker` puts its service on top. See
//! `docs/ARCHITECTURE.md` for the map and `docs/format.md` for the bytes on
//! disk.

pub mod clock;
pub mod config;
pub mod dedup;
pub mod engine;
pub mod error;
pub mod limits;
pub mod meta;
pub mod names;
pub mod storage;
pub mod sync;
pub mod topic;

#[cfg(test)]
mod testing;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Durability, EngineConfig, TopicConfig};
pub use engine::{CommittedOffset, DataDirFiles, Engine, Fence};
pub use error::{Error, Result};
pub use storage::batch::{Header, Record, RecordInput};
pub use storage::partition::PartitionInfo;
pub use topic::{PublishResult, TopicInfo};
