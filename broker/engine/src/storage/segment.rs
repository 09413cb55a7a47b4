//! Segments: one log file of frames and its sparse index, and the reader that
//! walks frames in a log file.
//!
//! A segment is named by the offset of its first record:
//! `<base_offset:020>.log` and `<base_offset:020>.index`. Frames are laid end to
//! end from byte 0; there is no file header, so a torn tail is just a short or
//! damaged last frame (see `recovery`).
//!
//! Invariants: frames in a segment have dense, increasing offsets starting at
//! the segment's base; only the partition writer appends, readers use positional
//! reads and never look past the position the writer published as visible.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::batch::{crc_holds, parse_header, FrameHeader, HEADER_BYTES};
use super::index::SparseIndex;
use super::io::{read_exact_at, VFile};

/// Bytes a reader fetches ahead in one positional read.
pub const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// Most bytes of a mapped segment the kernel is asked to read in ahead of a
/// reader (`POSIX_FADV_WILLNEED`). Page faults on a mapping read ahead only
/// the device's small window (128 KiB here) and wait for each: a replay of
/// 1 GB from the disk ran at 560–610 MB/s that way, 830–850 MB/s with this
/// (1,010 MB/s from the page cache).
pub const MAPPED_READ_AHEAD_BYTES: u64 = 32 * 1024 * 1024;
/// Reads' worth of bytes asked for ahead, up to `MAPPED_READ_AHEAD_BYTES`: a
/// consumer reading 1 MiB at a time gets all of it, a read of one small
/// record does not pull megabytes from the disk.
pub const MAPPED_READ_AHEAD_READS: u64 = 32;

pub fn log_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

pub fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.index")
}

/// The base offset in a segment file name, and whether it is the log (or index).
pub fn parse_file_name(name: &str) -> Option<(u64, bool)> {
    let (stem, is_log) = if let Some(stem) = name.strip_suffix(".log") {
        (stem, true)
    } else {
        (name.strip_suffix(".index")?, false)
    };
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, is_log))
}

/// A segment as readers see it.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The log mapped into memory once the segment is sealed, taken on the first
    /// read that needs it (`None` inside when mapping is unsupported or failed).
    pub mapped: Arc<OnceLock<Option<Bytes>>>,
    pub base_offset: u64,
    pub log: Arc<dyn VFile>,
    pub log_path: PathBuf,
    pub index: SparseIndex,
    /// One past the last offset stored in this segment.
    pub end_offset: u64,
    /// Bytes of whole frames in the log file.
    pub size_bytes: u64,
    /// Append time of the newest frame (0 when empty).
    pub last_timestamp_ms: i64,
}

impl Segment {
    /// A reader of this segment's frames from `position` to `limit`, for
    /// reads of about `read_bytes`. Sealed segments are read from a memory
    /// map (no copy), with the bytes ahead asked for at once; the active one
    /// with positional reads, since it still grows.
    pub fn reader(&self, position: u64, limit: u64, sealed: bool, read_bytes: u64) -> FrameReader {
        let mapped = if sealed {
            self.mapped
                .get_or_init(|| self.log.map().unwrap_or_else(|error| {
                    tracing::warn!(path = %self.log_path.display(), %error, "mapping a sealed segment failed; reading it with pread");
                    None
                }))
                .clone()
                .filter(|m| m.len() as u64 >= limit)
        } else {
            None
        };
        if mapped.is_some() {
            let ahead = read_bytes
                .saturating_mul(MAPPED_READ_AHEAD_READS)
                .min(MAPPED_READ_AHEAD_BYTES)
                .min(limit.saturating_sub(position));
            // A hint: where it fails, page faults read the bytes instead.
            if let Err(error) = self.log.read_ahead(position, ahead) {
                tracing::debug!(path = %self.log_path.display(), %error, "read-ahead hint failed");
            }
        }
        FrameReader {
            file: self.log.clone(),
            position,
            limit,
            buf: mapped.unwrap_or_default(),
            buf_start: 0,
        }
    }
}

/// What the frame reader found at its position.
#[derive(Debug)]
pub enum Frame {
    /// A whole frame whose CRC holds.
    Whole {
        position: u64,
        header: FrameHeader,
        bytes: Bytes,
    },
    /// The limit was reached exactly: no more frames.
    End,
    /// The bytes at `position` are not a whole, valid frame.
    Bad { position: u64, reason: String },
}

/// Walks frames in a log file from a position up to a limit, reading ahead in
/// chunks and handing out frames that share the chunk's memory.
#[derive(Debug)]
pub struct FrameReader {
    file: Arc<dyn VFile>,
    position: u64,
    limit: u64,
    buf: Bytes,
    buf_start: u64,
}

