//! The dedup store: each topic's checkpointed idempotency keys as immutable
//! sorted runs, one file per checkpoint, with a Bloom filter and a sparse
//! index per run in memory.
//!
//! sled stored a key with one tree insert (about 12 µs a key here), which
//! capped keyed publishes near 80k records/s. A run is written in one
//! sequential write and one fsync: sorting and writing 200k keys takes tens
//! of milliseconds.
//!
//! Invariants:
//! - A run file is complete before it has its name: it is written as
//!   `<seq>.run.tmp`, fsynced, renamed, and the directory fsynced. Leftover
//!   `.tmp` files are deleted at open.
//! - Runs are ordered by sequence number; a lookup goes newest first, so a key
//!   stored again later (a newer record once the first one's window ended)
//!   answers with its newest entry.
//! - Whole runs are forgotten, oldest first, never the newest: those whose
//!   newest record is past the window, then more while the topic holds over
//!   `keys_max` keys.
//! - At most [`DEDUP_RUNS_MAX`] runs per topic: past it, the adjacent pair
//!   with the fewest keys is merged into one run under the newer one's name,
//!   then the older file is deleted. A crash between the two leaves the older
//!   file's keys twice, which answers the same.
//!
//! - Every file goes through [`Vfs`], so the power-loss simulation crashes
//!   run files as it crashes segments.
//! - `store.id` names this store: a dedup checkpoint records it and is only
//!   trusted by the store it names. It is written (atomically) before any run.
//!
//! The file format is in `docs/format.md` ("Dedup runs").

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::entry::DedupEntry;
use crate::error::{Error, IoContext, Result};
use crate::storage::io::{
    create_dir_durable, read_exact_at, read_small_file, write_file_atomic, VFile, Vfs,
};
use crate::sync::{read, write};

/// Most runs a topic keeps before merging two.
pub const DEDUP_RUNS_MAX: usize = 16;
/// Entries per block of a run: a lookup reads one block (a few KiB).
pub const DEDUP_RUN_BLOCK_ENTRIES: usize = 64;
/// Bloom filter bits per key: about 1% false positives with 7 probes.
const BLOOM_BITS_PER_KEY: u64 = 10;
const BLOOM_PROBES: u32 = 7;
/// Bits of a Bloom filter block: a 64-byte cache line. A key's probes all
/// fall in one block, so a lookup misses the cache once per run, not once
/// per probe: with 16 runs of a busy topic, 7 misses a run made the lookup
/// a tenth of the broker's CPU in keyed 8-producer publishes.
const BLOOM_BLOCK_BITS: u32 = 512;
/// Bits of a hash that choose one bit of a block.
const BLOOM_PROBE_BITS: u32 = BLOOM_BLOCK_BITS.trailing_zeros();
const _: () = assert!(BLOOM_PROBES * BLOOM_PROBE_BITS <= 64);
/// The seed of the Bloom filters' hash (any value does).
const BLOOM_SEED: u64 = 0x706f_7374_626f_7821;

const RUN_MAGIC: &[u8; 4] = b"PBDR";
const RUN_VERSION: u32 = 1;
/// Magic, version, entry count, newest timestamp.
const RUN_HEADER_BYTES: usize = 4 + 4 + 8 + 8;
/// After the key: partition, offset, timestamp.
const ENTRY_TAIL_BYTES: usize = 4 + 8 + 8;
const RUN_SUFFIX: &str = "run";
/// The file in the store's directory that holds its 16-byte id.
const STORE_ID_FILE: &str = "store.id";
const STORE_ID_BYTES: usize = 16;

/// Every topic's runs, under one directory.
#[derive(Debug)]
pub struct RunStore {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    id: [u8; STORE_ID_BYTES],
    /// Looked up once per stored key a publish checks: a fast hash.
    topics: RwLock<HashMap<String, Arc<TopicRuns>, foldhash::fast::RandomState>>,
}

/// One topic's runs, oldest first.
#[derive(Debug)]
struct TopicRuns {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    runs: RwLock<Vec<Arc<Run>>>,
    /// Serialises inserts, forgets and merges; the next run's sequence.
    /// Poisoned: refuses (see `RunStore::insert`).
    writer: Mutex<u64>,
}

