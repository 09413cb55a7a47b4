//! Subscribing: records one at a time from the broker's stream, positions per
//! partition, commits, and resubscription after a broken stream.
//!
//! Invariants:
//! - A partition's position is the offset after the last record yielded from
//!   it; commits send positions, so a group resumes after what was yielded.
//! - After a transient failure the consumer resubscribes with `resume` set to
//!   its positions, and drops any record below a position: nothing is
//!   skipped, nothing is yielded twice. A `Latest` start is resolved to each
//!   partition's end offset before the first subscription, so a
//!   resubscription cannot skip records appended in between.
//! - `next` is cancel safe: a record is removed from the buffer only when it
//!   is returned, a stream only replaces `None` once it is open, and a
//!   backoff sleep or a subscribe call in progress is resumed by the next
//!   call rather than restarted or skipped. A caller that races `next`
//!   against a timer (the CLI's commit tick) keeps the retry schedule, the
//!   failure count and each call's timeout.
//! - No background task: auto-commit happens inside `next`, before the next
//!   record is taken (the caller is done with the previous ones).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use postbox_proto::v1 as pb;
use tokio::time::Instant;
use tonic::Streaming;

use crate::admin::Admin;
use crate::connection::{Connection, REQUEST_TIMEOUT_MS_DEFAULT};
use crate::error::{Error, Result};
use crate::limits::SUBSCRIBE_MESSAGE_BYTES_MAX;
use crate::retry::{duration_ms, Backoff, RetryPolicy};
use crate::types::{Record, StartFrom};

/// What to subscribe to, from where, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// The topic.
    pub topic: String,
    /// The consumer group, needed to commit or to start from committed offsets.
    pub group: Option<String>,
    /// One partition; `None`: every partition.
    pub partition: Option<u32>,
    /// Where each partition starts.
    pub start: StartFrom,
    /// Keep tailing new records; false: end once every partition reaches the
    /// end it had when the subscription (or a resubscription) started.
    pub follow: bool,
    /// Stop each partition before this offset (exclusive).
    pub stop_offset: Option<u64>,
    /// Commit positions from `next` when this long has passed since the last
    /// commit. Needs `group`.
    pub auto_commit_interval_ms: Option<u64>,
    /// About how many bytes of records each stream message carries; 0: the
    /// broker's default (1 MiB).
    pub max_message_bytes: u32,
    /// Timeout of opening the stream and of each commit or describe call.
    pub request_timeout_ms: u64,
    /// How resubscriptions and commits are retried.
    pub retry: RetryPolicy,
}

impl ConsumerConfig {
    /// Every partition of `topic` from the earliest record, following, no group.
    pub fn new(topic: impl Into<String>) -> Self {
        ConsumerConfig {
            topic: topic.into(),
            group: None,
            partition: None,
            start: StartFrom::Earliest,
            follow: true,
            stop_offset: None,
            auto_commit_interval_ms: None,
            max_message_bytes: 0,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            retry: RetryPolicy::default(),
        }
    }

    /// Checks the settings once, naming what conflicts.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::InvalidArgument(message));
        if self.group.is_none() && self.start == StartFrom::Committed {
            return invalid("starting from committed offsets needs a consumer group".into());
        }
        if self.group.is_none() && self.auto_commit_interval_ms.is_some() {
            return invalid("auto-commit needs a consumer group".into());
        }
        if self.max_message_bytes > SUBSCRIBE_MESSAGE_BYTES_MAX {
            return invalid(format!(
                "max_message_bytes is {}; it must be at most {SUBSCRIBE_MESSAGE_BYTES_MAX}",
                self.max_message_bytes
            ));
        }
        if self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms must be at least 1".into());
        }
        self.retry.validate()
    }
}

