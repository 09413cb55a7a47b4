//! A partition's writer, with group commit: many appenders, one write and one
//! fdatasync for everything enqueued while the previous write was in progress.
//! The write half of a partition, one type in one file: it owns the append
//! queue, the offsets and the active segment's files, and shares only
//! [`SharedLog`] (what readers see) with the partition.
//!
//! An appender enqueues a sealed frame (offsets are assigned in enqueue order,
//! under the writer lock) and then waits. The first waiter that finds no write in
//! progress becomes the leader: it takes the whole queue, writes it with the I/O
//! lock held and the writer lock released (so others keep enqueueing), syncs it
//! for `sync` topics, publishes the new visible end and wakes everyone. A waiter
//! whose frame is not yet durable becomes the next leader.
//!
//! Invariants:
//! - An append to a `sync` topic returns only after its frame and every frame
//!   before it are fdatasync'ed; a new segment file and its directory entry are
//!   synced before any frame in it is acknowledged.
//! - After a failed write or fsync, a panic in a group's write, or a poisoned
//!   state or I/O lock, the partition is latched failed: every later append
//!   fails until the partition is reopened (recovery decides what the disk
//!   holds). An fsync is never retried.
//! - Bytes enqueued but not yet durable stay under `in_flight_bytes_max`; an
//!   appender waits for room instead of growing the queue.
//! - Lock order: `flushing` before `io`, `io` before `state`, `state` before
//!   the shared log.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use super::log_state::SharedLog;
use crate::clock::Clock;
use crate::config::Durability;
use crate::error::{Error, IoContext, Result};
use crate::limits::{GROUP_COMMIT_LINGER_MAX, PREALLOCATE_GROUP_BYTES_MAX, PREALLOCATE_STEP_BYTES};
use crate::storage::batch::UnsealedBatch;
use crate::storage::index::{self, entry_position, IndexEntry, SparseIndex};
use crate::storage::io::{VFile, Vfs};
use crate::storage::segment::{self, Segment};
use crate::storage::write_behind::{Releases, WriteBehind};
use crate::storage::zero_fill::ZeroFillBudget;
use crate::sync::lock;

/// What zero-filled space ahead of the data is written from.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// What the writer needs of its topic's settings.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub durability: Durability,
    pub segment_bytes: u64,
    pub in_flight_bytes_max: u64,
    pub index_interval_bytes: u32,
    /// Newest bytes of the log kept in the page cache (see `write_behind`).
    pub page_cache_window_bytes: u64,
    /// Stamps each frame's append time.
    pub clock: Arc<dyn Clock>,
    /// The engine-wide budget of zeros written ahead of data.
    pub zero_fill: Arc<ZeroFillBudget>,
}

/// One partition's writer.
#[derive(Debug)]
pub struct Writer {
    topic: Arc<str>,
    partition: u32,
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    settings: WriterSettings,
    /// What readers see; the writer moves its visible end and rolls segments.
    log: Arc<SharedLog>,
    /// The append queue and offsets. Poisoned: latches (see `Writer::state`).
    state: Mutex<WriterState>,
    /// Wakes appenders waiting for in-flight room.
    state_cv: Condvar,
    /// Wakes a leader lingering for more frames.
    queue_cv: Condvar,
    /// The active segment's files, held by the one thread writing at a time.
    /// Poisoned: latches (see `Writer::io`).
    io: Mutex<WriterIo>,
    /// Serialises `async` flushes, whose sync runs without the I/O lock: a
    /// flush returns only once a sync started after everything written
    /// before it was called has ended, not while another flush's is under way.
    flushing: Mutex<()>,
    /// Offsets below this are acknowledged (durable for `sync`, written for
    /// `async`): appenders check it without taking the state lock.
    acked_end: AtomicU64,
    /// Which of the partition's writers this is: the next one, after this one
    /// failed, has the next number.
    generation: u64,
}

/// A frame waiting for the writer.
#[derive(Debug)]
struct Queued {
    frame: Bytes,
    base_offset: u64,
    end_offset: u64,
    timestamp_ms: i64,
}

