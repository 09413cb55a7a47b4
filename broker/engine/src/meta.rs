//! The metadata store: consumer-group offsets and fences in sled, and the
//! checkpointed dedup index in sorted run files of its own
//! ([`crate::dedup::runs`], in `dedup/` beside sled's directory), behind
//! [`MetaStore`].
//!
//! sled 0.34 makes nothing durable before `flush()`, and its flush ends in
//! `sync_file_range`, which persists neither the drive cache nor the file size.
//! So this store holds only what may safely go back or be rebuilt:
//! - committed offsets: after a crash an offset may regress (redelivery), and
//!   readers clamp it to the log, so it never points past the end;
//! - dedup keys: only those whose records are durable in the log are written
//!   to runs, each fsynced before `dedup_insert` returns, so the dedup
//!   checkpoint (a file of the broker's own) moves past only stored keys.
//!
//! A store that will not open is moved aside and a new one is created, with a
//! warning: everything in it can be rebuilt or may regress.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::dedup::entry::DedupEntry;
use crate::dedup::runs::RunStore;
use crate::error::{Error, Result};

/// What the broker keeps outside the log.
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    /// Identifies this store instance; a dedup checkpoint is only valid for the
    /// store it was taken against.
    fn store_id(&self) -> [u8; 16];
    /// Commits a group's offsets, `(partition, offset)`, all or none.
    fn commit_offsets(&self, topic: &str, group: &str, offsets: &[(u32, u64)]) -> Result<()>;
    /// Committed offsets of a group in a topic, by partition.
    fn committed_offsets(&self, topic: &str, group: &str) -> Result<Vec<(u32, u64)>>;
    fn dedup_get(&self, topic: &str, key: &[u8]) -> Result<Option<DedupEntry>>;
    /// `dedup_get` for many keys of one topic, in order.
    fn dedup_get_many(&self, topic: &str, keys: &[&Bytes]) -> Result<Vec<Option<DedupEntry>>> {
        keys.iter().map(|k| self.dedup_get(topic, k)).collect()
    }
    /// Stores one checkpoint's keys, then forgets whole checkpoints of keys,
    /// oldest first: those whose newest record is older than `expire_before_ms`,
    /// and more while the topic remembers over `keys_max` keys (never the one
    /// just stored).
    fn dedup_insert(
        &self,
        topic: &str,
        entries: &[(bytes::Bytes, DedupEntry)],
        expire_before_ms: i64,
        keys_max: u64,
    ) -> Result<()>;
    /// Removes everything about a topic.
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
    store_id: [u8; 16],
    /// Dedup keys, by topic incarnation.
    runs: RunStore,
}

const STORE_ID_KEY: &[u8] = b"store_id";
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
             (dedup keys are rebuilt from the log, committed offsets restart from the log's start)");
        fs::rename(path, &aside)
            .map_err(|e| Error::io(format!("moving {} aside", path.display()), e))?;
        // Its dedup runs go with it: the new store's checkpoints start afresh.
        let runs = runs_dir(path);
        if runs.exists() {
            let runs_aside = aside.with_file_name(format!(
                "{}.dedup",
                aside
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("meta.broken")
            ));
            fs::rename(&runs, &runs_aside)
                .map_err(|e| Error::io(format!("moving {} aside", runs.display()), e))?;
        }
        Self::try_open(path, cache_bytes)
    }

    fn try_open(path: &Path, cache_bytes: u64) -> Result<SledMeta> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|e| Error::meta(format!("opening {}", path.display()), e))?;
        let store_id = match db
            .get(STORE_ID_KEY)
            .map_err(|e| Error::meta("reading the store id", e))?
        {
            Some(id) if id.len() == 16 => {
                let mut out = [0u8; 16];
                out.copy_from_slice(&id);
                out
            }
            _ => {
                let id = *uuid::Uuid::new_v4().as_bytes();
                db.insert(STORE_ID_KEY, &id[..])
                    .map_err(|e| Error::meta("writing the store id", e))?;
                id
            }
        };
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
            store_id,
            runs: RunStore::new(runs_dir(path)),
        };
        meta.sync()?;
        Ok(meta)
    }
}