/// A subscription to a topic, read one record at a time with [`Consumer::next`].
#[derive(Debug)]
pub struct Consumer {
    /// Commits and topic descriptions, over the subscription's connection.
    admin: Admin,
    config: ConsumerConfig,
    /// The open stream; `None` after a failure until resubscribed.
    stream: Option<Streaming<pb::SubscribeResponse>>,
    /// The subscribe call in flight, if one is; kept here rather than in a
    /// `next` future so that a cancelled `next` resumes it.
    opening: Option<SubscribeCall>,
    /// Records received but not yet yielded (a stream message is a batch).
    buffered: VecDeque<pb::Record>,
    /// Per partition, the offset after the last record yielded.
    positions: BTreeMap<u32, u64>,
    /// Per partition, the offset last committed, to skip idle commits.
    committed: BTreeMap<u32, u64>,
    last_commit: Instant,
    /// The current run of failed (re)subscriptions.
    backoff: Backoff,
    /// When the current stream opened: one that stayed up longer than the
    /// backoff cap ends a run of failures even if it carried no records.
    stream_opened_at: Instant,
    /// The stream ended cleanly: no more records.
    ended: bool,
}

impl Consumer {
    /// Connects to the broker at `address` and opens the subscription. Fails
    /// at once for an unknown topic or an offset out of range.
    pub async fn subscribe(address: &str, config: ConsumerConfig) -> Result<Consumer> {
        config.validate()?;
        let connection = Arc::new(Connection::open(address).await?);
        let admin = Admin::on(connection, config.retry, config.request_timeout_ms);
        let mut consumer = Consumer {
            admin,
            backoff: Backoff::new(config.retry),
            config,
            stream: None,
            opening: None,
            buffered: VecDeque::new(),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            last_commit: Instant::now(),
            stream_opened_at: Instant::now(),
            ended: false,
        };
        if consumer.config.start == StartFrom::Latest {
            consumer.positions = end_offsets(&consumer.admin, &consumer.config).await?;
        }
        let stream = consumer.open_stream().await?;
        consumer.stream = Some(stream);
        Ok(consumer)
    }

    /// The next record, `None` once a non-following subscription reached its
    /// end, or an error. After an error, calling `next` again resubscribes
    /// from the current positions. Cancel safe.
    pub async fn next(&mut self) -> Option<Result<Record>> {
        if let Err(error) = self.auto_commit().await {
            return Some(Err(error));
        }
        loop {
            if let Some(record) = self.take_buffered() {
                return Some(Ok(record));
            }
            if self.ended {
                return None;
            }
            if let Err(error) = self.receive().await {
                return Some(Err(error));
            }
        }
    }

    /// Commits the positions of every partition that moved since the last
    /// commit: everything yielded so far counts as consumed.
    pub async fn commit(&mut self) -> Result<()> {
        let Some(group) = &self.config.group else {
            return Err(Error::InvalidArgument(
                "commit needs a consumer group (ConsumerConfig::group)".into(),
            ));
        };
        self.last_commit = Instant::now();
        let moved = moved_since(&self.positions, &self.committed);
        if moved.is_empty() {
            return Ok(());
        }
        self.admin
            .commit_offsets(group, &self.config.topic, &moved)
            .await?;
        self.committed.extend(moved);
        Ok(())
    }

    /// Per partition, the offset after the last record yielded.
    pub fn positions(&self) -> &BTreeMap<u32, u64> {
        &self.positions
    }

    /// Records received and not yet yielded: when 0, the next `next` waits
    /// on the network (a good moment to flush output).
    pub fn buffered_records(&self) -> usize {
        self.buffered.len()
    }