/// The append queue and the offsets, under the writer's state lock.
#[derive(Debug)]
struct WriterState {
    /// Offset the next enqueued record gets.
    next_offset: u64,
    /// Append time of the newest frame; append times never go backwards.
    last_timestamp_ms: i64,
    /// Frames sealed but not yet written, in offset order.
    queue: Vec<Queued>,
    /// Bytes enqueued and not yet durable (or written, for `async`).
    in_flight_bytes: u64,
    /// Offsets below this are written to the file.
    written_end: u64,
    /// Offsets below this are fdatasync'ed.
    durable_end: u64,
    /// Whether a leader is writing now.
    flushing: bool,
    /// Why the partition refuses appends, after a failed write or fsync.
    failed: Option<Failure>,
    /// Appenders parked until their frame is acknowledged: (end offset, thread).
    waiters: Vec<(u64, std::thread::Thread)>,
    /// Frames in the last group written: how many appenders are likely to be
    /// back soon (see `GROUP_COMMIT_LINGER_MAX`).
    last_group_frames: usize,
}

impl WriterState {
    fn new(end_offset: u64, last_timestamp_ms: i64) -> Self {
        WriterState {
            next_offset: end_offset,
            last_timestamp_ms,
            queue: Vec::new(),
            in_flight_bytes: 0,
            written_end: end_offset,
            durable_end: end_offset,
            flushing: false,
            failed: None,
            waiters: Vec::new(),
            last_group_frames: 0,
        }
    }
}

/// The active segment's files and write position, held by the leader.
#[derive(Debug)]
struct WriterIo {
    log: Arc<dyn VFile>,
    log_path: PathBuf,
    /// The active segment's base offset (index entries are relative to it).
    base_offset: u64,
    index_file: Arc<dyn VFile>,
    /// Entries in the index file.
    index_entries: usize,
    /// Bytes written since the last index entry.
    since_index_bytes: u64,
    index_interval_bytes: u32,
    /// Bytes of whole frames in the active log.
    position: u64,
    /// The active log's length: past `position` it holds zeros written ahead
    /// of the data (see `zeros_after`).
    file_bytes: u64,
    /// Bytes of the engine's zero-fill budget this writer holds.
    zeros_held_bytes: u64,
    /// One past the last offset written.
    end_offset: u64,
    /// Whether writes since the last fdatasync exist (`async` topics).
    unsynced: bool,
    /// What of the log the page cache may let go.
    write_behind: WriteBehind,
}

impl WriterIo {
    fn new(
        active: &Segment,
        index_file: Arc<dyn VFile>,
        index_interval_bytes: u32,
        page_cache_window_bytes: u64,
    ) -> Self {
        let since_index_bytes = active
            .index
            .last()
            .map_or(u64::MAX, |e| active.size_bytes - e.position as u64);
        WriterIo {
            log: active.log.clone(),
            log_path: active.log_path.clone(),
            base_offset: active.base_offset,
            index_file,
            index_entries: active.index.len(),
            since_index_bytes,
            index_interval_bytes,
            position: active.size_bytes,
            // Recovery cut the file to its last whole frame.
            file_bytes: active.size_bytes,
            zeros_held_bytes: 0,
            end_offset: active.end_offset,
            unsynced: false,
            write_behind: WriteBehind::new(page_cache_window_bytes),
        }
    }
}

/// What an appender holds while its frame is being committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub base_offset: u64,
    pub end_offset: u64,
    pub timestamp_ms: i64,
    /// The writer that took the append: only it can acknowledge it.
    pub generation: u64,
}

/// Zero bytes to write after a group that ends the active log's data at
/// `end`: when the group grows the file and is small, the file is zero-filled a
/// step ahead (within the segment size), so that the appends after it overwrite
/// blocks already allocated and synced and their fdatasync need not commit a new
/// file size (see `PREALLOCATE_STEP_BYTES`). None when the group lands inside
/// zero-filled space or is too large to gain from it.
fn zeros_after(end: u64, file_bytes: u64, group_bytes: u64, segment_bytes: u64) -> u64 {
    if end <= file_bytes || group_bytes > PREALLOCATE_GROUP_BYTES_MAX {
        return 0;
    }
    (end + PREALLOCATE_STEP_BYTES)
        .min(segment_bytes)
        .saturating_sub(end)
}

