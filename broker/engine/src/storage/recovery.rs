//! Recovery: what a segment really holds after a crash.
//!
//! At open, each segment's log is scanned from its last trustworthy index entry
//! to its end, checking every frame (length, header, CRC, offset continuity).
//! The scan tells two kinds of bad bytes apart:
//!
//! - A **torn tail**: bad bytes after which no valid frame proves that the bad
//!   frame had been acknowledged. It is cut off (in the active segment): it held
//!   nothing anyone was promised.
//! - **Damage**: bad bytes followed by a valid frame whose `durable_offset`
//!   (the partition's durable end when that later frame was enqueued) lies past
//!   the bad frame's offset. The bad frame was durable, hence possibly
//!   acknowledged: nothing is truncated, the damage is logged, and reads that
//!   reach it fail with a data-loss error instead of skipping it.
//!
//! Zeros from a bad frame to the end of the file are neither: they are the
//! space a group commit zero-filled ahead of its data (`writer`), cut in
//! any segment, since a frame is never all zeros.
//!
//! Invariant: recovery never truncates a frame that a later valid frame proves
//! durable, and never hands a reader bytes whose CRC did not hold.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::index::{IndexEntry, SparseIndex};
use super::io::VFile;
use super::segment::{find_next_frame, Frame, FrameReader};

/// A damaged region that recovery kept (never truncated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// First byte and first offset that could not be read.
    pub position: u64,
    pub offset: u64,
    /// Where valid frames resume.
    pub resume_position: u64,
    pub resume_offset: u64,
    pub reason: String,
}

/// What a scan of one segment found.
#[derive(Debug, Clone)]
pub struct ScanOutcome {
    /// Index entries for the frames scanned (to append to the kept prefix).
    pub new_entries: Vec<IndexEntry>,
    /// End of the last frame kept: the log's length after a truncation.
    pub end_position: u64,
    pub end_offset: u64,
    pub last_timestamp_ms: i64,
    /// Bytes cut off as a torn tail, with the reason, if any.
    pub torn_tail: Option<(u64, String)>,
    /// Where zero-filled space after the data starts, if the file ends with
    /// some: space a group commit wrote ahead of its frames, never data, cut
    /// in any segment.
    pub zero_tail: Option<u64>,
    pub damage: Vec<Damage>,
}

#[derive(Debug)]
struct ScannedFrame {
    position: u64,
    end_position: u64,
    base_offset: u64,
    end_offset: u64,
    timestamp_ms: i64,
    durable_offset: u64,
}

#[derive(Debug)]
struct Hole {
    position: u64,
    offset: u64,
    reason: String,
    /// Index into the frame list of the first frame after the hole.
    next_frame: usize,
}

/// Where a scan starts and how it indexes.
#[derive(Debug, Clone, Copy)]
pub struct ScanStart {
    pub position: u64,
    pub offset: u64,
    pub timestamp_ms: i64,
    /// Bytes since the last index entry at `position` (to keep the spacing).
    pub index_interval_bytes: u32,
    /// Whether an index entry exists for the frame at `position`.
    pub indexed: bool,
}

/// Scans `file` from `start` to its end. Only the active segment may lose a
/// torn tail; in a sealed segment every bad region is damage. Zeros from a bad
/// frame to the end of the file are neither: no frame can follow them, so the
/// scan ends there without searching them for one.
pub fn scan(
    file: &Arc<dyn VFile>,
    path: &Path,
    start: ScanStart,
    active: bool,
) -> io::Result<ScanOutcome> {
    let file_len = file.size_bytes()?;
    let mut reader = FrameReader::new(file.clone(), start.position, file_len);
    let mut frames: Vec<ScannedFrame> = Vec::new();
    let mut holes: Vec<Hole> = Vec::new();
    let mut expected = start.offset;
    let mut zero_tail = None;
    loop {
        let (position, reason) = match reader.next_frame()? {
            Frame::End => break,
            Frame::Whole {
                position, header, ..
            } if header.base_offset == expected => {
                frames.push(ScannedFrame {
                    position,
                    end_position: position + header.frame_bytes as u64,
                    base_offset: header.base_offset,
                    end_offset: header.end_offset(),
                    timestamp_ms: header.timestamp_ms,
                    durable_offset: header.durable_offset,
                });
                expected = header.end_offset();
                continue;
            }
            Frame::Whole {
                position, header, ..
            } => (
                position,
                format!(
                    "frame has base offset {}, expected {expected}",
                    header.base_offset
                ),
            ),
            Frame::Bad { position, reason } => (position, reason),
        };
        if zero_filled(file, position, file_len)? {
            zero_tail = Some(position);
            break;
        }
        let hole = Hole {
            position,
            offset: expected,
            reason,
            next_frame: frames.len(),
        };
        holes.push(hole);
        match find_next_frame(file, position + 1, file_len, expected)? {
            Some((next, header)) => {
                reader.seek(next);
                expected = header.base_offset;
            }
            None => break,
        }
    }
    Ok(ScanOutcome {
        zero_tail,
        ..decide(path, start, active, frames, holes)
    })
}

