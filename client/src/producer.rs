//! Publishing: a background batcher for single records, direct batches, and
//! retries that cannot duplicate.
//!
//! Invariants:
//! - Every record has its idempotency key (its own, or a UUID v7 in text
//!   form) before its first attempt, so a retried publish that the broker had
//!   already appended answers `duplicate = true` instead of appending twice.
//!   With `generate_idempotency_keys = false`, a record without a key of its
//!   own goes without one, and a batch holding such a record is never
//!   retried: at most once, and no dedup work in the broker.
//! - Only errors that [`Error::is_retryable`] accepts are retried, with the
//!   configured backoff, each attempt within `request_timeout_ms` and over a
//!   fresh connection when the previous attempt failed in transit.
//! - Acknowledgments come back in the order records were given.
//! - [`Producer::send`] queues its record when called, so records keep call
//!   order however their futures are awaited, spawned or dropped. What it
//!   holds is bounded: records sent and not yet acknowledged take at most
//!   `max_queued_bytes`; past that, `send` fails at once with
//!   RESOURCE_EXHAUSTED rather than grow memory or reorder records.
//! - A record the broker would refuse (over `RECORD_BYTES_MAX` or another
//!   per-record limit) fails at once with INVALID_ARGUMENT: it never waits
//!   for room it cannot use, and never joins a batch whose other records the
//!   broker would then refuse with it.
//! - Batches are cut by everything a publish carries, measured by
//!   [`crate::wire`]: `max_batch_bytes` bounds the encoded request (topic,
//!   fence, every record's fields and protobuf framing, generated
//!   idempotency keys included), and the broker's count of the records plus
//!   its batch header stays within `BATCH_BYTES_MAX` whatever
//!   `max_batch_bytes` allows. The background batcher, `send_batch` and any
//!   caller of [`ProducerConfig::batch_builder`] cut the same batches, so a
//!   batch built there is exactly one publish.
//! - No acknowledgment is lost: a `send_batch` split into several publishes
//!   that fails after some were acknowledged returns those acknowledgments
//!   in [`Error::PartlyPublished`]. A background batch is one publish, all
//!   acknowledged or all failed.
//! - With `max_in_flight_batches = 1` (the default) batches are published one
//!   after the other, so records with the same key keep their order even
//!   across retries. Above 1, concurrent publishes may be appended in either
//!   order, and a batch whose first attempt failed can land after a later one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use postbox_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

use crate::ack::Ack;
use crate::batch::{self, BatchBuilder, BatchLimits};
use crate::connection::{Connection, REQUEST_TIMEOUT_MS_DEFAULT};
use crate::error::{Error, Result};
use crate::limits::{BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BATCH_RECORDS_MAX, RECORD_BYTES_MAX};
use crate::retry::RetryPolicy;
use crate::types::{Fence, OutgoingRecord};
use crate::wire::{self, RecordCost};

/// Default records per batch: amortises a round trip and an fsync over many
/// records while keeping a batch's latency low.
pub const MAX_BATCH_RECORDS_DEFAULT: usize = 1_000;

/// Default bytes of encoded request per batch.
pub const MAX_BATCH_BYTES_DEFAULT: usize = 1024 * 1024;

/// Default time a batch waits for more records before it is sent.
pub const LINGER_MS_DEFAULT: u64 = 5;

/// Longest linger a producer accepts: records should not wait longer than a
/// retry sequence takes.
pub const LINGER_MS_MAX: u64 = 60_000;

/// Most publishes in flight at once per producer.
pub const IN_FLIGHT_BATCHES_MAX: u32 = 64;

/// Default bound on the bytes of records sent and not yet acknowledged:
/// tens of thousands of typical records, a few seconds of a fast broker.
pub const MAX_QUEUED_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

/// Largest `max_queued_bytes`: a producer is not a storage system.
pub const QUEUED_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// What a queued record costs beyond its data (its reply channel, batch
/// slot and protobuf framing), so that empty records are bounded too.
const RECORD_OVERHEAD_BYTES: usize = 128;

const _: () = assert!(MAX_BATCH_RECORDS_DEFAULT <= BATCH_RECORDS_MAX);
const _: () = assert!(MAX_BATCH_BYTES_DEFAULT <= BATCH_BYTES_MAX);
const _: () = assert!(RECORD_BYTES_MAX + RECORD_OVERHEAD_BYTES <= MAX_QUEUED_BYTES_DEFAULT);

