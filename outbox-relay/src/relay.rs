//! The running relay: stand by, lead, claim, publish, finish.
//!
//! Role: [`run`] keeps one PostgreSQL session and, while it leads the table,
//! a [`Pipeline`] of batches in flight (on more sessions), one fenced
//! publisher and a [`Housekeeper`] (lag line, cleanup) on a session of its
//! own. It stands by until it takes the table's leadership, announces
//! its epoch to the broker, then runs the pipeline's rounds: claim a batch in
//! a transaction, publish it, and in the same transaction delete (or mark)
//! the acknowledged rows and dead-letter the refused ones, then commit.
//!
//! Invariants:
//! - Nothing is deleted, marked or dead-lettered before the broker answered
//!   for it; a batch whose publish failed is rolled back whole, with every
//!   batch claimed after it, and their rows are claimed again (and then
//!   reported as duplicates for those the broker had appended).
//! - A fencing refusal ends the leadership at once: the transaction rolls
//!   back, and the relay goes back to standing by on a new session.
//! - A lost or timed-out PostgreSQL session ends the leadership too (its
//!   lock is gone with it); the relay reconnects with backoff.
//! - Failed publishes back off with full jitter, and
//!   [`CircuitBreaker`] stops attempts while the broker is down; the claim
//!   waits too, so nothing is claimed that cannot be published. The leader
//!   waits only with nothing in flight.
//! - Shutdown (the `shutdown` channel turning true) is seen between rounds:
//!   published batches are finished and claimed ones rolled back, never left
//!   half-done; then the lock is released so a standby takes over at once.

use std::time::Duration;

use postbox_client::RetryPolicy;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::breaker::{CircuitBreaker, Transition};
use crate::config::DatabaseConfig;
use crate::error::{Error, Result};
use crate::housekeeping::{Housekeeper, HousekeepingConfig};
use crate::layout::Layout;
use crate::leader::{Leadership, Lease};
use crate::outbox::{Mode, Outbox};
use crate::pacer::Pacer;
use crate::pipeline::{
    Finished, Pipeline, PipelineConfig, BATCHES_IN_FLIGHT_MAX, MAX_BATCHES_IN_FLIGHT_DEFAULT,
};
use crate::publish::{Failure, Publisher};
use crate::session::Session;
use crate::table::TableName;

/// A session of the leader's may sit idle in a transaction this many
/// rounds' worth of time (see [`RelayConfig::idle_in_transaction_timeout_ms`]).
pub const IDLE_IN_TRANSACTION_ROUNDS: u64 = 3;
/// Default most rows per claim.
pub const MAX_BATCH_ROWS_DEFAULT: u32 = 1_000;
/// Most rows per claim: the broker's records-per-batch limit.
pub const BATCH_ROWS_MAX: u32 = postbox_client::BATCH_RECORDS_MAX as u32;
/// Default most payload bytes per claim.
pub const MAX_BATCH_BYTES_DEFAULT: u64 = 4 * 1024 * 1024;
/// Most payload bytes per claim.
pub const BATCH_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Default wait between attempts to take the lead while standing by.
pub const STANDBY_POLL_MS_DEFAULT: u64 = 1_000;
/// Default interval between checks that the lease is still held.
pub const LEASE_CHECK_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Default limit on one broker call.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default `statement_timeout` of the relay's session.
pub const STATEMENT_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default first backoff ceiling after a failure.
pub const BACKOFF_BASE_MS_DEFAULT: u64 = 100;
/// Default largest backoff ceiling.
pub const BACKOFF_CAP_MS_DEFAULT: u64 = 10_000;
/// Default time published rows stay in mark mode.
pub const RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3_600 * 1_000;
/// Default interval between cleanups in mark mode.
pub const CLEANUP_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// Default rows per cleanup statement: small, so that each is short.
pub const CLEANUP_BATCH_ROWS_DEFAULT: u32 = 1_000;
/// Default interval between lag log lines.
pub const LAG_LOG_INTERVAL_MS_DEFAULT: u64 = 10_000;

