//! Reopening failed partitions without a restart. A partition whose write or
//! fsync failed (a full disk, an I/O error, a panicking writer) refuses
//! appends; the maintenance thread probes it and reopens it
//! ([`Topic::reopen_partition`]) with a pause that doubles from
//! `reopen_backoff_min_ms` to `reopen_backoff_max_ms` after each failed
//! attempt, so that a disk whose space is freed, or an error that passes,
//! needs nothing from the operator.
//!
//! Every attempt is logged; as the pause doubles, the log falls in rate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::EngineConfig;
use crate::topic::Topic;

/// One failed partition's attempts.
#[derive(Debug)]
struct Attempts {
    next: Instant,
    pause: Duration,
    count: u64,
}

/// The failed partitions and when each is tried next.
#[derive(Debug)]
pub(super) struct Reopens {
    pause_min: Duration,
    pause_max: Duration,
    /// By topic name and partition.
    failed: BTreeMap<(String, u32), Attempts>,
}

impl Reopens {
    pub(super) fn new(config: &EngineConfig) -> Reopens {
        Reopens {
            pause_min: Duration::from_millis(config.reopen_backoff_min_ms),
            pause_max: Duration::from_millis(config.reopen_backoff_max_ms),
            failed: BTreeMap::new(),
        }
    }

    /// Probes and reopens the failed partitions of `topic` whose pause is over.
    pub(super) fn run(&mut self, topic: &Topic) {
        for partition in topic.partitions() {
            let key = (topic.name().to_string(), partition.id());
            let Some(failure) = partition.failure() else {
                self.failed.remove(&key);
                continue;
            };
            let now = Instant::now();
            let pause_min = self.pause_min;
            let attempts = self.failed.entry(key).or_insert_with(|| {
                tracing::warn!(topic = topic.name(), partition = partition.id(), cause = %failure.cause,
                    no_space = failure.no_space, retry_in_ms = pause_min.as_millis() as u64,
                    "partition failed; it is probed and reopened once the disk takes writes again");
                Attempts {
                    next: now + pause_min,
                    pause: pause_min,
                    count: 0,
                }
            });
            if now < attempts.next {
                continue;
            }
            attempts.count += 1;
            match topic.reopen_partition(partition.id()) {
                Ok(_) => {
                    self.failed
                        .remove(&(topic.name().to_string(), partition.id()));
                }
                Err(error) => {
                    attempts.pause = (attempts.pause * 2).min(self.pause_max);
                    attempts.next = now + attempts.pause;
                    tracing::warn!(topic = topic.name(), partition = partition.id(), %error,
                        attempts = attempts.count, retry_in_ms = attempts.pause.as_millis() as u64,
                        "a failed partition is not reopened yet");
                }
            }
        }
    }

    /// Forgets partitions of topics no longer open.
    pub(super) fn forget_deleted(&mut self, open: &[Arc<Topic>]) {
        self.failed
            .retain(|(name, _), _| open.iter().any(|t| t.name() == name));
    }
}
