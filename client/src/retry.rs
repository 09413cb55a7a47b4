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

/// Attempts in one retry sequence, the first included.
pub const RETRY_ATTEMPTS_MAX: u32 = 10;

/// Longest time one retry sequence may take from its first failure: long
/// enough to ride out a broker restart, short enough that a caller hears of
/// an outage within a minute.
pub const RETRY_ELAPSED_MAX_MS: u64 = 60_000;

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

/// The state of one retry sequence: how many attempts failed, since when.
/// Uses tokio's clock, so that tests can run it in paused time.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    /// When the first failure of the sequence happened; `None` before it.
    failing_since: Option<Instant>,
    rng: SmallRng,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy) -> Self {
        Backoff {
            policy,
            failures: 0,
            failing_since: None,
            rng: SmallRng::from_entropy(),
        }
    }

    /// Starts a new sequence, after a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
        self.failing_since = None;
    }

    /// After a failed attempt: sleeps and returns `Ok` when another attempt
    /// may follow, else gives the error back.
    pub(crate) async fn wait(&mut self, error: Error, operation: &str) -> Result<()> {
        self.failures += 1;
        let failing_since = *self.failing_since.get_or_insert_with(Instant::now);
        let elapsed_ms = duration_ms(failing_since.elapsed());
        let exhausted =
            self.failures >= self.policy.attempts_max || elapsed_ms >= self.policy.elapsed_max_ms;
        if !error.is_retryable() || exhausted {
            return Err(error);
        }
        let sleep_ms = self.policy.backoff_ms(self.failures - 1, &mut self.rng);
        tracing::warn!(
            attempt = self.failures,
            sleep_ms,
            "{operation} failed, retrying: {error}"
        );
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
        Ok(())
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
    async fn idle_time_before_the_first_failure_does_not_count() {
        // A consumer's stream may run for hours before it first fails.
        let mut backoff = Backoff::new(policy());
        tokio::time::sleep(Duration::from_millis(10 * policy().elapsed_max_ms)).await;
        assert_eq!(backoff.wait(unavailable(), "test").await, Ok(()));
    }
}
