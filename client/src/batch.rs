//! Cutting a sequence of records into batches, each one publish, in order.
//!
//! Invariants: items leave in the order they came; no batch holds more than
//! `max_records` items, nor more than `max_wire_bytes` of encoded request
//! (its own fields included) or `max_log_bytes` of records as the broker
//! counts them, unless it is a single item over a limit on its own (it goes
//! alone, and the broker judges it). Items are measured by
//! [`RecordCost`](crate::wire::RecordCost), both sizes at once. The
//! producer's background batcher, `Producer::send_batch` and the CLI's line
//! reader all batch through this one type, built by
//! `ProducerConfig::batch_builder`.

use crate::wire::RecordCost;

/// The bounds of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// Most records.
    pub(crate) max_records: usize,
    /// Most bytes of the encoded request, its topic and fence included.
    pub(crate) max_wire_bytes: usize,
    /// Most bytes of records as the broker counts them.
    pub(crate) max_log_bytes: usize,
}

/// Accumulates items into a batch until the next one would not fit.
#[derive(Debug)]
pub struct BatchBuilder<T> {
    limits: BatchLimits,
    /// Bytes of the request without records: where `wire_bytes` starts.
    request_bytes: usize,
    items: Vec<T>,
    wire_bytes: usize,
    log_bytes: usize,
}

impl<T> BatchBuilder<T> {
    /// A builder of batches within `limits` (each at least 1), for requests
    /// whose own fields take `request_bytes`.
    pub(crate) fn new(limits: BatchLimits, request_bytes: usize) -> Self {
        BatchBuilder {
            limits: BatchLimits {
                max_records: limits.max_records.max(1),
                max_wire_bytes: limits.max_wire_bytes.max(1),
                max_log_bytes: limits.max_log_bytes.max(1),
            },
            request_bytes,
            items: Vec::new(),
            wire_bytes: request_bytes,
            log_bytes: 0,
        }
    }

    /// Adds an item that costs `cost`. When it does not fit in the current
    /// batch, returns that batch, complete, and starts the next with the item.
    pub fn push(&mut self, item: T, cost: RecordCost) -> Option<Vec<T>> {
        let limits = &self.limits;
        let fits = self.items.is_empty()
            || (self.items.len() < limits.max_records
                && self.wire_bytes + cost.wire_bytes <= limits.max_wire_bytes
                && self.log_bytes + cost.log_bytes <= limits.max_log_bytes);
        let complete = if fits { None } else { Some(self.take()) };
        self.items.push(item);
        self.wire_bytes += cost.wire_bytes;
        self.log_bytes += cost.log_bytes;
        complete
    }

    /// Whether the current batch is at a limit: nothing more would fit.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.limits.max_records
            || self.wire_bytes >= self.limits.max_wire_bytes
            || self.log_bytes >= self.limits.max_log_bytes
    }

    /// Whether the current batch is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the current batch, leaving the builder empty.
    pub fn take(&mut self) -> Vec<T> {
        self.wire_bytes = self.request_bytes;
        self.log_bytes = 0;
        std::mem::take(&mut self.items)
    }
}

/// Splits `items` into the batches `builder` cuts, each item's cost given by
/// `cost`.
pub(crate) fn split<T>(
    mut builder: BatchBuilder<T>,
    items: Vec<T>,
    cost: impl Fn(&T) -> RecordCost,
) -> Vec<Vec<T>> {
    let mut batches = Vec::new();
    for item in items {
        let item_cost = cost(&item);
        batches.extend(builder.push(item, item_cost));
    }
    if !builder.is_empty() {
        batches.push(builder.take());
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A builder of at most `max_records` items and `max_bytes` of either
    /// measure, for requests of `request_bytes` of their own.
    fn builder(max_records: usize, max_bytes: usize, request_bytes: usize) -> BatchBuilder<usize> {
        let limits = BatchLimits {
            max_records,
            max_wire_bytes: max_bytes,
            max_log_bytes: max_bytes,
        };
        BatchBuilder::new(limits, request_bytes)
    }

    /// Items whose value is their size in both measures.
    fn same(size: &usize) -> RecordCost {
        RecordCost {
            wire_bytes: *size,
            log_bytes: *size,
        }
    }

    fn lengths(batches: &[Vec<usize>]) -> Vec<usize> {
        batches.iter().map(Vec::len).collect()
    }

    #[test]
    fn splits_by_record_count() {
        let batches = split(builder(3, 1_000, 0), (0..7).collect(), |_| same(&1));
        assert_eq!(lengths(&batches), vec![3, 3, 1]);
        assert_eq!(batches.concat(), (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn splits_by_bytes() {
        // Sizes 4, 4, 4, 4: two fit in 10 bytes, a third would not.
        let batches = split(builder(100, 10, 0), vec![4, 4, 4, 4], same);
        assert_eq!(batches, vec![vec![4, 4], vec![4, 4]]);
    }

    #[test]
    fn batch_exactly_at_the_byte_limit_is_kept_whole() {
        let batches = split(builder(100, 10, 0), vec![5, 5, 1], same);
        assert_eq!(batches, vec![vec![5, 5], vec![1]]);
    }

    #[test]
    fn the_requests_own_bytes_count_in_every_batch() {
        // 2 bytes of topic: 4 + 4 fill 10 bytes; the second batch too.
        let batches = split(builder(100, 10, 2), vec![4, 4, 4, 4, 4], same);
        assert_eq!(batches, vec![vec![4, 4], vec![4, 4], vec![4]]);
    }

    #[test]
    fn either_measure_cuts_a_batch() {
        let limits = BatchLimits {
            max_records: 100,
            max_wire_bytes: 10,
            max_log_bytes: 20,
        };
        // Wire 4 each, log 8 each: the log limit cuts after two.
        let log_heavy = split(BatchBuilder::new(limits, 0), vec![1, 2, 3], |_| {
            RecordCost {
                wire_bytes: 4,
                log_bytes: 8,
            }
        });
        assert_eq!(log_heavy, vec![vec![1, 2], vec![3]]);
        // Wire 6 each, log 1 each: the wire limit cuts after one.
        let wire_heavy = split(BatchBuilder::new(limits, 0), vec![1, 2], |_| RecordCost {
            wire_bytes: 6,
            log_bytes: 1,
        });
        assert_eq!(wire_heavy, vec![vec![1], vec![2]]);
    }

    #[test]
    fn oversized_item_goes_alone() {
        let batches = split(builder(100, 10, 0), vec![1, 50, 1], same);
        assert_eq!(batches, vec![vec![1], vec![50], vec![1]]);
    }

    #[test]
    fn empty_input_gives_no_batches() {
        assert!(split(builder(3, 10, 0), Vec::new(), same).is_empty());
    }

    #[test]
    fn is_full_at_either_limit() {
        let mut by_count = builder(2, 100, 0);
        assert!(by_count.push(1, same(&1)).is_none());
        assert!(!by_count.is_full());
        assert!(by_count.push(2, same(&1)).is_none());
        assert!(by_count.is_full());

        let mut by_bytes = builder(100, 10, 0);
        assert!(by_bytes.push(1, same(&10)).is_none());
        assert!(by_bytes.is_full());
        assert_eq!(by_bytes.take(), vec![1]);
        assert!(by_bytes.is_empty() && !by_bytes.is_full());
    }
}
