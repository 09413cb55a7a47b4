//! A partition: a directory of segments, recovered at open, read by offset or
//! timestamp, trimmed by retention. Appends go to its [`Writer`]
//! (`storage::writer`); the two share only what readers see of the log
//! ([`SharedLog`]).
//!
//! Invariants:
//! - Offsets are dense and increasing; segment `i + 1` starts where segment `i`
//!   ends (unless damage was found, which reads report as data loss).
//! - Readers never see a record past the visible end: the durable end for
//!   `sync` topics, the written end for `async` ones.
//! - Only sealed segments are deleted by retention; the active segment stays,
//!   so the earliest offset is always a segment base that exists.
//! - A failed writer is never used again: [`Partition::reopen`] cuts the log
//!   back to what that writer made durable, recovers it with new descriptors
//!   and appends through a new writer. An append is acknowledged only by the
//!   writer that took it (a [`Ticket`] names its writer).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::batch::{decode_records, Record, UnsealedBatch};
use super::index::{self, entry_position, IndexEntry, SparseIndex};
use super::io::{VFile, Vfs};
use super::log_state::SharedLog;
use super::recovery::{self, ScanStart};
use super::segment::{self, Frame, FrameReader, Segment};
use super::writer::{create_segment, Writer};
pub use super::writer::{Failure, Ticket, WriterSettings};
use crate::error::{Error, IoContext, Result};
use crate::limits::REOPEN_PROBE_BYTES;
use crate::sync::{read, write};

/// The file a probe writes before a failed partition is reopened.
const PROBE_FILE: &str = "reopen.probe";

/// The settings a partition needs from its topic and the engine.
#[derive(Debug, Clone)]
pub struct PartitionSettings {
    pub writer: WriterSettings,
    /// Whether sealed segments are read through a memory map (see `segment`).
    pub map_sealed_segments: bool,
}

/// One partition of a topic.
#[derive(Debug)]
pub struct Partition {
    topic: Arc<str>,
    id: u32,
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    /// Whether sealed segments are read through a memory map.
    map_sealed_segments: bool,
    /// Segments and the visible end, shared with the writer.
    log: Arc<SharedLog>,
    /// What a new writer is made with.
    writer_settings: WriterSettings,
    /// The writer; a failed one is replaced by [`Partition::reopen`].
    /// Poisoned: goes on (see `crate::sync`): a swap of one `Arc` is never
    /// left half done.
    writer: RwLock<Arc<Writer>>,
}

/// A reader positioned in one segment, for `Partition::read`.
#[derive(Debug)]
struct SegmentCursor {
    reader: FrameReader,
    path: PathBuf,
    base: u64,
    /// Offset of the frame the reader starts at.
    start_offset: u64,
}

/// A summary of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub earliest_offset: u64,
    pub end_offset: u64,
    pub size_bytes: u64,
    pub segments: u32,
    /// Bytes enqueued and not yet acknowledged (bounded by the engine's
    /// `in_flight_bytes_per_partition`).
    pub in_flight_bytes: u64,
}

impl Partition {
    /// Creates an empty partition directory with its first segment, durably.
    pub fn create(vfs: &Arc<dyn Vfs>, dir: &Path) -> Result<()> {
        vfs.create_dir_all(dir)
            .context(|| format!("creating {}", dir.display()))?;
        create_segment(vfs.as_ref(), dir, 0).map(drop)
    }

    /// Opens and recovers a partition directory.
    pub fn open(
        vfs: Arc<dyn Vfs>,
        topic: Arc<str>,
        id: u32,
        dir: PathBuf,
        settings: PartitionSettings,
    ) -> Result<Partition> {
        let (segments, active_index, end) =
            recover_segments(&vfs, &dir, settings.writer.index_interval_bytes)?;
        let log = Arc::new(SharedLog::new(segments, end));
        let writer = Writer::new(
            Arc::clone(&topic),
            id,
            dir.clone(),
            Arc::clone(&vfs),
            settings.writer.clone(),
            Arc::clone(&log),
            active_index,
            0,
        )?;
        Ok(Partition {
            topic,
            id,
            dir,
            vfs,
            map_sealed_segments: settings.map_sealed_segments,
            log,
            writer_settings: settings.writer,
            writer: RwLock::new(Arc::new(writer)),
        })
    }

    /// The writer appends go to now.
    fn writer(&self) -> Arc<Writer> {
        Arc::clone(&read(&self.writer))
    }

