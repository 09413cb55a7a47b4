//! The storage boundary: what the gRPC service needs of a log, as one trait
//! of the broker's own, [`Backend`].
//!
//! The service is generic over it (`BrokerService<B: Backend>`), so the
//! embedded engine's calls are static, inlined dispatch: the boundary costs
//! the default path nothing. Every method is async, since a backend whose
//! log lives on another machine (a NATS JetStream cluster: one stream per
//! partition, stream sequence = offset + 1, acknowledgments from a quorum,
//! offsets and fences in replicated key-value buckets) answers over the
//! network; the embedded engine answers on the calling worker
//! ([`embedded`]).
//!
//! Invariants:
//! - Nothing here knows tonic, prost or `postbox_proto`: the types are the
//!   engine's own (re-exported below), converted at the gRPC edge.
//! - Every method validates its whole request before it changes anything,
//!   and names the limit or the reason in its error.
//! - A subscription reads through a [`TopicHandle`] of one incarnation of a
//!   topic: once that topic is deleted (even if a topic of the same name is
//!   created at once) its reads fail with `TopicNotFound` and its end
//!   watches close, so a subscriber never reads another topic's records.

pub mod embedded;

use std::future::Future;

use tokio::sync::watch;

pub use postbox_engine::{
    limits, CommittedOffset, Durability, Error, Header, PartitionInfo, PublishResult, Record,
    RecordInput, Result, TopicConfig, TopicInfo,
};

/// A fenced producer's identity and epoch (an outbox relay's leader): a
/// publish or fence advance with an epoch older than the producer's highest
/// is refused with [`Error::Fenced`] and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub producer: String,
    pub epoch: u64,
}

/// A log of topics and partitions, with dedup, fences and group offsets.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// One incarnation of a topic, as a subscription holds it.
    type Topic: TopicHandle;

    /// Creates a topic; [`Error::TopicExists`] if it exists.
    fn create_topic(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> impl Future<Output = Result<TopicInfo>> + Send;

    /// Deletes a topic with its records and its groups' offsets.
    fn delete_topic(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    fn list_topics(&self) -> impl Future<Output = Result<Vec<TopicInfo>>> + Send;

    fn describe_topic(&self, name: &str) -> impl Future<Output = Result<TopicInfo>> + Send;

    /// Appends `records` and answers once they are durable (as the topic's
    /// durability says), one result per record in order; a record whose
    /// idempotency key is live answers with its original's offset and
    /// `duplicate`. With a fence, refused when the epoch is stale.
    fn publish(
        &self,
        topic: &str,
        records: Vec<RecordInput>,
        fence: Option<Fence>,
    ) -> impl Future<Output = Result<Vec<PublishResult>>> + Send;

    /// Raises a fenced producer's epoch without publishing; once it answers
    /// no publish of an older epoch is in flight or can start.
    fn advance_fence(&self, fence: Fence) -> impl Future<Output = Result<()>> + Send;

    /// A handle on the topic as it is now, for a subscription.
    fn topic(&self, name: &str) -> impl Future<Output = Result<Self::Topic>> + Send;

    /// Commits a group's offsets, `(partition, offset)`: all, or none when
    /// one is bad. Durable when it answers.
    fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: Vec<(u32, u64)>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A group's committed offsets, clamped to each partition's log.
    fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> impl Future<Output = Result<Vec<CommittedOffset>>> + Send;

    /// Makes everything acknowledged durable and stops background work.
    fn shutdown(&self) -> impl Future<Output = Result<()>> + Send;
}

/// One incarnation of a topic: reads from an offset or a timestamp, and the
/// end offsets to wait on.
pub trait TopicHandle: Send + Sync + 'static {
    /// The topic's settings and partitions' offsets now;
    /// [`Error::TopicNotFound`] once this incarnation is deleted.
    fn info(&self) -> Result<TopicInfo>;

    /// Records of `partition` from `from` on, about `max_bytes` of them (at
    /// least one when there is one), never past the visible end.
    fn read(
        &self,
        partition: u32,
        from: u64,
        max_bytes: u32,
    ) -> impl Future<Output = Result<Vec<Record>>> + Send;

    /// The first offset of `partition` appended at or after `timestamp_ms`.
    fn offset_for_timestamp(
        &self,
        partition: u32,
        timestamp_ms: i64,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// The visible end offset of `partition`, to wait on; it closes when the
    /// topic goes away.
    fn watch_end(&self, partition: u32) -> Result<watch::Receiver<u64>>;
}
