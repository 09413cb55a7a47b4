//! Exponential backoff with full jitter, for retrying transient failures.
//!
//! The sleep before retry `n` (0-based) is a uniform random duration in
//! `0 ..= min(cap_ms, base_ms * 2^n)` ("full jitter", as in the AWS
//! architecture blog's study of backoff): clients that failed together do not
//! retry together. A retry sequence stops at whichever comes first of
//! `attempts_max` attempts or `elapsed_max_ms` since the first failure, so a
//! caller never waits unboundedly on a broker that stays down.
//!
//! Only errors for which [`Error::is_retryable`] holds are retried; retrying
//! a publish is safe because every record carries its idempotency key from
//! before the first attempt.
//!
//! [`Backoff`] is cancel safe: a failure is counted once, when it is
//! reported, and the time of the next attempt is kept until that attempt may
//! start. A caller whose wait is cancelled (a `select!` on a timer dropping a
//! consumer's `next`) waits out the same sleep when it comes back, so a
//! retry sequence keeps its pace and its length however often it is
//! interrupted.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// First backoff ceiling: a broker restart takes longer, a dropped connection
/// less, and 50 ms wastes little either way.
pub const RETRY_BASE_MS: u64 = 50;

/// Largest backoff ceiling: past a few seconds, waiting longer only delays
/// noticing that the broker is back.
pub const RETRY_CAP_MS: u64 = 5_000;

/// Attempts in one retry sequence, the first included: enough that against
/// a broker that stays down, `RETRY_ELAPSED_MAX_MS` ends the sequence, not
/// this. Full jitter sleeps half the ceiling on average, so the ceilings of
/// the default policy sum to over three times that bound (checked below);
/// with 10 attempts they summed to 16 s, and a broker restart of 20 s
/// outlasted every retry. The bound still stops a sequence whose sleeps all
/// come out short.
pub const RETRY_ATTEMPTS_MAX: u32 = 50;

/// Longest time one retry sequence may take from its first failure: long
/// enough to ride out a broker restart, short enough that a caller hears of
/// an outage within a minute.
pub const RETRY_ELAPSED_MAX_MS: u64 = 60_000;

/// The sum of the backoff ceilings before retries `0 .. retries`.
const fn ceilings_sum_ms(base_ms: u64, cap_ms: u64, retries: u32) -> u64 {
    let mut sum = 0;
    let mut ceiling = base_ms;
    let mut retry = 0;
    while retry < retries {
        sum += ceiling;
        ceiling = if ceiling >= cap_ms / 2 {
            cap_ms
        } else {
            ceiling * 2
        };
        retry += 1;
    }
    sum
}

const _: () = assert!(RETRY_BASE_MS <= RETRY_CAP_MS);
const _: () = assert!(
    ceilings_sum_ms(RETRY_BASE_MS, RETRY_CAP_MS, RETRY_ATTEMPTS_MAX - 1)
        >= 3 * RETRY_ELAPSED_MAX_MS
);

/// How transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff ceiling before the first retry, doubled for each retry after it.
    pub base_ms: u64,
    /// Largest backoff ceiling.
    pub cap_ms: u64,
    /// Attempts in one sequence, the first included; 1 means no retries.
    pub attempts_max: u32,
    /// No retry starts later than this after the first failure.
    pub elapsed_max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_ms: RETRY_BASE_MS,
            cap_ms: RETRY_CAP_MS,
            attempts_max: RETRY_ATTEMPTS_MAX,
            elapsed_max_ms: RETRY_ELAPSED_MAX_MS,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        RetryPolicy {
            attempts_max: 1,
            ..RetryPolicy::default()
        }
    }

    /// Checks the settings once, naming the values that conflict.
    pub fn validate(&self) -> Result<()> {
        if self.attempts_max == 0 {
            return Err(Error::InvalidArgument(
                "retry attempts_max must be at least 1 (the first attempt)".into(),
            ));
        }
        if self.base_ms == 0 || self.base_ms > self.cap_ms {
            return Err(Error::InvalidArgument(format!(
                "retry base_ms ({}) must be between 1 and cap_ms ({})",
                self.base_ms, self.cap_ms
            )));
        }
        Ok(())
    }

    /// The largest sleep before retry `retry` (0-based): `min(cap, base * 2^retry)`.
    pub fn ceiling_ms(&self, retry: u32) -> u64 {
        let growth = 1u64.checked_shl(retry).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(growth).min(self.cap_ms)
    }

    /// A random sleep before retry `retry`, uniform in `0 ..= ceiling_ms(retry)`.
    pub fn backoff_ms(&self, retry: u32, rng: &mut impl Rng) -> u64 {
        rng.gen_range(0..=self.ceiling_ms(retry))
    }
}