/// How a [`Producer`] batches, paces and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// Most records in one publish (1 to `BATCH_RECORDS_MAX`).
    pub max_batch_records: usize,
    /// Most bytes of one publish request as it goes on the wire (topic,
    /// fence, and every record with all its fields, its generated
    /// idempotency key and its protobuf framing: see
    /// [`ProducerConfig::record_cost`]), 1 to `BATCH_BYTES_MAX`; a single
    /// larger record goes alone. Batches also keep the broker's count of
    /// their records ([`OutgoingRecord::encoded_bytes`]) plus its
    /// `BATCH_HEADER_BYTES` within `BATCH_BYTES_MAX`.
    pub max_batch_bytes: usize,
    /// How long a batch of [`Producer::send`] records waits for more before
    /// it is sent, unless it fills first.
    pub linger_ms: u64,
    /// Publishes of background batches in flight at once. 1 keeps per-key
    /// order; above 1, batches may be appended out of order.
    pub max_in_flight_batches: u32,
    /// Most bytes of records sent with [`Producer::send`] and not yet
    /// acknowledged (queued, batching or in flight).
    pub max_queued_bytes: usize,
    /// Timeout of one publish attempt.
    pub request_timeout_ms: u64,
    /// How failed publishes are retried.
    pub retry: RetryPolicy,
    /// Give every record without an idempotency key a generated one (the
    /// default), so that publishes can be retried without duplicates.
    /// `false`: such records go without a key, skip the broker's dedup index,
    /// and their batches are not retried (at most once), like Kafka's
    /// `enable.idempotence=false`.
    pub generate_idempotency_keys: bool,
    /// Publish as a fenced producer (an outbox relay's leader): the broker
    /// refuses this producer's publishes, with FAILED_PRECONDITION and no
    /// retry, once a newer epoch of the same producer has published.
    pub fence: Option<Fence>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            max_batch_records: MAX_BATCH_RECORDS_DEFAULT,
            max_batch_bytes: MAX_BATCH_BYTES_DEFAULT,
            linger_ms: LINGER_MS_DEFAULT,
            max_in_flight_batches: 1,
            max_queued_bytes: MAX_QUEUED_BYTES_DEFAULT,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            retry: RetryPolicy::default(),
            generate_idempotency_keys: true,
            fence: None,
        }
    }
}

impl ProducerConfig {
    /// Checks every setting against its limit, naming the value.
    pub fn validate(&self) -> Result<()> {
        check_range(
            "max_batch_records",
            self.max_batch_records as u64,
            1,
            BATCH_RECORDS_MAX as u64,
        )?;
        check_range(
            "max_batch_bytes",
            self.max_batch_bytes as u64,
            1,
            BATCH_BYTES_MAX as u64,
        )?;
        check_range("linger_ms", self.linger_ms, 0, LINGER_MS_MAX)?;
        check_range(
            "max_in_flight_batches",
            self.max_in_flight_batches.into(),
            1,
            IN_FLIGHT_BATCHES_MAX.into(),
        )?;
        // Every record the broker accepts must fit in the queue on its own.
        check_range(
            "max_queued_bytes",
            self.max_queued_bytes as u64,
            (RECORD_BYTES_MAX + RECORD_OVERHEAD_BYTES) as u64,
            QUEUED_BYTES_MAX as u64,
        )?;
        check_range("request_timeout_ms", self.request_timeout_ms, 1, u64::MAX)?;
        self.retry.validate()
    }

    /// What `record` adds to a publish of this producer, on the wire and in
    /// the broker's count, with the idempotency key the producer generates
    /// for it if it has none (and `generate_idempotency_keys` holds).
    pub fn record_cost(&self, record: &OutgoingRecord) -> RecordCost {
        RecordCost::of(record, self.generate_idempotency_keys)
    }

    /// An empty batch for one publish to `topic` within this producer's
    /// limits: `max_batch_records`, `max_batch_bytes` of encoded request
    /// (this topic and the fence included) and the broker's
    /// `BATCH_BYTES_MAX`. Push each record with its
    /// [`ProducerConfig::record_cost`]: a batch it completes is exactly one
    /// publish of [`Producer::send_batch`], which cuts batches with it too.
    pub fn batch_builder<T>(&self, topic: &str) -> BatchBuilder<T> {
        let limits = BatchLimits {
            max_records: self.max_batch_records,
            max_wire_bytes: self.max_batch_bytes,
            max_log_bytes: BATCH_BYTES_MAX - BATCH_HEADER_BYTES,
        };
        BatchBuilder::new(limits, wire::request_bytes(topic, self.fence.as_ref()))
    }

