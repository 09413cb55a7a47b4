//! The Postbox broker: a durable, segmented, append-only log with topics,
//! partitions, group commit, crash recovery, idempotent appends and consumer
//! offsets.
//!
//! The storage engine ([`Engine`]) knows nothing about gRPC or protobuf; the
//! network layer is built on top of it. See `docs/ARCHITECTURE.md` for the map
//! and `docs/format.md` for the bytes on disk.

pub mod config;
pub mod dedup;
pub mod dedup_runs;
pub mod engine;
pub mod error;
pub mod limits;
pub mod meta;
pub mod names;
pub mod server;
pub mod storage;
pub mod topic;

#[cfg(test)]
mod page_cache_tests;
#[cfg(test)]
mod power_loss_tests;
#[cfg(test)]
mod recovery_tests;

pub use config::{Durability, EngineConfig, TopicConfig};
pub use engine::{CommittedOffset, Engine, Fence};
pub use error::{Error, Result};
pub use storage::batch::{Header, Record, RecordInput};
pub use topic::{PublishResult, TopicInfo};
