//! Topic and engine settings, validated once before they are used.
//!
//! A topic's settings are fixed at creation and stored with its files (see
//! `topic_store`); the engine's settings come from the binary's flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::limits::*;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledged after the records are written and fdatasync'ed (group commit).
    #[default]
    Sync,
    /// Acknowledged after the records are written to the page cache; flushed to
    /// disk every `fsync_interval_ms`. A power loss may lose the last interval.
    Async,
}

/// A topic's settings. The partition count is fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub partitions: u32,
    #[serde(default)]
    pub durability: Durability,
    /// Flush interval for `async` durability.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// A segment rolls when the next frame would take it past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Sealed segments whose newest record is older than this are deleted.
    #[serde(default)]
    pub retention_ms: Option<u64>,
    /// Oldest sealed segments are deleted while a partition holds more than this.
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    /// How long an idempotency key is remembered, measured on record timestamps.
    #[serde(default = "default_dedup_window_ms")]
    pub dedup_window_ms: u64,
    /// Most idempotency keys remembered; the oldest are forgotten first.
    #[serde(default = "default_dedup_keys_max")]
    pub dedup_keys_max: u64,
}

fn default_fsync_interval_ms() -> u64 {
    FSYNC_INTERVAL_MS_DEFAULT
}
fn default_segment_bytes() -> u64 {
    SEGMENT_BYTES_DEFAULT
}
fn default_dedup_window_ms() -> u64 {
    DEDUP_WINDOW_MS_DEFAULT
}
fn default_dedup_keys_max() -> u64 {
    DEDUP_KEYS_MAX_DEFAULT
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            durability: Durability::Sync,
            fsync_interval_ms: FSYNC_INTERVAL_MS_DEFAULT,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            retention_ms: None,
            retention_bytes: None,
            dedup_window_ms: DEDUP_WINDOW_MS_DEFAULT,
            dedup_keys_max: DEDUP_KEYS_MAX_DEFAULT,
        }
    }
}

impl TopicConfig {
    /// A default configuration with `partitions` partitions.
    pub fn with_partitions(partitions: u32) -> Self {
        TopicConfig {
            partitions,
            ..TopicConfig::default()
        }
    }

    /// Checks every setting against its limit.
    pub fn validate(&self) -> Result<()> {
        if self.partitions == 0 {
            return Err(Error::InvalidArgument(
                "a topic needs at least 1 partition".into(),
            ));
        }
        check_max(
            "partitions",
            PARTITIONS_PER_TOPIC_MAX as u64,
            self.partitions as u64,
        )?;
        check_range(
            "segment_bytes",
            SEGMENT_BYTES_MIN,
            SEGMENT_BYTES_MAX,
            self.segment_bytes,
        )?;
        check_range("fsync_interval_ms", 1, 3_600_000, self.fsync_interval_ms)?;
        check_range(
            "dedup_window_ms",
            0,
            365 * 24 * 3_600_000,
            self.dedup_window_ms,
        )?;
        check_range("dedup_keys_max", 1, 1_000_000_000, self.dedup_keys_max)?;
        if let Some(ms) = self.retention_ms {
            check_range("retention_ms", 1, RETENTION_MS_MAX, ms)?;
        }
        if let Some(bytes) = self.retention_bytes {
            check_range("retention_bytes", 1, u64::MAX, bytes)?;
        }
        Ok(())
    }
}

fn check_max(what: &str, limit: u64, actual: u64) -> Result<()> {
    if actual > limit {
        return Err(Error::limit(what, limit, actual));
    }
    Ok(())
}

fn check_range(what: &str, min: u64, max: u64, actual: u64) -> Result<()> {
    if actual < min || actual > max {
        return Err(Error::InvalidArgument(format!(
            "{what} is {actual}; it must be between {min} and {max}"
        )));
    }
    Ok(())
}

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Root of everything the broker stores.
    pub data_dir: PathBuf,
    /// Bytes enqueued but not yet durable per partition before appends wait.
    pub in_flight_bytes_per_partition: u64,
    /// Distance in bytes between sparse index entries.
    pub index_interval_bytes: u32,
    /// Page cache of the metadata store (sled), in bytes.
    pub meta_cache_bytes: u64,
    /// How often the background threads wake (async flushes and retention;
    /// dedup checkpoints).
    pub maintenance_interval_ms: u64,
    /// How often retention is enforced.
    pub retention_check_interval_ms: u64,
    /// Longest time dedup keys stay in memory before they are checkpointed.
    pub dedup_checkpoint_interval_ms: u64,
    /// Read sealed segments through a memory map (fast replay). A media error
    /// under a mapping stops the process (SIGBUS) instead of failing one read
    /// with a data-loss error; turn this off on a disk that reports read errors.
    pub map_sealed_segments: bool,
    /// Newest bytes of each partition's log kept in the page cache; older
    /// synced bytes are handed back to the kernel (see `storage::write_behind`).
    /// 0 leaves the cache to the kernel alone.
    pub page_cache_window_bytes: u64,
    /// The wall clock: append times and retention by age. Tests move a
    /// [`crate::clock::ManualClock`] instead of sleeping.
    pub clock: Arc<dyn Clock>,
    /// First pause before a failed partition (a failed write or fsync, a
    /// full disk) is probed and reopened; doubles after each failed attempt.
    pub reopen_backoff_min_ms: u64,
    /// Longest pause between two attempts to reopen a failed partition.
    pub reopen_backoff_max_ms: u64,
    /// Most bytes of zeros written ahead of active segments' data, summed
    /// over every partition (see `storage::zero_fill`); 0 turns the fill off.
    pub zero_fill_bytes_max: u64,
}

