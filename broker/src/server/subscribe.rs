//! Subscriptions: a task per subscription that reads partitions from their
//! start offsets and streams the records, then tails new ones.
//!
//! Invariants:
//! - No polling: at the end of every partition the task sleeps on the
//!   partitions' end-offset watches (and on shutdown and on the subscriber
//!   going away) until something changes. A pass that sent records is
//!   followed by another pass at once, never by a sleep.
//! - Bounded memory, whatever the subscriber's speed: the task holds at most
//!   one read in hand and `QUEUE_MESSAGES` responses queued, each cut near the
//!   subscriber's byte target; HTTP/2 flow control stops the task when the
//!   subscriber stops reading. Publishers never wait for subscribers.
//! - Records of a partition go out in offset order, each exactly once, from
//!   the start offset up to (not including) the stop offset.
//! - The task reads through the topic handle it resolved at the start
//!   ([`TopicHandle`], one incarnation of the topic): if the topic is deleted
//!   (even if recreated under the same name at once), its partitions' watches
//!   close and the stream ends with NOT_FOUND rather than serving another
//!   topic's records.
//! - At shutdown the task ends at once, even while a subscriber is not
//!   reading, so that shutdown never waits on a stalled subscriber.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures_util::future::select_all;
use postbox_proto::v1 as pb;
use prost::Message;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::convert;
use super::status::status;
use crate::backend::{Backend, Error, Record, Result, TopicHandle, TopicInfo};

/// Responses queued between the subscription task and the transport.
const QUEUE_MESSAGES: usize = 2;

/// The stream a subscriber receives.
pub type SubscriptionStream = ReceiverStream<Result<pb::SubscribeResponse, Status>>;

fn shutting_down() -> Status {
    Status::unavailable("the broker is shutting down; resubscribe from your position")
}