/// An open run file and what lookups need of it in memory.
#[derive(Debug)]
struct Run {
    seq: u64,
    path: PathBuf,
    file: Arc<dyn VFile>,
    keys: u64,
    newest_ms: i64,
    bloom: Bloom,
    /// The run's greatest key (empty for an empty run). With the first
    /// block's key, the range a key must be in to be here: time-ordered keys
    /// (UUID v7, the client's default) fall past every older run's range
    /// and skip even the filter.
    last_key: Box<[u8]>,
    /// Per block: its first key and where it starts in the file; it ends
    /// where the next one starts, the last one at `entries_end`.
    blocks: Vec<(Box<[u8]>, u64)>,
    entries_end: u64,
}

/// The newest entry of `key` in `runs` (oldest first), if any.
fn find(runs: &[Arc<Run>], key: &[u8]) -> Result<Option<DedupEntry>> {
    let hash = bloom_hash(key);
    for run in runs.iter().rev() {
        if run.may_hold(key, hash) {
            if let Some(entry) = run.find(key)? {
                return Ok(Some(entry));
            }
        }
    }
    Ok(None)
}

impl RunStore {
    /// Opens the store in `dir` (created, with a new id, if need be). Topics'
    /// runs are loaded at first use.
    pub fn open(vfs: Arc<dyn Vfs>, dir: PathBuf) -> Result<RunStore> {
        let id = match read_small_file(vfs.as_ref(), &dir.join(STORE_ID_FILE), 64) {
            Ok(bytes) => bytes.try_into().ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        let id = match id {
            Some(id) => id,
            None => Self::create(vfs.as_ref(), &dir)?,
        };
        Ok(RunStore {
            vfs,
            dir,
            id,
            topics: RwLock::default(),
        })
    }

    /// Creates the store's directory and gives it a new id, durably.
    fn create(vfs: &dyn Vfs, dir: &Path) -> Result<[u8; STORE_ID_BYTES]> {
        let id = *uuid::Uuid::new_v4().as_bytes();
        create_dir_durable(vfs, dir).context(|| format!("creating {}", dir.display()))?;
        write_file_atomic(vfs, &dir.join(STORE_ID_FILE), &id)
            .context(|| format!("writing the id of {}", dir.display()))?;
        Ok(id)
    }

    /// This store's id: a dedup checkpoint is only valid for the store it
    /// was taken against.
    pub fn id(&self) -> [u8; STORE_ID_BYTES] {
        self.id
    }

    pub fn get(&self, topic: &str, key: &[u8]) -> Result<Option<DedupEntry>> {
        Ok(self.get_many(topic, &[key])?.pop().flatten())
    }

    /// The stored entries of many keys of one topic, in order: the topic's runs
    /// are found and locked once per batch, not once per key.
    pub fn get_many<K: AsRef<[u8]>>(
        &self,
        topic: &str,
        keys: &[K],
    ) -> Result<Vec<Option<DedupEntry>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let topic = self.topic(topic)?;
        let runs = topic.read_runs();
        keys.iter().map(|key| find(&runs, key.as_ref())).collect()
    }

    /// Stores `entries` as a new run, then forgets and merges runs.
    pub fn insert(
        &self,
        topic: &str,
        entries: &[(bytes::Bytes, DedupEntry)],
        expire_before_ms: i64,
        keys_max: u64,
    ) -> Result<()> {
        let topic_name = topic;
        let topic = self.topic(topic)?;
        // Poisoned, a run may be named but not counted, and the next one
        // would take its name: refused (see `crate::sync`).
        let mut next_seq = topic.writer.lock().map_err(|_| Error::Poisoned {
            what: format!("the dedup runs of {topic_name:?}"),
        })?;
        if !entries.is_empty() {
            let mut sorted: Vec<(&[u8], DedupEntry)> =
                entries.iter().map(|(k, e)| (k.as_ref(), *e)).collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            create_dir_durable(topic.vfs.as_ref(), &topic.dir)
                .context(|| format!("creating {}", topic.dir.display()))?;
            let run = Run::write(topic.vfs.as_ref(), &topic.dir, *next_seq, &sorted)?;
            *next_seq += 1;
            topic.write_runs().push(Arc::new(run));
        }
        topic.forget(expire_before_ms, keys_max)?;
        while topic.read_runs().len() > DEDUP_RUNS_MAX {
            topic.merge_smallest_pair()?;
        }
        Ok(())
    }

