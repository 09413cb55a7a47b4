//! Topic administration, consumer-group offsets and pull reads: the broker's
//! unary calls other than publish.
//!
//! Invariants: calls that are safe to repeat (reads, commits, which set
//! rather than add) are retried on transient failures; `create_topic` and
//! `delete_topic` are tried once, since a retry after a lost answer would
//! report ALREADY_EXISTS or NOT_FOUND for a call that in fact succeeded.

use std::sync::Arc;

use postbox_proto::v1 as pb;

use crate::connection::{Connection, REQUEST_TIMEOUT_MS_DEFAULT};
use crate::error::Result;
use crate::retry::RetryPolicy;
use crate::types::{Fetched, TopicInfo, TopicSettings};

/// Topic and offset administration on one broker.
#[derive(Debug, Clone)]
pub struct Admin {
    connection: Arc<Connection>,
    retry: RetryPolicy,
    request_timeout_ms: u64,
}

impl Admin {
    /// Connects to the broker at `address` (`host:port` or `http://host:port`).
    pub async fn connect(address: &str) -> Result<Admin> {
        let connection = Connection::open(address).await?;
        Ok(Admin::on(
            Arc::new(connection),
            RetryPolicy::default(),
            REQUEST_TIMEOUT_MS_DEFAULT,
        ))
    }

    /// An admin client sharing an existing connection.
    pub(crate) fn on(
        connection: Arc<Connection>,
        retry: RetryPolicy,
        request_timeout_ms: u64,
    ) -> Admin {
        Admin {
            connection,
            retry,
            request_timeout_ms,
        }
    }

    pub(crate) fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// Creates a topic; ALREADY_EXISTS if one of that name exists.
    pub async fn create_topic(&self, name: &str, settings: TopicSettings) -> Result<TopicInfo> {
        let request = settings.into_proto(name);
        let info = self
            .connection
            .call(
                "create topic",
                self.request_timeout_ms,
                |mut client| async move { client.create_topic(request).await },
            )
            .await?;
        Ok(TopicInfo::from_proto(info))
    }

    /// Deletes a topic, its records and its groups' offsets.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = pb::DeleteTopicRequest {
            name: name.to_owned(),
        };
        self.connection
            .call(
                "delete topic",
                self.request_timeout_ms,
                |mut client| async move { client.delete_topic(request).await },
            )
            .await?;
        Ok(())
    }

    /// Every topic, by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let response = self
            .connection
            .call_with_retry(
                self.retry,
                "list topics",
                self.request_timeout_ms,
                |mut client| async move { client.list_topics(pb::ListTopicsRequest {}).await },
            )
            .await?;
        Ok(response
            .topics
            .into_iter()
            .map(TopicInfo::from_proto)
            .collect())
    }

    /// One topic's settings and partitions.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let request = pb::DescribeTopicRequest {
            name: name.to_owned(),
        };
        let info = self
            .connection
            .call_with_retry(
                self.retry,
                "describe topic",
                self.request_timeout_ms,
                |mut client| {
                    let request = request.clone();
                    async move { client.describe_topic(request).await }
                },
            )
            .await?;
        Ok(TopicInfo::from_proto(info))
    }

    /// Commits `group`'s next offsets to read, as `(partition, offset)` pairs.
    pub async fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<()> {
        let request = pb::CommitOffsetsRequest {
            group: group.to_owned(),
            topic: topic.to_owned(),
            offsets: offsets
                .iter()
                .map(|&(partition, offset)| pb::PartitionOffset { partition, offset })
                .collect(),
        };
        self.connection
            .call_with_retry(
                self.retry,
                "commit offsets",
                self.request_timeout_ms,
                |mut client| {
                    let request = request.clone();
                    async move { client.commit_offsets(request).await }
                },
            )
            .await?;
        Ok(())
    }

    /// `group`'s committed offsets in `topic` as `(partition, offset)` pairs,
    /// by partition; partitions it never committed are absent.
    pub async fn get_offsets(&self, group: &str, topic: &str) -> Result<Vec<(u32, u64)>> {
        let request = pb::GetOffsetsRequest {
            group: group.to_owned(),
            topic: topic.to_owned(),
        };
        let response = self
            .connection
            .call_with_retry(
                self.retry,
                "get offsets",
                self.request_timeout_ms,
                |mut client| {
                    let request = request.clone();
                    async move { client.get_offsets(request).await }
                },
            )
            .await?;
        Ok(response
            .offsets
            .into_iter()
            .map(|position| (position.partition, position.offset))
            .collect())
    }

    /// Reads records of one partition from `offset`, about `max_bytes` of
    /// them (0: the broker's default), waiting up to `max_wait_ms` when
    /// `offset` is the end.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<Fetched> {
        let request = pb::FetchRequest {
            topic: topic.to_owned(),
            partition,
            offset,
            max_bytes,
            max_wait_ms,
        };
        // The broker may legitimately hold the call for max_wait_ms.
        let timeout_ms = self.request_timeout_ms + u64::from(max_wait_ms);
        let response = self
            .connection
            .call_with_retry(self.retry, "fetch", timeout_ms, |mut client| {
                let request = request.clone();
                async move { client.fetch(request).await }
            })
            .await?;
        Ok(Fetched::from_proto(response))
    }
}
