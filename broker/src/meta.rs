//! The metadata store: consumer-group offsets and the checkpointed dedup index,
//! behind [`MetaStore`], kept in sled.
//!
//! sled 0.34 makes nothing durable before `flush()`, and its flush ends in
//! `sync_file_range`, which persists neither the drive cache nor the file size.
//! So this store holds only what may safely go back or be rebuilt:
//! - committed offsets: after a crash an offset may regress (redelivery), and
//!   readers clamp it to the log, so it never points past the end;
//! - dedup keys: only those whose records are durable in the log are written
//!   here, and [`MetaStore::sync`] fsyncs sled's files itself before the dedup
//!   checkpoint (a file of the broker's own) moves past them.
//!
//! A store that will not open is moved aside and a new one is created, with a
//! warning: everything in it can be rebuilt or may regress.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where a remembered idempotency key's record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupEntry {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
}

impl DedupEntry {
    fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[0..4].copy_from_slice(&self.partition.to_be_bytes());
        out[4..12].copy_from_slice(&self.offset.to_be_bytes());
        out[12..20].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 20] = bytes.try_into().ok()?;
        Some(DedupEntry {
            partition: u32::from_be_bytes(bytes[0..4].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[4..12].try_into().ok()?),
            timestamp_ms: i64::from_be_bytes(bytes[12..20].try_into().ok()?),
        })
    }
}

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
    /// Per topic: keys remembered and the next checkpoint number, read from the
    /// tree once and then kept up to date here.
    dedup_totals: std::sync::Mutex<std::collections::HashMap<String, DedupTotals>>,
    /// Open dedup trees by topic.
    dedup_trees: std::sync::RwLock<std::collections::HashMap<String, sled::Tree>>,
}

#[derive(Debug, Clone, Copy)]
struct DedupTotals {
    keys: u64,
    next_checkpoint: u64,
}

const STORE_ID_KEY: &[u8] = b"store_id";
/// Dedup tree key prefixes: one entry per idempotency key; and per checkpoint a
/// summary (key count, newest timestamp) and the list of its keys, so that old
/// keys are forgotten a checkpoint at a time with no per-key time index.
const BY_KEY: u8 = b'k';
const CHECKPOINT_SUMMARY: u8 = b'n';
const CHECKPOINT_KEYS: u8 = b'c';

fn dedup_tree_name(topic: &str) -> String {
    format!("dedup/{topic}")
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
        let aside = path.with_file_name(format!(
            "meta.broken-{}",
            crate::storage::group_commit::now_ms()
        ));
        tracing::warn!(path = %path.display(), aside = %aside.display(), %error,
            "the metadata store is damaged; moving it aside and starting a new one \
             (dedup keys are rebuilt from the log, committed offsets restart from the log's start)");
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
            dedup_totals: Default::default(),
            dedup_trees: Default::default(),
        };
        meta.sync()?;
        Ok(meta)
    }

    /// A topic's dedup tree, opened once and then cached (it is on the publish path).
    fn dedup_tree(&self, topic: &str) -> Result<sled::Tree> {
        if let Some(tree) = self.read_trees().get(topic) {
            return Ok(tree.clone());
        }
        let tree = self
            .db
            .open_tree(dedup_tree_name(topic))
            .map_err(|e| Error::meta("opening a dedup tree", e))?;
        self.dedup_trees
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string(), tree.clone());
        Ok(tree)
    }

    fn read_trees(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, std::collections::HashMap<String, sled::Tree>> {
        self.dedup_trees.read().unwrap_or_else(|e| e.into_inner())
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
        let tree = self.dedup_tree(topic)?;
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(BY_KEY);
        k.extend_from_slice(key);
        let value = tree
            .get(k)
            .map_err(|e| Error::meta("reading a dedup key", e))?;
        Ok(value.and_then(|v| DedupEntry::decode(&v)))
    }

    fn dedup_insert(
        &self,
        topic: &str,
        entries: &[(bytes::Bytes, DedupEntry)],
        expire_before_ms: i64,
        keys_max: u64,
    ) -> Result<()> {
        let tree = self.dedup_tree(topic)?;
        let err = |e| Error::meta("writing dedup keys", e);
        let mut totals = self.dedup_totals(topic, &tree)?;
        if !entries.is_empty() {
            let mut list = Vec::with_capacity(entries.len() * 17);
            let mut newest_ms = i64::MIN;
            for (key, entry) in entries {
                list.push(key.len() as u8);
                list.extend_from_slice(key);
                newest_ms = newest_ms.max(entry.timestamp_ms);
            }
            let seq = totals.next_checkpoint.to_be_bytes();
            let mut summary = Vec::with_capacity(16);
            summary.extend_from_slice(&(entries.len() as u64).to_be_bytes());
            summary.extend_from_slice(&newest_ms.to_be_bytes());
            // The list first: keys stored without it could never be forgotten,
            // while a list naming keys a crash kept out only forgets nothing.
            let mut batch = sled::Batch::default();
            batch.insert(prefixed(CHECKPOINT_SUMMARY, &seq), summary);
            batch.insert(prefixed(CHECKPOINT_KEYS, &seq), list);
            tree.apply_batch(batch).map_err(err)?;
            apply_in_chunks(
                &tree,
                entries
                    .iter()
                    .map(|(key, entry)| (prefixed(BY_KEY, key), Some(entry.encode().to_vec()))),
            )
            .map_err(err)?;
            totals.keys += entries.len() as u64;
            totals.next_checkpoint += 1;
        }
        totals.keys = self.dedup_forget(&tree, totals, expire_before_ms, keys_max)?;
        self.lock_totals().insert(topic.to_string(), totals);
        Ok(())
    }

    fn delete_topic(&self, topic: &str) -> Result<()> {
        self.lock_totals().remove(topic);
        self.dedup_trees
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
        self.db
            .drop_tree(dedup_tree_name(topic))
            .map_err(|e| Error::meta("dropping a dedup tree", e))?;
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

/// Most writes in one sled batch. sled 0.34 applies a batch under a global
/// write lock that every read and write of every tree waits for (a keyed
/// publish's dedup lookup among them), so a checkpoint of many keys in one
/// batch would hold them all up; in chunks of this size each wait is short.
pub const SLED_BATCH_WRITES_MAX: usize = 128;

/// Applies `writes` (a value to insert, or `None` to remove) in batches of
/// at most [`SLED_BATCH_WRITES_MAX`]: each chunk is atomic, the whole is not.
fn apply_in_chunks(
    tree: &sled::Tree,
    writes: impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
) -> sled::Result<()> {
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
        in_batch += 1;
        if in_batch == SLED_BATCH_WRITES_MAX {
            tree.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        tree.apply_batch(batch)?;
    }
    Ok(())
}

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rest.len() + 1);
    out.push(prefix);
    out.extend_from_slice(rest);
    out
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)
}