    /// The subscription's settings.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    async fn auto_commit(&mut self) -> Result<()> {
        let Some(interval_ms) = self.config.auto_commit_interval_ms else {
            return Ok(());
        };
        if duration_ms(self.last_commit.elapsed()) < interval_ms {
            return Ok(());
        }
        self.commit().await
    }

    /// The next buffered record past its partition's position.
    fn take_buffered(&mut self) -> Option<Record> {
        while let Some(record) = self.buffered.pop_front() {
            if advance(&mut self.positions, record.partition, record.offset) {
                return Some(Record::from_proto(record));
            }
        }
        None
    }

    /// Receives one stream message into the buffer, resubscribing (with
    /// backoff) after transient failures; sets `ended` at a clean end.
    async fn receive(&mut self) -> Result<()> {
        loop {
            let stream = match self.stream.take() {
                Some(stream) => stream,
                None => self.open_stream().await?,
            };
            let stream = self.stream.insert(stream);
            match stream.message().await {
                Ok(Some(response)) => {
                    self.backoff.reset();
                    self.buffered.extend(response.records);
                    return Ok(());
                }
                Ok(None) => {
                    self.stream = None;
                    self.ended = true;
                    return Ok(());
                }
                Err(status) => {
                    self.stream = None;
                    if duration_ms(self.stream_opened_at.elapsed()) >= self.config.retry.cap_ms {
                        self.backoff.reset();
                    }
                    let error = Error::from(status);
                    self.connection().note_failure(&error);
                    self.wait_before_retry(error, "subscription").await?;
                }
            }
        }
    }

    /// Opens the stream from the current positions, retrying transient
    /// failures. Cancel safe: the next call resumes a pending backoff sleep
    /// or subscribe call.
    async fn open_stream(&mut self) -> Result<Streaming<pb::SubscribeResponse>> {
        loop {
            let call = match self.opening.take() {
                Some(call) => call,
                None => {
                    self.backoff.ready().await;
                    self.subscribe_call()
                }
            };
            let opened = self.opening.insert(call).0.as_mut().await;
            self.opening = None;
            match opened {
                Ok(stream) => {
                    self.stream_opened_at = Instant::now();
                    return Ok(stream);
                }
                Err(error) => self.wait_before_retry(error, "subscribe").await?,
            }
        }
    }

    /// Backs off before another attempt, or gives up with `error` (and
    /// starts a fresh retry sequence for the caller's next try).
    async fn wait_before_retry(&mut self, error: Error, operation: &str) -> Result<()> {
        let waited = self.backoff.wait(error, operation).await;
        if waited.is_err() {
            self.backoff.reset();
        }
        waited
    }

    /// One subscribe attempt from the current positions, not yet started.
    fn subscribe_call(&self) -> SubscribeCall {
        let connection = Arc::clone(self.connection());
        let request = self.request();
        let timeout_ms = self.config.request_timeout_ms;
        SubscribeCall(Box::pin(async move {
            connection
                .call("subscribe", timeout_ms, |mut client| async move {
                    client.subscribe(request).await
                })
                .await
        }))
    }

    fn request(&self) -> pb::SubscribeRequest {
        pb::SubscribeRequest {
            topic: self.config.topic.clone(),
            partition: self.config.partition,
            group: self.config.group.clone().unwrap_or_default(),
            start: Some(self.config.start.into_proto()),
            resume: self
                .positions
                .iter()
                .map(|(&partition, &offset)| pb::PartitionOffset { partition, offset })
                .collect(),
            follow: self.config.follow,
            stop_offset: self.config.stop_offset,
            max_message_bytes: self.config.max_message_bytes,
        }
    }

    fn connection(&self) -> &Arc<Connection> {
        self.admin.connection()
    }
}

/// The end offset of every partition `config` subscribes to, now. A free
/// function, not a method: a `&Consumer` held across an await would make
/// `Consumer::subscribe`'s future not `Send` (a `Consumer` is not `Sync`).
async fn end_offsets(admin: &Admin, config: &ConsumerConfig) -> Result<BTreeMap<u32, u64>> {
    let info = admin.describe_topic(&config.topic).await?;
    let wanted = config.partition;
    Ok(info
        .partition_info
        .iter()
        .filter(|partition| wanted.is_none_or(|wanted| wanted == partition.partition))
        .map(|partition| (partition.partition, partition.end_offset))
        .collect())
}