    /// Forgets a topic's runs.
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        write(&self.topics).remove(topic);
        let dir = self.topic_dir(topic);
        if !self.vfs.exists(&dir) {
            return Ok(());
        }
        self.vfs
            .remove_dir_all(&dir)
            .context(|| format!("removing {}", dir.display()))
    }

    fn topic_dir(&self, topic: &str) -> PathBuf {
        // Hex: a store key is a topic name and an id, but a file name need
        // not care what characters those may hold.
        let name: String = topic.bytes().map(|b| format!("{b:02x}")).collect();
        self.dir.join(name)
    }

    /// A topic's runs, loaded from disk at first use.
    fn topic(&self, topic: &str) -> Result<Arc<TopicRuns>> {
        if let Some(runs) = read(&self.topics).get(topic) {
            return Ok(Arc::clone(runs));
        }
        let mut topics = write(&self.topics);
        if let Some(runs) = topics.get(topic) {
            return Ok(Arc::clone(runs));
        }
        let runs = Arc::new(TopicRuns::open(
            Arc::clone(&self.vfs),
            self.topic_dir(topic),
        )?);
        topics.insert(topic.to_owned(), Arc::clone(&runs));
        Ok(runs)
    }
}

impl TopicRuns {
    fn open(vfs: Arc<dyn Vfs>, dir: PathBuf) -> Result<TopicRuns> {
        let io = |what: &str, e| Error::io(format!("{what} {}", dir.display()), e);
        let mut runs = Vec::new();
        // Created by the first run: a lookup writes nothing.
        let names = match vfs.exists(&dir) {
            true => vfs.list_dir(&dir).map_err(|e| io("listing", e))?,
            false => Vec::new(),
        };
        for name in names {
            let path = dir.join(&name);
            let seq = name
                .strip_suffix(&format!(".{RUN_SUFFIX}"))
                .and_then(|s| s.parse::<u64>().ok());
            match seq {
                Some(seq) => match Run::open(vfs.as_ref(), path.clone(), seq) {
                    Ok(run) => runs.push(Arc::new(run)),
                    Err(error) => {
                        // Written whole and fsynced before it was named: a run
                        // that does not check out was damaged on disk.
                        tracing::error!(path = %path.display(), %error,
                            "a dedup run is damaged; its keys are forgotten");
                        let _ = vfs.rename(&path, &path.with_extension("damaged"));
                    }
                },
                // An interrupted write.
                None if name.ends_with(".tmp") => vfs
                    .remove_file(&path)
                    .map_err(|e| io("removing a partial run in", e))?,
                None => {}
            }
        }
        runs.sort_by_key(|run| run.seq);
        let next_seq = runs.last().map_or(0, |run| run.seq + 1);
        Ok(TopicRuns {
            vfs,
            dir,
            runs: RwLock::new(runs),
            writer: Mutex::new(next_seq),
        })
    }

