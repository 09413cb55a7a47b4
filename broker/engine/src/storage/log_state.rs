//! What readers see of a partition's log: its segments and the visible end.
//! Shared by the partition, which reads it and trims it by retention, and its
//! writer, which appends to the active segment, rolls new ones and moves the
//! visible end.
//!
//! Invariants:
//! - Segments are sorted by base offset and there is always one; the last is
//!   active (appended to), the others are sealed.
//! - The visible end only moves forward, and only once the records below it
//!   are acknowledged; watchers are told after it moved, so a woken reader
//!   finds the records it was woken for. One exception: a failed partition
//!   reopened ([`SharedLog::reset`]) loses an `async` topic's unflushed
//!   tail, as a crash would.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

use super::segment::Segment;
use crate::sync::{read, write};

/// The segments and the visible end.
#[derive(Debug)]
pub struct LogState {
    /// Sorted by base offset; the last one is active (appended to).
    pub segments: Vec<Segment>,
    /// Readers stop before this offset.
    pub visible_end: u64,
}

/// [`LogState`] behind its lock, with a watch of the visible end.
#[derive(Debug)]
pub struct SharedLog {
    // Poisoned: goes on (see `crate::sync`): every update is an assignment
    // made after the bytes it points at were written.
    state: RwLock<LogState>,
    end_tx: watch::Sender<u64>,
}

impl SharedLog {
    pub fn new(segments: Vec<Segment>, visible_end: u64) -> SharedLog {
        SharedLog {
            state: RwLock::new(LogState {
                segments,
                visible_end,
            }),
            end_tx: watch::channel(visible_end).0,
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, LogState> {
        read(&self.state)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, LogState> {
        write(&self.state)
    }

    /// Append time of the newest stored record (0 when empty).
    pub fn last_timestamp_ms(&self) -> i64 {
        self.read()
            .segments
            .iter()
            .map(|s| s.last_timestamp_ms)
            .max()
            .unwrap_or(0)
    }

    /// Makes offsets below `end` readable and tells the watchers.
    pub fn show(&self, end: u64) {
        self.write().visible_end = end;
        self.end_tx.send_replace(end);
    }

    /// Puts a recovered log in place of the current one (a failed partition
    /// reopened); watchers stay subscribed.
    pub fn reset(&self, segments: Vec<Segment>, visible_end: u64) {
        *self.write() = LogState {
            segments,
            visible_end,
        };
        self.end_tx.send_replace(visible_end);
    }

    /// A receiver of the visible end: it changes when new records become
    /// readable, so a subscriber can wait instead of polling.
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        self.end_tx.subscribe()
    }
}