impl EngineConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            in_flight_bytes_per_partition: IN_FLIGHT_BYTES_PER_PARTITION_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            meta_cache_bytes: 64 * 1024 * 1024,
            maintenance_interval_ms: 50,
            retention_check_interval_ms: 60_000,
            dedup_checkpoint_interval_ms: 2_000,
            map_sealed_segments: true,
            page_cache_window_bytes: PAGE_CACHE_WINDOW_BYTES_DEFAULT,
            clock: Arc::new(SystemClock),
            reopen_backoff_min_ms: REOPEN_BACKOFF_MIN_MS_DEFAULT,
            reopen_backoff_max_ms: REOPEN_BACKOFF_MAX_MS_DEFAULT,
            zero_fill_bytes_max: ZERO_FILL_BYTES_MAX_DEFAULT,
        }
    }

    /// Checks settings and the relationships between them.
    pub fn validate(&self) -> Result<()> {
        if self.in_flight_bytes_per_partition < BATCH_BYTES_MAX as u64 {
            return Err(Error::InvalidArgument(format!(
                "in_flight_bytes_per_partition ({}) must be at least the largest batch ({BATCH_BYTES_MAX} bytes)",
                self.in_flight_bytes_per_partition
            )));
        }
        check_range(
            "index_interval_bytes",
            1,
            SEGMENT_BYTES_MAX,
            self.index_interval_bytes as u64,
        )?;
        check_range(
            "maintenance_interval_ms",
            1,
            60_000,
            self.maintenance_interval_ms,
        )?;
        check_range(
            "reopen_backoff_min_ms",
            1,
            REOPEN_BACKOFF_MS_MAX,
            self.reopen_backoff_min_ms,
        )?;
        check_range(
            "reopen_backoff_max_ms",
            self.reopen_backoff_min_ms,
            REOPEN_BACKOFF_MS_MAX,
            self.reopen_backoff_max_ms,
        )?;
        Ok(())
    }

    pub(crate) fn maintenance_interval(&self) -> Duration {
        Duration::from_millis(self.maintenance_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_just_under_and_over_the_limit() {
        assert!(TopicConfig::with_partitions(PARTITIONS_PER_TOPIC_MAX)
            .validate()
            .is_ok());
        let err = TopicConfig::with_partitions(PARTITIONS_PER_TOPIC_MAX + 1)
            .validate()
            .expect_err("over");
        assert!(err.to_string().contains("1024"), "{err}");
        assert!(TopicConfig::with_partitions(0).validate().is_err());
    }

    #[test]
    fn retention_just_under_and_over_its_limit() {
        let with = |ms| TopicConfig {
            retention_ms: Some(ms),
            ..TopicConfig::default()
        };
        assert!(with(RETENTION_MS_MAX).validate().is_ok());
        assert!(with(RETENTION_MS_MAX + 1).validate().is_err());
        assert!(with(0).validate().is_err());
        assert!(
            with(u64::MAX).validate().is_err(),
            "no overflow into the past"
        );
    }

    #[test]
    fn segment_bytes_bounds() {
        let mut config = TopicConfig {
            segment_bytes: SEGMENT_BYTES_MIN,
            ..TopicConfig::default()
        };
        assert!(config.validate().is_ok());
        config.segment_bytes = SEGMENT_BYTES_MIN - 1;
        assert!(config.validate().is_err());
        config.segment_bytes = SEGMENT_BYTES_MAX + 1;
        assert!(config.validate().is_err());
    }

    #[test]
    fn in_flight_must_hold_a_batch() {
        let mut config = EngineConfig::new("/tmp/x");
        config.in_flight_bytes_per_partition = BATCH_BYTES_MAX as u64 - 1;
        let msg = config.validate().expect_err("too small").to_string();
        assert!(msg.contains(&BATCH_BYTES_MAX.to_string()), "{msg}");
    }
}