impl FrameReader {
    pub fn new(file: Arc<dyn VFile>, position: u64, limit: u64) -> Self {
        FrameReader {
            file,
            position,
            limit,
            buf: Bytes::new(),
            buf_start: 0,
        }
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// Continues from another position (after a damaged region).
    pub fn seek(&mut self, position: u64) {
        self.position = position;
    }

    /// Returns bytes [position, position + len) of the file, reading ahead.
    fn fetch(&mut self, position: u64, len: usize) -> io::Result<Bytes> {
        let buf_end = self.buf_start + self.buf.len() as u64;
        if position < self.buf_start || position + len as u64 > buf_end {
            let want = len.max(READ_CHUNK_BYTES) as u64;
            let read_len = want
                .min(self.limit.saturating_sub(position))
                .max(len as u64);
            let mut chunk = vec![0u8; read_len as usize];
            read_exact_at(self.file.as_ref(), &mut chunk, position)?;
            self.buf = Bytes::from(chunk);
            self.buf_start = position;
        }
        let at = (position - self.buf_start) as usize;
        Ok(self.buf.slice(at..at + len))
    }

    /// The next frame, checked: header, length within the limit, CRC.
    pub fn next_frame(&mut self) -> io::Result<Frame> {
        let position = self.position;
        if position == self.limit {
            return Ok(Frame::End);
        }
        let bad = |reason: String| Ok(Frame::Bad { position, reason });
        if position + HEADER_BYTES as u64 > self.limit {
            return bad(format!(
                "{} bytes at the end are shorter than a frame header",
                self.limit - position
            ));
        }
        let head = self.fetch(position, HEADER_BYTES)?;
        let head: &[u8; HEADER_BYTES] = head.as_ref().try_into().map_err(io::Error::other)?;
        let header = match parse_header(head) {
            Ok(header) => header,
            Err(reason) => return bad(reason.to_string()),
        };
        if position + header.frame_bytes as u64 > self.limit {
            return bad(format!(
                "frame of {} bytes runs past the end of the data at byte {}",
                header.frame_bytes, self.limit
            ));
        }
        let bytes = self.fetch(position, header.frame_bytes as usize)?;
        if !crc_holds(&bytes, &header) {
            return bad(format!(
                "CRC mismatch in the frame of offsets {}..{}",
                header.base_offset,
                header.end_offset()
            ));
        }
        self.position += header.frame_bytes as u64;
        Ok(Frame::Whole {
            position,
            header,
            bytes,
        })
    }
}

/// Searches forward from `from` for the first position holding a whole, valid
/// frame whose base offset is plausible after a damaged region that began at
/// `from` with offset `min_offset`. Used only by recovery, so a byte-by-byte
/// search is acceptable; cheap header checks reject almost every position.
pub fn find_next_frame(
    file: &Arc<dyn VFile>,
    from: u64,
    limit: u64,
    min_offset: u64,
) -> io::Result<Option<(u64, FrameHeader)>> {
    let mut reader = FrameReader::new(file.clone(), from, limit);
    let mut position = from;
    while position + HEADER_BYTES as u64 <= limit {
        let head = reader.fetch(position, HEADER_BYTES)?;
        // Quick rejections before anything else: version and reserved bytes.
        if head[8] == super::batch::FORMAT_VERSION && head[9..12] == [0, 0, 0] {
            let head: &[u8; HEADER_BYTES] = head.as_ref().try_into().map_err(io::Error::other)?;
            if let Ok(header) = parse_header(head) {
                // A record takes at least one byte, so offsets cannot run ahead
                // of bytes: that bounds what a plausible base offset is.
                let plausible = header.base_offset >= min_offset
                    && header.base_offset - min_offset <= position - from
                    && position + header.frame_bytes as u64 <= limit;
                if plausible {
                    let mut frame = vec![0u8; header.frame_bytes as usize];
                    read_exact_at(file.as_ref(), &mut frame, position)?;
                    if crc_holds(&frame, &header) {
                        return Ok(Some((position, header)));
                    }
                }
            }
        }
        position += 1;
    }
    Ok(None)
}

/// Paths of a segment's two files.
pub fn segment_paths(dir: &Path, base_offset: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(log_file_name(base_offset)),
        dir.join(index_file_name(base_offset)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_roundtrip() {
        assert_eq!(log_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name(&log_file_name(42)), Some((42, true)));
        assert_eq!(
            parse_file_name(&index_file_name(u64::MAX)),
            Some((u64::MAX, false))
        );
        for bad in [
            "42.log",
            "0000000000000000004x.log",
            "00000000000000000042.tmp",
            "topic.json",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
