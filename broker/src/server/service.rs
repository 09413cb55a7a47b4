//! The `postbox.v1.Broker` service: each RPC checks what only the edge can
//! check, converts, and makes one call of the storage backend.
//!
//! Invariants:
//! - The service knows the log only through [`Backend`]; it is generic over
//!   it, so the embedded engine's calls are static dispatch.
//! - A request is checked whole before anything changes: a bad offset in a
//!   commit of several partitions commits none of them.

use std::sync::Arc;
use std::time::Duration;

use postbox_proto::v1 as pb;
use tokio::sync::{watch, Semaphore};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::status;
use super::subscribe::{self, SubscriptionStream};
use crate::backend::limits::FETCH_WAIT_MS_MAX;
use crate::backend::{Backend, Error, Fence, RecordInput, TopicHandle};

/// The service over one backend.
#[derive(Debug)]
pub struct BrokerService<B> {
    backend: Arc<B>,
    /// Open subscriptions; a subscribe past the limit is refused.
    subscriptions: Arc<Semaphore>,
    max_subscriptions: usize,
    /// Becomes true when the broker starts shutting down: streams end.
    shutdown: watch::Receiver<bool>,
}

impl<B: Backend> BrokerService<B> {
    pub fn new(backend: Arc<B>, max_subscriptions: usize, shutdown: watch::Receiver<bool>) -> Self {
        BrokerService {
            backend,
            subscriptions: Arc::new(Semaphore::new(max_subscriptions)),
            max_subscriptions,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> pb::broker_server::Broker for BrokerService<B> {
    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::TopicInfo>, Status> {
        let req = request.into_inner();
        let config = convert::topic_config(&req)?;
        let info = self
            .backend
            .create_topic(&req.name, config)
            .await
            .map_err(status)?;
        tracing::info!(topic = %info.name, partitions = info.config.partitions, "topic created");
        Ok(Response::new(convert::topic_info(info)))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        self.backend.delete_topic(&name).await.map_err(status)?;
        tracing::info!(topic = %name, "topic deleted");
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let topics = self.backend.list_topics().await.map_err(status)?;
        Ok(Response::new(pb::ListTopicsResponse {
            topics: topics.into_iter().map(convert::topic_info).collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicInfo>, Status> {
        let name = request.into_inner().name;
        let info = self.backend.describe_topic(&name).await.map_err(status)?;
        Ok(Response::new(convert::topic_info(info)))
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let req = request.into_inner();
        let records: Vec<RecordInput> =
            req.records.into_iter().map(convert::record_input).collect();
        let fence = req.fence.map(|f| Fence {
            producer: f.producer,
            epoch: f.epoch,
        });
        let results = self
            .backend
            .publish(&req.topic, records, fence)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PublishResponse {
            acks: results.into_iter().map(convert::ack).collect(),
        }))
    }

    async fn advance_fence(
        &self,
        request: Request<pb::AdvanceFenceRequest>,
    ) -> Result<Response<pb::AdvanceFenceResponse>, Status> {
        let fence = request
            .into_inner()
            .fence
            .ok_or_else(|| Status::invalid_argument("AdvanceFence needs a fence"))?;
        let fence = Fence {
            producer: fence.producer,
            epoch: fence.epoch,
        };
        self.backend.advance_fence(fence).await.map_err(status)?;
        Ok(Response::new(pb::AdvanceFenceResponse {}))
    }

    type SubscribeStream = SubscriptionStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let permit = self.subscriptions.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the broker serves at most {} subscriptions at once (max_subscriptions); retry later",
                self.max_subscriptions
            ))
        })?;
        let stream = subscribe::start(
            self.backend.as_ref(),
            request.into_inner(),
            self.shutdown.clone(),
            permit,
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let req = request.into_inner();
        let max_bytes = convert::read_bytes("max_bytes", req.max_bytes)?;
        if req.max_wait_ms > FETCH_WAIT_MS_MAX {
            return Err(status(Error::limit(
                "max_wait_ms",
                FETCH_WAIT_MS_MAX.into(),
                req.max_wait_ms.into(),
            )));
        }
        let topic = self.backend.topic(&req.topic).await.map_err(status)?;
        let mut end = topic.watch_end(req.partition).map_err(status)?;
        if req.max_wait_ms > 0 && *end.borrow_and_update() == req.offset {
            let wait = Duration::from_millis(req.max_wait_ms.into());
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                // Timing out or the topic going away both mean: answer with
                // what there is now, which the read below finds out.
                _ = tokio::time::timeout(wait, end.wait_for(|end| *end > req.offset)) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => {
                    return Err(Status::unavailable("the broker is shutting down"));
                }
            }
        }
        let records = topic
            .read(req.partition, req.offset, max_bytes)
            .await
            .map_err(status)?;
        let info = topic.info().map_err(status)?;
        let p = info
            .partitions
            .get(req.partition as usize)
            .ok_or_else(|| Status::not_found(format!("{}/{} is gone", req.topic, req.partition)))?;
        let next_offset = records.last().map_or(req.offset, |r| r.offset + 1);
        Ok(Response::new(pb::FetchResponse {
            records: records
                .into_iter()
                .map(|r| convert::record(req.partition, r))
                .collect(),
            next_offset,
            earliest_offset: p.earliest_offset,
            end_offset: p.end_offset,
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<pb::CommitOffsetsRequest>,
    ) -> Result<Response<pb::CommitOffsetsResponse>, Status> {
        let req = request.into_inner();
        let offsets: Vec<(u32, u64)> = req
            .offsets
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect();
        self.backend
            .commit_offsets(&req.group, &req.topic, offsets)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CommitOffsetsResponse {}))
    }

    async fn get_offsets(
        &self,
        request: Request<pb::GetOffsetsRequest>,
    ) -> Result<Response<pb::GetOffsetsResponse>, Status> {
        let req = request.into_inner();
        let offsets = self
            .backend
            .committed_offsets(&req.group, &req.topic)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetOffsetsResponse {
            offsets: offsets
                .into_iter()
                .map(|c| pb::PartitionOffset {
                    partition: c.partition,
                    offset: c.offset,
                })
                .collect(),
        }))
    }
}