    /// The publishes [`Producer::send_batch`] makes of `records` to `topic`,
    /// in order: the batches of [`ProducerConfig::batch_builder`].
    pub fn split_batch(
        &self,
        topic: &str,
        records: Vec<OutgoingRecord>,
    ) -> Vec<Vec<OutgoingRecord>> {
        batch::split(self.batch_builder(topic), records, |record| {
            self.record_cost(record)
        })
    }
}

fn check_range(name: &str, value: u64, min: u64, max: u64) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "producer {name} is {value}; it must be between {min} and {max}"
        )))
    }
}

/// Publishes records to one broker. Cheap to share behind an `Arc`; every
/// method takes `&self`.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    /// Unbounded as a channel, bounded by `queued_bytes`: every record in it
    /// holds permits for its bytes.
    commands: mpsc::UnboundedSender<Command>,
    /// One permit per byte of records sent and not yet acknowledged.
    queued_bytes: Arc<Semaphore>,
}

impl Producer {
    /// Connects to the broker at `address` and starts the background batcher.
    pub async fn connect(address: &str, config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let connection = Connection::open(address).await?;
        let shared = Arc::new(Shared { connection, config });
        let queued_bytes = Arc::new(Semaphore::new(shared.config.max_queued_bytes));
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(Batcher::new(Arc::clone(&shared), receiver).run());
        Ok(Producer {
            shared,
            commands,
            queued_bytes,
        })
    }