/// Everything the running relay needs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The database with the outbox table.
    pub database: DatabaseConfig,
    /// The broker's address (`host:port` or `http://host:port`).
    pub broker: String,
    /// The outbox table.
    pub table: TableName,
    /// Its columns.
    pub layout: Layout,
    /// Delete or mark published rows.
    pub mode: Mode,
    /// This relay's name in the leadership table.
    pub holder: String,
    /// Most rows per claim, 1 to [`BATCH_ROWS_MAX`].
    pub max_batch_rows: u32,
    /// Most payload bytes per claim, 1 to [`BATCH_BYTES_MAX`].
    pub max_batch_bytes: u64,
    /// Batches claimed, published and committed at once, 1 to
    /// [`BATCHES_IN_FLIGHT_MAX`]: one PostgreSQL session each.
    pub max_batches_in_flight: u32,
    /// First wait after an empty claim (see [`Pacer`]).
    pub poll_min_ms: u64,
    /// Longest wait between claims, at least 1.
    pub poll_max_ms: u64,
    /// Wait between attempts to take the lead.
    pub standby_poll_ms: u64,
    /// Interval between lease checks.
    pub lease_check_interval_ms: u64,
    /// Limit on one broker call.
    pub request_timeout_ms: u64,
    /// `statement_timeout` of the session.
    pub statement_timeout_ms: u64,
    /// First backoff ceiling.
    pub backoff_base_ms: u64,
    /// Largest backoff ceiling.
    pub backoff_cap_ms: u64,
    /// Consecutive failed publishes that open the circuit.
    pub circuit_failure_threshold: u32,
    /// How long the circuit stays open before a probe.
    pub circuit_open_ms: u64,
    /// Mark mode: how long published rows stay.
    pub retention_ms: u64,
    /// Mark mode: interval between cleanups.
    pub cleanup_interval_ms: u64,
    /// Mark mode: rows per cleanup statement.
    pub cleanup_batch_rows: u32,
    /// Interval between lag log lines.
    pub lag_log_interval_ms: u64,
}

impl RelayConfig {
    /// A configuration with every default.
    pub fn new(database: DatabaseConfig, broker: impl Into<String>) -> RelayConfig {
        RelayConfig {
            database,
            broker: broker.into(),
            table: TableName::default(),
            layout: Layout::postbox(),
            mode: Mode::Delete,
            holder: default_holder(),
            max_batch_rows: MAX_BATCH_ROWS_DEFAULT,
            max_batch_bytes: MAX_BATCH_BYTES_DEFAULT,
            max_batches_in_flight: MAX_BATCHES_IN_FLIGHT_DEFAULT,
            poll_min_ms: crate::pacer::POLL_MIN_MS_DEFAULT,
            poll_max_ms: crate::pacer::POLL_MAX_MS_DEFAULT,
            standby_poll_ms: STANDBY_POLL_MS_DEFAULT,
            lease_check_interval_ms: LEASE_CHECK_INTERVAL_MS_DEFAULT,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            statement_timeout_ms: STATEMENT_TIMEOUT_MS_DEFAULT,
            backoff_base_ms: BACKOFF_BASE_MS_DEFAULT,
            backoff_cap_ms: BACKOFF_CAP_MS_DEFAULT,
            circuit_failure_threshold: crate::breaker::CIRCUIT_FAILURE_THRESHOLD_DEFAULT,
            circuit_open_ms: crate::breaker::CIRCUIT_OPEN_MS_DEFAULT,
            retention_ms: RETENTION_MS_DEFAULT,
            cleanup_interval_ms: CLEANUP_INTERVAL_MS_DEFAULT,
            cleanup_batch_rows: CLEANUP_BATCH_ROWS_DEFAULT,
            lag_log_interval_ms: LAG_LOG_INTERVAL_MS_DEFAULT,
        }
    }