    fn read_runs(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Run>>> {
        read(&self.runs)
    }

    fn write_runs(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Run>>> {
        write(&self.runs)
    }

    /// Drops whole runs, oldest first and never the newest: past the window,
    /// then beyond the key bound.
    fn forget(&self, expire_before_ms: i64, keys_max: u64) -> Result<()> {
        let forgotten: Vec<Arc<Run>> = {
            let mut runs = self.write_runs();
            let mut keys: u64 = runs.iter().map(|run| run.keys).sum();
            let mut drop = 0;
            while drop + 1 < runs.len() {
                let oldest = &runs[drop];
                if oldest.newest_ms >= expire_before_ms && keys <= keys_max {
                    break;
                }
                keys -= oldest.keys;
                drop += 1;
            }
            runs.drain(..drop).collect()
        };
        for run in forgotten {
            self.remove(&run.path)?;
        }
        Ok(())
    }

    /// Unlinks a run file no lookup uses any more. The directory is not
    /// synced: a name that comes back after a crash holds keys of durable
    /// records, which answer as they did.
    fn remove(&self, path: &Path) -> Result<()> {
        self.vfs
            .remove_file(path)
            .context(|| format!("removing {}", path.display()))
    }

    /// Merges the adjacent pair of runs with the fewest keys between them.
    fn merge_smallest_pair(&self) -> Result<()> {
        let (older, newer) = {
            let runs = self.read_runs();
            let Some(at) =
                (0..runs.len().saturating_sub(1)).min_by_key(|&i| runs[i].keys + runs[i + 1].keys)
            else {
                return Ok(());
            };
            (Arc::clone(&runs[at]), Arc::clone(&runs[at + 1]))
        };
        let (older_bytes, newer_bytes) = (older.read_all()?, newer.read_all()?);
        let merged_entries = merge_sorted(entries(&older_bytes)?, entries(&newer_bytes)?);
        let merged = Arc::new(Run::write(
            self.vfs.as_ref(),
            &self.dir,
            newer.seq,
            &merged_entries,
        )?);
        {
            let mut runs = self.write_runs();
            runs.retain(|run| run.seq != older.seq);
            if let Some(slot) = runs.iter_mut().find(|run| run.seq == newer.seq) {
                *slot = merged;
            }
        }
        self.remove(&older.path)
    }
}

/// Two runs' entries as one, sorted; on a key in both, the newer run's entry.
fn merge_sorted<'a>(
    older: Vec<(&'a [u8], DedupEntry)>,
    newer: Vec<(&'a [u8], DedupEntry)>,
) -> Vec<(&'a [u8], DedupEntry)> {
    let mut merged = Vec::with_capacity(older.len() + newer.len());
    let (mut a, mut b) = (older.into_iter().peekable(), newer.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 < y.0 => a.next(),
            (Some(x), Some(y)) if x.0 == y.0 => {
                a.next();
                b.next()
            }
            (_, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => break,
        };
        merged.extend(next);
    }
    merged
}

impl Run {
    /// Writes sorted `entries` as run `seq` in `dir`, durably.
    fn write(vfs: &dyn Vfs, dir: &Path, seq: u64, entries: &[(&[u8], DedupEntry)]) -> Result<Run> {
        let newest_ms = entries
            .iter()
            .map(|(_, e)| e.timestamp_ms)
            .max()
            .unwrap_or(i64::MIN);
        let mut bytes = Vec::with_capacity(
            RUN_HEADER_BYTES
                + entries
                    .iter()
                    .map(|(k, _)| 1 + k.len() + ENTRY_TAIL_BYTES)
                    .sum::<usize>()
                + 4,
        );
        bytes.extend_from_slice(RUN_MAGIC);
        bytes.extend_from_slice(&RUN_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&newest_ms.to_le_bytes());
        for (key, entry) in entries {
            // Keys are at most IDEMPOTENCY_KEY_BYTES_MAX (< 256) bytes.
            bytes.push(key.len() as u8);
            bytes.extend_from_slice(key);
            bytes.extend_from_slice(&entry.partition.to_le_bytes());
            bytes.extend_from_slice(&entry.offset.to_le_bytes());
            bytes.extend_from_slice(&entry.timestamp_ms.to_le_bytes());
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());

        let path = dir.join(format!("{seq:020}.{RUN_SUFFIX}"));
        let tmp = path.with_extension(format!("{RUN_SUFFIX}.tmp"));
        let io = |what: &str, p: &Path, e| Error::io(format!("{what} {}", p.display()), e);
        // Lookups read blocks through this handle, under the run's later name.
        let file = vfs.open(&tmp, true).map_err(|e| io("creating", &tmp, e))?;
        file.set_len(0).map_err(|e| io("truncating", &tmp, e))?;
        file.write_all_at(&[&bytes], 0)
            .map_err(|e| io("writing", &tmp, e))?;
        file.sync_data().map_err(|e| io("syncing", &tmp, e))?;
        vfs.rename(&tmp, &path)
            .map_err(|e| io("naming", &path, e))?;
        vfs.sync_dir(dir).map_err(|e| io("syncing", dir, e))?;
        Run::index(path, file, seq, &bytes)
    }

    /// Opens and checks run `seq` at `path`.
    fn open(vfs: &dyn Vfs, path: PathBuf, seq: u64) -> Result<Run> {
        let read = || {
            let file = vfs.open(&path, false)?;
            let mut bytes = vec![0; file.size_bytes()? as usize];
            read_exact_at(file.as_ref(), &mut bytes, 0)?;
            Ok((file, bytes))
        };
        let (file, bytes) =
            read().map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Run::index(path, file, seq, &bytes)
    }

    /// Checks a run's bytes and builds its filter and block index.
    fn index(path: PathBuf, file: Arc<dyn VFile>, seq: u64, bytes: &[u8]) -> Result<Run> {
        let parsed = entries(bytes)?;
        let newest_ms = i64::from_le_bytes(header_field(bytes, 16)?);
        let mut bloom = Bloom::new(parsed.len() as u64);
        let mut blocks = Vec::with_capacity(parsed.len() / DEDUP_RUN_BLOCK_ENTRIES + 1);
        let mut position = RUN_HEADER_BYTES as u64;
        for (i, (key, _)) in parsed.iter().enumerate() {
            bloom.insert(bloom_hash(key));
            if i % DEDUP_RUN_BLOCK_ENTRIES == 0 {
                blocks.push((Box::from(*key), position));
            }
            position += (1 + key.len() + ENTRY_TAIL_BYTES) as u64;
        }
        let last_key = parsed
            .last()
            .map_or_else(Box::default, |(key, _)| Box::from(*key));
        Ok(Run {
            seq,
            path,
            file,
            keys: parsed.len() as u64,
            newest_ms,
            bloom,
            last_key,
            blocks,
            entries_end: position,
        })
    }

    /// Whether `key` (of Bloom hash `hash`) may be in this run: within its
    /// key range, and passed by its filter.
    fn may_hold(&self, key: &[u8], hash: u64) -> bool {
        let Some((first_key, _)) = self.blocks.first() else {
            return false;
        };
        key >= first_key.as_ref() && key <= self.last_key.as_ref() && self.bloom.may_contain(hash)
    }

    /// The entry of `key`, reading the one block that may hold it.
    fn find(&self, key: &[u8]) -> Result<Option<DedupEntry>> {
        let at = self
            .blocks
            .partition_point(|(first, _)| first.as_ref() <= key);
        let Some(&(_, start)) = at.checked_sub(1).map(|i| &self.blocks[i]) else {
            return Ok(None);
        };
        let end = self
            .blocks
            .get(at)
            .map_or(self.entries_end, |&(_, next)| next);
        let block = self.read_at(start, end)?;
        let mut rest = &block[..];
        while let Some((entry_key, entry, next)) = next_entry(rest) {
            if entry_key == key {
                return Ok(Some(entry));
            }
            rest = next;
        }
        Ok(None)
    }

    /// The whole file, through the run's own handle (its name may since
    /// belong to a merged run).
    fn read_all(&self) -> Result<Vec<u8>> {
        // Entries, then the CRC.
        self.read_at(0, self.entries_end + 4)
    }

    fn read_at(&self, start: u64, end: u64) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; (end - start) as usize];
        read_exact_at(self.file.as_ref(), &mut bytes, start)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        Ok(bytes)
    }
}

fn damaged(why: &str) -> Error {
    Error::io(
        "reading a dedup run",
        std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned()),
    )
}

