//! Housekeeping beside the pipeline: the lag log line and, in mark mode,
//! cleanup of rows published before the retention period.
//!
//! Role: [`Housekeeper::start`] runs both on a PostgreSQL session of their
//! own while the relay leads; dropping the [`Housekeeper`] stops them.
//!
//! Invariants:
//! - Housekeeping never holds up a claim. Counting a large backlog for the
//!   lag line takes a noticeable time (about 40 ms per 100,000 rows here),
//!   and a cleanup can wait on a row lock the application holds; both run
//!   on their own session while the pipeline's rounds go on.
//! - A housekeeping failure (its session lost, a statement timed out) is
//!   logged and retried at the next interval on a fresh session. It never
//!   ends the leadership: the pipeline notices a lost database by itself.
//! - Cleanup deletes only rows published before the retention period,
//!   `cleanup_batch_rows` at a time, each statement its own transaction:
//!   what it deleted stays deleted whatever the pipeline does.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::outbox::Mode;
use crate::pipeline::{Finished, Lane, PipelineConfig};
use crate::status::watch_stall;

/// What housekeeping needs to know of the relay's settings.
#[derive(Debug, Clone)]
pub struct HousekeepingConfig {
    /// Where to open the session, with which statements.
    pub pipeline: PipelineConfig,
    /// Interval between lag log lines.
    pub lag_log_interval_ms: u64,
    /// Mark mode: how long published rows stay.
    pub retention_ms: u64,
    /// Mark mode: interval between cleanups.
    pub cleanup_interval_ms: u64,
    /// Mark mode: rows per cleanup statement.
    pub cleanup_batch_rows: u32,
}

/// The running housekeeping task; dropping it stops the task.
#[derive(Debug)]
pub struct Housekeeper {
    task: JoinHandle<()>,
}

impl Housekeeper {
    /// Starts housekeeping: a lag line at once and every interval after,
    /// and cleanup in mark mode. `totals` are the leader's counts since it
    /// took the lead, for the lag line.
    pub fn start(config: HousekeepingConfig, totals: watch::Receiver<Finished>) -> Housekeeper {
        let task = tokio::spawn(run(config, totals));
        Housekeeper { task }
    }
}

impl Drop for Housekeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When each chore is next due.
struct Due {
    lag: Instant,
    /// `None` outside mark mode.
    cleanup: Option<Instant>,
}

async fn run(config: HousekeepingConfig, totals: watch::Receiver<Finished>) {
    let mark = config.pipeline.mode == Mode::Mark;
    let now = Instant::now();
    let mut due = Due {
        lag: now,
        cleanup: mark.then_some(now),
    };
    let mut lane: Option<Lane> = None;
    loop {
        let now = Instant::now();
        let lag_due = now >= due.lag;
        let cleanup_due = due.cleanup.is_some_and(|at| now >= at);
        if lag_due {
            due.lag = now + Duration::from_millis(config.lag_log_interval_ms);
        }
        if cleanup_due {
            due.cleanup = Some(now + Duration::from_millis(config.cleanup_interval_ms));
        }
        if lag_due || cleanup_due {
            let chores = async {
                let lane = match &mut lane {
                    Some(lane) => lane,
                    None => lane.insert(Lane::open(&config.pipeline).await?),
                };
                if lag_due {
                    let totals_now = *totals.borrow();
                    log_lag(&config, lane, totals_now).await?;
                }
                if cleanup_due {
                    cleanup(&config, lane).await?;
                }
                Ok::<(), Error>(())
            };
            if let Err(error) = chores.await {
                tracing::warn!(%error, "housekeeping failed; it runs again at its next interval on a new session");
                lane = None;
            }
        }
        let next = due.cleanup.map_or(due.lag, |cleanup| cleanup.min(due.lag));
        tokio::time::sleep_until(next).await;
    }
}

async fn log_lag(config: &HousekeepingConfig, lane: &Lane, totals: Finished) -> Result<()> {
    let lag = lane
        .outbox
        .lag(&lane.session.client, lane.session.call_timeout_ms);
    let lag = watch_stall(
        &config.pipeline.database,
        lane.backend_pid,
        "lag query",
        lag,
    )
    .await?;
    let Finished {
        published,
        duplicates,
        dead_letters: dead_lettered,
    } = totals;
    if lag.held_rows > 0 || lag.dead_letters > 0 {
        tracing::warn!(
            unpublished_rows = lag.unpublished_rows,
            oldest_unpublished_age_ms = lag.oldest_unpublished_age_ms,
            held_rows = lag.held_rows,
            dead_letters = lag.dead_letters,
            published,
            duplicates,
            dead_lettered,
            "lag: rows wait behind dead letters (see `postbox-relay dead-letters list`)"
        );
    } else {
        tracing::info!(
            unpublished_rows = lag.unpublished_rows,
            oldest_unpublished_age_ms = lag.oldest_unpublished_age_ms,
            published,
            duplicates,
            "lag"
        );
    }
    Ok(())
}

/// Deletes published rows past retention, a small batch per statement,
/// until a batch comes back short.
async fn cleanup(config: &HousekeepingConfig, lane: &Lane) -> Result<()> {
    let (client, timeout_ms) = (&lane.session.client, lane.session.call_timeout_ms);
    let mut deleted = 0;
    loop {
        let batch = lane
            .outbox
            .cleanup(
                client,
                timeout_ms,
                config.retention_ms,
                config.cleanup_batch_rows,
            )
            .await?;
        deleted += batch;
        if batch < u64::from(config.cleanup_batch_rows) {
            break;
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "cleaned up published rows past retention");
    }
    Ok(())
}