/// Resolves the request's start positions and starts the subscription task.
/// Errors in the request (unknown topic, offset out of range) are returned
/// here, before the stream opens.
pub async fn start<B: Backend>(
    backend: &B,
    req: pb::SubscribeRequest,
    shutdown: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) -> Result<SubscriptionStream, Status> {
    let max_message_bytes = convert::read_bytes("max_message_bytes", req.max_message_bytes)?;
    let topic = backend.topic(&req.topic).await.map_err(status)?;
    let committed = committed(backend, &req).await.map_err(status)?;
    let cursors = plan(&topic, &req, &committed).await.map_err(status)?;
    let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
    let subscription = Subscription {
        name: req.topic,
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

/// A cursor per subscribed partition.
async fn plan<T: TopicHandle>(
    topic: &T,
    req: &pb::SubscribeRequest,
    committed: &BTreeMap<u32, u64>,
) -> Result<Vec<Cursor>> {
    let info = topic.info()?;
    let partitions: Vec<u32> = match req.partition {
        Some(p) if p < info.config.partitions => vec![p],
        Some(p) => {
            return Err(Error::PartitionNotFound {
                topic: info.name.clone(),
                partition: p,
                partitions: info.config.partitions,
            })
        }
        None => (0..info.config.partitions).collect(),
    };
    let resume: BTreeMap<u32, u64> = req.resume.iter().map(|r| (r.partition, r.offset)).collect();
    if let Some(p) = resume.keys().find(|p| !partitions.contains(p)) {
        return Err(Error::InvalidArgument(format!(
            "resume names partition {p}, which this subscription does not cover"
        )));
    }
    let mut cursors = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let p = &info.partitions[partition as usize];
        let next = match resume.get(&partition) {
            Some(&offset) => checked_offset(&info, partition, offset, false)?,
            None => start_offset(topic, req, &info, partition, committed).await?,
        };
        let mut stop = req.stop_offset.unwrap_or(u64::MAX);
        if !req.follow {
            stop = stop.min(p.end_offset);
        }
        cursors.push(Cursor {
            partition,
            next,
            stop,
            end: topic.watch_end(partition)?,
        });
    }
    Ok(cursors)
}

/// The group's committed offsets when the request starts from them.
async fn committed<B: Backend>(
    backend: &B,
    req: &pb::SubscribeRequest,
) -> Result<BTreeMap<u32, u64>> {
    use pb::subscribe_request::Start;
    if req.start != Some(Start::Position(pb::StartPosition::Committed.into())) {
        return Ok(BTreeMap::new());
    }
    if req.group.is_empty() {
        return Err(Error::InvalidArgument(
            "starting from the committed offset needs a group".into(),
        ));
    }
    Ok(backend
        .committed_offsets(&req.group, &req.topic)
        .await?
        .into_iter()
        .map(|c| (c.partition, c.offset))
        .collect())
}

async fn start_offset<T: TopicHandle>(
    topic: &T,
    req: &pb::SubscribeRequest,
    info: &TopicInfo,
    partition: u32,
    committed: &BTreeMap<u32, u64>,
) -> Result<u64> {
    use pb::subscribe_request::Start;
    let p = &info.partitions[partition as usize];
    match req.start {
        None => Ok(p.earliest_offset),
        // One offset for every partition: a partition that has not reached
        // it yet starts at its end. One partition named: it must be there.
        Some(Start::Offset(offset)) => {
            checked_offset(info, partition, offset, req.partition.is_none())
        }
        Some(Start::TimestampMs(ms)) => topic.offset_for_timestamp(partition, ms).await,
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

/// `offset` if the partition holds it (or it is the end); past the end, the
/// end when `past_end_is_end`. Before the earliest offset is always an error:
/// those records are gone, and starting later would skip them silently.
fn checked_offset(
    info: &TopicInfo,
    partition: u32,
    offset: u64,
    past_end_is_end: bool,
) -> Result<u64> {
    let p = &info.partitions[partition as usize];
    if offset > p.end_offset && past_end_is_end {
        return Ok(p.end_offset);
    }
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

#[derive(Debug)]
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

struct Subscription<T> {
    name: String,
    /// The incarnation of the topic subscribed to: reads through it fail once
    /// it is deleted.
    topic: T,
    cursors: Vec<Cursor>,
    max_message_bytes: u32,
    tx: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
    shutdown: watch::Receiver<bool>,
    /// Counts this subscription against the broker's limit while it runs.
    _permit: OwnedSemaphorePermit,
}

/// What a pass over the partitions found.
#[derive(Debug, PartialEq, Eq)]
enum Pumped {
    /// Records went out; look again at once.
    Progress,
    /// Every unfinished partition is at its end; wait for more.
    Idle,
    /// Every partition reached its stop offset, or the subscriber left.
    Done,
}

impl<T: TopicHandle> Subscription<T> {
    async fn run(mut self) {
        let topic = self.name.clone();
        tracing::debug!(%topic, partitions = self.cursors.len(), "subscription started");
        if let Err(status) = self.serve().await {
            tracing::debug!(%topic, %status, "subscription ended with an error");
            // The subscriber may be gone, or not reading: either way, do not wait.
            let _ = self.tx.try_send(Err(status));
        }
    }

    async fn serve(&mut self) -> Result<(), Status> {
        loop {
            if self.tx.is_closed() {
                return Ok(());
            }
            if *self.shutdown.borrow() {
                return Err(shutting_down());
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
                if pumped == Pumped::Done {
                    pumped = Pumped::Idle;
                }
                continue;
            }
            let (partition, from, stop) = (cursor.partition, cursor.next, cursor.stop);
            let records = self.read(partition, from).await?;
            let Some(last) = records.iter().rev().find(|r| r.offset < stop) else {
                return Err(Status::internal(format!(
                    "{}/{partition}: a read from {from} before the end {end} returned nothing",
                    self.name
                )));
            };
            self.cursors[i].next = last.offset + 1;
            if !self.send(partition, records, stop).await? {
                return Ok(Pumped::Done);
            }
            pumped = Pumped::Progress;
        }
        Ok(pumped)
    }

    async fn read(&self, partition: u32, from: u64) -> Result<Vec<Record>, Status> {
        match self
            .topic
            .read(partition, from, self.max_message_bytes)
            .await
        {
            Ok(records) => Ok(records),
            Err(Error::TopicNotFound(_)) => Err(self.deleted()),
            Err(error) => Err(status(error)),
        }
    }

    /// Sends the records before `stop`, cut into responses near the byte
    /// target. False when the subscriber is gone.
    async fn send(&self, partition: u32, records: Vec<Record>, stop: u64) -> Result<bool, Status> {
        let target = self.max_message_bytes as usize;
        let mut response = pb::SubscribeResponse::default();
        let mut bytes = 0;
        for record in records.into_iter().take_while(|r| r.offset < stop) {
            let record = convert::record(partition, record);
            bytes += record.encoded_len();
            response.records.push(record);
            if bytes >= target {
                if !self.deliver(std::mem::take(&mut response)).await? {
                    return Ok(false);
                }
                bytes = 0;
            }
        }
        if response.records.is_empty() {
            return Ok(true);
        }
        self.deliver(response).await
    }

    /// Queues one response, unless the broker starts shutting down first.
    async fn deliver(&self, response: pb::SubscribeResponse) -> Result<bool, Status> {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            sent = self.tx.send(Ok(response)) => Ok(sent.is_ok()),
            _ = shutdown.wait_for(|stopping| *stopping) => Err(shutting_down()),
        }
    }

    fn deleted(&self) -> Status {
        Status::not_found(format!("topic {:?} was deleted", self.name))
    }

    /// Sleeps until a partition's end moves, the broker shuts down or the
    /// subscriber leaves.
    async fn wait(&mut self) -> Result<(), Status> {
        let deleted = self.deleted();
        let Subscription {
            cursors,
            shutdown,
            tx,
            ..
        } = self;
        let changes: Vec<Pin<Box<_>>> = cursors
            .iter_mut()
            .filter(|c| !c.finished())
            .map(|c| Box::pin(c.end.changed()))
            .collect();
        tokio::select! {
            (changed, _, _) = select_all(changes) => changed.map_err(|_| deleted),
            // A closed shutdown channel means the server is gone: stop too.
            changed = shutdown.changed() => changed.map_err(|_| shutting_down()),
            _ = tx.closed() => Ok(()),
        }
    }
}
