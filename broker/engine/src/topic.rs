//! A topic: its settings file, its partitions, the partitioner and the dedup
//! index, and the publish path that ties them together.
//!
//! On disk a topic is `topics/<name>/` holding `topic.json` (its settings, the
//! source of truth, written atomically and fsynced), `dedup.checkpoint`, and one
//! directory per partition. `topic.json` is written last at creation and removed
//! first at deletion: a directory without it is an unfinished creation or
//! deletion and is removed at open.
//!
//! Invariants:
//! - The same key always goes to the same partition: `crc32(key) % partitions`;
//!   a record with no key but an idempotency key is placed by that key, so a
//!   retry lands where the original did.
//! - A record whose idempotency key is live in the dedup index is not appended;
//!   the caller gets the original partition and offset with `duplicate = true`,
//!   and only once that original is durable.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::{EngineConfig, TopicConfig};
use crate::dedup::runs::RunStore;
use crate::dedup::DedupEntry;
use crate::dedup::{Dedup, Memory};
use crate::error::{Error, IoContext, Result};
use crate::storage::batch::{validate_batch, RecordInput, UnsealedBatch};
use crate::storage::io::{read_small_file, write_file_atomic, Vfs};
use crate::storage::partition::{
    Partition, PartitionInfo, PartitionSettings, Ticket, WriterSettings,
};
use crate::storage::zero_fill::ZeroFillBudget;
use crate::sync::{read, write};

/// Name of the settings file in a topic directory.
pub const TOPIC_FILE: &str = "topic.json";
const TOPIC_FILE_VERSION: u32 = 1;
const TOPIC_FILE_BYTES_MAX: u64 = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicFile {
    version: u32,
    /// This incarnation of the topic: a topic deleted and created again under
    /// the same name gets a new id, so nothing kept for the old one (dedup
    /// keys, committed offsets) can be mistaken for the new one's.
    id: uuid::Uuid,
    config: TopicConfig,
}

/// A topic's settings file, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTopic {
    pub id: uuid::Uuid,
    pub config: TopicConfig,
}

/// The outcome of one published record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishResult {
    pub partition: u32,
    pub offset: u64,
    /// The record was not appended: its idempotency key was seen before, and
    /// `partition` and `offset` are the original record's.
    pub duplicate: bool,
}

/// A topic, open.
#[derive(Debug)]
pub struct Topic {
    name: Arc<str>,
    /// This incarnation (see `TopicFile::id`).
    id: uuid::Uuid,
    /// `name@id`: this incarnation's key in the metadata and run stores.
    store_key: Arc<str>,
    dir: PathBuf,
    config: TopicConfig,
    partitions: Vec<Arc<Partition>>,
    dedup: Dedup,
    /// Spreads records with neither key nor explicit partition.
    round_robin: AtomicU32,
    /// Set once the topic is deleted; publishes and maintenance hold a read
    /// guard, so deletion waits for them and they never touch a new topic's
    /// files that reuse this one's paths.
    deleted: RwLock<bool>,
}

/// A summary of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionInfo>,
}

/// The partition for a key.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    crc32fast::hash(key) % partitions
}

impl Topic {
    /// Creates a topic's directory, partitions and settings file, durably.
    /// The settings file comes last: until it is in place the directory is
    /// an unfinished creation, removed at the next open.
    pub fn create(vfs: &Arc<dyn Vfs>, dir: &Path, config: &TopicConfig) -> Result<StoredTopic> {
        vfs.create_dir_all(dir)
            .context(|| format!("creating {}", dir.display()))?;
        for id in 0..config.partitions {
            Partition::create(vfs, &dir.join(id.to_string()))?;
        }
        vfs.sync_dir(dir)
            .context(|| format!("syncing {}", dir.display()))?;
        let stored = StoredTopic {
            id: uuid::Uuid::new_v4(),
            config: config.clone(),
        };
        write_settings(vfs.as_ref(), dir, &stored)?;
        Ok(stored)
    }

    /// Writes this topic's settings file again (undoing a deletion that
    /// failed after removing it).
    pub fn restore_settings(&self, vfs: &dyn Vfs) -> Result<()> {
        let stored = StoredTopic {
            id: self.id,
            config: self.config.clone(),
        };
        write_settings(vfs, &self.dir, &stored)
    }

