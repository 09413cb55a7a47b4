//! The metadata store: consumer-group offsets and producer fences, in sled,
//! behind [`MetaStore`]. (Dedup keys have a store of their own,
//! [`crate::dedup::runs`].)
//!
//! sled 0.34 makes nothing durable before `flush()`, and its flush ends in
//! `sync_file_range`, which persists neither the drive cache nor the file size.
//! So [`MetaStore::sync`] flushes, then fsyncs every file of the store, and
//! callers sync before they answer: a committed offset and a raised fence are
//! durable when acknowledged. What is not synced may go back after a crash:
//! an offset that regresses means redelivery, and readers clamp it to the log,
//! so it never points past the end.
//!
//! A store that will not open is moved aside and a new one is created, with a
//! warning: committed offsets restart from the log's start, and fences from
//! epoch 0.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What the broker keeps outside the log.
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    /// Commits a group's offsets, `(partition, offset)`, all or none.
    fn commit_offsets(&self, topic: &str, group: &str, offsets: &[(u32, u64)]) -> Result<()>;
    /// Committed offsets of a group in a topic, by partition.
    fn committed_offsets(&self, topic: &str, group: &str) -> Result<Vec<(u32, u64)>>;
    /// Removes a topic's committed offsets, every group's.
    fn delete_topic(&self, topic: &str) -> Result<()>;
    /// The highest epoch a fenced producer has published with.
    fn fence_epoch(&self, producer: &str) -> Result<Option<u64>>;
    /// Raises a fenced producer's epoch; durable when this returns.
    fn set_fence_epoch(&self, producer: &str, epoch: u64) -> Result<()>;
    /// Makes everything written so far durable (flush, then a real fsync).
    fn sync(&self) -> Result<()>;
}

/// The sled implementation.
#[derive(Debug)]
pub struct SledMeta {
    db: sled::Db,
    path: PathBuf,
    offsets: sled::Tree,
    /// Fenced producers' highest epochs: producer name -> epoch (u64 BE).
    fences: sled::Tree,
}

impl SledMeta {
    /// Opens the store at `path`, moving a store that will not open aside.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledMeta> {
        let error = match Self::try_open(path, cache_bytes) {
            Ok(meta) => return Ok(meta),
            Err(error) => error,
        };
        // Only a store that is damaged is moved aside; an I/O or permission
        // problem (or a store in use) is reported as it is.
        let damaged = matches!(
            &error,
            Error::Meta { source, .. } if !matches!(source, sled::Error::Io(e)
                if !matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof))
        );
        if !damaged {
            return Err(error);
        }
        let aside = path.with_file_name(format!("meta.broken-{}", crate::clock::system_now_ms()));
        tracing::warn!(path = %path.display(), aside = %aside.display(), %error,
            "the metadata store is damaged; moving it aside and starting a new one \
             (committed offsets restart from the log's start, fences from epoch 0)");
        fs::rename(path, &aside)
            .map_err(|e| Error::io(format!("moving {} aside", path.display()), e))?;
        Self::try_open(path, cache_bytes)
    }

    fn try_open(path: &Path, cache_bytes: u64) -> Result<SledMeta> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| Error::meta(format!("opening {}", path.display()), e))?;
        let offsets = db
            .open_tree("offsets")
            .map_err(|e| Error::meta("opening offsets", e))?;
        let fences = db
            .open_tree("fences")
            .map_err(|e| Error::meta("opening fences", e))?;
        let meta = SledMeta {
            db,
            path: path.to_path_buf(),
            offsets,
            fences,
        };
        meta.sync()?;
        Ok(meta)
    }
}

fn offset_key(topic: &str, group: &str, partition: Option<u32>) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + group.len() + 6);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    if let Some(partition) = partition {
        key.extend_from_slice(&partition.to_be_bytes());
    }
    key
}

fn fsync_tree(path: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fsync_tree(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(path)?.sync_all()
}

impl MetaStore for SledMeta {
    fn commit_offsets(&self, topic: &str, group: &str, offsets: &[(u32, u64)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for &(partition, offset) in offsets {
            batch.insert(
                offset_key(topic, group, Some(partition)),
                &offset.to_be_bytes(),
            );
        }
        self.offsets
            .apply_batch(batch)
            .map_err(|e| Error::meta("committing offsets", e))
    }

    fn committed_offsets(&self, topic: &str, group: &str) -> Result<Vec<(u32, u64)>> {
        let prefix = offset_key(topic, group, None);
        let mut out = Vec::new();
        for item in self.offsets.scan_prefix(&prefix) {
            let (key, value) = item.map_err(|e| Error::meta("reading offsets", e))?;
            let partition = key[prefix.len()..].try_into().ok().map(u32::from_be_bytes);
            let offset = value.as_ref().try_into().ok().map(u64::from_be_bytes);
            if let (Some(partition), Some(offset)) = (partition, offset) {
                out.push((partition, offset));
            }
        }
        Ok(out)
    }

    fn delete_topic(&self, topic: &str) -> Result<()> {
        let mut prefix = topic.as_bytes().to_vec();
        prefix.push(0);
        for item in self.offsets.scan_prefix(&prefix) {
            let (key, _) = item.map_err(|e| Error::meta("reading offsets", e))?;
            self.offsets
                .remove(key)
                .map_err(|e| Error::meta("removing offsets", e))?;
        }
        Ok(())
    }

    fn fence_epoch(&self, producer: &str) -> Result<Option<u64>> {
        let value = self
            .fences
            .get(producer.as_bytes())
            .map_err(|e| Error::meta("reading a fence", e))?;
        Ok(value.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    fn set_fence_epoch(&self, producer: &str, epoch: u64) -> Result<()> {
        self.fences
            .insert(producer.as_bytes(), &epoch.to_be_bytes())
            .map_err(|e| Error::meta("raising a fence", e))?;
        self.sync()
    }

    fn sync(&self) -> Result<()> {
        self.db.flush().map_err(|e| Error::meta("flushing", e))?;
        fsync_tree(&self.path).map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_fences_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta");
        {
            let meta = SledMeta::open(&path, 1 << 20).expect("open");
            meta.commit_offsets("t", "g", &[(3, 42)]).expect("commit");
            meta.commit_offsets("t", "g2", &[(3, 7)]).expect("commit");
            meta.set_fence_epoch("relay", 5).expect("fence");
            meta.sync().expect("sync");
        }
        let meta = SledMeta::open(&path, 1 << 20).expect("reopen");
        assert_eq!(
            meta.committed_offsets("t", "g").expect("read"),
            vec![(3, 42)]
        );
        assert_eq!(meta.fence_epoch("relay").expect("fence"), Some(5));
        meta.delete_topic("t").expect("delete");
        assert!(meta.committed_offsets("t", "g").expect("read").is_empty());
        assert!(meta.committed_offsets("t", "g2").expect("read").is_empty());
    }
    #[test]
    fn a_store_that_will_not_open_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta");
        fs::create_dir_all(&path).expect("mkdir");
        fs::write(path.join("conf"), b"\xff\xff garbage").expect("write");
        fs::write(path.join("db"), vec![0xAB; 4096]).expect("write");
        let meta = SledMeta::open(&path, 1 << 20).expect("opens anyway");
        meta.commit_offsets("t", "g", &[(0, 1)]).expect("usable");
        let aside = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("meta.broken-"));
        assert!(aside, "the broken store is kept aside for inspection");
    }
}
