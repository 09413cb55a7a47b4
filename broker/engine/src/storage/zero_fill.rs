//! The engine-wide budget for zero-filled space ahead of active segments'
//! data (see `writer::zeros_after`). Zero-filling lets a busy `sync`
//! partition's fdatasync skip committing a new file size, but every
//! partition written once would otherwise keep its step of zeros on disk,
//! a MiB each however idle it is: the budget caps the sum, so a few busy
//! partitions get the fill and thousands of idle ones cost no disk for it.
//!
//! Invariant: `outstanding_bytes` is the sum over writers of the zeros
//! they hold ahead of their data, as each writer reports taking and giving
//! back; it never passes `max_bytes`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Zero-filled bytes the engine's writers may hold ahead of their data.
#[derive(Debug)]
pub struct ZeroFillBudget {
    max_bytes: u64,
    outstanding_bytes: AtomicU64,
}

impl ZeroFillBudget {
    pub fn new(max_bytes: u64) -> ZeroFillBudget {
        ZeroFillBudget {
            max_bytes,
            outstanding_bytes: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` of the budget, all or none: whether they were taken.
    pub fn try_take(&self, bytes: u64) -> bool {
        self.outstanding_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes)
                    .filter(|after| *after <= self.max_bytes)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken before (overwritten by data, or trimmed).
    pub fn give_back(&self, bytes: u64) {
        if bytes > 0 {
            self.outstanding_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Zero-filled bytes held now.
    pub fn outstanding_bytes(&self) -> u64 {
        self.outstanding_bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::ZeroFillBudget;

    #[test]
    fn the_budget_is_taken_whole_or_not_at_all_and_given_back() {
        let budget = ZeroFillBudget::new(10);
        assert!(budget.try_take(6));
        assert!(!budget.try_take(5), "over the budget");
        assert!(budget.try_take(4));
        budget.give_back(6);
        assert_eq!(budget.outstanding_bytes(), 4);
        assert!(budget.try_take(6));
    }
}