/// A subscribe call: it owns what it needs, so that it can outlive the
/// `next` call that started it.
struct SubscribeCall(
    Pin<Box<dyn Future<Output = Result<Streaming<pb::SubscribeResponse>>> + Send>>,
);

impl fmt::Debug for SubscribeCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubscribeCall")
    }
}

/// Moves a partition's position past a record about to be yielded; false
/// for a record below the position (already yielded before a resubscription).
fn advance(positions: &mut BTreeMap<u32, u64>, partition: u32, offset: u64) -> bool {
    let position = positions.entry(partition).or_insert(0);
    if offset < *position {
        return false;
    }
    *position = offset + 1;
    true
}

/// The positions that differ from the last committed ones.
fn moved_since(positions: &BTreeMap<u32, u64>, committed: &BTreeMap<u32, u64>) -> Vec<(u32, u64)> {
    positions
        .iter()
        .filter(|&(partition, offset)| committed.get(partition) != Some(offset))
        .map(|(&partition, &offset)| (partition, offset))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Subscribing and reading can run in a spawned task: fails to compile
    /// if either future stops being `Send`.
    #[test]
    fn subscribe_and_next_can_be_spawned() {
        fn is_send<T: Send>(_: &T) {}
        let config = ConsumerConfig::new("t");
        is_send(&Consumer::subscribe("127.0.0.1:1", config));
        fn next_is_send(consumer: &mut Consumer) {
            is_send(&consumer.next());
        }
        let _ = next_is_send;
    }

    #[test]
    fn positions_advance_past_yielded_records_and_skip_repeats() {
        let mut positions = BTreeMap::new();
        assert!(advance(&mut positions, 0, 0));
        assert!(advance(&mut positions, 0, 1));
        assert!(advance(&mut positions, 1, 7));
        // A resubscription that repeats offset 1 of partition 0.
        assert!(!advance(&mut positions, 0, 1));
        assert!(advance(&mut positions, 0, 2));
        assert_eq!(positions, BTreeMap::from([(0, 3), (1, 8)]));
    }

    #[test]
    fn only_moved_positions_are_committed() {
        let positions = BTreeMap::from([(0, 3), (1, 8), (2, 5)]);
        let committed = BTreeMap::from([(0, 3), (1, 6)]);
        assert_eq!(moved_since(&positions, &committed), vec![(1, 8), (2, 5)]);
        assert!(moved_since(&positions, &positions).is_empty());
    }

    #[test]
    fn a_consumer_can_move_to_another_task() {
        // It keeps an in-flight subscribe call across cancelled `next` calls.
        fn assert_send<T: Send>() {}
        assert_send::<Consumer>();
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(ConsumerConfig::new("orders").validate(), Ok(()));
    }

    #[test]
    fn committed_start_and_auto_commit_need_a_group() {
        let committed = ConsumerConfig {
            start: StartFrom::Committed,
            ..ConsumerConfig::new("orders")
        };
        assert!(committed.validate().is_err());
        let auto_commit = ConsumerConfig {
            auto_commit_interval_ms: Some(1_000),
            ..ConsumerConfig::new("orders")
        };
        assert!(auto_commit.validate().is_err());
        let grouped = ConsumerConfig {
            group: Some("billing".into()),
            start: StartFrom::Committed,
            auto_commit_interval_ms: Some(1_000),
            ..ConsumerConfig::new("orders")
        };
        assert_eq!(grouped.validate(), Ok(()));
    }

    #[test]
    fn message_size_over_the_broker_limit_is_refused() {
        let at_limit = ConsumerConfig {
            max_message_bytes: SUBSCRIBE_MESSAGE_BYTES_MAX,
            ..ConsumerConfig::new("orders")
        };
        assert_eq!(at_limit.validate(), Ok(()));
        let over = ConsumerConfig {
            max_message_bytes: SUBSCRIBE_MESSAGE_BYTES_MAX + 1,
            ..ConsumerConfig::new("orders")
        };
        assert!(over.validate().is_err());
    }
}