    /// Why the partition refuses appends, if it does.
    pub fn failure(&self) -> Option<Failure> {
        self.writer().failure()
    }

    /// Replaces a failed writer, once a [`Partition::probe`] showed the disk
    /// takes writes and fsyncs again: the log is cut back to what the failed
    /// writer made durable (what it wrote past that may be lost from the page cache with
    /// the failure, so it is never trusted; for `async` topics that is as
    /// much as a crash would lose), recovered with new descriptors (the
    /// failed ones are never synced again), and a new writer appends at its
    /// end. Returns the new end, or `None` when the writer had not failed.
    /// Called by one thread at a time (the engine's maintenance).
    pub fn reopen(&self) -> Result<Option<u64>> {
        let failed = self.writer();
        if failed.failure().is_none() {
            return Ok(None);
        }
        let durable_end = failed.durable_end();
        self.cut_back(durable_end)?;
        let (segments, active_index, end) = recover_segments(
            &self.vfs,
            &self.dir,
            self.writer_settings.index_interval_bytes,
        )?;
        self.log.reset(segments, end);
        let writer = Writer::new(
            Arc::clone(&self.topic),
            self.id,
            self.dir.clone(),
            Arc::clone(&self.vfs),
            self.writer_settings.clone(),
            Arc::clone(&self.log),
            active_index,
            failed.generation() + 1,
        )?;
        *write(&self.writer) = Arc::new(writer);
        tracing::info!(topic = %self.topic, partition = self.id, end, "reopened a failed partition; appends go on");
        Ok(Some(end))
    }

    /// Writes and fdatasyncs `REOPEN_PROBE_BYTES` in the partition's
    /// directory, then removes them: proof that the disk takes writes (and
    /// has room for a group's zero-fill) before a failed partition is
    /// reopened on it.
    pub fn probe(&self) -> Result<()> {
        let path = self.dir.join(PROBE_FILE);
        let written = self.vfs.open(&path, true).and_then(|file| {
            let zeros = vec![0u8; REOPEN_PROBE_BYTES as usize];
            file.write_all_at(&[&zeros], 0)?;
            file.sync_data()
        });
        let removed = self.vfs.remove_file(&path);
        written.and(removed).context(|| {
            format!(
                "probing {} with a write and an fdatasync",
                self.dir.display()
            )
        })
    }