    /// The producer's settings.
    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }

    /// Queues `record` for `topic`; the returned future resolves to its
    /// acknowledgment once its batch is published.
    ///
    /// The record is queued by the call itself, so many sends may be started
    /// before any is awaited and records keep call order; dropping the future
    /// does not withdraw the record. When records sent and not yet
    /// acknowledged already take `max_queued_bytes`, the future fails at once
    /// with RESOURCE_EXHAUSTED: await earlier acknowledgments first. A record
    /// the broker would refuse (see [`OutgoingRecord::validate`]) fails at
    /// once with INVALID_ARGUMENT, and is not retryable.
    pub fn send(
        &self,
        topic: &str,
        record: OutgoingRecord,
    ) -> impl Future<Output = Result<Ack>> + Send + 'static {
        let record = self.keyed(record);
        let cost = self.shared.config.record_cost(&record);
        let (reply, ack) = oneshot::channel();
        let queued = record.validate().and_then(|()| {
            let room = self.reserve(record.size_bytes())?;
            let command = Command::Send {
                topic: topic.to_owned(),
                record: record.into_proto(),
                cost,
                reply: Reply {
                    sender: reply,
                    _room: room,
                },
            };
            self.commands.send(command).map_err(|_| Error::Closed)
        });
        async move {
            queued?;
            ack.await.map_err(|_| Error::Closed)?
        }
    }

    /// `record` with a generated idempotency key if it has none and the
    /// producer generates them.
    fn keyed(&self, record: OutgoingRecord) -> OutgoingRecord {
        if self.shared.config.generate_idempotency_keys {
            record.with_idempotency_key()
        } else {
            record
        }
    }

    /// Takes room for a record of `size_bytes` in the queue, or explains why
    /// not. Only for a record that passed [`OutgoingRecord::validate`]: such
    /// a record always fits in an empty queue (`ProducerConfig::validate`
    /// makes room for the largest record the broker accepts), so
    /// RESOURCE_EXHAUSTED here always means "wait", never "cannot fit".
    fn reserve(&self, size_bytes: usize) -> Result<OwnedSemaphorePermit> {
        let cost = size_bytes.saturating_add(RECORD_OVERHEAD_BYTES);
        let max_queued_bytes = self.shared.config.max_queued_bytes;
        let permits = u32::try_from(cost).unwrap_or(u32::MAX);
        Arc::clone(&self.queued_bytes)
            .try_acquire_many_owned(permits)
            .map_err(|error| match error {
                TryAcquireError::Closed => Error::Closed,
                TryAcquireError::NoPermits => Error::Status {
                    code: tonic::Code::ResourceExhausted,
                    message: format!(
                        "the producer holds max_queued_bytes ({max_queued_bytes}) of \
                         unacknowledged records; await acknowledgments before sending more"
                    ),
                },
            })
    }

    /// Publishes `records` now, bypassing the batcher: one publish call, or
    /// several in order when the records exceed `max_batch_records` or
    /// `max_batch_bytes` (the publishes of [`ProducerConfig::split_batch`];
    /// a batch built with [`ProducerConfig::batch_builder`] is one).
    /// Acknowledgments come back in input order.
    ///
    /// # Errors
    ///
    /// A record the broker would refuse (see [`OutgoingRecord::validate`])
    /// fails the call with INVALID_ARGUMENT before anything is published.
    /// When the first publish fails, nothing was acknowledged and its error
    /// comes back as it is. When a later one fails, the records before it
    /// are stored: the call fails with [`Error::PartlyPublished`], which
    /// holds their acknowledgments, how many records after them were not
    /// acknowledged, and the cause; publish only those again. Generated
    /// idempotency keys do not survive the call, so a caller that wants to
    /// re-send unacknowledged records without risking duplicates (a publish
    /// that timed out may still have been stored) gives each record its own.
    pub async fn send_batch(&self, topic: &str, records: Vec<OutgoingRecord>) -> Result<Vec<Ack>> {
        if self.commands.is_closed() {
            return Err(Error::Closed);
        }
        let config = &self.shared.config;
        let record_count = records.len();
        let records: Vec<OutgoingRecord> = records
            .into_iter()
            .map(|record| self.keyed(record))
            .collect();
        for (index, record) in records.iter().enumerate() {
            record.validate().map_err(|error| {
                Error::InvalidArgument(format!("record {index} of {record_count}: {error}"))
            })?;
        }
        let mut acks = Vec::with_capacity(record_count);
        for chunk in config.split_batch(topic, records) {
            let records = chunk.into_iter().map(OutgoingRecord::into_proto).collect();
            match self.shared.publish(topic, records).await {
                Ok(chunk_acks) => acks.extend(chunk_acks),
                Err(cause) => {
                    let unacknowledged = record_count - acks.len();
                    return Err(Error::after_acks(acks, unacknowledged, cause));
                }
            }
        }
        Ok(acks)
    }

    /// Announces this producer's fence (`ProducerConfig::fence`) without
    /// publishing: from then on the broker refuses publishes of the same
    /// producer with an older epoch. A new leader calls it as it takes over.
    /// Fails with INVALID_ARGUMENT when the producer has no fence, and with
    /// FAILED_PRECONDITION (not retried) when a newer epoch was seen.
    pub async fn advance_fence(&self) -> Result<()> {
        let fence = self.shared.config.fence.as_ref().ok_or_else(|| {
            Error::InvalidArgument("advance_fence needs a producer with a fence".to_owned())
        })?;
        let request = pb::AdvanceFenceRequest {
            fence: Some(fence.to_proto()),
        };
        self.shared
            .connection
            .call_with_retry(
                self.shared.config.retry,
                "advance fence",
                self.shared.config.request_timeout_ms,
                |mut client| {
                    let request = request.clone();
                    async move { client.advance_fence(request).await }
                },
            )
            .await?;
        Ok(())
    }

    /// Waits until every record sent before this call is published or failed.
    pub async fn flush(&self) -> Result<()> {
        self.round_trip(Command::Flush).await
    }

    /// Flushes, then stops the batcher: later calls fail with [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        self.round_trip(Command::Close).await
    }

    async fn round_trip(&self, command: fn(oneshot::Sender<()>) -> Command) -> Result<()> {
        let (done, finished) = oneshot::channel();
        self.commands
            .send(command(done))
            .map_err(|_| Error::Closed)?;
        finished.await.map_err(|_| Error::Closed)
    }
}

/// What the producer handle and the batcher's publish tasks share.
#[derive(Debug)]
struct Shared {
    connection: Connection,
    config: ProducerConfig,
}

