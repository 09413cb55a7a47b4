//! The engine's two background threads. Maintenance flushes `async`
//! topics on their interval and applies retention; checkpoints moves dedup
//! keys into the dedup store, on a thread of its own so that a checkpoint
//! (a sort, a run file written and fsynced, perhaps a merge) delays no async
//! flush. Failures are logged, never fatal: the next tick tries again.
//!
//! Both hold a topic's `live` guard while they work on it, so a deletion
//! waits for them and they never touch the files of a topic created again
//! under the same name.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Inner;
use crate::config::Durability;
use crate::limits::DEDUP_MEMORY_KEYS_MAX;

impl Inner {
    /// Runs until the engine stops: flushes async partitions on their interval
    /// (early when a topic's dedup memory is full, since it can only drain
    /// past durable records) and applies retention on its interval. Failures
    /// are logged, not fatal.
    pub(super) fn maintenance_loop(&self) {
        let tick = self.config.maintenance_interval();
        let retention_every = Duration::from_millis(self.config.retention_check_interval_ms);
        let mut last_flush: BTreeMap<String, Instant> = BTreeMap::new();
        let mut last_retention = Instant::now();
        while self.tick(tick) {
            for topic in self.all_topics() {
                // Deletion waits for this guard, so nothing here touches the
                // files of a topic created again under the same name.
                let Ok(_live) = topic.live() else { continue };
                let config = topic.config();
                let memory_full = topic.dedup().memory_keys() >= DEDUP_MEMORY_KEYS_MAX;
                let flush_due = last_flush
                    .get(topic.name())
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(config.fsync_interval_ms));
                if config.durability == Durability::Async && (flush_due || memory_full) {
                    for partition in topic.partitions() {
                        if let Err(error) = partition.flush() {
                            tracing::error!(topic = topic.name(), %error, "async flush failed");
                        }
                    }
                    last_flush.insert(topic.name().to_string(), Instant::now());
                }
            }
            if last_retention.elapsed() >= retention_every {
                if let Err(error) = self.enforce_retention(self.config.clock.now_ms()) {
                    tracing::error!(%error, "retention failed");
                }
                last_retention = Instant::now();
            }
        }
    }

    /// Runs until the engine stops: checkpoints dedup keys when many are in
    /// memory or on an interval. A thread of its own, so that a checkpoint
    /// (a sort, a run file written and fsynced, perhaps a merge) delays no
    /// async flush.
    pub(super) fn checkpoint_loop(&self) {
        let tick = self.config.maintenance_interval();
        let checkpoint_every = Duration::from_millis(self.config.dedup_checkpoint_interval_ms);
        let mut last_checkpoint = Instant::now();
        while self.tick(tick) {
            let checkpoint_due = last_checkpoint.elapsed() >= checkpoint_every;
            for topic in self.all_topics() {
                let Ok(_live) = topic.live() else { continue };
                let keys = topic.dedup().memory_keys();
                if keys >= DEDUP_MEMORY_KEYS_MAX || (checkpoint_due && keys > 0) {
                    if let Err(error) = topic.dedup().checkpoint(topic.partitions()) {
                        tracing::error!(topic = topic.name(), %error, "dedup checkpoint failed");
                    }
                }
            }
            if checkpoint_due {
                last_checkpoint = Instant::now();
            }
        }
    }

    /// Waits one tick (an unpark cuts it short); false once the engine stops.
    fn tick(&self, tick: Duration) -> bool {
        std::thread::park_timeout(tick);
        !self.stopping.load(Ordering::SeqCst)
    }
}