    /// Cuts the files back to `end`: segments that start past it are
    /// deleted, the one holding it ends at the frame that starts at `end`.
    /// Only the positions of frames below `end` are trusted, and those were
    /// durable.
    fn cut_back(&self, end: u64) -> Result<()> {
        let (base, position) = {
            let log = self.log.read();
            let i = log
                .segments
                .partition_point(|s| s.base_offset <= end)
                .saturating_sub(1);
            let segment = &log.segments[i];
            let start = segment
                .index
                .floor(end)
                .map_or((0, segment.base_offset), |e| (e.position as u64, e.offset));
            let position = frame_position(segment, start, end)?;
            (segment.base_offset, position)
        };
        for later in list_segments(self.vfs.as_ref(), &self.dir)?
            .into_iter()
            .rev()
            .filter(|b| *b > base)
        {
            let (log_path, index_path) = segment::segment_paths(&self.dir, later);
            // The log goes first (an index without its log is removed at
            // open); a roll that failed may not have made the index.
            for path in [log_path, index_path] {
                match self.vfs.remove_file(&path) {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(format!("deleting {}", path.display()), error));
                    }
                    _ => {}
                }
            }
        }
        let (log_path, _) = segment::segment_paths(&self.dir, base);
        let log = self
            .vfs
            .open(&log_path, false)
            .context(|| format!("opening {}", log_path.display()))?;
        log.set_len(position)
            .and_then(|()| log.sync_data())
            .context(|| format!("cutting {} back to byte {position}", log_path.display()))?;
        self.vfs
            .sync_dir(&self.dir)
            .context(|| format!("syncing {}", self.dir.display()))
    }

    /// Assigns offsets to a batch and queues it for the writer; follow with
    /// [`Partition::wait`]. See [`Writer::enqueue`].
    pub fn enqueue(&self, batch: UnsealedBatch) -> Result<Ticket> {
        self.writer().enqueue(batch)
    }

    /// Waits until every offset below `end_offset` is acknowledged by the
    /// writer of `generation` (a [`Ticket`]'s, or [`Partition::generation`]
    /// read when the offset was learnt). See [`Writer::wait`]. Fails when
    /// that writer has been replaced: it failed before acknowledging.
    pub fn wait(&self, generation: u64, end_offset: u64) -> Result<()> {
        let writer = self.writer();
        if writer.generation() != generation {
            return Err(Error::PartitionFailed {
                topic: self.topic.to_string(),
                partition: self.id,
                cause: "the append was lost with a failed write (the partition has been reopened since); publish it again".into(),
            });
        }
        writer.wait(end_offset)
    }

    /// Which writer appends go to now: it changes when the partition is
    /// reopened after a failure.
    pub fn generation(&self) -> u64 {
        self.writer().generation()
    }

    /// Fdatasyncs what `async` appends wrote. See [`Writer::flush`].
    pub fn flush(&self) -> Result<()> {
        self.writer().flush()
    }

    /// Bytes enqueued and not yet acknowledged.
    pub fn in_flight_bytes(&self) -> u64 {
        self.writer().in_flight_bytes()
    }

    /// Offsets below this are on disk (fdatasync'ed).
    pub fn durable_end(&self) -> u64 {
        self.writer().durable_end()
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Offsets below this are readable.
    pub fn end_offset(&self) -> u64 {
        self.log.read().visible_end
    }

    /// The first offset still stored.
    pub fn earliest_offset(&self) -> u64 {
        self.log
            .read()
            .segments
            .first()
            .map_or(0, |s| s.base_offset)
    }

    /// Append time of the newest stored record (0 when empty).
    pub fn last_timestamp_ms(&self) -> i64 {
        self.log.last_timestamp_ms()
    }

    /// A receiver of the visible end offset: it changes when new records become
    /// readable, so a subscriber can wait instead of polling.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.log.watch_end()
    }

    pub fn info(&self) -> PartitionInfo {
        let in_flight_bytes = self.in_flight_bytes();
        let log = self.log.read();
        PartitionInfo {
            partition: self.id,
            earliest_offset: log.segments.first().map_or(0, |s| s.base_offset),
            end_offset: log.visible_end,
            size_bytes: log.segments.iter().map(|s| s.size_bytes).sum(),
            segments: log.segments.len() as u32,
            in_flight_bytes,
        }
    }

    fn data_loss(&self, offset: u64, file: &Path, position: u64, reason: String) -> Error {
        Error::DataLoss {
            topic: self.topic.to_string(),
            partition: self.id,
            offset,
            file: file.to_path_buf(),
            position,
            reason,
        }
    }

    /// Reads records from `from` on, about `max_bytes` of frames (at least one
    /// whole frame), never past the visible end. Returns no records when `from`
    /// is the end. Records before damage are returned; a read that starts at
    /// damage fails with [`Error::DataLoss`].
    pub fn read(&self, from: u64, max_bytes: u32) -> Result<Vec<Record>> {
        let visible_end = {
            let log = self.log.read();
            let earliest = log.segments.first().map_or(0, |s| s.base_offset);
            if from < earliest || from > log.visible_end {
                return Err(Error::OffsetOutOfRange {
                    topic: self.topic.to_string(),
                    partition: self.id,
                    offset: from,
                    earliest,
                    end: log.visible_end,
                });
            }
            if from == log.visible_end {
                return Ok(Vec::new());
            }
            log.visible_end
        };
        let mut records = Vec::new();
        let mut bytes_read: u64 = 0;
        let mut previous: Option<(u64, u64)> = None; // (base, end) of the segment read last
        loop {
            // Segments are picked one at a time, so a read costs the same
            // whatever the number of segments after it.
            let Some(SegmentCursor {
                mut reader,
                path,
                base,
                start_offset,
            }) = self.cursor(from, previous.map(|(base, _)| base), max_bytes)
            else {
                break;
            };
            if let Some((_, expected)) = previous.filter(|(_, end)| *end != base) {
                let reason = format!("segment starts at offset {base}, expected {expected}");
                return self.finish_read(records, self.data_loss(expected, &path, 0, reason));
            }
            let mut expected_offset = start_offset;
            loop {
                let frame = reader
                    .next_frame()
                    .context(|| format!("reading {}", path.display()))?;
                match frame {
                    Frame::End => break,
                    Frame::Bad { position, reason } => {
                        return self.finish_read(
                            records,
                            self.data_loss(expected_offset, &path, position, reason),
                        );
                    }
                    Frame::Whole {
                        position,
                        header,
                        bytes,
                    } => {
                        if header.base_offset != expected_offset {
                            let reason = format!(
                                "frame has base offset {}, expected {expected_offset}",
                                header.base_offset
                            );
                            return self.finish_read(
                                records,
                                self.data_loss(expected_offset, &path, position, reason),
                            );
                        }
                        expected_offset = header.end_offset();
                        if header.base_offset >= visible_end {
                            return Ok(records);
                        }
                        if header.end_offset() <= from {
                            continue;
                        }
                        decode_records(&bytes, &header, from..visible_end, &mut records).map_err(
                            |reason| {
                                self.data_loss(
                                    header.base_offset,
                                    &path,
                                    position,
                                    reason.to_string(),
                                )
                            },
                        )?;
                        bytes_read += bytes.len() as u64;
                        if bytes_read >= max_bytes as u64 {
                            return Ok(records);
                        }
                    }
                }
            }
            previous = Some((base, expected_offset));
        }
        Ok(records)
    }

    /// A reader of the segment holding `from` (when `previous_base` is `None`)
    /// or of the segment after the one at `previous_base`, positioned by the
    /// sparse index, for a read of about `max_bytes`; `None` past the last
    /// segment.
    fn cursor(
        &self,
        from: u64,
        previous_base: Option<u64>,
        max_bytes: u32,
    ) -> Option<SegmentCursor> {
        let log = self.log.read();
        let i = match previous_base {
            None => log
                .segments
                .partition_point(|s| s.base_offset <= from)
                .checked_sub(1)?,
            Some(base) => log.segments.partition_point(|s| s.base_offset <= base),
        };
        let segment = log.segments.get(i)?;
        let sealed = i + 1 < log.segments.len();
        let (position, start_offset) = segment
            .index
            .floor(from)
            .map_or((0, segment.base_offset), |e| (e.position as u64, e.offset));
        Some(SegmentCursor {
            reader: segment.reader(
                position,
                segment.size_bytes,
                self.map_sealed_segments && sealed,
                u64::from(max_bytes),
            ),
            path: segment.log_path.clone(),
            base: segment.base_offset,
            start_offset,
        })
    }

    fn finish_read(&self, records: Vec<Record>, error: Error) -> Result<Vec<Record>> {
        if records.is_empty() {
            Err(error)
        } else {
            Ok(records)
        }
    }

    /// The first offset whose append time is at or after `timestamp_ms`, or the
    /// end offset when every record is older.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<u64> {
        let (file, path, base, size, entry, visible_end) = {
            let log = self.log.read();
            let Some(segment) = log
                .segments
                .iter()
                .find(|s| s.last_timestamp_ms >= timestamp_ms && s.size_bytes > 0)
            else {
                return Ok(log.visible_end);
            };
            (
                segment.log.clone(),
                segment.log_path.clone(),
                segment.base_offset,
                segment.size_bytes,
                segment.index.floor_before_timestamp(timestamp_ms).copied(),
                log.visible_end,
            )
        };
        let start = entry.map_or(0, |e| e.position as u64);
        let mut reader = FrameReader::new(file, start, size);
        loop {
            match reader
                .next_frame()
                .context(|| format!("reading {}", path.display()))?
            {
                Frame::Whole { header, .. } if header.timestamp_ms >= timestamp_ms => {
                    return Ok(header.base_offset.min(visible_end));
                }
                Frame::Whole { .. } => {}
                Frame::End => return Ok(visible_end),
                Frame::Bad { position, reason } => {
                    let offset = entry.map_or(base, |e| e.offset);
                    return Err(self.data_loss(offset, &path, position, reason));
                }
            }
        }
    }

    /// The next offset at or after `offset` that starts a readable frame: used
    /// to continue past damage when rebuilding derived state (never by readers).
    pub fn next_readable_after(&self, offset: u64) -> Option<u64> {
        let log = self.log.read();
        log.segments.iter().find_map(|s| {
            if s.base_offset > offset {
                return Some(s.base_offset);
            }
            s.index
                .entries()
                .iter()
                .find(|e| e.offset > offset)
                .map(|e| e.offset)
        })
    }

    /// Deletes sealed segments that retention no longer keeps: those whose newest
    /// record is older than `retention_ms`, then the oldest while the partition
    /// holds more than `retention_bytes`. Returns how many were deleted.
    pub fn enforce_retention(
        &self,
        now_ms: i64,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> Result<usize> {
        let removed: Vec<Segment> = {
            let mut log = self.log.write();
            let mut total: u64 = log.segments.iter().map(|s| s.size_bytes).sum();
            let mut count = 0;
            for segment in &log.segments[..log.segments.len() - 1] {
                let too_old = retention_ms
                    .is_some_and(|ms| segment.last_timestamp_ms.saturating_add(ms as i64) < now_ms);
                let too_big = retention_bytes.is_some_and(|max| total > max);
                if !(too_old || too_big) {
                    break;
                }
                total -= segment.size_bytes;
                count += 1;
            }
            log.segments.drain(..count).collect()
        };
        for segment in &removed {
            // The log goes first: an index without its log is ignored at open.
            let (log_path, index_path) = segment::segment_paths(&self.dir, segment.base_offset);
            self.vfs
                .remove_file(&log_path)
                .context(|| format!("deleting {}", log_path.display()))?;
            if let Err(error) = self.vfs.remove_file(&index_path) {
                tracing::warn!(path = %index_path.display(), %error, "could not delete an index file");
            }
            tracing::info!(topic = %self.topic, partition = self.id, base_offset = segment.base_offset, "retention deleted a segment");
        }
        if !removed.is_empty() {
            self.vfs
                .sync_dir(&self.dir)
                .context(|| format!("syncing {}", self.dir.display()))?;
        }
        Ok(removed.len())
    }
}