impl Shared {
    /// Publishes one batch, retrying transient failures if every record has
    /// an idempotency key (a retry of a keyless record could append it twice).
    async fn publish(&self, topic: &str, records: Vec<pb::PublishRecord>) -> Result<Vec<Ack>> {
        let retry = if records.iter().all(|r| r.idempotency_key.is_some()) {
            self.config.retry
        } else {
            RetryPolicy::none()
        };
        let request = pb::PublishRequest {
            topic: topic.to_owned(),
            records,
            fence: self.config.fence.as_ref().map(Fence::to_proto),
        };
        let response = self
            .connection
            .call_with_retry(
                retry,
                "publish",
                self.config.request_timeout_ms,
                |mut client| {
                    let request = request.clone();
                    async move { client.publish(request).await }
                },
            )
            .await?;
        acks_for(&request.records, response.acks)
    }
}

/// Pairs each record with its acknowledgment.
fn acks_for(records: &[pb::PublishRecord], acks: Vec<pb::PublishAck>) -> Result<Vec<Ack>> {
    if acks.len() != records.len() {
        return Err(Error::protocol(format!(
            "the broker answered {} acknowledgments for {} records",
            acks.len(),
            records.len()
        )));
    }
    Ok(records
        .iter()
        .zip(acks)
        .map(|(record, ack)| Ack {
            partition: ack.partition,
            offset: ack.offset,
            duplicate: ack.duplicate,
            idempotency_key: record.idempotency_key.clone().unwrap_or_default(),
        })
        .collect())
}

/// A request to the batcher.
enum Command {
    /// Add a record to its topic's batch.
    Send {
        topic: String,
        record: pb::PublishRecord,
        /// What the record counts towards its batch's limits.
        cost: RecordCost,
        reply: Reply,
    },
    /// Send every open batch, wait for all publishes, then answer.
    Flush(oneshot::Sender<()>),
    /// As `Flush`, then stop.
    Close(oneshot::Sender<()>),
}

/// A queued record and where its acknowledgment goes.
struct Pending {
    record: pb::PublishRecord,
    reply: Reply,
}

/// Where a record's acknowledgment goes, and the queue room it holds until
/// then.
struct Reply {
    sender: oneshot::Sender<Result<Ack>>,
    _room: OwnedSemaphorePermit,
}

/// A topic's batch that is still taking records.
struct OpenBatch {
    builder: BatchBuilder<Pending>,
    /// When it is sent even if not full: its first record's arrival plus the linger.
    deadline: Instant,
}

/// The background task: groups records into per-topic batches and starts
/// their publishes, at most `max_in_flight_batches` at a time, in order.
struct Batcher {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    open: HashMap<String, OpenBatch>,
    /// One permit per publish in flight; taking them all waits for every one.
    in_flight: Arc<Semaphore>,
}

impl Batcher {
    fn new(shared: Arc<Shared>, commands: mpsc::UnboundedReceiver<Command>) -> Batcher {
        let permits = shared.config.max_in_flight_batches as usize;
        Batcher {
            shared,
            commands,
            open: HashMap::new(),
            in_flight: Arc::new(Semaphore::new(permits)),
        }
    }

    async fn run(mut self) {
        loop {
            let deadline = self.open.values().map(|batch| batch.deadline).min();
            let in_flight = Arc::clone(&self.in_flight);
            tokio::select! {
                // Due batches first, so a steady stream of records cannot
                // hold back a batch past its linger. A due batch waits for a
                // free publish slot here, not in `start_publish`, so records
                // keep joining it meanwhile: with `linger_ms = 0` a record
                // goes at once when no publish is in flight, and otherwise
                // with all those that queued behind it.
                biased;
                permit = due_with_slot(deadline, in_flight) => self.send_due(permit).await,
                command = self.commands.recv() => match command {
                    Some(Command::Send { topic, record, cost, reply }) => {
                        self.add(topic, Pending { record, reply }, cost).await;
                    }
                    Some(Command::Flush(done)) => {
                        self.drain().await;
                        // The caller may have stopped waiting; nothing to do then.
                        let _ = done.send(());
                    }
                    Some(Command::Close(done)) => {
                        self.drain().await;
                        let _ = done.send(());
                        return;
                    }
                    // Every producer handle is gone: send what is queued, then stop.
                    None => {
                        self.drain().await;
                        return;
                    }
                },
            }
        }
    }