/// Where the dedup runs of the store at `path` live: beside it, so that
/// `sync`'s walk of sled's files does not fsync every run again.
fn runs_dir(path: &Path) -> PathBuf {
    path.with_file_name("dedup")
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
    fn store_id(&self) -> [u8; 16] {
        self.store_id
    }

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

    fn dedup_get(&self, topic: &str, key: &[u8]) -> Result<Option<DedupEntry>> {
        self.runs.get(topic, key)
    }

    fn dedup_get_many(&self, topic: &str, keys: &[&Bytes]) -> Result<Vec<Option<DedupEntry>>> {
        self.runs.get_many(topic, keys)
    }

    fn dedup_insert(
        &self,
        topic: &str,
        entries: &[(bytes::Bytes, DedupEntry)],
        expire_before_ms: i64,
        keys_max: u64,
    ) -> Result<()> {
        self.runs.insert(topic, entries, expire_before_ms, keys_max)
    }

    fn delete_topic(&self, topic: &str) -> Result<()> {
        self.runs.delete_topic(topic)?;
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
    use bytes::Bytes;

    fn entry(offset: u64, timestamp_ms: i64) -> DedupEntry {
        DedupEntry {
            partition: 0,
            offset,
            timestamp_ms,
        }
    }

    #[test]
    fn offsets_and_dedup_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta");
        let id = {
            let meta = SledMeta::open(&path, 1 << 20).expect("open");
            meta.commit_offsets("t", "g", &[(3, 42)]).expect("commit");
            meta.commit_offsets("t", "g2", &[(3, 7)]).expect("commit");
            meta.dedup_insert("t", &[(Bytes::from_static(b"a"), entry(1, 10))], 0, 10)
                .expect("insert");
            meta.sync().expect("sync");
            meta.store_id()
        };
        let meta = SledMeta::open(&path, 1 << 20).expect("reopen");
        assert_eq!(meta.store_id(), id);
        assert_eq!(
            meta.committed_offsets("t", "g").expect("read"),
            vec![(3, 42)]
        );
        assert_eq!(meta.dedup_get("t", b"a").expect("get"), Some(entry(1, 10)));
        meta.delete_topic("t").expect("delete");
        assert!(meta.committed_offsets("t", "g").expect("read").is_empty());
        assert_eq!(meta.dedup_get("t", b"a").expect("get"), None);
    }

    #[test]
    fn dedup_forgets_expired_then_oldest_beyond_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SledMeta::open(&dir.path().join("meta"), 1 << 20).expect("open");
        // One checkpoint per key: keys are forgotten a checkpoint at a time.
        for i in 0..10u64 {
            let key = (Bytes::from(format!("k{i}")), entry(i, i as i64 * 100));
            meta.dedup_insert("t", &[key], 300, 100).expect("insert");
        }
        assert_eq!(meta.dedup_get("t", b"k2").expect("get"), None, "expired");
        assert!(meta.dedup_get("t", b"k3").expect("get").is_some());
        meta.dedup_insert("t", &[], 0, 5).expect("trim");
        assert_eq!(
            meta.dedup_get("t", b"k4").expect("get"),
            None,
            "beyond the bound"
        );
        assert!(meta.dedup_get("t", b"k5").expect("get").is_some());
        assert!(meta.dedup_get("t", b"k9").expect("get").is_some());
    }

    #[test]
    fn a_key_appended_again_outlives_its_old_checkpoint_and_totals_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta");
        {
            let meta = SledMeta::open(&path, 1 << 20).expect("open");
            meta.dedup_insert("t", &[(Bytes::from_static(b"a"), entry(1, 10))], 0, 100)
                .expect("insert");
            meta.dedup_insert("t", &[(Bytes::from_static(b"b"), entry(2, 20))], 0, 100)
                .expect("insert");
            // "a" again, later: a newer record.
            meta.dedup_insert("t", &[(Bytes::from_static(b"a"), entry(3, 500))], 0, 100)
                .expect("insert");
            meta.sync().expect("sync");
        }
        let meta = SledMeta::open(&path, 1 << 20).expect("reopen");
        // Forget everything before 100: the first two checkpoints go, the new "a" stays.
        meta.dedup_insert("t", &[], 100, 100).expect("expire");
        assert_eq!(meta.dedup_get("t", b"a").expect("get"), Some(entry(3, 500)));
        assert_eq!(meta.dedup_get("t", b"b").expect("get"), None);
        // The bound counts what is left after the reopen: one key, so nothing more goes.
        meta.dedup_insert("t", &[], 100, 1).expect("trim");
        assert!(meta.dedup_get("t", b"a").expect("get").is_some());
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