/// Opens and recovers every segment of `dir`: the segments, the active
/// one's index file and the log's end.
fn recover_segments(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    index_interval_bytes: u32,
) -> Result<(Vec<Segment>, Arc<dyn VFile>, u64)> {
    let bases = list_segments(vfs.as_ref(), dir)?;
    let mut segments = Vec::with_capacity(bases.len());
    let mut active_index = None;
    for (i, base) in bases.iter().enumerate() {
        let active = i + 1 == bases.len();
        let (segment, index_file) = open_segment(vfs, dir, *base, active, index_interval_bytes)?;
        if active {
            active_index = Some(index_file);
        }
        segments.push(segment);
    }
    check_continuity(dir, &segments);
    let (Some(active), Some(active_index)) = (segments.last(), active_index) else {
        return Err(Error::Corrupt {
            what: "partition",
            path: dir.to_path_buf(),
            reason: "no segment files".into(),
        });
    };
    // Whatever the page cache holds now is made durable, so that the durable
    // end below is true even after a process crash that skipped an fsync.
    active
        .log
        .sync_data()
        .context(|| format!("syncing {}", active.log_path.display()))?;
    let end = active.end_offset;
    Ok((segments, active_index, end))
}

/// The byte position in `segment` of the frame that starts at offset `end`
/// (its end of data when none does), scanning from `start` (position,
/// offset) of a frame at or below `end`.
fn frame_position(segment: &Segment, start: (u64, u64), end: u64) -> Result<u64> {
    let mut reader = FrameReader::new(segment.log.clone(), start.0, segment.size_bytes);
    loop {
        let position = reader.position();
        let frame = reader
            .next_frame()
            .context(|| format!("reading {}", segment.log_path.display()))?;
        match frame {
            Frame::Whole { header, .. } if header.base_offset < end => {}
            Frame::Whole { .. } | Frame::End | Frame::Bad { .. } => return Ok(position),
        }
    }
}