    /// Reads a topic's settings file; `None` when it is missing.
    pub fn read_config(vfs: &dyn Vfs, dir: &Path) -> Result<Option<StoredTopic>> {
        let path = dir.join(TOPIC_FILE);
        if !vfs.exists(&path) {
            return Ok(None);
        }
        let bytes = read_small_file(vfs, &path, TOPIC_FILE_BYTES_MAX)
            .context(|| format!("reading {}", path.display()))?;
        let file: TopicFile = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            what: "topic settings",
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.version != TOPIC_FILE_VERSION {
            return Err(Error::Corrupt {
                what: "topic settings",
                path,
                reason: format!("unknown version {}", file.version),
            });
        }
        file.config.validate()?;
        Ok(Some(StoredTopic {
            id: file.id,
            config: file.config,
        }))
    }

    /// Opens a topic: recovers each partition, then rebuilds the dedup index.
    pub fn open(
        vfs: Arc<dyn Vfs>,
        runs: Arc<RunStore>,
        zero_fill: Arc<ZeroFillBudget>,
        engine: &EngineConfig,
        name: &str,
        dir: PathBuf,
        stored: StoredTopic,
    ) -> Result<Topic> {
        let StoredTopic { id, config } = stored;
        let name: Arc<str> = Arc::from(name);
        let store_key: Arc<str> = Arc::from(format!("{name}@{id}"));
        let settings = PartitionSettings {
            writer: WriterSettings {
                durability: config.durability,
                segment_bytes: config.segment_bytes,
                index_interval_bytes: engine.index_interval_bytes,
                in_flight_bytes_max: engine.in_flight_bytes_per_partition,
                page_cache_window_bytes: engine.page_cache_window_bytes,
                clock: engine.clock.clone(),
                zero_fill,
            },
            map_sealed_segments: engine.map_sealed_segments,
        };
        let partitions = (0..config.partitions)
            .map(|id| {
                Partition::open(
                    vfs.clone(),
                    name.clone(),
                    id,
                    dir.join(id.to_string()),
                    settings.clone(),
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        let dedup = Dedup::new(
            name.clone(),
            store_key.clone(),
            runs,
            vfs,
            dir.clone(),
            config.dedup_window_ms,
            config.dedup_keys_max,
        );
        dedup.rebuild(&partitions)?;
        Ok(Topic {
            name,
            id,
            store_key,
            dir,
            config,
            partitions,
            dedup,
            round_robin: AtomicU32::new(0),
            deleted: RwLock::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key of this incarnation of the topic in the metadata and run stores.
    pub fn store_key(&self) -> &str {
        &self.store_key
    }

    /// A guard that keeps the topic from being deleted while it is held;
    /// `TopicNotFound` once it has been.
    pub fn live(&self) -> Result<RwLockReadGuard<'_, bool>> {
        let deleted = read(&self.deleted);
        if *deleted {
            return Err(Error::TopicNotFound(self.name.to_string()));
        }
        Ok(deleted)
    }

    /// The deletion flag, once every publish and maintenance task that holds
    /// a [`Topic::live`] guard has finished; later ones wait for it. Set to
    /// true only once the deletion is durable, so that a failed deletion
    /// leaves the topic usable.
    pub fn deletion_guard(&self) -> RwLockWriteGuard<'_, bool> {
        write(&self.deleted)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &TopicConfig {
        &self.config
    }

    pub fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }

    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    pub fn partition(&self, id: u32) -> Result<&Arc<Partition>> {
        self.partitions
            .get(id as usize)
            .ok_or_else(|| Error::PartitionNotFound {
                topic: self.name.to_string(),
                partition: id,
                partitions: self.config.partitions,
            })
    }

    /// Reopens partition `id` if it failed (see [`Partition::reopen`]): a
    /// probe first, without locks; then, with keyed appends and checkpoints
    /// held off, the reopen itself and the keys its lost records had.
    /// Returns the partition's new end, or `None` when it had not failed.
    pub fn reopen_partition(&self, id: u32) -> Result<Option<u64>> {
        let partition = self.partition(id)?;
        if partition.failure().is_none() {
            return Ok(None);
        }
        partition.probe()?;
        self.dedup.reopen_partition(id, || partition.reopen())
    }

    pub fn info(&self) -> TopicInfo {
        TopicInfo {
            name: self.name.to_string(),
            config: self.config.clone(),
            partitions: self.partitions.iter().map(|p| p.info()).collect(),
        }
    }

    fn choose_partition(&self, record: &RecordInput) -> u32 {
        let n = self.config.partitions;
        if let Some(p) = record.partition {
            return p;
        }
        match (&record.key, &record.idempotency_key) {
            (Some(key), _) | (None, Some(key)) => partition_for_key(key, n),
            (None, None) => self.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    fn validate(&self, records: &[RecordInput]) -> Result<()> {
        for record in records {
            record.validate()?;
            if let Some(p) = record.partition {
                self.partition(p)?;
            }
        }
        validate_batch(records)
    }

    /// Appends a batch and waits until it is acknowledged (durable, for `sync`
    /// topics). Returns one result per record, in order. Nothing is appended
    /// when the batch is invalid.
    pub fn publish(&self, records: &[RecordInput]) -> Result<Vec<PublishResult>> {
        let _live = self.live()?;
        self.validate(records)?;
        let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, record) in records.iter().enumerate() {
            by_partition
                .entry(self.choose_partition(record))
                .or_default()
                .push(i);
        }
        let keys: Vec<&Bytes> = records
            .iter()
            .filter_map(|r| r.idempotency_key.as_ref())
            .collect();
        // Keyless batches take no dedup lock at all (see `append_planned`).
        let generation = match keys.is_empty() {
            true => 0,
            false => self.dedup.generation()?,
        };
        let stored = self.dedup.lookup_stored(&keys)?;
        // Encode per partition before taking the dedup lock, assuming no duplicates.
        let encoded: BTreeMap<u32, UnsealedBatch> = by_partition
            .iter()
            .map(|(p, ix)| (*p, encode(records, ix)))
            .collect();
        let mut plan = Plan {
            results: vec![None; records.len()],
            copies: Vec::new(),
            tickets: Vec::new(),
            generations: Vec::new(),
        };
        let enqueued = self.enqueue(
            records,
            &keys,
            generation,
            stored,
            by_partition,
            encoded,
            &mut plan,
        );
        // Every ticket obtained is waited for, even after a failed enqueue, so
        // that no frame stays queued with nobody to write it.
        let mut first_error = enqueued.err();
        for (p, ticket) in &plan.tickets {
            let waited = self.partitions[*p as usize].wait(ticket.generation, ticket.end_offset);
            if let Err(error) = waited {
                first_error.get_or_insert(error);
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        for (i, first) in &plan.copies {
            plan.results[*i] = plan.results[*first].map(|r| PublishResult {
                duplicate: true,
                ..r
            });
        }
        // A duplicate is answered only once its original is acknowledged.
        for result in plan.results.iter().flatten().filter(|r| r.duplicate) {
            let p = result.partition as usize;
            self.partitions[p].wait(plan.generations[p], result.offset + 1)?;
        }
        plan.results
            .into_iter()
            .map(|r| r.ok_or_else(|| Error::InvalidArgument("a record got no result".into())))
            .collect()
    }

    /// Under the dedup lock (for batches with keys): finds duplicates, drops
    /// them from the encoded batches, enqueues the rest and remembers their keys.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        records: &[RecordInput],
        keys: &[&Bytes],
        generation: u64,
        mut stored: Vec<Option<DedupEntry>>,
        mut by_partition: BTreeMap<u32, Vec<usize>>,
        mut encoded: BTreeMap<u32, UnsealedBatch>,
        plan: &mut Plan,
    ) -> Result<()> {
        // Keyless batches need no dedup lock: nothing to find, nothing to remember.
        let mut memory = if keys.is_empty() {
            None
        } else {
            Some(self.dedup.lock_with_room()?)
        };
        if let Some(memory) = &memory {
            if memory.generation() != generation {
                stored = self.dedup.lookup_stored(keys)?;
            }
            self.find_duplicates(memory, records, stored, &mut plan.results, &mut plan.copies);
            // Under the lock a reopen takes to forget lost records' keys: a
            // duplicate found now waits on the writer that took its original.
            plan.generations = self.partitions.iter().map(|p| p.generation()).collect();
        }
        let mut skipped: Vec<bool> = plan.results.iter().map(Option::is_some).collect();
        for (copy, _) in &plan.copies {
            skipped[*copy] = true;
        }
        for (p, indexes) in by_partition.iter_mut() {
            let before = indexes.len();
            indexes.retain(|i| !skipped[*i]);
            if indexes.is_empty() {
                encoded.remove(p);
            } else if indexes.len() != before {
                encoded.insert(*p, encode(records, indexes));
            }
        }
        for (p, batch) in encoded {
            let ticket = self.partitions[p as usize].enqueue(batch)?;
            self.dedup.observe_append(ticket.timestamp_ms);
            for (k, i) in by_partition[&p].iter().enumerate() {
                let offset = ticket.base_offset + k as u64;
                plan.results[*i] = Some(PublishResult {
                    partition: p,
                    offset,
                    duplicate: false,
                });
                if let (Some(memory), Some(key)) = (&mut memory, &records[*i].idempotency_key) {
                    let entry = DedupEntry {
                        partition: p,
                        offset,
                        timestamp_ms: ticket.timestamp_ms,
                    };
                    memory.insert(key, entry);
                }
            }
            plan.tickets.push((p, ticket));
        }
        Ok(())
    }
}

/// What a publish has decided so far.
#[derive(Debug)]
struct Plan {
    /// Per record: its partition and offset, once known.
    results: Vec<Option<PublishResult>>,
    /// Records repeating an earlier record's key in the same batch: (index, index of the first).
    copies: Vec<(usize, usize)>,
    /// Per partition enqueued: the ticket to wait for.
    tickets: Vec<(u32, Ticket)>,
    /// Per partition, for batches with keys: the writer a duplicate's
    /// original was taken by (see `Partition::wait`).
    generations: Vec<u64>,
}

/// Writes `dir`'s settings file atomically and durably.
fn write_settings(vfs: &dyn Vfs, dir: &Path, stored: &StoredTopic) -> Result<()> {
    let file = TopicFile {
        version: TOPIC_FILE_VERSION,
        id: stored.id,
        config: stored.config.clone(),
    };
    let bytes =
        serde_json::to_vec_pretty(&file).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    write_file_atomic(vfs, &dir.join(TOPIC_FILE), &bytes)
        .context(|| format!("writing the settings of {}", dir.display()))
}

fn encode(records: &[RecordInput], indexes: &[usize]) -> UnsealedBatch {
    UnsealedBatch::encode(&indexes.iter().map(|i| &records[*i]).collect::<Vec<_>>())
}

impl Topic {
    /// Marks records whose key is remembered (`results`) or repeats an earlier
    /// record of the same batch (`copies`: index, index of the first).
    fn find_duplicates(
        &self,
        memory: &Memory,
        records: &[RecordInput],
        stored: Vec<Option<DedupEntry>>,
        results: &mut [Option<PublishResult>],
        copies: &mut Vec<(usize, usize)>,
    ) {
        let mut stored = stored.into_iter();
        let mut first_in_batch: HashMap<&Bytes, usize> = HashMap::new();
        for (i, record) in records.iter().enumerate() {
            let Some(key) = &record.idempotency_key else {
                continue;
            };
            let in_store = stored.next().flatten();
            // An entry naming a partition this topic does not have cannot be
            // its own (a store that outlived a deleted topic): never trust it.
            let remembered = memory
                .get(key)
                .or(in_store)
                .filter(|e| (e.partition as usize) < self.partitions.len() && self.dedup.live(*e));
            if let Some(entry) = remembered {
                results[i] = Some(duplicate(entry));
            } else if let Some(first) = first_in_batch.get(key) {
                copies.push((i, *first));
            } else {
                first_in_batch.insert(key, i);
            }
        }
    }
}

fn duplicate(entry: DedupEntry) -> PublishResult {
    PublishResult {
        partition: entry.partition,
        offset: entry.offset,
        duplicate: true,
    }
}