fn header_field(bytes: &[u8], at: usize) -> Result<[u8; 8]> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| damaged("short header"))
}

/// A whole run file's entries, after checking its magic, version and CRC.
fn entries(bytes: &[u8]) -> Result<Vec<(&[u8], DedupEntry)>> {
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err(damaged("shorter than its CRC"));
    };
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(damaged("CRC mismatch"));
    }
    if body.len() < RUN_HEADER_BYTES || &body[0..4] != RUN_MAGIC {
        return Err(damaged("not a dedup run"));
    }
    if body[4..8] != RUN_VERSION.to_le_bytes() {
        return Err(damaged("unknown dedup run version"));
    }
    let count = u64::from_le_bytes(header_field(body, 8)?) as usize;
    let mut parsed = Vec::with_capacity(count.min(body.len() / (1 + ENTRY_TAIL_BYTES)));
    let mut rest = &body[RUN_HEADER_BYTES..];
    while let Some((key, entry, next)) = next_entry(rest) {
        parsed.push((key, entry));
        rest = next;
    }
    if !rest.is_empty() || parsed.len() != count {
        return Err(damaged("entries do not match the count"));
    }
    Ok(parsed)
}

/// The entry at the start of `bytes` and what follows it.
fn next_entry(bytes: &[u8]) -> Option<(&[u8], DedupEntry, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let (key, rest) = rest.split_at_checked(len as usize)?;
    let (tail, rest) = rest.split_at_checked(ENTRY_TAIL_BYTES)?;
    let entry = DedupEntry {
        partition: u32::from_le_bytes(tail[0..4].try_into().ok()?),
        offset: u64::from_le_bytes(tail[4..12].try_into().ok()?),
        timestamp_ms: i64::from_le_bytes(tail[12..20].try_into().ok()?),
    };
    Some((key, entry, rest))
}

