//! Subscriptions: a task per subscription that reads partitions from their
//! start offsets and streams the records, then tails new ones.
//!
//! Invariants:
//! - No polling: at the end of every partition the task sleeps on the
//!   partitions' end-offset watches (and on shutdown and on the subscriber
//!   going away) until something changes.
//! - Bounded memory, whatever the subscriber's speed: the task holds at most
//!   one read in hand and `QUEUE_MESSAGES` responses queued, each cut near the
//!   subscriber's byte target; HTTP/2 flow control stops the task when the
//!   subscriber stops reading. Publishers never wait for subscribers.
//! - Records of a partition go out in offset order, each exactly once, from
//!   the start offset up to (not including) the stop offset.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::select_all;
use postbox_proto::v1 as pb;
use prost::Message;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::convert;
use super::service::read_bytes;
use super::status::{blocking, status};
use crate::engine::Engine;
use crate::error::Error;
use crate::storage::batch::Record;
use crate::topic::TopicInfo;

/// Responses queued between the subscription task and the transport.
const QUEUE_MESSAGES: usize = 2;

/// The stream a subscriber receives.
pub type SubscriptionStream = ReceiverStream<Result<pb::SubscribeResponse, Status>>;

/// Resolves the request's start positions and starts the subscription task.
/// Errors in the request (unknown topic, offset out of range) are returned
/// here, before the stream opens.
pub async fn start(
    engine: Arc<Engine>,
    req: pb::SubscribeRequest,
    shutdown: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) -> Result<SubscriptionStream, Status> {
    let max_message_bytes = read_bytes("max_message_bytes", req.max_message_bytes)?;
    let topic = req.topic.clone();
    let planner = engine.clone();
    let plan = blocking(move || plan(&planner, &req)).await?;
    let mut cursors = Vec::with_capacity(plan.len());
    for (partition, next, stop) in plan {
        let end = engine.watch_end(&topic, partition).map_err(status)?;
        cursors.push(Cursor {
            partition,
            next,
            stop,
            end,
        });
    }
    let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
    let subscription = Subscription {
        engine,
        topic,
        cursors,
        max_message_bytes,
        tx,
        shutdown,
        _permit: permit,
    };
    tokio::spawn(subscription.run());
    Ok(ReceiverStream::new(rx))
}

/// Per subscribed partition: (partition, first offset, stop offset).
fn plan(engine: &Engine, req: &pb::SubscribeRequest) -> crate::Result<Vec<(u32, u64, u64)>> {
    let info = engine.describe_topic(&req.topic)?;
    let partitions: Vec<u32> = match req.partition {
        Some(p) if p >= info.config.partitions => {
            return Err(Error::PartitionNotFound {
                topic: req.topic.clone(),
                partition: p,
                partitions: info.config.partitions,
            })
        }
        Some(p) => vec![p],
        None => (0..info.config.partitions).collect(),
    };
    let committed = committed(engine, req)?;
    let resume: BTreeMap<u32, u64> = req.resume.iter().map(|r| (r.partition, r.offset)).collect();
    if let Some(p) = resume.keys().find(|p| !partitions.contains(p)) {
        return Err(Error::InvalidArgument(format!(
            "resume names partition {p}, which this subscription does not cover"
        )));
    }
    let mut plan = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let p = &info.partitions[partition as usize];
        let next = match resume.get(&partition) {
            Some(&offset) => checked_offset(&info, partition, offset)?,
            None => start_offset(engine, req, &info, partition, &committed)?,
        };
        let mut stop = req.stop_offset.unwrap_or(u64::MAX);
        if !req.follow {
            stop = stop.min(p.end_offset);
        }
        plan.push((partition, next, stop));
    }
    Ok(plan)
}

/// The group's committed offsets when the request starts from them.
fn committed(engine: &Engine, req: &pb::SubscribeRequest) -> crate::Result<BTreeMap<u32, u64>> {
    use pb::subscribe_request::Start;
    if req.start != Some(Start::Position(pb::StartPosition::Committed.into())) {
        return Ok(BTreeMap::new());
    }
    if req.group.is_empty() {
        return Err(Error::InvalidArgument(
            "starting from the committed offset needs a group".into(),
        ));
    }
    Ok(engine
        .committed_offsets(&req.group, &req.topic)?
        .into_iter()
        .map(|c| (c.partition, c.offset))
        .collect())
}

fn start_offset(
    engine: &Engine,
    req: &pb::SubscribeRequest,
    info: &TopicInfo,
    partition: u32,
    committed: &BTreeMap<u32, u64>,
) -> crate::Result<u64> {
    use pb::subscribe_request::Start;
    let p = &info.partitions[partition as usize];
    match req.start {
        None => Ok(p.earliest_offset),
        Some(Start::Offset(offset)) => checked_offset(info, partition, offset),
        Some(Start::TimestampMs(ms)) => engine.offset_for_timestamp(&req.topic, partition, ms),
        Some(Start::Position(position)) => match pb::StartPosition::try_from(position) {
            Ok(pb::StartPosition::Unspecified | pb::StartPosition::Earliest) => {
                Ok(p.earliest_offset)
            }
            Ok(pb::StartPosition::Latest) => Ok(p.end_offset),
            Ok(pb::StartPosition::Committed) => Ok(committed
                .get(&partition)
                .copied()
                .unwrap_or(p.earliest_offset)),
            Err(_) => Err(Error::InvalidArgument(format!(
                "start position {position} is unknown"
            ))),
        },
    }
}

