//! Shared helpers of the Postbox benchmarks.