/// Keeps every hole that a later frame proves durable and cuts the log at the
/// first one that nothing proves (or at the end of the last frame).
fn decide(
    path: &Path,
    start: ScanStart,
    active: bool,
    frames: Vec<ScannedFrame>,
    holes: Vec<Hole>,
) -> ScanOutcome {
    // suffix_durable[i] = the largest durable_offset among frames i.. .
    let mut suffix_durable = vec![0u64; frames.len() + 1];
    for i in (0..frames.len()).rev() {
        suffix_durable[i] = suffix_durable[i + 1].max(frames[i].durable_offset);
    }
    let mut kept_frames = frames.len();
    let mut torn_tail = None;
    let mut damage = Vec::new();
    for hole in &holes {
        let proven = suffix_durable[hole.next_frame] > hole.offset;
        if active && !proven {
            kept_frames = hole.next_frame;
            torn_tail = Some((hole.position, hole.reason.clone()));
            break;
        }
        let resume = frames.get(hole.next_frame);
        let resume_position = resume.map_or(hole.position, |f| f.position);
        let resume_offset = resume.map_or(hole.offset, |f| f.base_offset);
        tracing::error!(
            path = %path.display(), position = hole.position, offset = hole.offset,
            resume_position, reason = %hole.reason,
            "damaged frame in the middle of a segment; it is kept and reads of it report data loss"
        );
        damage.push(Damage {
            position: hole.position,
            offset: hole.offset,
            resume_position,
            resume_offset,
            reason: hole.reason.clone(),
        });
    }
    let kept = &frames[..kept_frames];
    let mut new_entries = Vec::new();
    let mut since_entry: u64 = if start.indexed { 0 } else { u64::MAX };
    let mut previous_end = start.position;
    for frame in kept {
        // A frame right after damage is always indexed, so that a read past the
        // damage can seek straight to it.
        let after_gap = frame.position != previous_end;
        since_entry = since_entry.saturating_add(frame.position.saturating_sub(previous_end));
        if after_gap || since_entry >= start.index_interval_bytes as u64 {
            if !(start.indexed && frame.position == start.position) {
                new_entries.push(IndexEntry {
                    offset: frame.base_offset,
                    position: frame.position as u32,
                    timestamp_ms: frame.timestamp_ms,
                });
            }
            since_entry = 0;
        }
        since_entry += frame.end_position - frame.position;
        previous_end = frame.end_position;
    }
    let last = kept.last();
    let end_position = match (&torn_tail, last) {
        (Some(_), Some(f)) => f.end_position,
        (Some((position, _)), None) => *position,
        (None, Some(f)) => f.end_position,
        (None, None) => start.position,
    };
    ScanOutcome {
        new_entries,
        end_position,
        end_offset: last.map_or(start.offset, |f| f.end_offset),
        last_timestamp_ms: last.map_or(start.timestamp_ms, |f| f.timestamp_ms),
        torn_tail,
        zero_tail: None,
        damage,
    }
}

/// How many index entries recovery may trust, from the front.
///
/// Trailing entries whose frame does not verify are dropped (an index written
/// ahead of a log that lost its tail). In the active segment a verified frame is
/// not enough: bytes before it may be an unsynced write that a power loss
/// trashed while a later one survived. So only entries below the `durable_offset`
/// of the last verified frame are kept (their frames were synced before that
/// frame was enqueued), and the scan checks everything after them.
pub fn trusted_prefix(
    file: &Arc<dyn VFile>,
    index: &SparseIndex,
    active: bool,
) -> io::Result<usize> {
    let len = file.size_bytes()?;
    let mut keep = index.len();
    while keep > 0 {
        let entry = index.entries()[keep - 1];
        let mut reader = FrameReader::new(file.clone(), entry.position as u64, len);
        if let Frame::Whole { header, .. } = reader.next_frame()? {
            if header.base_offset == entry.offset {
                if active {
                    let durable = header.durable_offset;
                    keep = index.entries()[..keep].partition_point(|e| e.offset < durable);
                }
                break;
            }
        }
        keep -= 1;
    }
    Ok(keep)
}

/// Whether bytes `from..to` of `file` are all zero: the space a group commit
/// zero-filled ahead of its data, rather than a torn write.
fn zero_filled(file: &Arc<dyn VFile>, from: u64, to: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; ZERO_CHECK_CHUNK_BYTES.min(to.saturating_sub(from)) as usize];
    let mut position = from;
    while position < to {
        let n = buf.len().min((to - position) as usize);
        let read = file.read_at(&mut buf[..n], position)?;
        if read == 0 {
            return Ok(true);
        }
        if buf[..read].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        position += read as u64;
    }
    Ok(true)
}

/// Bytes read at a time by `zero_filled`.
const ZERO_CHECK_CHUNK_BYTES: u64 = 64 * 1024;

/// Convenience for an empty index: where a scan of the whole segment starts.
pub fn start_of_segment(base_offset: u64, index_interval_bytes: u32) -> ScanStart {
    ScanStart {
        position: 0,
        offset: base_offset,
        timestamp_ms: 0,
        index_interval_bytes,
        indexed: false,
    }
}