/// Base offsets of the segments in `dir`, sorted; removes leftover files that
/// belong to no segment (an index whose log is gone, temporary files).
fn list_segments(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<u64>> {
    let names = vfs
        .list_dir(dir)
        .context(|| format!("listing {}", dir.display()))?;
    let mut logs = BTreeSet::new();
    let mut indexes = Vec::new();
    for name in &names {
        match segment::parse_file_name(name) {
            Some((base, true)) => {
                logs.insert(base);
            }
            Some((base, false)) => indexes.push(base),
            // A probe cut short by a crash: it never held data.
            None if name == PROBE_FILE => vfs
                .remove_file(&dir.join(name))
                .context(|| format!("deleting {}", dir.join(name).display()))?,
            None => {
                tracing::warn!(dir = %dir.display(), name, "ignoring an unknown file in a partition directory")
            }
        }
    }
    for base in indexes.into_iter().filter(|b| !logs.contains(b)) {
        let path = dir.join(segment::index_file_name(base));
        vfs.remove_file(&path)
            .context(|| format!("deleting {}", path.display()))?;
    }
    Ok(logs.into_iter().collect())
}

/// Opens one segment, checks its index against its log and scans what the index
/// does not cover. The active segment loses a torn tail; see `recovery`.
fn open_segment(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    base: u64,
    active: bool,
    index_interval_bytes: u32,
) -> Result<(Segment, Arc<dyn VFile>)> {
    let (log_path, index_path) = segment::segment_paths(dir, base);
    let log = vfs
        .open(&log_path, false)
        .context(|| format!("opening {}", log_path.display()))?;
    let index_file = vfs
        .open(&index_path, true)
        .context(|| format!("opening {}", index_path.display()))?;
    let log_bytes = log
        .size_bytes()
        .context(|| format!("reading {}", log_path.display()))?;
    let mut index = index::load(&index_file, &index_path, base, log_bytes)
        .context(|| format!("reading {}", index_path.display()))?;
    let loaded = index.len();
    let trusted = recovery::trusted_prefix(&log, &index, active)
        .context(|| format!("reading {}", log_path.display()))?;
    index.truncate(trusted);
    let start = match index.last() {
        Some(e) => ScanStart {
            position: e.position as u64,
            offset: e.offset,
            timestamp_ms: e.timestamp_ms,
            index_interval_bytes,
            indexed: true,
        },
        None => recovery::start_of_segment(base, index_interval_bytes),
    };
    let outcome = recovery::scan(&log, &log_path, start, active)
        .context(|| format!("scanning {}", log_path.display()))?;
    if let Some((position, reason)) = &outcome.torn_tail {
        tracing::warn!(path = %log_path.display(), position, cut_bytes = log_bytes - outcome.end_position, reason = %reason,
            "truncating a torn tail (records never acknowledged)");
    } else if let Some(position) = outcome.zero_tail {
        tracing::debug!(path = %log_path.display(), position, cut_bytes = log_bytes - outcome.end_position,
            "trimming the zero-filled space after the last frame");
    }
    let cut = outcome.torn_tail.is_some() || outcome.zero_tail.is_some();
    if cut {
        log.set_len(outcome.end_position)
            .context(|| format!("truncating {}", log_path.display()))?;
        log.sync_data()
            .context(|| format!("syncing {}", log_path.display()))?;
    }
    let index_damaged = trusted < loaded
        || (loaded == 0 && index_file.size_bytes().unwrap_or(0) != index::INDEX_HEADER_BYTES);
    if index_damaged || !outcome.new_entries.is_empty() {
        rewrite_index_tail(
            &index_file,
            &index_path,
            base,
            &mut index,
            &outcome.new_entries,
            index_damaged,
        )?;
    }
    // A sealed segment keeps damaged bytes at its end (reads of them report
    // data loss); zeros it never held as data are cut like a torn tail.
    let size_bytes = if active || cut {
        outcome.end_position
    } else {
        log_bytes
    };
    let segment = Segment {
        mapped: Default::default(),
        base_offset: base,
        log,
        log_path,
        index,
        end_offset: outcome.end_offset,
        size_bytes,
        last_timestamp_ms: outcome.last_timestamp_ms,
    };
    Ok((segment, index_file))
}

/// Cuts the index file after its trusted entries and appends the rebuilt ones.
/// A cut is synced, so that stale entries cannot come back after another crash.
fn rewrite_index_tail(
    file: &Arc<dyn VFile>,
    path: &Path,
    base: u64,
    index: &mut SparseIndex,
    new_entries: &[IndexEntry],
    cut: bool,
) -> Result<()> {
    let ctx = || format!("rebuilding {}", path.display());
    if cut {
        file.set_len(entry_position(index.len())).context(ctx)?;
        file.write_all_at(&[&index::file_header()], 0)
            .context(ctx)?;
    }
    let mut bytes = Vec::with_capacity(new_entries.len() * index::INDEX_ENTRY_BYTES as usize);
    for entry in new_entries {
        bytes.extend_from_slice(&index::encode_entry(entry, base));
    }
    file.write_all_at(&[&bytes], entry_position(index.len()))
        .context(ctx)?;
    if cut {
        file.sync_data().context(ctx)?;
    }
    for entry in new_entries {
        index.push(*entry);
    }
    Ok(())
}

/// Logs gaps between segments: a segment that does not start where the previous
/// one ended means lost records, which reads report as data loss.
fn check_continuity(dir: &Path, segments: &[Segment]) {
    for pair in segments.windows(2) {
        if pair[0].end_offset != pair[1].base_offset {
            tracing::error!(dir = %dir.display(), end = pair[0].end_offset, next_base = pair[1].base_offset,
                "segments are not contiguous; reads of the gap report data loss");
        }
    }
}