    /// Checks every setting against its range, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let range = |name: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(Error::InvalidSetting {
                    name: name.to_owned(),
                    reason: format!("{value} is outside {min} to {max}"),
                })
            }
        };
        range(
            "max_batch_rows",
            self.max_batch_rows.into(),
            1,
            BATCH_ROWS_MAX.into(),
        )?;
        range("max_batch_bytes", self.max_batch_bytes, 1, BATCH_BYTES_MAX)?;
        range(
            "max_batches_in_flight",
            self.max_batches_in_flight.into(),
            1,
            BATCHES_IN_FLIGHT_MAX.into(),
        )?;
        range("poll_max_ms", self.poll_max_ms, 1, 3_600_000)?;
        range("poll_min_ms", self.poll_min_ms, 0, self.poll_max_ms)?;
        range("standby_poll_ms", self.standby_poll_ms, 1, 3_600_000)?;
        range(
            "lease_check_interval_ms",
            self.lease_check_interval_ms,
            1,
            3_600_000,
        )?;
        range("request_timeout_ms", self.request_timeout_ms, 1, 3_600_000)?;
        range(
            "statement_timeout_ms",
            self.statement_timeout_ms,
            1,
            3_600_000,
        )?;
        range("backoff_cap_ms", self.backoff_cap_ms, 1, 3_600_000)?;
        range(
            "backoff_base_ms",
            self.backoff_base_ms,
            1,
            self.backoff_cap_ms,
        )?;
        range(
            "circuit_failure_threshold",
            self.circuit_failure_threshold.into(),
            1,
            1_000_000,
        )?;
        range("circuit_open_ms", self.circuit_open_ms, 1, 3_600_000)?;
        range("cleanup_interval_ms", self.cleanup_interval_ms, 1, u64::MAX)?;
        range(
            "cleanup_batch_rows",
            self.cleanup_batch_rows.into(),
            1,
            1_000_000,
        )?;
        range("lag_log_interval_ms", self.lag_log_interval_ms, 1, u64::MAX)?;
        Leadership::new(self.table.clone(), self.holder.clone()).map(drop)
    }

    fn pipeline(&self) -> PipelineConfig {
        PipelineConfig {
            database: self.database.clone(),
            table: self.table.clone(),
            layout: self.layout.clone(),
            mode: self.mode,
            statement_timeout_ms: self.statement_timeout_ms,
            idle_in_transaction_timeout_ms: self.idle_in_transaction_timeout_ms(),
            max_batches_in_flight: self.max_batches_in_flight,
            max_batch_rows: self.max_batch_rows,
            max_batch_bytes: self.max_batch_bytes,
        }
    }

    /// How long a session of the leader may sit in a transaction between
    /// statements before the server ends it: a batch waits in its claim's
    /// transaction for at most two rounds, each bounded by a broker call or
    /// a statement. Only a hung relay reaches it; its claims then end.
    pub fn idle_in_transaction_timeout_ms(&self) -> u64 {
        self.request_timeout_ms
            .max(self.statement_timeout_ms)
            .saturating_add(crate::session::CLIENT_TIMEOUT_MARGIN_MS)
            .saturating_mul(IDLE_IN_TRANSACTION_ROUNDS)
    }

    fn housekeeping(&self) -> HousekeepingConfig {
        HousekeepingConfig {
            pipeline: self.pipeline(),
            lag_log_interval_ms: self.lag_log_interval_ms,
            retention_ms: self.retention_ms,
            cleanup_interval_ms: self.cleanup_interval_ms,
            cleanup_batch_rows: self.cleanup_batch_rows,
        }
    }

    fn backoff(&self) -> RetryPolicy {
        RetryPolicy {
            base_ms: self.backoff_base_ms,
            cap_ms: self.backoff_cap_ms,
            ..RetryPolicy::default()
        }
    }
}

/// `hostname:pid`, as the leadership table shows who leads.
pub fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "relay".to_owned());
    format!("{host}:{}", std::process::id())
}