/// The files of a segment just created.
#[derive(Debug)]
pub(super) struct NewSegment {
    log: Arc<dyn VFile>,
    log_path: PathBuf,
    index: Arc<dyn VFile>,
}

/// The failure latched when a writer panics: what it wrote is unknown until
/// recovery reads the disk again.
const WRITER_PANICKED: &str = "a writer panicked mid-group";

/// Why a writer refuses appends: latched once, kept until the partition is
/// reopened with a new writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub cause: String,
    /// The file system was full (ENOSPC or a quota): freeing space cures it.
    pub no_space: bool,
}

impl Failure {
    fn panicked() -> Failure {
        Failure {
            cause: WRITER_PANICKED.to_string(),
            no_space: false,
        }
    }

    fn of(error: &Error) -> Failure {
        Failure {
            cause: error.to_string(),
            no_space: error.is_no_space(),
        }
    }
}

/// Creates a segment's files and makes their names durable.
pub(super) fn create_segment(vfs: &dyn Vfs, dir: &Path, base: u64) -> Result<NewSegment> {
    let (log_path, index_path) = segment::segment_paths(dir, base);
    let log = vfs
        .open(&log_path, true)
        .context(|| format!("creating {}", log_path.display()))?;
    log.sync_data()
        .context(|| format!("syncing {}", log_path.display()))?;
    let index = vfs
        .open(&index_path, true)
        .context(|| format!("creating {}", index_path.display()))?;
    index
        .write_all_at(&[&index::file_header()], 0)
        .context(|| format!("writing {}", index_path.display()))?;
    vfs.sync_dir(dir)
        .context(|| format!("syncing {}", dir.display()))?;
    Ok(NewSegment {
        log,
        log_path,
        index,
    })
}

/// What a poisoned state lock holds (its guard, or a condition variable's
/// wait's answer), with the partition latched failed.
fn latch_poisoned<G: HoldsState>(poisoned: std::sync::PoisonError<G>) -> G {
    let mut held = poisoned.into_inner();
    held.state().failed.get_or_insert_with(Failure::panicked);
    held
}

/// A guard of the writer state, alone or as a timed wait returns it.
trait HoldsState {
    fn state(&mut self) -> &mut WriterState;
}

impl HoldsState for MutexGuard<'_, WriterState> {
    fn state(&mut self) -> &mut WriterState {
        self
    }
}

impl HoldsState for (MutexGuard<'_, WriterState>, std::sync::WaitTimeoutResult) {
    fn state(&mut self) -> &mut WriterState {
        &mut self.0
    }
}