    async fn add(&mut self, topic: String, pending: Pending, cost: RecordCost) {
        let linger = Duration::from_millis(self.shared.config.linger_ms);
        let config = &self.shared.config;
        let open = self.open.entry(topic.clone()).or_insert_with(|| OpenBatch {
            builder: config.batch_builder(&topic),
            deadline: Instant::now() + linger,
        });
        let complete = open.builder.push(pending, cost);
        if complete.is_some() {
            // The record did not fit and starts a new batch: a new linger.
            open.deadline = Instant::now() + linger;
        }
        let full = open.builder.is_full().then(|| open.builder.take());
        if full.is_some() {
            self.open.remove(&topic);
        }
        for batch in complete.into_iter().chain(full) {
            self.start_publish(&topic, batch).await;
        }
    }

    /// Publishes the due batch of earliest deadline with `permit`.
    async fn send_due(&mut self, permit: Option<OwnedSemaphorePermit>) {
        let due = self
            .open
            .iter()
            .min_by_key(|(_, batch)| batch.deadline)
            .map(|(topic, _)| topic.clone());
        if let (Some(topic), Some(permit)) = (due, permit) {
            if let Some(mut batch) = self.open.remove(&topic) {
                self.spawn_publish(&topic, batch.builder.take(), permit);
            }
        }
    }

    /// Sends every open batch and waits until no publish is in flight.
    async fn drain(&mut self) {
        let open: Vec<(String, OpenBatch)> = self.open.drain().collect();
        for (topic, mut batch) in open {
            self.start_publish(&topic, batch.builder.take()).await;
        }
        let permits = self.shared.config.max_in_flight_batches;
        // The semaphore is never closed, so this only waits.
        let _all_idle = self.in_flight.acquire_many(permits).await;
    }

    /// Starts publishing `batch` once an in-flight slot is free. Waiting here
    /// (rather than in the task) keeps publishes starting in batch order.
    async fn start_publish(&self, topic: &str, batch: Vec<Pending>) {
        let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
            // Never closed; if it were, dropping the batch answers its
            // senders with `Closed`.
            return;
        };
        self.spawn_publish(topic, batch, permit);
    }

    /// Publishes `batch` in a task of its own, holding `permit` until done.
    fn spawn_publish(&self, topic: &str, batch: Vec<Pending>, permit: OwnedSemaphorePermit) {
        let shared = Arc::clone(&self.shared);
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let (records, replies): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|pending| (pending.record, pending.reply))
                .unzip();
            let result = shared.publish(&topic, records).await;
            deliver(result, replies);
            drop(permit);
        });
    }
}

/// Answers each record's sender (one that stopped waiting is skipped) and
/// frees its queue room.
fn deliver(result: Result<Vec<Ack>>, replies: Vec<Reply>) {
    match result {
        Ok(acks) => {
            for (reply, ack) in replies.into_iter().zip(acks) {
                let _ = reply.sender.send(Ok(ack));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.sender.send(Err(error.clone()));
            }
        }
    }
}

