//! The systems under test, each behind the same three traits so that the
//! workloads (`drive`) run unchanged against every one of them.
//!
//! A system maps the bench's vocabulary onto its own: a *topic* of
//! `partitions` partitions is a Postbox topic, a JetStream stream with one
//! subject per partition, one Redis stream key per partition, or one RabbitMQ
//! stream per partition. Each producer writes to one partition and each
//! consumer reads a set of them, so that every system sees the same shape of
//! load.
//!
//! Invariant: `Producer::publish` resolves only once the system has
//! acknowledged every record of the call at its stated durability
//! ([`System::durability`]); a workload never counts a record it has not seen
//! acknowledged.

use std::future::Future;

use bytes::Bytes;
use serde::Serialize;

pub mod nats;
pub mod postbox;
pub mod rabbitmq;
pub mod redis;

/// What `--durability` asks of a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge once the records are on stable storage, where the system can.
    Sync,
    /// Acknowledge once written; flushed later.
    Async,
}

/// A topic of the run, created fresh and deleted afterwards.
#[derive(Debug, Clone)]
pub struct Topic {
    pub name: String,
    pub partitions: u32,
    pub durability: Durability,
}

/// A system that can hold topics: a connection to one broker.
pub trait System: Send + Sync + 'static {
    type Producer: Producer;
    type Consumer: Consumer;

    /// What the system has done with a record when it acknowledges it at
    /// `durability`, in words for the report ("fsync before ack", ...).
    fn durability(&self, durability: Durability) -> &'static str;

    /// Creates `topic` (deleting a leftover of the same name first).
    fn create(&self, topic: &Topic) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Deletes `topic` and its data.
    fn delete(&self, topic: &Topic) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// A producer writing to `partition` of `topic`, on a connection of its own.
    fn producer(
        &self,
        topic: &Topic,
        partition: u32,
    ) -> impl Future<Output = anyhow::Result<Self::Producer>> + Send;

    /// A consumer of `partitions` of `topic` from their first record, on a
    /// connection of its own.
    fn consumer(
        &self,
        topic: &Topic,
        partitions: Vec<u32>,
    ) -> impl Future<Output = anyhow::Result<Self::Consumer>> + Send;
}

/// Publishes records to one partition.
pub trait Producer: Send + Sync + 'static {
    /// Publishes `records` in order and resolves once every one is
    /// acknowledged. Calls may overlap (the fixed-rate workload does not wait
    /// for one publish before starting the next).
    fn publish(&self, records: Vec<Bytes>) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Reads records from its partitions, in each partition's order.
pub trait Consumer: Send + 'static {
    /// The next records, at least one; waits for them while there are none.
    fn next_batch(&mut self) -> impl Future<Output = anyhow::Result<Vec<Bytes>>> + Send;
}

/// Records of one partition, as a system's client streams them.
pub type PartitionStream = futures_util::stream::BoxStream<'static, anyhow::Result<Bytes>>;

/// Most records one [`MergedConsumer::next_batch`] returns.
const MERGED_BATCH_RECORDS_MAX: usize = 1_000;

/// A consumer of several partitions whose client streams each one on its own:
/// their records interleaved, each partition's in order.
pub struct MergedConsumer {
    sources: futures_util::stream::SelectAll<PartitionStream>,
}

impl MergedConsumer {
    pub fn new(sources: Vec<PartitionStream>) -> MergedConsumer {
        MergedConsumer {
            sources: futures_util::stream::select_all(sources),
        }
    }
}

impl std::fmt::Debug for MergedConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergedConsumer")
            .field("partitions", &self.sources.len())
            .finish()
    }
}

impl Consumer for MergedConsumer {
    async fn next_batch(&mut self) -> anyhow::Result<Vec<Bytes>> {
        use futures_util::{FutureExt, StreamExt};
        let first = self
            .sources
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the subscription ended"))??;
        let mut batch = vec![first];
        // Then whatever is ready, without waiting.
        while batch.len() < MERGED_BATCH_RECORDS_MAX {
            match self.sources.next().now_or_never() {
                Some(Some(record)) => batch.push(record?),
                _ => break,
            }
        }
        Ok(batch)
    }
}