/// Runs the relay until `shutdown` turns true (then `Ok`) or a fatal error
/// ([`Error::is_fatal`]). Every other failure is logged and retried.
pub async fn run(config: RelayConfig, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    config.validate()?;
    tracing::info!(
        table = %config.table,
        layout = %config.layout.kind,
        mode = %config.mode,
        holder = %config.holder,
        "{}",
        config.layout.order_note()
    );
    let mut retry = 0;
    let mut rng = SmallRng::from_entropy();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match serve_session(&config, &mut shutdown).await {
            Ok(Ended::Shutdown) => return Ok(()),
            Ok(Ended::Deposed) => retry = 0,
            Err(error) if error.is_fatal() => return Err(error),
            Err(error) => {
                let wait_ms = config.backoff().backoff_ms(retry, &mut rng);
                retry = retry.saturating_add(1);
                tracing::warn!(error = %error, retry_in_ms = wait_ms, "relay session failed");
                if sleep_or_shutdown(Duration::from_millis(wait_ms), &mut shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

/// How a session ended without an error.
enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The broker fenced this leader, or its lease was lost: stand by again.
    Deposed,
}

/// One PostgreSQL session: stand by until leading, then lead.
async fn serve_session(
    config: &RelayConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Ended> {
    let session = Session::open(
        &config.database,
        config.statement_timeout_ms,
        config.idle_in_transaction_timeout_ms(),
        true,
    )
    .await?;
    let timeout_ms = session.call_timeout_ms;
    let outbox = Outbox::prepare(
        &session.client,
        timeout_ms,
        &config.table,
        &config.layout,
        config.mode,
        config.max_batch_rows,
    )
    .await?;
    let mut pipeline = Pipeline::open(config.pipeline(), session, outbox).await?;
    let leadership = Leadership::new(config.table.clone(), config.holder.clone())?;
    let lease = loop {
        let acquired = tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            leadership.acquire(&pipeline.leader_session().client),
        )
        .await
        .map_err(|_| Error::Timeout {
            action: format!("take the leader lock of {}", config.table),
            timeout_ms,
        })??;
        if let Some(lease) = acquired {
            break lease;
        }
        tracing::debug!(table = %config.table, "another relay leads; standing by");
        if sleep_or_shutdown(Duration::from_millis(config.standby_poll_ms), shutdown).await {
            return Ok(Ended::Shutdown);
        }
    };
    tracing::info!(
        table = %config.table,
        epoch = lease.epoch(),
        producer = lease.producer(),
        "leading the outbox table"
    );
    pipeline.lead(lease.epoch());
    let mut leader = Leader::new(config, pipeline, lease);
    let ended = leader.lead(shutdown).await;
    if matches!(ended, Ok(Ended::Shutdown)) {
        let client = &leader.pipeline.leader_session().client;
        match leader.lease.release(client).await {
            Ok(_) => tracing::info!(table = %config.table, "released the lead"),
            Err(error) => tracing::warn!(error = %error, "cannot release the lead"),
        }
    }
    ended
}

/// The leader's state while it leads.
struct Leader<'c> {
    config: &'c RelayConfig,
    pipeline: Pipeline,
    lease: Lease,
    publisher: Option<Publisher>,
    breaker: CircuitBreaker,
    pacer: Pacer,
    rng: SmallRng,
    next_lease_check: Instant,
    /// Counts since the lead was taken, for the lag log.
    totals: watch::Sender<Finished>,
    /// The lag log and cleanup, on a session of their own.
    _housekeeper: Housekeeper,
}

/// What the leader does next, after one step.
enum Next {
    /// Claim again at once.
    Claim,
    /// Wait this long (cut short by a NOTIFY wake-up when `wake`).
    Wait { duration: Duration, wake: bool },
    /// Stop leading.
    End(Ended),
}

impl<'c> Leader<'c> {
    fn new(config: &'c RelayConfig, pipeline: Pipeline, lease: Lease) -> Leader<'c> {
        let now = Instant::now();
        let (totals, totals_seen) = watch::channel(Finished::default());
        let housekeeper = Housekeeper::start(config.housekeeping(), totals_seen);
        Leader {
            config,
            pipeline,
            lease,
            publisher: None,
            breaker: CircuitBreaker::new(config.circuit_failure_threshold, config.circuit_open_ms),
            pacer: Pacer::new(config.poll_min_ms, config.poll_max_ms),
            rng: SmallRng::from_entropy(),
            next_lease_check: now + Duration::from_millis(config.lease_check_interval_ms),
            totals,
            _housekeeper: housekeeper,
        }
    }

    async fn lead(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Ended> {
        loop {
            if *shutdown.borrow() {
                let settled = self.pipeline.settle().await?;
                self.totals.send_modify(|totals| *totals += settled);
                return Ok(Ended::Shutdown);
            }
            let next = match self.lease_lost().await? {
                true => Next::End(Ended::Deposed),
                false => self.step().await?,
            };
            let (duration, wake) = match next {
                Next::Claim => continue,
                Next::End(ended) => return Ok(ended),
                Next::Wait { duration, wake } => (duration, wake),
            };
            let notifications = self.pipeline.notifications();
            let woken = async {
                if wake {
                    notifications.recv().await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = woken => {}
                _ = stopped(shutdown) => {}
            }
        }
    }

    /// One round of the pipeline, once the circuit lets it and a publisher
    /// is there. It waits only when nothing is in flight.
    async fn step(&mut self) -> Result<Next> {
        if self.pipeline.is_empty() {
            if let Some(wait) = self.circuit_wait() {
                return Ok(wait);
            }
        }
        let publisher = match self.publisher.take() {
            Some(publisher) => publisher,
            None => match self.connect_publisher().await {
                Ok(publisher) => publisher,
                Err(Failure::Fenced(error)) => return Ok(self.deposed(&error.to_string())),
                Err(Failure::Transient(error)) => return Ok(self.broker_failed(&error.to_string())),
            },
        };
        let round = self.pipeline.round(&publisher).await?;
        self.publisher = Some(publisher);
        self.totals.send_modify(|totals| *totals += round.finished);
        match round.published {
            Some(Err(Failure::Fenced(error))) => return Ok(self.deposed(&error.to_string())),
            Some(Err(Failure::Transient(error))) => {
                return Ok(self.broker_failed(&error.to_string()))
            }
            Some(Ok(())) => {
                if let Some(Transition::Closed) = self.breaker.succeeded() {
                    tracing::info!("circuit breaker closed: the broker answers again");
                }
            }
            None => {}
        }
        match round.claimed {
            Some(0) if self.pipeline.is_empty() => Ok(Next::Wait {
                duration: self.pacer.after_claim(0),
                wake: true,
            }),
            Some(rows) if rows > 0 => {
                self.pacer.after_claim(rows);
                Ok(Next::Claim)
            }
            _ => Ok(Next::Claim),
        }
    }

    /// The wait the circuit breaker imposes, if any.
    fn circuit_wait(&mut self) -> Option<Next> {
        match self.breaker.check(Instant::now().into_std()) {
            Ok(Some(Transition::Probing)) => {
                tracing::info!("circuit breaker half-open: probing the broker");
                None
            }
            Ok(_) => None,
            Err(remaining) => Some(Next::Wait {
                duration: remaining,
                wake: false,
            }),
        }
    }

    /// Connects and announces this leader's epoch.
    async fn connect_publisher(&self) -> std::result::Result<Publisher, Failure> {
        let publisher = Publisher::connect(
            &self.config.broker,
            self.lease.producer(),
            self.lease.epoch(),
            self.config.request_timeout_ms,
        )
        .await
        .map_err(Failure::Transient)?;
        publisher.announce().await?;
        tracing::info!(
            broker = %self.config.broker,
            epoch = self.lease.epoch(),
            "announced the leader's epoch to the broker"
        );
        Ok(publisher)
    }

    /// A failed publish: count it, and wait a backoff or the open circuit.
    fn broker_failed(&mut self, error: &str) -> Next {
        let now = Instant::now();
        if let Some(Transition::Opened) = self.breaker.failed(now.into_std()) {
            tracing::warn!(
                error,
                open_ms = self.config.circuit_open_ms,
                "circuit breaker open: the broker keeps failing; claims pause until a probe"
            );
            return Next::Wait {
                duration: Duration::from_millis(self.config.circuit_open_ms),
                wake: false,
            };
        }
        let retry = self.breaker.failures().saturating_sub(1);
        let wait_ms = self.config.backoff().backoff_ms(retry, &mut self.rng);
        tracing::warn!(error, retry_in_ms = wait_ms, "publish failed");
        Next::Wait {
            duration: Duration::from_millis(wait_ms),
            wake: false,
        }
    }

    fn deposed(&mut self, error: &str) -> Next {
        tracing::error!(
            error,
            epoch = self.lease.epoch(),
            "the broker refuses this leader's epoch: another relay leads; standing by"
        );
        self.publisher = None;
        Next::End(Ended::Deposed)
    }

    /// Checks the lease when due; true when it is lost.
    async fn lease_lost(&mut self) -> Result<bool> {
        let now = Instant::now();
        if now < self.next_lease_check {
            return Ok(false);
        }
        self.next_lease_check = now + Duration::from_millis(self.config.lease_check_interval_ms);
        let client = &self.pipeline.leader_session().client;
        if self.lease.still_held(client).await? {
            return Ok(false);
        }
        tracing::error!(
            epoch = self.lease.epoch(),
            "lost the lead of the outbox table (its lock or epoch is gone); standing by"
        );
        Ok(true)
    }
}

/// Sleeps for `duration`; true when shutdown was asked for meanwhile.
async fn sleep_or_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = stopped(shutdown) => {}
    }
    *shutdown.borrow()
}

/// Resolves when shutdown is asked for; never, once nobody can ask.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}