/// A key's hash for the Bloom filters: a fixed seed, so one hash serves every
/// run. The filters live in memory only, so the hash may change between
/// versions.
fn bloom_hash(key: &[u8]) -> u64 {
    foldhash::quality::FixedState::with_seed(BLOOM_SEED).hash_one(key)
}

/// A blocked Bloom filter over key hashes: the hash picks a block of
/// `BLOOM_BLOCK_BITS`, and bits of a remix of it pick the probes' bits in
/// that block.
#[derive(Debug)]
struct Bloom {
    bits: Vec<u64>,
}

/// 64-bit words per Bloom filter block.
const BLOOM_BLOCK_WORDS: usize = (BLOOM_BLOCK_BITS / 64) as usize;

impl Bloom {
    fn new(keys: u64) -> Bloom {
        let blocks = (keys * BLOOM_BITS_PER_KEY)
            .div_ceil(u64::from(BLOOM_BLOCK_BITS))
            .max(1);
        Bloom {
            bits: vec![0; blocks as usize * BLOOM_BLOCK_WORDS],
        }
    }

    /// The (word, mask) of each probe of `hash` in a filter of `words`.
    fn probes(words: usize, hash: u64) -> impl Iterator<Item = (usize, u64)> {
        let blocks = (words / BLOOM_BLOCK_WORDS) as u64;
        // The high bits of hash × blocks: an even choice without a division.
        let block = ((u128::from(hash) * u128::from(blocks)) >> 64) as usize;
        // A remix, so that the bits choosing the probes are not those that
        // chose the block.
        let probe_bits = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        (0..BLOOM_PROBES).map(move |i| {
            let bit = (probe_bits >> (i * BLOOM_PROBE_BITS)) as usize % BLOOM_BLOCK_BITS as usize;
            (block * BLOOM_BLOCK_WORDS + bit / 64, 1u64 << (bit % 64))
        })
    }

    fn insert(&mut self, hash: u64) {
        for (word, mask) in Bloom::probes(self.bits.len(), hash) {
            self.bits[word] |= mask;
        }
    }

