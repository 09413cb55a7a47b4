//! Cutting a sequence of records into batches bounded by a record count and a
//! byte size, in order.
//!
//! Invariants: items leave in the order they came; no batch holds more than
//! `max_records` items; no batch exceeds `max_bytes` unless it is a single
//! item larger than that on its own (it goes alone, and the broker judges
//! it). The producer's background batcher, `Producer::send_batch` and the
//! CLI's line reader all batch through this one type.

/// Accumulates items into a batch until the next one would not fit.
#[derive(Debug)]
pub struct BatchBuilder<T> {
    max_records: usize,
    max_bytes: usize,
    items: Vec<T>,
    bytes: usize,
}

impl<T> BatchBuilder<T> {
    /// A builder of batches of at most `max_records` items and `max_bytes`
    /// bytes (both at least 1).
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        BatchBuilder {
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            items: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds an item of `size_bytes`. When it does not fit in the current
    /// batch, returns that batch, complete, and starts the next with the item.
    pub fn push(&mut self, item: T, size_bytes: usize) -> Option<Vec<T>> {
        let fits = self.items.is_empty()
            || (self.items.len() < self.max_records && self.bytes + size_bytes <= self.max_bytes);
        let complete = if fits { None } else { Some(self.take()) };
        self.items.push(item);
        self.bytes += size_bytes;
        complete
    }

    /// Whether the current batch is at a limit: nothing more would fit.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.max_records || self.bytes >= self.max_bytes
    }

    /// Whether the current batch is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the current batch, leaving the builder empty.
    pub fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        std::mem::take(&mut self.items)
    }
}

/// Splits `items` into batches, each item's size given by `size_bytes`.
pub(crate) fn split<T>(
    items: Vec<T>,
    max_records: usize,
    max_bytes: usize,
    size_bytes: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut builder = BatchBuilder::new(max_records, max_bytes);
    let mut batches = Vec::new();
    for item in items {
        let size = size_bytes(&item);
        batches.extend(builder.push(item, size));
    }
    if !builder.is_empty() {
        batches.push(builder.take());
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(batches: &[Vec<usize>]) -> Vec<usize> {
        batches.iter().map(Vec::len).collect()
    }

    #[test]
    fn splits_by_record_count() {
        let batches = split((0..7).collect(), 3, 1_000, |_| 1);
        assert_eq!(lengths(&batches), vec![3, 3, 1]);
        assert_eq!(batches.concat(), (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn splits_by_bytes() {
        // Sizes 4, 4, 4, 4: two fit in 10 bytes, a third would not.
        let batches = split(vec![4, 4, 4, 4], 100, 10, |&size| size);
        assert_eq!(batches, vec![vec![4, 4], vec![4, 4]]);
    }

    #[test]
    fn batch_exactly_at_the_byte_limit_is_kept_whole() {
        let batches = split(vec![5, 5, 1], 100, 10, |&size| size);
        assert_eq!(batches, vec![vec![5, 5], vec![1]]);
    }

    #[test]
    fn oversized_item_goes_alone() {
        let batches = split(vec![1, 50, 1], 100, 10, |&size| size);
        assert_eq!(batches, vec![vec![1], vec![50], vec![1]]);
    }

    #[test]
    fn empty_input_gives_no_batches() {
        assert!(split(Vec::<usize>::new(), 3, 10, |_| 1).is_empty());
    }

    #[test]
    fn is_full_at_either_limit() {
        let mut by_count = BatchBuilder::new(2, 100);
        assert!(by_count.push(1, 1).is_none());
        assert!(!by_count.is_full());
        assert!(by_count.push(2, 1).is_none());
        assert!(by_count.is_full());

        let mut by_bytes = BatchBuilder::new(100, 10);
        assert!(by_bytes.push(1, 10).is_none());
        assert!(by_bytes.is_full());
        assert_eq!(by_bytes.take(), vec![1]);
        assert!(by_bytes.is_empty() && !by_bytes.is_full());
    }
}
