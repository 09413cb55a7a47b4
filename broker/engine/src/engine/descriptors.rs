//! The file descriptors an engine holds for a data directory, counted from
//! the directory's layout before it is opened, so that a process can check
//! its descriptor limit first: a limit that runs out later fails a segment
//! roll, which stops the partition until it is reopened.
//!
//! What an open engine keeps open, and so what is counted:
//! - every segment's log, sealed ones too (reads and memory maps go through
//!   them), and the active segment's index: one log per segment and one
//!   index per partition (`storage::partition`, `storage::writer`);
//! - the data directory's `LOCK` and the metadata store's files, always.
//!
//! What grows while it runs, and so is only projected: a topic's dedup runs,
//! opened at its first keyed lookup and at most `DEDUP_RUNS_MAX` (plus the
//! run a checkpoint writes and the one a merge writes); each segment roll
//! (a new log and, for a moment, a second index); every sealed segment kept
//! (one log each, until retention deletes it); new topics.
//!
//! Counting reads directory listings only, never a file, and changes nothing.

use std::path::Path;

use crate::dedup::runs::DEDUP_RUNS_MAX;
use crate::error::{IoContext, Result};
use crate::names::validate_topic;
use crate::storage::io::{RealFs, Vfs};
use crate::storage::segment::parse_file_name;

use super::TOPICS_DIR;

/// Descriptors an open engine holds whatever the data: the data directory's
/// `LOCK` and the metadata store's (sled 0.34) database file, measured at 2
/// on Linux, with room for sled to take more.
pub const ENGINE_FIXED_DESCRIPTORS: u64 = 4;
/// Index files open per partition beside its logs: the active segment's.
pub const INDEXES_PER_PARTITION: u64 = 1;
/// Descriptors a segment roll adds, for a moment, to a partition: the new
/// segment's log and index are opened before the old index is closed.
pub const ROLL_DESCRIPTORS: u64 = 2;
/// Dedup run files one topic can hold open: its runs at their bound, the one
/// a checkpoint writes and the one a merge writes.
pub const DEDUP_RUN_DESCRIPTORS_MAX: u64 = DEDUP_RUNS_MAX as u64 + 2;

/// What a data directory holds that costs descriptors once it is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataDirFiles {
    pub topics: u64,
    pub partitions: u64,
    /// Segment logs, across all partitions.
    pub segments: u64,
}

impl DataDirFiles {
    /// Counts the topics, partitions and segments under `data_dir`; a data
    /// directory not made yet holds none.
    pub fn count(data_dir: &Path) -> Result<DataDirFiles> {
        let mut files = DataDirFiles::default();
        let topics_dir = data_dir.join(TOPICS_DIR);
        if !RealFs.exists(&topics_dir) {
            return Ok(files);
        }
        for topic in list(&topics_dir)? {
            let topic_dir = topics_dir.join(&topic);
            // What the engine skips at open, so does the count.
            if validate_topic(&topic).is_err() || !topic_dir.is_dir() {
                continue;
            }
            files.topics += 1;
            for partition in list(&topic_dir)? {
                let partition_dir = topic_dir.join(&partition);
                if partition.parse::<u32>().is_err() || !partition_dir.is_dir() {
                    continue;
                }
                files.partitions += 1;
                files.segments += list(&partition_dir)?
                    .iter()
                    .filter(|name| matches!(parse_file_name(name), Some((_, true))))
                    .count() as u64;
            }
        }
        Ok(files)
    }

    /// Descriptors held once the engine has opened the directory.
    pub fn descriptors_at_open(&self) -> u64 {
        self.segments + self.partitions * INDEXES_PER_PARTITION + ENGINE_FIXED_DESCRIPTORS
    }

    /// Descriptors held once every topic's dedup runs reach their bound and
    /// every partition rolls a segment at once: what the data directory
    /// needs in use, short of its growth in sealed segments and topics.
    pub fn descriptors_in_use(&self) -> u64 {
        self.descriptors_at_open()
            + self.topics * DEDUP_RUN_DESCRIPTORS_MAX
            + self.partitions * ROLL_DESCRIPTORS
    }
}

fn list(dir: &Path) -> Result<Vec<String>> {
    RealFs
        .list_dir(dir)
        .context(|| format!("listing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, EngineConfig, TopicConfig};

    #[test]
    fn counts_the_segments_and_partitions_an_engine_opens() -> Result<()> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data_dir = dir.path().join("data");
        assert_eq!(DataDirFiles::count(&data_dir)?, DataDirFiles::default());
        let engine = Engine::open(EngineConfig::new(data_dir.clone()))?;
        for (name, partitions) in [("a", 3), ("b", 2)] {
            let config = TopicConfig {
                partitions,
                ..TopicConfig::default()
            };
            engine.create_topic(name, config)?;
        }
        engine.close()?;
        let files = DataDirFiles::count(&data_dir)?;
        assert_eq!(
            files,
            DataDirFiles {
                topics: 2,
                partitions: 5,
                segments: 5,
            }
        );
        assert_eq!(
            files.descriptors_at_open(),
            5 + 5 + ENGINE_FIXED_DESCRIPTORS
        );
        assert!(files.descriptors_in_use() > files.descriptors_at_open());
        Ok(())
    }
}
