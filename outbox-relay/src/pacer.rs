//! Adaptive polling: when the leader claims next.
//!
//! Role: while claims find rows, the next claim follows at once; each empty
//! claim doubles the wait, from `poll_min_ms` up to `poll_max_ms`; the first
//! claim that finds rows again resets it. A NOTIFY wake-up (when installed)
//! cuts any wait short; the poll stays behind it because a notification sent
//! while the relay was disconnected is lost.
//!
//! Invariants: no wait exceeds `poll_max_ms`, so a row is claimed at most
//! `poll_max_ms` after it commits whatever happens to notifications (while
//! the broker and PostgreSQL answer).

use std::time::Duration;

/// Default first wait after an empty claim.
pub const POLL_MIN_MS_DEFAULT: u64 = 5;
/// Default longest wait between claims when idle.
pub const POLL_MAX_MS_DEFAULT: u64 = 500;

/// The adaptive poll interval (see the module documentation).
#[derive(Debug, Clone)]
pub struct Pacer {
    poll_min_ms: u64,
    poll_max_ms: u64,
    next_wait_ms: u64,
}

impl Pacer {
    /// A pacer between `poll_min_ms` and `poll_max_ms`.
    pub fn new(poll_min_ms: u64, poll_max_ms: u64) -> Pacer {
        Pacer {
            poll_min_ms,
            poll_max_ms: poll_max_ms.max(poll_min_ms),
            next_wait_ms: poll_min_ms,
        }
    }

    /// The wait before the next claim, after a claim that found `rows` rows.
    pub fn after_claim(&mut self, rows: usize) -> Duration {
        if rows > 0 {
            self.next_wait_ms = self.poll_min_ms;
            return Duration::ZERO;
        }
        let wait = self.next_wait_ms;
        self.next_wait_ms = wait.saturating_mul(2).clamp(1, self.poll_max_ms);
        Duration::from_millis(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_while_idle_up_to_the_cap_and_reset_when_rows_flow() {
        let mut pacer = Pacer::new(5, 30);
        let waits: Vec<u64> = (0..5)
            .map(|_| pacer.after_claim(0).as_millis() as u64)
            .collect();
        assert_eq!(waits, [5, 10, 20, 30, 30]);
        assert_eq!(pacer.after_claim(3), Duration::ZERO);
        assert_eq!(pacer.after_claim(0), Duration::from_millis(5));
    }
}