/// The state of one retry sequence: how many attempts failed, since when,
/// and when the next may start. Uses tokio's clock, so that tests can run it
/// in paused time.
///
/// Protocol: call [`Backoff::ready`] before every attempt and
/// [`Backoff::wait`] after every failed one. Either future may be dropped
/// midway without losing the schedule.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    /// When the first failure of the sequence happened; `None` before it.
    failing_since: Option<Instant>,
    /// When the attempt after the last failure may start; `None` once it
    /// may. Kept across a cancelled sleep, so that the sleep resumes rather
    /// than restarts or is skipped.
    retry_at: Option<Instant>,
    rng: SmallRng,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
            failing_since: None,
            retry_at: None,
            rng: SmallRng::from_entropy(),
        }
    }

    /// Starts a new sequence, after a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
        self.failing_since = None;
        self.retry_at = None;
    }

    /// After a failed attempt: returns `Ok` once another attempt may start,
    /// having slept until then, else gives the error back. Cancel safe: the
    /// failure is counted before the sleep, and a caller that comes back
    /// after a cancelled sleep finishes it in [`Backoff::ready`].
    pub(crate) async fn wait(&mut self, error: Error, operation: &str) -> Result<()> {
        self.fail(error, operation)?;
        self.ready().await;
        Ok(())
    }

    /// Counts a failed attempt and schedules the next one, or gives the
    /// error back when it is not retryable or the sequence is exhausted.
    /// No retry is scheduled later than `elapsed_max_ms` after the first
    /// failure.
    fn fail(&mut self, error: Error, operation: &str) -> Result<()> {
        self.failures += 1;
        let now = Instant::now();
        let failing_since = *self.failing_since.get_or_insert(now);
        let elapsed_ms = duration_ms(now - failing_since);
        let exhausted =
            self.failures >= self.policy.attempts_max || elapsed_ms >= self.policy.elapsed_max_ms;
        if !error.is_retryable() || exhausted {
            self.retry_at = None;
            return Err(error);
        }
        let sleep_ms = self
            .policy
            .backoff_ms(self.failures - 1, &mut self.rng)
            .min(self.policy.elapsed_max_ms - elapsed_ms);
        tracing::warn!(
            attempt = self.failures,
            sleep_ms,
            "{operation} failed, retrying: {error}"
        );
        self.retry_at = Some(now + Duration::from_millis(sleep_ms));
        Ok(())
    }

    /// Sleeps until the attempt after the last failure may start; returns at
    /// once when none is pending. Cancel safe: the schedule is cleared only
    /// once the sleep is over.
    pub(crate) async fn ready(&mut self) {
        if let Some(retry_at) = self.retry_at {
            tokio::time::sleep_until(retry_at).await;
            self.retry_at = None;
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the policy gives up.
pub(crate) async fn retry<T, F, Fut>(
    policy: RetryPolicy,
    operation: &str,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => backoff.wait(error, operation).await?,
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base_ms: 50,
            cap_ms: 5_000,
            attempts_max: 5,
            elapsed_max_ms: 60_000,
        }
    }

    #[test]
    fn ceiling_doubles_from_base() {
        let policy = policy();
        assert_eq!(policy.ceiling_ms(0), 50);
        assert_eq!(policy.ceiling_ms(1), 100);
        assert_eq!(policy.ceiling_ms(2), 200);
        assert_eq!(policy.ceiling_ms(6), 3_200);
    }

    #[test]
    fn ceiling_stops_at_cap_without_overflow() {
        let policy = policy();
        assert_eq!(policy.ceiling_ms(7), 5_000);
        assert_eq!(policy.ceiling_ms(63), 5_000);
        assert_eq!(policy.ceiling_ms(64), 5_000);
        assert_eq!(policy.ceiling_ms(u32::MAX), 5_000);
    }

    #[test]
    fn const_ceiling_sum_matches_the_policy() {
        let policy = RetryPolicy::default();
        for retries in [0, 1, 7, 8, RETRY_ATTEMPTS_MAX - 1] {
            let sum: u64 = (0..retries).map(|retry| policy.ceiling_ms(retry)).sum();
            assert_eq!(ceilings_sum_ms(policy.base_ms, policy.cap_ms, retries), sum);
        }
    }

    #[test]
    fn backoff_stays_within_zero_and_ceiling() {
        let policy = policy();
        let mut rng = SmallRng::seed_from_u64(7);
        for retry in 0..20 {
            let ceiling = policy.ceiling_ms(retry);
            for _ in 0..1_000 {
                assert!(policy.backoff_ms(retry, &mut rng) <= ceiling);
            }
        }
    }

    #[test]
    fn backoff_is_jittered_over_the_whole_range() {
        let policy = policy();
        let mut rng = SmallRng::seed_from_u64(11);
        let samples: Vec<u64> = (0..2_000)
            .map(|_| policy.backoff_ms(10, &mut rng))
            .collect();
        let low = samples.iter().filter(|&&ms| ms < 1_000).count();
        let high = samples.iter().filter(|&&ms| ms > 4_000).count();
        // Uniform over 0..=5000: about a fifth of the samples in each range.
        assert!(low > 200 && high > 200, "low {low}, high {high}");
    }

    #[test]
    fn validate_rejects_conflicting_settings() {
        assert!(policy().validate().is_ok());
        assert!(RetryPolicy::none().validate().is_ok());
        let zero_attempts = RetryPolicy {
            attempts_max: 0,
            ..policy()
        };
        assert!(zero_attempts.validate().is_err());
        let base_over_cap = RetryPolicy {
            base_ms: 10_000,
            ..policy()
        };
        let message = base_over_cap.validate().err().map(|e| e.to_string());
        assert_eq!(
            message.as_deref(),
            Some("retry base_ms (10000) must be between 1 and cap_ms (5000)")
        );
    }

    fn unavailable() -> Error {
        Error::Status {
            code: tonic::Code::Unavailable,
            message: "down".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_after_attempts_max() {
        let mut attempts = 0;
        let result: Result<()> = retry(policy(), "test", || {
            attempts += 1;
            async { Err(unavailable()) }
        })
        .await;
        assert_eq!(result, Err(unavailable()));
        assert_eq!(attempts, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_does_not_retry_permanent_errors() {
        let mut attempts = 0;
        let result: Result<()> = retry(policy(), "test", || {
            attempts += 1;
            async { Err(Error::InvalidArgument("bad".into())) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_returns_the_first_success() {
        let mut attempts = 0;
        let result = retry(policy(), "test", || {
            attempts += 1;
            let outcome = if attempts < 3 {
                Err(unavailable())
            } else {
                Ok(attempts)
            };
            async move { outcome }
        })
        .await;
        assert_eq!(result, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_elapsed_max() {
        let slow = RetryPolicy {
            base_ms: 1_000,
            cap_ms: 1_000,
            attempts_max: u32::MAX,
            elapsed_max_ms: 10_000,
        };
        let mut attempts = 0u32;
        let result: Result<()> = retry(slow, "test", || {
            attempts += 1;
            async {
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                Err(unavailable())
            }
        })
        .await;
        assert!(result.is_err());
        // The clock starts at the first failure (after 1 s); each retry then
        // takes 1 s plus at most 1 s of backoff: 5 to 10 retries fit in 10 s.
        assert!((6..=11).contains(&attempts), "{attempts} attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_keeps_its_schedule_and_failure_count() {
        let policy = RetryPolicy {
            base_ms: 10_000,
            cap_ms: 10_000,
            ..policy()
        };
        let mut backoff = Backoff::new(policy);
        backoff.rng = SmallRng::seed_from_u64(3);
        let one_ms = Duration::from_millis(1);
        // A timer drops the wait 1 ms into its sleep, as a `select!` would.
        let cancelled = tokio::time::timeout(one_ms, backoff.wait(unavailable(), "test")).await;
        assert!(cancelled.is_err(), "this seed sleeps longer than 1 ms");
        assert_eq!(backoff.failures, 1);
        let Some(retry_at) = backoff.retry_at else {
            panic!("the failure scheduled no retry");
        };
        // Dropped again while finishing the sleep: the schedule stays put.
        let cancelled = tokio::time::timeout(one_ms, backoff.ready()).await;
        assert!(cancelled.is_err());
        assert_eq!(backoff.retry_at, Some(retry_at));
        // Coming back sleeps until the same instant, counting nothing new.
        backoff.ready().await;
        assert_eq!(Instant::now(), retry_at);
        assert_eq!(backoff.failures, 1);
        assert_eq!(backoff.retry_at, None);
        // With nothing pending, `ready` does not sleep.
        backoff.ready().await;
        assert_eq!(Instant::now(), retry_at);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_that_cancels_the_backoff_does_not_hasten_or_shorten_retries() {
        // The CLI's 1 s commit tick once dropped the consumer's backoff sleep
        // midway after the failure was counted: attempts came every second
        // and the sequence ran out in about ten seconds.
        const SEED: u64 = 3;
        let policy = RetryPolicy {
            attempts_max: 10,
            ..RetryPolicy::default()
        };
        let mut backoff = Backoff::new(policy);
        backoff.rng = SmallRng::seed_from_u64(SEED);
        let mut replay = SmallRng::seed_from_u64(SEED);
        let start = Instant::now();
        let mut expected = vec![start];
        for retry in 0..policy.attempts_max - 1 {
            let sleep_ms = policy.backoff_ms(retry, &mut replay);
            let previous = expected[expected.len() - 1];
            expected.push(previous + Duration::from_millis(sleep_ms));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(1_000));
        let mut attempted_at = Vec::new();
        loop {
            let attempt = async {
                backoff.ready().await;
                attempted_at.push(Instant::now());
                backoff.wait(unavailable(), "test").await
            };
            tokio::select! {
                _ = tick.tick() => {}
                waited = attempt => if waited.is_err() { break },
            }
        }
        assert_eq!(attempted_at, expected);
        assert!(
            expected[expected.len() - 1] - start > Duration::from_millis(10_000),
            "this seed's sequence outlasts ten ticks"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_policy_retries_a_broker_down_for_the_whole_elapsed_max() {
        for seed in 0..10 {
            let mut backoff = Backoff::new(RetryPolicy::default());
            backoff.rng = SmallRng::seed_from_u64(seed);
            let start = Instant::now();
            while backoff.wait(unavailable(), "test").await.is_ok() {}
            assert_eq!(
                Instant::now() - start,
                Duration::from_millis(RETRY_ELAPSED_MAX_MS),
                "seed {seed}: attempts_max ended the sequence first"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_is_scheduled_past_elapsed_max() {
        let policy = RetryPolicy {
            base_ms: 5_000,
            cap_ms: 5_000,
            attempts_max: u32::MAX,
            elapsed_max_ms: 1_000,
        };
        let mut backoff = Backoff::new(policy);
        let start = Instant::now();
        while backoff.wait(unavailable(), "test").await.is_ok() {
            assert!(Instant::now() - start <= Duration::from_millis(1_000));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_before_the_first_failure_does_not_count() {
        // A consumer's stream may run for hours before it first fails.
        let mut backoff = Backoff::new(policy());
        tokio::time::sleep(Duration::from_millis(10 * policy().elapsed_max_ms)).await;
        assert_eq!(backoff.wait(unavailable(), "test").await, Ok(()));
    }
}