impl Writer {
    /// The writer of a partition whose log recovery just opened: appends go
    /// on at its end, in its active segment (`index_file` is that
    /// segment's index). `generation` numbers the partition's writers.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        topic: Arc<str>,
        partition: u32,
        dir: PathBuf,
        vfs: Arc<dyn Vfs>,
        settings: WriterSettings,
        log: Arc<SharedLog>,
        index_file: Arc<dyn VFile>,
        generation: u64,
    ) -> Result<Writer> {
        let (io, end) = {
            let state = log.read();
            let active = state.segments.last().ok_or_else(|| Error::Corrupt {
                what: "partition",
                path: dir.clone(),
                reason: "no segment files".into(),
            })?;
            let io = WriterIo::new(
                active,
                index_file,
                settings.index_interval_bytes,
                settings.page_cache_window_bytes,
            );
            (io, active.end_offset)
        };
        let last_timestamp_ms = log.last_timestamp_ms();
        Ok(Writer {
            topic,
            partition,
            dir,
            vfs,
            settings,
            log,
            state: Mutex::new(WriterState::new(end, last_timestamp_ms)),
            state_cv: Condvar::new(),
            queue_cv: Condvar::new(),
            io: Mutex::new(io),
            flushing: Mutex::new(()),
            acked_end: AtomicU64::new(end),
            generation,
        })
    }

    /// Which of the partition's writers this is.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The writer state. A poisoned lock means a thread panicked while it
    /// held it, possibly between two of the state's updates: the partition
    /// latches as after a failed write, since nothing it would do next could
    /// be trusted.
    fn state(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(latch_poisoned)
    }

    /// The active segment's files. Poisoned, they are in a state no one
    /// knows (a panic mid-write): the partition latches, and this fails.
    fn io(&self) -> Result<MutexGuard<'_, WriterIo>> {
        self.io.lock().map_err(|poisoned| {
            drop(poisoned);
            let mut w = self.state();
            let failure = w.failed.get_or_insert_with(Failure::panicked);
            self.failed_error(failure)
        })
    }

    /// The refusal of an append to a failed partition. A full disk is told
    /// apart (with the bytes free now), since freeing space cures it.
    fn failed_error(&self, failure: &Failure) -> Error {
        let topic = self.topic.to_string();
        let partition = self.partition;
        if failure.no_space {
            // 0 when it cannot be told: the refusal stands either way.
            let free_bytes = self.vfs.free_bytes(&self.dir).unwrap_or(0);
            return Error::PartitionFull {
                topic,
                partition,
                free_bytes,
            };
        }
        Error::PartitionFailed {
            topic,
            partition,
            cause: failure.cause.clone(),
        }
    }

    /// Why the partition refuses appends, if it does.
    pub fn failure(&self) -> Option<Failure> {
        self.state().failed.clone()
    }

    /// Assigns offsets to a batch and queues it. Waits while the partition has
    /// more than its in-flight limit queued. Follow with [`Writer::wait`].
    pub fn enqueue(&self, batch: UnsealedBatch) -> Result<Ticket> {
        let bytes = batch.frame_bytes() as u64;
        let mut w = self.state();
        while w.failed.is_none()
            && w.in_flight_bytes > 0
            && w.in_flight_bytes + bytes > self.settings.in_flight_bytes_max
        {
            w = self.state_cv.wait(w).unwrap_or_else(latch_poisoned);
        }
        if let Some(failure) = &w.failed {
            return Err(self.failed_error(failure));
        }
        let base_offset = w.next_offset;
        let timestamp_ms = self.settings.clock.now_ms().max(w.last_timestamp_ms);
        let end_offset = base_offset + batch.record_count() as u64;
        let frame = batch.seal(base_offset, timestamp_ms, w.durable_end);
        w.next_offset = end_offset;
        w.last_timestamp_ms = timestamp_ms;
        w.in_flight_bytes += bytes;
        w.queue.push(Queued {
            frame,
            base_offset,
            end_offset,
            timestamp_ms,
        });
        if w.queue.len() * 2 >= w.last_group_frames {
            self.queue_cv.notify_one();
        }
        Ok(Ticket {
            base_offset,
            end_offset,
            timestamp_ms,
            generation: self.generation,
        })
    }

    /// Waits until every offset below `end_offset` is acknowledged: durable for
    /// `sync` topics, written for `async` ones. May do the write itself.
    ///
    /// A waiter parks on its own thread handle and is unparked only when its
    /// frame is acknowledged or when it should lead the next group, so a group
    /// commit wakes the appenders it completed and no others.
    pub fn wait(&self, end_offset: u64) -> Result<()> {
        let sync = self.settings.durability == Durability::Sync;
        loop {
            if self.acked_end.load(Ordering::Acquire) >= end_offset {
                return Ok(());
            }
            let mut w = self.state();
            if self.acked_end.load(Ordering::Acquire) >= end_offset {
                return Ok(());
            }
            if let Some(failure) = &w.failed {
                return Err(self.failed_error(failure));
            }
            if w.flushing || w.queue.is_empty() {
                w.waiters.push((end_offset, std::thread::current()));
                drop(w);
                std::thread::park();
                continue;
            }
            w.flushing = true;
            w = self.linger(w);
            if w.failed.is_some() {
                // Latched while lingering (a failed async flush): write nothing.
                w.flushing = false;
                self.release_and_wake(w);
                continue;
            }
            let group = std::mem::take(&mut w.queue);
            w.last_group_frames = group.len();
            let group_bytes: u64 = group.iter().map(|q| q.frame.len() as u64).sum();
            drop(w);
            let mut releases = Releases::default();
            // A panic in the write is a failed write: caught here, it latches
            // the partition below and answers this group with an error, instead
            // of leaving its waiters parked behind a leader that is gone.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.write_group(group, sync, &mut releases)
            }))
            .map(|written| written.map_err(|error| Failure::of(&error)))
            .unwrap_or_else(|_| Err(Failure::panicked()));
            let mut w = self.state();
            w.flushing = false;
            w.in_flight_bytes -= group_bytes;
            match result {
                Ok(end) => {
                    w.written_end = end;
                    if sync {
                        w.durable_end = end;
                    }
                    self.publish_visible(end);
                }
                Err(failure) => {
                    tracing::error!(topic = %self.topic, partition = self.partition, cause = %failure.cause,
                        "write failed; the partition refuses appends until the broker reopens it");
                    w.failed = Some(failure);
                }
            }
            self.release_and_wake(w);
            // After the acknowledgments and outside the locks: only this
            // leader's own call waits for it, about as long as its write took.
            releases.run();
        }
    }

    /// Releases the writer lock and wakes whoever should run next: waiters
    /// whose frames are acknowledged (all of them if the partition failed), one
    /// waiter to lead the next group, and appenders waiting for in-flight room.
    fn release_and_wake(&self, mut w: MutexGuard<'_, WriterState>) {
        let wake = self.waiters_to_wake(&mut w);
        drop(w);
        self.state_cv.notify_all();
        for thread in wake {
            thread.unpark();
        }
    }

    /// After a group: every waiter whose frame is now acknowledged (all of them
    /// if the partition failed), and one more to lead the next group.
    fn waiters_to_wake(&self, w: &mut WriterState) -> Vec<std::thread::Thread> {
        let acked = self.acked_end.load(Ordering::Acquire);
        let everyone = w.failed.is_some();
        let mut wake = Vec::new();
        w.waiters.retain(|(end, thread)| {
            let done = everyone || *end <= acked;
            if done {
                wake.push(thread.clone());
            }
            !done
        });
        if !w.queue.is_empty() {
            if let Some((_, thread)) = w.waiters.pop() {
                wake.push(thread);
            }
        }
        wake
    }

    /// Before writing a group much smaller than the last one, waits briefly for
    /// the appenders of the last group to come back with their next frames: with
    /// many appenders in lockstep, the first one back would otherwise write its
    /// frame alone and the group after it would pay a second fsync.
    fn linger<'a>(&self, mut w: MutexGuard<'a, WriterState>) -> MutexGuard<'a, WriterState> {
        let deadline = Instant::now() + GROUP_COMMIT_LINGER_MAX;
        while w.queue.len() * 2 < w.last_group_frames && w.failed.is_none() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            w = self
                .queue_cv
                .wait_timeout(w, deadline - now)
                .map_or_else(|poisoned| latch_poisoned(poisoned).0, |(w, _)| w);
        }
        w
    }

    /// Makes offsets below `end` readable, then acknowledged: an appender
    /// that returns finds its records.
    fn publish_visible(&self, end: u64) {
        self.log.show(end);
        self.acked_end.store(end, Ordering::Release);
    }

    /// Writes a group of frames (rolling segments as needed) and, for `sync`
    /// topics, fdatasyncs them. Returns the new written end; what the page
    /// cache may let go of goes into `releases`.
    fn write_group(&self, group: Vec<Queued>, sync: bool, releases: &mut Releases) -> Result<u64> {
        let mut io = self.io()?;
        let mut frames: Vec<Bytes> = Vec::with_capacity(group.len());
        let mut entries: Vec<IndexEntry> = Vec::new();
        let mut start = io.position;
        let mut last_timestamp_ms = 0;
        for queued in group {
            let len = queued.frame.len() as u64;
            if io.position > 0 && io.position + len > self.settings.segment_bytes {
                self.write_frames(&mut io, start, &frames, &entries, last_timestamp_ms)?;
                frames.clear();
                entries.clear();
                self.roll(&mut io, releases)?;
                start = 0;
            }
            if io.since_index_bytes >= io.index_interval_bytes as u64 {
                entries.push(IndexEntry {
                    offset: queued.base_offset,
                    position: io.position as u32,
                    timestamp_ms: queued.timestamp_ms,
                });
                io.since_index_bytes = 0;
            }
            io.since_index_bytes += len;
            io.position += len;
            io.end_offset = queued.end_offset;
            last_timestamp_ms = queued.timestamp_ms;
            frames.push(queued.frame);
        }
        self.write_frames(&mut io, start, &frames, &entries, last_timestamp_ms)?;
        if sync {
            io.log
                .sync_data()
                .context(|| format!("syncing {}", io.log_path.display()))?;
            let WriterIo {
                log,
                position,
                write_behind,
                ..
            } = &mut *io;
            write_behind.synced(log, *position, releases);
        } else {
            io.unsynced = true;
        }
        Ok(io.end_offset)
    }

    /// Writes frames at `start` in the active log and their index entries, then
    /// shows them to readers (still bounded by the visible end).
    fn write_frames(
        &self,
        io: &mut WriterIo,
        start: u64,
        frames: &[Bytes],
        entries: &[IndexEntry],
        last_timestamp_ms: i64,
    ) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let zero_fill = &self.settings.zero_fill;
        // `async` topics sync large spans at once and would gain nothing.
        let mut zeros = match self.settings.durability {
            Durability::Sync => zeros_after(
                io.position,
                io.file_bytes,
                io.position - start,
                self.settings.segment_bytes,
            ),
            Durability::Async => 0,
        };
        if zeros > 0 && zero_fill.try_take(zeros) {
            io.zeros_held_bytes += zeros;
        } else {
            zeros = 0;
        }
        let mut slices: Vec<&[u8]> = frames.iter().map(|f| f.as_ref()).collect();
        let mut left = zeros;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            slices.push(&ZEROS[..n as usize]);
            left -= n;
        }
        io.log
            .write_all_at(&slices, start)
            .context(|| format!("writing {}", io.log_path.display()))?;
        io.file_bytes = io.file_bytes.max(io.position + zeros);
        // Zeros this write's data took the place of go back to the budget.
        let held = io.file_bytes.saturating_sub(io.position);
        zero_fill.give_back(io.zeros_held_bytes.saturating_sub(held));
        io.zeros_held_bytes = io.zeros_held_bytes.min(held);
        if !entries.is_empty() {
            let base = io.base_offset;
            let mut bytes = Vec::with_capacity(entries.len() * index::INDEX_ENTRY_BYTES as usize);
            for entry in entries {
                bytes.extend_from_slice(&index::encode_entry(entry, base));
            }
            // The index is a cache of the log: a failed index write only costs a
            // rebuild at the next open, so it does not fail the append.
            if let Err(error) = io
                .index_file
                .write_all_at(&[&bytes], entry_position(io.index_entries))
            {
                tracing::warn!(topic = %self.topic, partition = self.partition, %error, "index write failed; it is rebuilt at the next open");
            }
            io.index_entries += entries.len();
        }
        let mut log = self.log.write();
        let active = log.segments.last_mut().ok_or_else(|| Error::Corrupt {
            what: "partition",
            path: self.dir.clone(),
            reason: "no active segment".into(),
        })?;
        for entry in entries {
            active.index.push(*entry);
        }
        active.size_bytes = io.position;
        active.end_offset = io.end_offset;
        active.last_timestamp_ms = active.last_timestamp_ms.max(last_timestamp_ms);
        Ok(())
    }

    /// Seals the active segment (log and index synced) and starts a new one whose
    /// file and directory entry are durable before anything is written to it.
    fn roll(&self, io: &mut WriterIo, releases: &mut Releases) -> Result<()> {
        // A sealed segment ends at its last frame: its zero-filled space goes
        // before the sync that makes the seal durable.
        if io.file_bytes > io.position {
            io.log
                .set_len(io.position)
                .context(|| format!("trimming {}", io.log_path.display()))?;
            io.file_bytes = io.position;
        }
        self.settings.zero_fill.give_back(io.zeros_held_bytes);
        io.zeros_held_bytes = 0;
        io.log
            .sync_data()
            .context(|| format!("syncing {}", io.log_path.display()))?;
        if let Err(error) = io.index_file.sync_data() {
            tracing::warn!(topic = %self.topic, partition = self.partition, %error, "index sync failed; it is rebuilt at the next open");
        }
        let base = io.end_offset;
        let NewSegment {
            log,
            log_path,
            index: index_file,
        } = create_segment(self.vfs.as_ref(), &self.dir, base)?;
        io.write_behind.rolled(&io.log, io.position, releases);
        let write_behind = std::mem::take(&mut io.write_behind);
        *io = WriterIo {
            log: log.clone(),
            log_path: log_path.clone(),
            base_offset: base,
            index_file,
            index_entries: 0,
            since_index_bytes: u64::MAX,
            index_interval_bytes: io.index_interval_bytes,
            position: 0,
            file_bytes: 0,
            zeros_held_bytes: 0,
            end_offset: base,
            unsynced: false,
            write_behind,
        };
        self.log.write().segments.push(Segment {
            mapped: Default::default(),
            base_offset: base,
            log,
            log_path,
            index: SparseIndex::default(),
            end_offset: base,
            size_bytes: 0,
            last_timestamp_ms: 0,
        });
        tracing::debug!(topic = %self.topic, partition = self.partition, base, "rolled a new segment");
        Ok(())
    }

    /// Fdatasyncs what `async` appends wrote. A failure latches the partition.
    ///
    /// The sync runs without the I/O lock, so appends keep being written
    /// meanwhile instead of stalling for the length of a sync of a second's
    /// writes: the offsets it makes durable are those written before it
    /// started.
    pub fn flush(&self) -> Result<()> {
        let one_at_a_time = lock(&self.flushing);
        let (log, log_path, end, position) = {
            let mut io = self.io()?;
            let w = self.state();
            if let Some(failure) = &w.failed {
                // Never retry an fsync: after a failure the kernel may have dropped
                // the dirty pages, and a second fsync would "succeed" over lost data.
                // Nothing to flush when every acknowledged offset is durable.
                if w.durable_end >= self.acked_end.load(Ordering::Acquire) {
                    return Ok(());
                }
                return Err(self.failed_error(failure));
            }
            if !io.unsynced {
                return Ok(());
            }
            io.unsynced = false;
            // A group whose write just failed has moved the I/O end already,
            // before its leader latches the failure: only offsets the writer
            // state knows as written can be made durable.
            let end = io.end_offset.min(w.written_end);
            (Arc::clone(&io.log), io.log_path.clone(), end, io.position)
        };
        if let Err(error) = log.sync_data() {
            let error = Error::io(format!("syncing {}", log_path.display()), error);
            let mut w = self.state();
            w.failed = Some(Failure::of(&error));
            self.release_and_wake(w);
            return Err(error);
        }
        let mut releases = Releases::default();
        {
            let mut io = self.io()?;
            // A segment rolled meanwhile was synced as it was sealed.
            if Arc::ptr_eq(&io.log, &log) {
                io.write_behind.synced(&log, position, &mut releases);
            }
        }
        {
            let mut w = self.state();
            w.durable_end = w.durable_end.max(end);
        }
        drop(one_at_a_time);
        releases.run();
        Ok(())
    }

    /// Bytes enqueued and not yet acknowledged.
    pub fn in_flight_bytes(&self) -> u64 {
        self.state().in_flight_bytes
    }

    /// Offsets below this are on disk (fdatasync'ed).
    pub fn durable_end(&self) -> u64 {
        self.state().durable_end
    }
}

impl Drop for Writer {
    /// The zeros ahead of this writer's data go back to the budget: the
    /// next open cuts them (or a new writer, after a reopen, never had them).
    fn drop(&mut self) {
        let io = match self.io.get_mut() {
            Ok(io) => io,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.settings.zero_fill.give_back(io.zeros_held_bytes);
    }
}
