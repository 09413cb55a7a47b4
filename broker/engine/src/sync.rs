//! Locks, and the engine's one rule for a poisoned lock.
//!
//! A lock is poisoned when a thread panicked while holding it. Whether the
//! next holder may go on depends on what the panic could have left half done,
//! so every lock in the engine is one of two kinds:
//!
//! - **Write-path state**, whose half-made update would be trusted later: a
//!   partition's writer state and its active files (`storage::writer`), and
//!   a topic's dedup memory (`dedup`). A poisoned one is a failure: the
//!   partition latches as after a failed write (appends refused until it is
//!   reopened and recovered), and the dedup index refuses keyed appends and
//!   checkpoints with [`crate::Error::Poisoned`]. Each says so where it takes
//!   the lock.
//! - **Everything else**, taken through [`lock`], [`read`] and [`write`]
//!   here, which go on with the guard. They guard data that no panic can
//!   leave half-updated: locks that only serialise (`()`), maps and flags
//!   changed by one insert, remove or store at a time, and what readers see
//!   of the log, whose every update is one assignment made after the bytes
//!   are written (a reader bounded by the visible end never reaches bytes a
//!   panicking writer left). Refusing service over them would turn one
//!   panicked request into an outage and protect nothing.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, going on after a panic of an earlier holder (see the module
/// documentation for which locks may).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks `l`, going on after a panic of an earlier holder.
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks `l`, going on after a panic of an earlier holder.
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
