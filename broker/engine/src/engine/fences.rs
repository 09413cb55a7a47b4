//! Fenced producers: each producer's highest epoch, and the lock that
//! serialises its publishes, so that a producer that lost its leadership
//! without noticing (an outbox relay's old leader) cannot publish after a
//! newer epoch did.
//!
//! Invariants:
//! - A higher epoch is synced to the metadata store before anything is
//!   appended under it, so an older one stays refused across crashes.
//! - A producer's publishes and epoch advances hold its slot's lock: once an
//!   advance answers, no publish of an older epoch is in flight or can start.
//! - A refused request leaves the epoch as it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::limits::FENCED_PRODUCERS_MAX;
use crate::meta::MetaStore;
use crate::sync::lock;

/// A fenced publisher's identity and epoch; see [`Engine::publish_fenced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    pub producer: &'a str,
    pub epoch: u64,
}

/// Every fenced producer's slot: its cached highest epoch (loaded from the
/// metadata store on first use) behind the lock that serialises it.
#[derive(Debug)]
pub(super) struct Fences {
    meta: Arc<dyn MetaStore>,
    slots: Mutex<HashMap<String, Arc<Mutex<Option<u64>>>>>,
}

impl Fences {
    pub(super) fn new(meta: Arc<dyn MetaStore>) -> Self {
        Fences {
            meta,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The lock and cached epoch of a fenced producer.
    pub(super) fn slot(&self, producer: &str) -> Result<Arc<Mutex<Option<u64>>>> {
        let mut fences = lock(&self.slots);
        if let Some(slot) = fences.get(producer) {
            return Ok(slot.clone());
        }
        if fences.len() >= FENCED_PRODUCERS_MAX {
            return Err(Error::limit(
                "fenced producers",
                FENCED_PRODUCERS_MAX as u64,
                fences.len() as u64 + 1,
            ));
        }
        let slot = Arc::new(Mutex::new(None));
        fences.insert(producer.to_string(), slot.clone());
        Ok(slot)
    }

    /// Checks `fence` against the producer's highest epoch and raises it
    /// (durably) when `fence` is higher. The returned guard serialises the
    /// producer: hold it while appending under the epoch.
    pub(super) fn enter<'s>(
        &self,
        slot: &'s Mutex<Option<u64>>,
        fence: Fence<'_>,
    ) -> Result<MutexGuard<'s, Option<u64>>> {
        let mut highest = lock(slot);
        let current = match *highest {
            Some(epoch) => epoch,
            None => self.meta.fence_epoch(fence.producer)?.unwrap_or(0),
        };
        *highest = Some(current);
        if fence.epoch < current {
            return Err(Error::Fenced {
                producer: fence.producer.to_string(),
                epoch: fence.epoch,
                current,
            });
        }
        if fence.epoch > current {
            self.meta.set_fence_epoch(fence.producer, fence.epoch)?;
            *highest = Some(fence.epoch);
            tracing::info!(
                producer = fence.producer,
                epoch = fence.epoch,
                "fenced producer has a new epoch"
            );
        }
        Ok(highest)
    }
}