impl SledMeta {
    fn lock_totals(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, DedupTotals>> {
        self.dedup_totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The topic's totals, from the cache or from its checkpoint summaries.
    fn dedup_totals(&self, topic: &str, tree: &sled::Tree) -> Result<DedupTotals> {
        if let Some(totals) = self.lock_totals().get(topic) {
            return Ok(*totals);
        }
        let mut totals = DedupTotals {
            keys: 0,
            next_checkpoint: 0,
        };
        for item in tree.scan_prefix([CHECKPOINT_SUMMARY]) {
            let (key, value) = item.map_err(|e| Error::meta("reading dedup checkpoints", e))?;
            totals.keys += be_u64(&value, 0).unwrap_or(0);
            totals.next_checkpoint = be_u64(&key, 1).map_or(totals.next_checkpoint, |seq| seq + 1);
        }
        Ok(totals)
    }

    /// Forgets the oldest checkpoints that are past the window or beyond the
    /// key bound, but never the newest. Returns the keys still remembered.
    fn dedup_forget(
        &self,
        tree: &sled::Tree,
        totals: DedupTotals,
        expire_before_ms: i64,
        keys_max: u64,
    ) -> Result<u64> {
        let err = |e| Error::meta("forgetting dedup keys", e);
        let mut keys = totals.keys;
        let newest = totals.next_checkpoint.saturating_sub(1);
        for item in tree.scan_prefix([CHECKPOINT_SUMMARY]) {
            let (summary_key, summary) = item.map_err(err)?;
            let seq = be_u64(&summary_key, 1).unwrap_or(newest);
            let count = be_u64(&summary, 0).unwrap_or(0);
            let newest_ms = be_u64(&summary, 8).map_or(i64::MAX, |v| v as i64);
            if seq >= newest || (newest_ms >= expire_before_ms && keys <= keys_max) {
                break;
            }
            let list_key = prefixed(CHECKPOINT_KEYS, &seq.to_be_bytes());
            let list = tree.get(&list_key).map_err(err)?.unwrap_or_default();
            let mut removals = Vec::new();
            let mut at = 0;
            while let Some(len) = list.get(at).map(|l| *l as usize) {
                let Some(key) = list.get(at + 1..at + 1 + len) else {
                    break;
                };
                at += 1 + len;
                let by_key = prefixed(BY_KEY, key);
                // A key appended again after its window points to a newer
                // record, remembered by a later checkpoint: keep it.
                let current = tree
                    .get(&by_key)
                    .map_err(err)?
                    .and_then(|v| DedupEntry::decode(&v));
                if current.is_some_and(|e| e.timestamp_ms <= newest_ms) {
                    removals.push((by_key, None));
                }
            }
            apply_in_chunks(tree, removals.into_iter()).map_err(err)?;
            // The list last: a crash before this forgets the rest next time.
            let mut batch = sled::Batch::default();
            batch.remove(list_key);
            batch.remove(summary_key);
            tree.apply_batch(batch).map_err(err)?;
            keys = keys.saturating_sub(count);
        }
        Ok(keys)
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
