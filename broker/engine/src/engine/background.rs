//! The engine's two background threads. Maintenance flushes `async`
//! topics on their interval, applies retention and reopens failed
//! partitions (see `reopen`); checkpoints moves dedup keys into the dedup
//! store, on a thread of its own so that a checkpoint (a sort, a run file
//! written and fsynced, perhaps a merge) delays no async flush. Failures are
//! logged, never fatal: the next tick tries again. A task that keeps failing
//! logs at a falling rate (its 1st, 2nd, 4th, 8th... failure in a row), so a
//! full disk does not fill the log as well.
//!
//! Both hold a topic's `live` guard while they work on it, so a deletion
//! waits for them and they never touch the files of a topic created again
//! under the same name.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::reopen::Reopens;
use super::Inner;
use crate::config::Durability;
use crate::limits::DEDUP_MEMORY_KEYS_MAX;

/// Failures in a row of each background task, by name, so that one failing
/// for the same cause every tick logs at a falling rate.
#[derive(Debug, Default)]
struct FailuresInARow(BTreeMap<String, u64>);

impl FailuresInARow {
    /// Counts a failure of `task`; the count when it is to be logged (the
    /// 1st, 2nd, 4th, 8th... in a row).
    fn failed(&mut self, task: &str) -> Option<u64> {
        let count = self.0.entry(task.to_string()).or_default();
        *count += 1;
        count.is_power_of_two().then_some(*count)
    }

    /// Counts a success of `task`; the failures it ends, if any.
    fn succeeded(&mut self, task: &str) -> Option<u64> {
        self.0.remove(task)
    }
}

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
        let mut failures = FailuresInARow::default();
        let mut reopens = Reopens::new(&self.config);
        while self.tick(tick) {
            for topic in self.all_topics() {
                // Deletion waits for this guard, so nothing here touches the
                // files of a topic created again under the same name.
                let Ok(_live) = topic.live() else { continue };
                reopens.run(&topic);
                let config = topic.config();
                let memory_full = topic.dedup().memory_keys() >= DEDUP_MEMORY_KEYS_MAX;
                let flush_due = last_flush
                    .get(topic.name())
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(config.fsync_interval_ms));
                if config.durability == Durability::Async && (flush_due || memory_full) {
                    // A failed partition has nothing to flush until it is reopened.
                    for partition in topic.partitions().iter().filter(|p| p.failure().is_none()) {
                        if let Err(error) = partition.flush() {
                            tracing::error!(topic = topic.name(), partition = partition.id(), %error, "async flush failed");
                        }
                    }
                    last_flush.insert(topic.name().to_string(), Instant::now());
                }
            }
            reopens.forget_deleted(&self.all_topics());
            if last_retention.elapsed() >= retention_every {
                match self.enforce_retention(self.config.clock.now_ms()) {
                    Ok(_) => log_recovery(&mut failures, "retention"),
                    Err(error) => {
                        if let Some(count) = failures.failed("retention") {
                            tracing::error!(%error, failures_in_a_row = count, "retention failed");
                        }
                    }
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
        let mut failures = FailuresInARow::default();
        while self.tick(tick) {
            let checkpoint_due = last_checkpoint.elapsed() >= checkpoint_every;
            for topic in self.all_topics() {
                let Ok(_live) = topic.live() else { continue };
                let keys = topic.dedup().memory_keys();
                if keys >= DEDUP_MEMORY_KEYS_MAX || (checkpoint_due && keys > 0) {
                    match topic.dedup().checkpoint(topic.partitions()) {
                        Ok(()) => log_recovery(&mut failures, topic.name()),
                        Err(error) => {
                            if let Some(count) = failures.failed(topic.name()) {
                                tracing::error!(topic = topic.name(), %error, failures_in_a_row = count,
                                    "dedup checkpoint failed; the keys stay in memory and the log keeps them");
                            }
                        }
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

/// Logs that `task` works again after failing.
fn log_recovery(failures: &mut FailuresInARow, task: &str) {
    if let Some(count) = failures.succeeded(task) {
        tracing::info!(task, failures_in_a_row = count, "works again");
    }
}

#[cfg(test)]
mod tests {
    use super::FailuresInARow;

    #[test]
    fn a_task_failing_in_a_row_logs_at_a_falling_rate_and_once_when_it_works() {
        let mut failures = FailuresInARow::default();
        let logged: Vec<u64> = (0..100).filter_map(|_| failures.failed("t")).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(failures.succeeded("t"), Some(100));
        assert_eq!(failures.succeeded("t"), None);
        assert_eq!(failures.failed("t"), Some(1), "a new run of failures");
    }
}
