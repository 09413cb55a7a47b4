//! The dedup index of a topic: idempotency key to the partition and offset of
//! the record that first carried it.
//!
//! Two layers. Keys of recent records live in memory; a checkpoint moves the
//! keys of durable records into the run store (one sorted run file,
//! fsynced, in `runs`), and then records in `dedup.checkpoint` (a file of the broker's own, written through the
//! VFS) the per-partition offsets below which every key is in the store. At open
//! the memory layer is rebuilt by scanning the log from those offsets, so a key
//! acknowledged just before a crash is still a duplicate after it.
//!
//! Invariants:
//! - The log is the source of truth; the store only ever holds keys of records
//!   that were durable in the log when they were written to it, so it can never
//!   point past the log's end.
//! - The checkpoint moves only after the store's files are truly synced.
//! - Memory is bounded: at `DEDUP_MEMORY_KEYS_MAX` keys a checkpoint is due, and
//!   appends with keys wait while a topic holds twice that many.
//! - A checkpoint holds the memory lock only to swap maps and to take in the
//!   few keys that came while it wrote, never for a pass over every key:
//!   keyed appends wait microseconds for it, not milliseconds. Keys being
//!   moved stay visible to lookups until the store holds them.
//! - The window is measured on record timestamps: a key expires when the topic's
//!   newest appended record is more than `dedup_window_ms` younger than the key's
//!   record, not by the wall clock at lookup, so a clock that jumps forward
//!   expires nothing until records are appended at the new time.
//!
//! Lock order: the dedup memory lock is taken before any partition lock.

pub mod entry;
pub mod runs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use crate::error::{Error, IoContext, Result};
use crate::limits::{DEDUP_MEMORY_KEYS_MAX, DEDUP_ROOM_WAIT_MAX};
use crate::storage::io::{read_small_file, write_file_atomic, Vfs};
use crate::storage::partition::Partition;
use crate::sync::lock;
pub use entry::DedupEntry;
use runs::RunStore;

const CHECKPOINT_MAGIC: &[u8; 4] = b"PBXD";
/// 3: the id is the run store's (`runs`); a version 2 checkpoint named the
/// metadata store, and a version 1 one counted keys stored in sled, which are
/// not read any more: either is rebuilt from the log.
const CHECKPOINT_VERSION: u32 = 3;
/// Name of the checkpoint file in a topic directory.
pub const CHECKPOINT_FILE: &str = "dedup.checkpoint";

/// An idempotency key and where its record is.
type Keyed = (Bytes, DedupEntry);

/// The map memory goes on with after a checkpoint: `keys`, with room for
/// `expected` keys, as many as came since the last checkpoint. A map that
/// grew from empty instead would move every key it holds each time it
/// doubled, under the lock every keyed append takes: a pause for every
/// keyed publish, longer the more keys a checkpoint interval brings. The
/// price is memory: until the moved keys are freed, the new map's room sits
/// beside them (at most `2 * DEDUP_MEMORY_KEYS_MAX` entries).
fn with_room(keys: impl IntoIterator<Item = Keyed>, expected: usize) -> KeyMap {
    let mut map = KeyMap::with_capacity_and_hasher(expected, Default::default());
    map.extend(keys);
    map
}

/// Keys in memory. Keys are chosen by clients, so the hash is seeded at
/// random per map. foldhash rather than the standard SipHash: SipHash (here,
/// in the Bloom filters and in the runs' topic map) took 8% of the broker's
/// samples in a keyed publish profile.
type KeyMap = HashMap<Bytes, DedupEntry, foldhash::quality::RandomState>;

/// The in-memory layer.
#[derive(Debug, Default)]
pub struct Memory {
    recent: KeyMap,
    /// The keys a checkpoint under way is moving to the store: still found
    /// here until the store holds them, never added to. The checkpoint takes
    /// `recent` whole into it and swaps back in what it did not store, so the
    /// lock is held for swaps and the keys that came meanwhile, not for a pass
    /// over every key.
    moving: Arc<KeyMap>,
    /// Bumped whenever keys move from memory to the store, so that a lookup in
    /// the store made before taking the lock can tell it may be stale.
    generation: u64,
}

impl Memory {
    pub fn get(&self, key: &[u8]) -> Option<DedupEntry> {
        self.recent
            .get(key)
            .or_else(|| self.moving.get(key))
            .copied()
    }