    fn may_contain(&self, hash: u64) -> bool {
        Bloom::probes(self.bits.len(), hash).all(|(word, mask)| self.bits[word] & mask != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::RealFs;
    use bytes::Bytes;
    use std::fs;

    fn open(dir: &Path) -> RunStore {
        RunStore::open(Arc::new(RealFs), dir.to_path_buf()).expect("open the run store")
    }

    fn entry(offset: u64, timestamp_ms: i64) -> DedupEntry {
        DedupEntry {
            partition: (offset % 3) as u32,
            offset,
            timestamp_ms,
        }
    }

    fn keys(range: std::ops::Range<u64>, timestamp_ms: i64) -> Vec<(Bytes, DedupEntry)> {
        range
            .map(|i| (Bytes::from(format!("key-{i:08}")), entry(i, timestamp_ms)))
            .collect()
    }

    /// A store in a fresh directory holding one run of `entries` in topic `t`.
    fn store_with(entries: &[(Bytes, DedupEntry)]) -> (tempfile::TempDir, RunStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store.insert("t", entries, 0, u64::MAX).expect("insert");
        (dir, store)
    }

    #[test]
    fn the_bloom_filter_passes_about_one_absent_key_in_a_hundred() {
        let keys = 20_000u64;
        let mut bloom = Bloom::new(keys);
        for i in 0..keys {
            bloom.insert(bloom_hash(
                format!("0193e7a2-0000-7000-8000-{i:012}").as_bytes(),
            ));
        }
        let passed = (keys..2 * keys)
            .filter(|i| {
                bloom.may_contain(bloom_hash(
                    format!("0193e7a2-0000-7000-8000-{i:012}").as_bytes(),
                ))
            })
            .count();
        // 10 bits a key and 7 probes in 512-bit blocks: about 1% in theory.
        // A poor hash (keys differing in a few bytes) would pass far more.
        assert!(
            passed * 100 < keys as usize * 2,
            "{passed} of {keys} absent keys passed"
        );
    }

    #[test]
    fn a_run_passes_no_key_outside_its_range_and_every_key_inside_it() {
        let (_dir, store) = store_with(&keys(1_000..2_000, 1));
        let topic = store.topic("t").expect("topic");
        let runs = topic.read_runs();
        let [run] = &runs[..] else {
            panic!("one run expected, got {}", runs.len());
        };
        let may_hold = |key: &str| run.may_hold(key.as_bytes(), bloom_hash(key.as_bytes()));
        for i in 1_000..2_000 {
            assert!(may_hold(&format!("key-{i:08}")), "stored key {i}");
        }
        // Outside the range the filter is not even asked: nothing passes.
        let outside = (0..1_000).chain(2_000..20_000);
        let passed: Vec<u64> = outside
            .filter(|i| may_hold(&format!("key-{i:08}")))
            .collect();
        assert_eq!(passed, Vec::<u64>::new());
    }

    #[test]
    fn every_stored_key_is_found_and_absent_ones_are_not_across_merges_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        // More checkpoints than DEDUP_RUNS_MAX, of uneven sizes: merges happen.
        let mut next = 0;
        for checkpoint in 0..(DEDUP_RUNS_MAX as u64 * 2) {
            let count = 1 + (checkpoint * 37) % 300;
            store
                .insert(
                    "t",
                    &keys(next..next + count, checkpoint as i64),
                    0,
                    u64::MAX,
                )
                .expect("insert");
            next += count;
        }
        let check = |store: &RunStore| {
            for i in 0..next {
                let found = store
                    .get("t", format!("key-{i:08}").as_bytes())
                    .expect("get");
                assert_eq!(found.map(|e| e.offset), Some(i), "key {i}");
            }
            assert_eq!(store.get("t", b"key-absent").expect("get"), None);
            assert_eq!(store.get("t", b"").expect("get"), None);
            // One batch lookup answers as the single ones do, in order.
            let batch: Vec<String> = (0..next)
                .step_by(7)
                .flat_map(|i| [format!("key-{i:08}"), format!("absent-{i}")])
                .collect();
            let found = store.get_many("t", &batch).expect("get_many");
            assert_eq!(found.len(), batch.len());
            for (key, entry) in batch.iter().zip(found) {
                assert_eq!(entry, store.get("t", key.as_bytes()).expect("get"), "{key}");
                assert_eq!(entry.is_some(), key.starts_with("key-"), "{key}");
            }
        };
        check(&store);
        let runs = store.topic("t").expect("topic").read_runs().len();
        assert!(runs <= DEDUP_RUNS_MAX, "{runs} runs");
        drop(store);
        check(&open(dir.path()));
    }

    #[test]
    fn a_newer_entry_wins_and_survives_the_old_runs_expiry() {
        let (_dir, store) = store_with(&keys(0..10, 100));
        let again = vec![(Bytes::from("key-00000003"), entry(99, 500))];
        store.insert("t", &again, 0, u64::MAX).expect("insert");
        assert_eq!(
            store.get("t", b"key-00000003").expect("get"),
            Some(entry(99, 500))
        );
        store.insert("t", &[], 200, u64::MAX).expect("expire");
        assert_eq!(
            store.get("t", b"key-00000003").expect("get"),
            Some(entry(99, 500))
        );
        assert_eq!(
            store.get("t", b"key-00000004").expect("get"),
            None,
            "expired"
        );
    }

    #[test]
    fn a_damaged_run_is_set_aside_and_a_partial_one_removed_at_open() {
        let (dir, store) = store_with(&keys(0..10, 1));
        store
            .insert("t", &keys(10..20, 2), 0, u64::MAX)
            .expect("insert");
        let topic_dir = store.topic_dir("t");
        drop(store);
        let first = topic_dir.join(format!("{:020}.run", 0));
        let mut bytes = fs::read(&first).expect("read");
        bytes[40] ^= 0xFF;
        fs::write(&first, bytes).expect("write");
        fs::write(topic_dir.join(format!("{:020}.run.tmp", 2)), b"partial").expect("write");
        let store = open(dir.path());
        assert_eq!(store.get("t", b"key-00000001").expect("get"), None);
        assert_eq!(
            store
                .get("t", b"key-00000011")
                .expect("get")
                .map(|e| e.offset),
            Some(11)
        );
        assert!(first.with_extension("damaged").exists());
        assert!(!topic_dir.join(format!("{:020}.run.tmp", 2)).exists());
    }

    #[test]
    fn runs_are_forgotten_expired_first_then_oldest_beyond_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        // One checkpoint per key: keys are forgotten a checkpoint at a time.
        for i in 0..10u64 {
            let key = (Bytes::from(format!("k{i}")), entry(i, i as i64 * 100));
            store.insert("t", &[key], 300, 100).expect("insert");
        }
        assert_eq!(store.get("t", b"k2").expect("get"), None, "expired");
        assert!(store.get("t", b"k3").expect("get").is_some());
        store.insert("t", &[], 0, 5).expect("trim");
        assert_eq!(
            store.get("t", b"k4").expect("get"),
            None,
            "beyond the bound"
        );
        assert!(store.get("t", b"k5").expect("get").is_some());
        assert!(store.get("t", b"k9").expect("get").is_some());
    }

