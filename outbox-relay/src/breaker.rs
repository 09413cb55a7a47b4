//! The circuit breaker between the relay and the broker.
//!
//! Role: stops the relay from hammering a broker that is down. Closed, it
//! lets every attempt through and counts consecutive failures; at
//! `failure_threshold` it opens and refuses attempts for `open_ms`; then it
//! is half-open and lets one probe through: success closes it, failure opens
//! it again for another `open_ms`.
//!
//! Invariants: pure state, no clock of its own (the caller passes `now`), so
//! that every transition is tested without waiting; one success always
//! closes it.

use std::time::{Duration, Instant};

/// Default consecutive failed publishes that open the circuit.
pub const CIRCUIT_FAILURE_THRESHOLD_DEFAULT: u32 = 5;
/// Default time the circuit stays open before a probe.
pub const CIRCUIT_OPEN_MS_DEFAULT: u64 = 5_000;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Attempts go through; `failures` consecutive ones have failed.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// Attempts are refused until `until`.
    Open {
        /// When a probe may go.
        until: Instant,
    },
    /// One probe is going through.
    HalfOpen,
}

/// A change of state worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed (or half-open) to open.
    Opened,
    /// Open to half-open: a probe goes.
    Probing,
    /// Half-open (or open) to closed.
    Closed,
}

/// A circuit breaker (see the module documentation).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    open: Duration,
    state: State,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(failure_threshold: u32, open_ms: u64) -> CircuitBreaker {
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            open: Duration::from_millis(open_ms),
            state: State::Closed { failures: 0 },
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether an attempt may go at `now`: `Ok` with a transition when it is
    /// the half-open probe, `Err` with the time left while open.
    pub fn check(&mut self, now: Instant) -> Result<Option<Transition>, Duration> {
        match self.state {
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                self.state = State::HalfOpen;
                Ok(Some(Transition::Probing))
            }
            State::Closed { .. } | State::HalfOpen => Ok(None),
        }
    }

    /// Records a successful attempt.
    pub fn succeeded(&mut self) -> Option<Transition> {
        let was_closed = matches!(self.state, State::Closed { .. });
        self.state = State::Closed { failures: 0 };
        (!was_closed).then_some(Transition::Closed)
    }

    /// Records a failed attempt at `now`.
    pub fn failed(&mut self, now: Instant) -> Option<Transition> {
        let failures = match self.state {
            State::Closed { failures } => failures + 1,
            State::HalfOpen | State::Open { .. } => self.failure_threshold,
        };
        if failures >= self.failure_threshold {
            self.state = State::Open {
                until: now + self.open,
            };
            Some(Transition::Opened)
        } else {
            self.state = State::Closed { failures };
            None
        }
    }

    /// Consecutive failures while closed (0 otherwise).
    pub fn failures(&self) -> u32 {
        match self.state {
            State::Closed { failures } => failures,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_probes_after_the_cool_down_and_closes_on_success() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(3, 1_000);
        assert_eq!(breaker.failed(start), None);
        assert_eq!(breaker.failed(start), None);
        assert_eq!(breaker.check(start), Ok(None), "closed below the threshold");
        assert_eq!(breaker.failed(start), Some(Transition::Opened));
        assert_eq!(
            breaker.check(start + Duration::from_millis(400)),
            Err(Duration::from_millis(600))
        );
        let later = start + Duration::from_millis(1_000);
        assert_eq!(breaker.check(later), Ok(Some(Transition::Probing)));
        assert_eq!(breaker.state(), State::HalfOpen);
        assert_eq!(breaker.succeeded(), Some(Transition::Closed));
        assert_eq!(breaker.state(), State::Closed { failures: 0 });
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_a_full_cool_down() {
        let start = Instant::now();
        let mut breaker = CircuitBreaker::new(1, 1_000);
        assert_eq!(breaker.failed(start), Some(Transition::Opened));
        let probe = start + Duration::from_millis(1_500);
        assert_eq!(breaker.check(probe), Ok(Some(Transition::Probing)));
        assert_eq!(breaker.failed(probe), Some(Transition::Opened));
        assert_eq!(
            breaker.check(probe + Duration::from_millis(999)),
            Err(Duration::from_millis(1))
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let now = Instant::now();
        let mut breaker = CircuitBreaker::new(2, 1_000);
        breaker.failed(now);
        assert_eq!(breaker.succeeded(), None);
        assert_eq!(breaker.failed(now), None, "the count started again");
        assert_eq!(breaker.failures(), 1);
    }
}