/// Waits until `deadline` (forever when there is none), then for a free
/// publish slot; `None` only if the semaphore were closed. A deadline already
/// past does not wait for the timer, whose millisecond ticks would add up to
/// a millisecond to every record of a zero linger.
async fn due_with_slot(
    deadline: Option<Instant>,
    in_flight: Arc<Semaphore>,
) -> Option<OwnedSemaphorePermit> {
    match deadline {
        Some(deadline) if deadline > Instant::now() => tokio::time::sleep_until(deadline).await,
        Some(_) => {}
        None => std::future::pending().await,
    }
    in_flight.acquire_owned().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{KEY_BYTES_MAX, RECORD_FRAMING_BYTES};
    use bytes::Bytes;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(ProducerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn config_limits_are_checked_and_named() {
        let too_many = ProducerConfig {
            max_batch_records: BATCH_RECORDS_MAX + 1,
            ..ProducerConfig::default()
        };
        assert_eq!(
            too_many.validate().err().map(|e| e.to_string()).as_deref(),
            Some("producer max_batch_records is 10001; it must be between 1 and 10000")
        );
        let no_in_flight = ProducerConfig {
            max_in_flight_batches: 0,
            ..ProducerConfig::default()
        };
        assert!(no_in_flight.validate().is_err());
        let at_limit = ProducerConfig {
            max_batch_records: BATCH_RECORDS_MAX,
            max_batch_bytes: BATCH_BYTES_MAX,
            ..ProducerConfig::default()
        };
        assert_eq!(at_limit.validate(), Ok(()));
    }

    #[test]
    fn batches_leave_room_for_the_broker_batch_header() {
        let config = ProducerConfig {
            max_batch_bytes: BATCH_BYTES_MAX,
            ..ProducerConfig::default()
        };
        // Sixteen records of RECORD_BYTES_MAX each (length fields included):
        // exactly BATCH_BYTES_MAX of records, so one batch would be the
        // broker's header over its limit, although the request (whose
        // protobuf framing is smaller than the broker's length fields) is
        // within max_batch_bytes.
        let payload = Bytes::from(vec![0u8; RECORD_BYTES_MAX - RECORD_FRAMING_BYTES - 1]);
        let records: Vec<OutgoingRecord> = (0..BATCH_BYTES_MAX / RECORD_BYTES_MAX)
            .map(|_| OutgoingRecord::new(payload.clone()).idempotency_key("k"))
            .collect();
        assert!(records
            .iter()
            .all(|r| config.record_cost(r).log_bytes() == RECORD_BYTES_MAX));
        let wire_bytes: usize = records
            .iter()
            .map(|r| config.record_cost(r).wire_bytes())
            .sum();
        assert!(wire_bytes < BATCH_BYTES_MAX);
        let batches = config.split_batch("t", records);
        assert_eq!(batches.len(), 2);
        for batch in &batches {
            let bytes: usize = batch.iter().map(OutgoingRecord::encoded_bytes).sum();
            assert!(BATCH_HEADER_BYTES + bytes <= BATCH_BYTES_MAX);
        }
    }

    /// Records as the CLI makes them of stdin lines: no idempotency key of
    /// their own, lines of 1,000 to 1,600 bytes (so that bytes, not
    /// max_batch_records, fill a default batch).
    fn line_records(count: usize) -> Vec<OutgoingRecord> {
        (0..count)
            .map(|i| OutgoingRecord::new(vec![b'x'; 1_000 + (i * 37) % 600]).key("batch-7"))
            .collect()
    }

    #[test]
    fn a_full_batch_of_lines_is_one_publish_with_its_generated_keys() {
        // The CLI built 1 MiB batches of lines without counting the keys
        // send_batch then generated; send_batch cut each in two publishes,
        // and lost the first one's acknowledgments when the second failed.
        let config = ProducerConfig::default();
        let topic = "orders.created";
        let mut builder = config.batch_builder(topic);
        let mut lines = line_records(2_000).into_iter();
        let full = loop {
            let Some(line) = lines.next() else {
                panic!("2,000 lines did not fill a batch");
            };
            let cost = config.record_cost(&line);
            if let Some(full) = builder.push(line, cost) {
                break full;
            }
        };
        let line_bytes: usize = full.iter().map(|line| line.payload().len()).sum();
        assert!(
            line_bytes > MAX_BATCH_BYTES_DEFAULT * 3 / 4,
            "a full batch: {} lines, {line_bytes} bytes",
            full.len()
        );
        // As send_batch does: every record gets its key, then the batch is cut.
        let keyed: Vec<OutgoingRecord> = full
            .iter()
            .cloned()
            .map(OutgoingRecord::with_idempotency_key)
            .collect();
        let sent: usize = keyed
            .iter()
            .map(|r| config.record_cost(r).wire_bytes())
            .sum();
        assert!(
            wire::request_bytes(topic, None) + sent <= MAX_BATCH_BYTES_DEFAULT,
            "within max_batch_bytes as sent"
        );
        let publishes = config.split_batch(topic, keyed.clone());
        assert_eq!(publishes, vec![keyed], "one batch, one publish");
    }

    #[test]
    fn split_batches_are_the_batch_builders_at_every_size() {
        let config = ProducerConfig {
            max_batch_bytes: 64 * 1024,
            fence: Some(Fence {
                producer: "relay".into(),
                epoch: 3,
            }),
            ..ProducerConfig::default()
        };
        let records = line_records(1_000);
        let publishes = config.split_batch("t", records.clone());
        assert!(publishes.len() > 10, "{} publishes", publishes.len());
        assert_eq!(publishes.concat(), records, "in order, none lost");
        for publish in &publishes {
            let keyed: Vec<OutgoingRecord> = publish
                .iter()
                .cloned()
                .map(OutgoingRecord::with_idempotency_key)
                .collect();
            assert_eq!(config.split_batch("t", keyed).len(), 1);
        }
    }

    /// A producer connected to a listener that accepts and never answers:
    /// enough for calls that must fail before sending anything.
    async fn silent_producer(config: ProducerConfig) -> (Producer, tokio::net::TcpListener) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
        let Ok(listener) = listener else {
            panic!("cannot listen: {listener:?}");
        };
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let producer = Producer::connect(&address, config).await;
        let Ok(producer) = producer else {
            panic!("cannot connect: {producer:?}");
        };
        (producer, listener)
    }

    fn invalid_message(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(Error::InvalidArgument(message)) => message,
            other => format!("not InvalidArgument: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_record_that_can_never_fit_is_invalid_not_resource_exhausted() {
        // The smallest queue: exactly room for the largest record. A record
        // over RECORD_BYTES_MAX, or over max_queued_bytes, once failed as
        // "wait" (RESOURCE_EXHAUSTED), retryable, although it never could fit.
        let config = ProducerConfig {
            max_queued_bytes: RECORD_BYTES_MAX + RECORD_OVERHEAD_BYTES,
            ..ProducerConfig::default()
        };
        let (producer, _listener) = silent_producer(config).await;
        // With the producer's generated idempotency key (a 36-byte UUID).
        let payload_max = RECORD_BYTES_MAX - RECORD_FRAMING_BYTES - 36;
        let over = OutgoingRecord::new(vec![0u8; payload_max + 1]);
        let message = invalid_message(producer.send("t", over).await);
        assert!(message.contains("(RECORD_BYTES_MAX)"), "{message}");
        let way_over = OutgoingRecord::new(vec![0u8; 2 * RECORD_BYTES_MAX]);
        let message = invalid_message(producer.send("t", way_over).await);
        assert!(message.contains("(RECORD_BYTES_MAX)"), "{message}");
        assert_eq!(
            producer.queued_bytes.available_permits(),
            RECORD_BYTES_MAX + RECORD_OVERHEAD_BYTES,
            "refused records take no room"
        );
        // At the limit, the record is queued (and waits for the broker).
        let at_limit = producer.send("t", OutgoingRecord::new(vec![0u8; payload_max]));
        assert!(producer.queued_bytes.available_permits() < RECORD_OVERHEAD_BYTES);
        drop(at_limit);
    }

    #[tokio::test]
    async fn a_batch_with_a_record_the_broker_would_refuse_fails_whole_before_sending() {
        let (producer, _listener) = silent_producer(ProducerConfig::default()).await;
        let records = vec![
            OutgoingRecord::new("fine"),
            OutgoingRecord::new("bad key").key(vec![0u8; KEY_BYTES_MAX + 1]),
        ];
        // Returns at once: the silent listener would hold a publish until
        // its timeout.
        let message = invalid_message(producer.send_batch("t", records).await);
        assert!(
            message.starts_with("record 1 of 2: ") && message.contains("(KEY_BYTES_MAX)"),
            "{message}"
        );
    }

    fn record(key: &'static str) -> pb::PublishRecord {
        pb::PublishRecord {
            idempotency_key: Some(Bytes::from(key)),
            ..pb::PublishRecord::default()
        }
    }

    fn ack(offset: u64) -> pb::PublishAck {
        pb::PublishAck {
            partition: 0,
            offset,
            duplicate: offset == 0,
        }
    }

    #[test]
    fn acks_pair_with_records_in_order() {
        let acks = acks_for(&[record("a"), record("b")], vec![ack(0), ack(1)]);
        let summary: Option<Vec<(u64, bool, Bytes)>> = acks.ok().map(|acks| {
            acks.into_iter()
                .map(|a| (a.offset, a.duplicate, a.idempotency_key))
                .collect()
        });
        assert_eq!(
            summary,
            Some(vec![
                (0, true, Bytes::from("a")),
                (1, false, Bytes::from("b"))
            ])
        );
    }

    #[test]
    fn ack_count_mismatch_is_an_error() {
        let result = acks_for(&[record("a"), record("b")], vec![ack(0)]);
        assert!(matches!(
            result,
            Err(Error::Status {
                code: tonic::Code::Internal,
                ..
            })
        ));
    }
}