fn checked_offset(info: &TopicInfo, partition: u32, offset: u64) -> crate::Result<u64> {
    let p = &info.partitions[partition as usize];
    if offset < p.earliest_offset || offset > p.end_offset {
        return Err(Error::OffsetOutOfRange {
            topic: info.name.clone(),
            partition,
            offset,
            earliest: p.earliest_offset,
            end: p.end_offset,
        });
    }
    Ok(offset)
}

struct Cursor {
    partition: u32,
    next: u64,
    /// Exclusive; `u64::MAX` for none.
    stop: u64,
    end: watch::Receiver<u64>,
}

impl Cursor {
    fn finished(&self) -> bool {
        self.next >= self.stop
    }
}

struct Subscription {
    engine: Arc<Engine>,
    topic: String,
    cursors: Vec<Cursor>,
    max_message_bytes: u32,
    tx: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
    shutdown: watch::Receiver<bool>,
    /// Counts this subscription against the broker's limit while it runs.
    _permit: OwnedSemaphorePermit,
}

/// What the pump loop found.
enum Pumped {
    /// Records went out; look again at once.
    Progress,
    /// Every partition is at its end; wait for more.
    Idle,
    /// Every partition reached its stop offset, or the subscriber left.
    Done,
}

impl Subscription {
    async fn run(mut self) {
        tracing::debug!(topic = %self.topic, partitions = self.cursors.len(), "subscription started");
        if let Err(status) = self.serve().await {
            tracing::debug!(topic = %self.topic, %status, "subscription ended with an error");
            // The subscriber may be gone already; nothing more to do then.
            let _ = self.tx.send(Err(status)).await;
        }
    }

    async fn serve(&mut self) -> Result<(), Status> {
        loop {
            if self.tx.is_closed() {
                return Ok(());
            }
            if *self.shutdown.borrow() {
                return Err(Status::unavailable(
                    "the broker is shutting down; resubscribe from your position",
                ));
            }
            match self.pump().await? {
                Pumped::Progress => {}
                Pumped::Idle => self.wait().await?,
                Pumped::Done => return Ok(()),
            }
        }
    }

    /// One pass over the partitions: at most one read from each.
    async fn pump(&mut self) -> Result<Pumped, Status> {
        let mut pumped = Pumped::Done;
        for i in 0..self.cursors.len() {
            let cursor = &mut self.cursors[i];
            if cursor.finished() {
                continue;
            }
            let end = (*cursor.end.borrow_and_update()).min(cursor.stop);
            if cursor.next >= end {
                pumped = Pumped::Idle;
                continue;
            }
            let (partition, from, stop) = (cursor.partition, cursor.next, cursor.stop);
            let records = self.read(partition, from).await?;
            let Some(last) = records.iter().rev().find(|r| r.offset < stop) else {
                return Err(Status::internal(format!(
                    "{}/{partition}: a read from {from} before the end {end} returned nothing",
                    self.topic
                )));
            };
            self.cursors[i].next = last.offset + 1;
            if !self.send(partition, records, stop).await {
                return Ok(Pumped::Done);
            }
            pumped = Pumped::Progress;
        }
        Ok(pumped)
    }

    async fn read(&self, partition: u32, from: u64) -> Result<Vec<Record>, Status> {
        let engine = self.engine.clone();
        let topic = self.topic.clone();
        let max_bytes = self.max_message_bytes;
        blocking(move || engine.read(&topic, partition, from, max_bytes)).await
    }

    /// Sends the records before `stop`, cut into responses near the byte
    /// target. False when the subscriber is gone.
    async fn send(&self, partition: u32, records: Vec<Record>, stop: u64) -> bool {
        let target = self.max_message_bytes as usize;
        let mut response = pb::SubscribeResponse::default();
        let mut bytes = 0;
        for record in records.into_iter().take_while(|r| r.offset < stop) {
            let record = convert::record(partition, record);
            bytes += record.encoded_len();
            response.records.push(record);
            if bytes >= target {
                if self
                    .tx
                    .send(Ok(std::mem::take(&mut response)))
                    .await
                    .is_err()
                {
                    return false;
                }
                bytes = 0;
            }
        }
        response.records.is_empty() || self.tx.send(Ok(response)).await.is_ok()
    }

    /// Sleeps until a partition's end moves, the broker shuts down or the
    /// subscriber leaves.
    async fn wait(&mut self) -> Result<(), Status> {
        let Subscription {
            cursors,
            shutdown,
            tx,
            topic,
            ..
        } = self;
        let changes: Vec<Pin<Box<_>>> = cursors
            .iter_mut()
            .filter(|c| !c.finished())
            .map(|c| Box::pin(c.end.changed()))
            .collect();
        tokio::select! {
            (changed, _, _) = select_all(changes) => changed.map_err(|_| {
                Status::not_found(format!("topic {topic:?} was deleted"))
            }),
            // A closed shutdown channel means the server is gone: stop too.
            changed = shutdown.changed() => changed.map_err(|_| {
                Status::unavailable("the broker is shutting down; resubscribe from your position")
            }),
            _ = tx.closed() => Ok(()),
        }
    }
}
