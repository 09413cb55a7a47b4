//! Housekeeping beside the pipeline: the lag log line and, in mark mode,
//! cleanup of rows published before the retention period.
//!
//! Role: [`Housekeeper::start`] runs both on a PostgreSQL session of their
//! own while the relay leads; dropping the [`Housekeeper`] stops them.
//!
//! Invariants:
//! - Housekeeping never holds up a claim. Counting a large backlog for the
//!   lag line takes time (about 7 ms per 100,000 rows here, growing with it),
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
use tokio::time::{interval, MissedTickBehavior};

use crate::error::Result;
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

/// One of the housekeeping chores.
#[derive(Debug, Clone, Copy)]
enum Chore {
    Lag,
    Cleanup,
}

async fn run(config: HousekeepingConfig, totals: watch::Receiver<Finished>) {
    let mark = config.pipeline.mode == Mode::Mark;
    // Each interval's first tick is at once; a chore that runs late delays
    // its next one rather than bunching them up.
    let every = |ms: u64| {
        let mut ticks = interval(Duration::from_millis(ms));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    };
    let (mut lag_ticks, mut cleanup_ticks) = (
        every(config.lag_log_interval_ms),
        every(config.cleanup_interval_ms),
    );
    let mut lane: Option<Lane> = None;
    loop {
        let chore = tokio::select! {
            _ = lag_ticks.tick() => Chore::Lag,
            _ = cleanup_ticks.tick(), if mark => Chore::Cleanup,
        };
        let done = async {
            let lane = match &mut lane {
                Some(lane) => lane,
                None => lane.insert(Lane::open(&config.pipeline).await?),
            };
            match chore {
                Chore::Lag => {
                    let totals_now = *totals.borrow();
                    log_lag(&config, lane, totals_now).await
                }
                Chore::Cleanup => cleanup(&config, lane).await,
            }
        };
        if let Err(error) = done.await {
            tracing::warn!(%error, ?chore, "housekeeping failed; it runs again at its next interval on a new session");
            lane = None;
        }
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