    #[test]
    fn a_key_stored_again_outlives_its_old_run_and_totals_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = {
            let store = open(dir.path());
            store
                .insert("t", &[(Bytes::from_static(b"a"), entry(1, 10))], 0, 100)
                .expect("insert");
            store
                .insert("t", &[(Bytes::from_static(b"b"), entry(2, 20))], 0, 100)
                .expect("insert");
            // "a" again, later: a newer record.
            store
                .insert("t", &[(Bytes::from_static(b"a"), entry(3, 500))], 0, 100)
                .expect("insert");
            store.id()
        };
        let store = open(dir.path());
        assert_eq!(store.id(), id, "the id survives a reopen");
        // Forget everything before 100: the first two runs go, the new "a" stays.
        store.insert("t", &[], 100, 100).expect("expire");
        assert_eq!(store.get("t", b"a").expect("get"), Some(entry(3, 500)));
        assert_eq!(store.get("t", b"b").expect("get"), None);
        // The bound counts what is left after the reopen: one key, so nothing more goes.
        store.insert("t", &[], 100, 1).expect("trim");
        assert!(store.get("t", b"a").expect("get").is_some());
        store.delete_topic("t").expect("delete");
        assert_eq!(store.get("t", b"a").expect("get"), None);
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(
            open(other.path()).id(),
            id,
            "each store has an id of its own"
        );
    }
}