    /// Remembers a key. A later record with the same key (appended after the
    /// first one's window ended) replaces it. The key is copied: a slice would
    /// keep its whole request or read buffer alive, and memory is bounded by
    /// key count.
    pub fn insert(&mut self, key: &[u8], entry: DedupEntry) {
        self.recent.insert(Bytes::copy_from_slice(key), entry);
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Keys held, those being moved to the store included.
    pub fn len(&self) -> usize {
        self.recent.len() + self.moving.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A topic's dedup index.
#[derive(Debug)]
pub struct Dedup {
    topic: Arc<str>,
    /// The topic incarnation's key in the run store.
    store_key: Arc<str>,
    runs: Arc<RunStore>,
    vfs: Arc<dyn Vfs>,
    checkpoint_path: PathBuf,
    window_ms: u64,
    keys_max: u64,
    /// Poisoned: refuses (see `Dedup::lock`).
    memory: Mutex<Memory>,
    /// Wakes appenders waiting for memory room after a checkpoint.
    room: Condvar,
    /// Serialises checkpoints. Poisoned: goes on (it guards nothing).
    checkpointing: Mutex<()>,
    /// Newest append time in the topic: the clock the window is measured on.
    log_time_ms: AtomicI64,
    /// The offsets of the last checkpoint written, to skip empty ones.
    /// Poisoned: goes on (set by one assignment).
    last_checkpoint: Mutex<Option<Vec<u64>>>,
}

impl Dedup {
    pub fn new(
        topic: Arc<str>,
        store_key: Arc<str>,
        runs: Arc<RunStore>,
        vfs: Arc<dyn Vfs>,
        dir: PathBuf,
        window_ms: u64,
        keys_max: u64,
    ) -> Self {
        Dedup {
            topic,
            store_key,
            runs,
            vfs,
            checkpoint_path: dir.join(CHECKPOINT_FILE),
            window_ms,
            keys_max,
            memory: Mutex::new(Memory::default()),
            room: Condvar::new(),
            checkpointing: Mutex::new(()),
            log_time_ms: AtomicI64::new(0),
            last_checkpoint: Mutex::new(None),
        }
    }

    /// The memory layer. Poisoned, it may be between the two swaps of a
    /// checkpoint, with keys in neither map: a lookup would answer "new" for
    /// a duplicate, so keyed appends and checkpoints are refused instead
    /// (see `crate::sync`); a restart rebuilds it from the log.
    fn lock(&self) -> Result<MutexGuard<'_, Memory>> {
        self.memory.lock().map_err(|_| self.poisoned())
    }

    fn poisoned(&self) -> Error {
        Error::Poisoned {
            what: format!("the dedup index of topic {:?}", self.topic),
        }
    }

    pub fn generation(&self) -> Result<u64> {
        Ok(self.lock()?.generation)
    }

    /// Keys in memory; none for a poisoned index, which takes no checkpoint.
    pub fn memory_keys(&self) -> usize {
        self.lock().map_or(0, |memory| memory.len())
    }

    /// Locks the memory layer, first waiting (at most `DEDUP_ROOM_WAIT_MAX`)
    /// while it is over its hard bound.
    pub fn lock_with_room(&self) -> Result<MutexGuard<'_, Memory>> {
        let deadline = Instant::now() + DEDUP_ROOM_WAIT_MAX;
        let mut memory = self.lock()?;
        while memory.len() >= 2 * DEDUP_MEMORY_KEYS_MAX {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Busy {
                    what: format!(
                        "idempotency keys of topic {:?} waiting for a dedup checkpoint",
                        self.topic
                    ),
                    limit: 2 * DEDUP_MEMORY_KEYS_MAX as u64,
                    actual: memory.len() as u64,
                });
            }
            memory = self
                .room
                .wait_timeout(memory, deadline - now)
                .map_err(|_| self.poisoned())?
                .0;
        }
        Ok(memory)
    }

    /// Looks keys up in the store (without the memory lock).
    pub fn lookup_stored(&self, keys: &[&Bytes]) -> Result<Vec<Option<DedupEntry>>> {
        self.runs.get_many(&self.store_key, keys)
    }

    /// Advances the window's clock to a record's append time.
    pub fn observe_append(&self, timestamp_ms: i64) {
        self.log_time_ms.fetch_max(timestamp_ms, Ordering::Relaxed);
    }

    /// Whether a remembered entry still counts, given the window.
    pub fn live(&self, entry: DedupEntry) -> bool {
        entry.timestamp_ms.saturating_add(self.window_ms as i64)
            >= self.log_time_ms.load(Ordering::Relaxed)
    }

    /// Moves the keys of durable records into the store (one sorted run) and
    /// advances the checkpoint. `partitions` are the topic's, in order.
    pub fn checkpoint(&self, partitions: &[Arc<Partition>]) -> Result<()> {
        // Durable ends are read before the memory lock: every key of a record
        // below them was inserted under that lock before the record was written.
        let durable: Vec<u64> = partitions.iter().map(|p| p.durable_end()).collect();
        self.checkpoint_below(&durable)
    }

    /// Moves the keys of records below `offsets[p]` (all durable) into the store,
    /// syncs it, then records `offsets` as the checkpoint. Does nothing when
    /// there is nothing new to record.
    fn checkpoint_below(&self, offsets: &[u64]) -> Result<()> {
        let _one_at_a_time = lock(&self.checkpointing);
        let moving = self.start_moving()?;
        let (entries, kept): (Vec<Keyed>, Vec<Keyed>) = moving
            .iter()
            .map(|(k, e)| (k.clone(), *e))
            .partition(|(_, e)| {
                offsets
                    .get(e.partition as usize)
                    .is_some_and(|end| e.offset < *end)
            });
        let mut last = lock(&self.last_checkpoint);
        if entries.is_empty() && last.as_deref() == Some(offsets) {
            return self.end_moving(with_room(kept, moving.len()), false);
        }
        let started = Instant::now();
        if let Err(error) = self.store(&entries, offsets) {
            self.end_moving(
                with_room(entries.into_iter().chain(kept), moving.len()),
                false,
            )?;
            return Err(error);
        }
        *last = Some(offsets.to_vec());
        drop(last);
        self.end_moving(with_room(kept, moving.len()), true)?;
        // The moved keys are freed here, outside the lock.
        drop(moving);
        tracing::debug!(
            topic = %self.topic,
            keys = entries.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "dedup checkpoint"
        );
        Ok(())
    }

    /// Writes `entries` to the store (durable when it returns), and records
    /// `offsets` as the checkpoint.
    fn store(&self, entries: &[Keyed], offsets: &[u64]) -> Result<()> {
        let expire_before_ms = self
            .log_time_ms
            .load(Ordering::Relaxed)
            .saturating_sub(self.window_ms as i64);
        self.runs
            .insert(&self.store_key, entries, expire_before_ms, self.keys_max)?;
        self.write_checkpoint(offsets)
    }

    /// Runs `reopen` (a failed partition reopened, yielding its new end) with
    /// checkpoints and keyed appends held off, then forgets the keys of that
    /// partition's records at or past the new end: they were lost with the
    /// failure, so a retry must append again rather than be answered as a
    /// duplicate of nothing, and no checkpoint under way can put them back.
    pub fn reopen_partition(
        &self,
        partition: u32,
        reopen: impl FnOnce() -> Result<Option<u64>>,
    ) -> Result<Option<u64>> {
        let _one_at_a_time = lock(&self.checkpointing);
        let mut memory = self.lock()?;
        let Some(end) = reopen()? else {
            return Ok(None);
        };
        // No checkpoint is under way, so `moving` is empty.
        memory
            .recent
            .retain(|_, e| e.partition != partition || e.offset < end);
        Ok(Some(end))
    }

    /// Panics on a thread of its own while holding the memory lock, for
    /// tests of the poison rule.
    #[cfg(test)]
    pub fn poison_memory(&self) {
        std::thread::scope(|scope| {
            let holder = scope.spawn(|| {
                let _memory = self.memory.lock();
                panic!("a test panics holding the dedup memory");
            });
            assert!(holder.join().is_err(), "the holder panicked");
        });
    }

    /// The capacity of the memory map, for tests.
    #[cfg(test)]
    pub fn memory_capacity(&self) -> usize {
        self.lock().map_or(0, |memory| memory.recent.capacity())
    }

    /// Takes every key in memory into `moving` (where lookups still find
    /// them) and returns them.
    fn start_moving(&self) -> Result<Arc<KeyMap>> {
        let mut memory = self.lock()?;
        let moving = Arc::new(std::mem::take(&mut memory.recent));
        memory.moving = Arc::clone(&moving);
        Ok(moving)
    }

    /// Ends a move: memory keeps `unmoved` (the moving keys the store did not
    /// take, built outside the lock) and the keys that came meanwhile, which
    /// win over them, so the lock is held for the few keys that came. With
    /// `stored`, lookups made in the store before now are stale.
    fn end_moving(&self, unmoved: KeyMap, stored: bool) -> Result<()> {
        let mut memory = self.lock()?;
        memory.moving = Arc::default();
        let came = std::mem::replace(&mut memory.recent, unmoved);
        memory.recent.extend(came);
        if stored {
            memory.generation += 1;
        }
        drop(memory);
        self.room.notify_all();
        Ok(())
    }

    fn write_checkpoint(&self, offsets: &[u64]) -> Result<()> {
        let mut bytes = Vec::with_capacity(32 + offsets.len() * 8);
        bytes.extend_from_slice(CHECKPOINT_MAGIC);
        bytes.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&self.runs.id());
        bytes.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
        for offset in offsets {
            bytes.extend_from_slice(&offset.to_le_bytes());
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        write_file_atomic(self.vfs.as_ref(), &self.checkpoint_path, &bytes)
            .context(|| format!("writing {}", self.checkpoint_path.display()))
    }

    /// The checkpointed offsets, if the file is whole and belongs to this store.
    fn read_checkpoint(&self, partitions: usize) -> Option<Vec<u64>> {
        let bytes = read_small_file(self.vfs.as_ref(), &self.checkpoint_path, 64 * 1024).ok()?;
        let (body, crc) = bytes.split_at(bytes.len().checked_sub(4)?);
        if body.len() < 28
            || crc32fast::hash(body).to_le_bytes() != crc
            || &body[0..4] != CHECKPOINT_MAGIC
            || body[4..8] != CHECKPOINT_VERSION.to_le_bytes()
            || body[8..24] != self.runs.id()
        {
            return None;
        }
        let count = u32::from_le_bytes(body[24..28].try_into().ok()?) as usize;
        if count != partitions || body.len() != 28 + 8 * count {
            return None;
        }
        Some(
            body[28..]
                .chunks_exact(8)
                .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
                .collect(),
        )
    }

    /// Rebuilds the memory layer from the log past the checkpoint (or, with no
    /// valid checkpoint, from the start of the window).
    pub fn rebuild(&self, partitions: &[Arc<Partition>]) -> Result<()> {
        let last_timestamp = partitions
            .iter()
            .map(|p| p.last_timestamp_ms())
            .max()
            .unwrap_or(0);
        self.observe_append(last_timestamp);
        let checkpoint = self.read_checkpoint(partitions.len());
        if checkpoint.is_none() {
            tracing::info!(topic = %self.topic, "no valid dedup checkpoint; rebuilding dedup keys from the window's start");
        }
        let window_start = last_timestamp.saturating_sub(self.window_ms as i64);
        // Where each partition's scan starts; as the scans go on, where they
        // are. A checkpoint taken to bound memory while rebuilding covers only
        // what has been scanned.
        let mut progress = Vec::with_capacity(partitions.len());
        for (id, partition) in partitions.iter().enumerate() {
            let from = match &checkpoint {
                Some(offsets) => offsets[id],
                None => partition.offset_for_timestamp(window_start).unwrap_or_else(|error| {
                    tracing::error!(topic = %self.topic, partition = id, %error,
                        "cannot seek to the dedup window's start; rebuilding from the earliest offset");
                    partition.earliest_offset()
                }),
            };
            progress.push(from.clamp(partition.earliest_offset(), partition.end_offset()));
        }
        let mut scanned = 0u64;
        for (id, partition) in partitions.iter().enumerate() {
            scanned += self.scan_partition(partition, id, &mut progress)?;
        }
        if scanned > 0 {
            tracing::info!(topic = %self.topic, records = scanned, "rebuilt dedup keys from the log");
        }
        Ok(())
    }

    /// Scans one partition from `progress[id]` to its end into memory.
    fn scan_partition(
        &self,
        partition: &Partition,
        id: usize,
        progress: &mut [u64],
    ) -> Result<u64> {
        let end = partition.end_offset();
        let mut offset = progress[id];
        let mut scanned = 0;
        while offset < end {
            let records = match partition.read(offset, crate::limits::READ_BYTES_MAX) {
                Ok(records) => records,
                Err(error @ Error::DataLoss { .. }) => {
                    tracing::error!(topic = %self.topic, partition = id, %error,
                        "dedup keys of damaged records are lost");
                    match partition.next_readable_after(offset) {
                        Some(next) => {
                            offset = next;
                            continue;
                        }
                        None => break,
                    }
                }
                Err(error) => return Err(error),
            };
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            let mut memory = self.lock()?;
            for record in records {
                if let Some(key) = record.idempotency_key {
                    scanned += 1;
                    memory.insert(
                        &key,
                        DedupEntry {
                            partition: id as u32,
                            offset: record.offset,
                            timestamp_ms: record.timestamp_ms,
                        },
                    );
                }
            }
            let full = memory.len() >= DEDUP_MEMORY_KEYS_MAX;
            drop(memory);
            progress[id] = offset;
            if full {
                // Everything recovered is durable: keep memory bounded while
                // rebuilding a long tail, checkpointing only what was scanned.
                self.checkpoint_below(progress)?;
            }
        }
        progress[id] = end;
        Ok(scanned)
    }
}
