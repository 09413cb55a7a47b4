//! RabbitMQ Streams through `rabbitmq-stream-client` (0.4.4: RabbitMQ 3.10
//! closes the connection of newer clients at their first command), over the
//! stream protocol (port 5552; `scripts/peers.sh` enables its plugin): one
//! stream per partition (`<topic>-<partition>`), publishes that await the
//! broker's confirms, and a consumer per partition from the first offset.
//!
//! RabbitMQ confirms a stream publish once the message is written to the
//! stream's segment file (and replicated, on a cluster); it does not fsync.

use anyhow::bail;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use rabbitmq_stream_client::types::{Message, OffsetSpecification};
use rabbitmq_stream_client::{Environment, NoDedup, Producer as StreamProducer};

use super::{Durability, MergedConsumer, Producer, System, Topic};

/// A RabbitMQ broker with the stream plugin, as user guest.
pub struct RabbitMq {
    environment: Environment,
}

impl std::fmt::Debug for RabbitMq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMq").finish_non_exhaustive()
    }
}

impl RabbitMq {
    pub async fn connect(address: &str) -> anyhow::Result<RabbitMq> {
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => (host, port.parse()?),
            None => bail!("the RabbitMQ stream address must be host:port, not {address:?}"),
        };
        let environment = Environment::builder().host(host).port(port).build().await?;
        Ok(RabbitMq { environment })
    }
}

fn stream(topic: &Topic, partition: u32) -> String {
    format!("{}-{partition}", topic.name)
}

impl System for RabbitMq {
    type Producer = RabbitMqProducer;
    type Consumer = MergedConsumer;

    fn durability(&self, _durability: Durability) -> &'static str {
        "page cache at confirm (no fsync)"
    }

    async fn create(&self, topic: &Topic) -> anyhow::Result<()> {
        for partition in 0..topic.partitions {
            let name = stream(topic, partition);
            let _ = self.environment.delete_stream(&name).await;
            self.environment.stream_creator().create(&name).await?;
        }
        Ok(())
    }

    async fn delete(&self, topic: &Topic) -> anyhow::Result<()> {
        for partition in 0..topic.partitions {
            self.environment
                .delete_stream(&stream(topic, partition))
                .await?;
        }
        Ok(())
    }

    async fn producer(&self, topic: &Topic, partition: u32) -> anyhow::Result<RabbitMqProducer> {
        let producer = self
            .environment
            .producer()
            .build(&stream(topic, partition))
            .await?;
        Ok(RabbitMqProducer { producer })
    }

    async fn consumer(
        &self,
        topic: &Topic,
        partitions: Vec<u32>,
    ) -> anyhow::Result<MergedConsumer> {
        let mut sources = Vec::new();
        for partition in partitions {
            let consumer = self
                .environment
                .consumer()
                .offset(OffsetSpecification::First)
                .build(&stream(topic, partition))
                .await?;
            let deliveries = consumer.map_err(anyhow::Error::from).and_then(|delivery| {
                let payload = delivery.message().data().map(Bytes::copy_from_slice);
                async move { payload.ok_or_else(|| anyhow::anyhow!("a delivery without a body")) }
            });
            sources.push(deliveries.boxed());
        }
        Ok(MergedConsumer::new(sources))
    }
}

/// Publishes to one partition's stream.
pub struct RabbitMqProducer {
    producer: StreamProducer<NoDedup>,
}

impl std::fmt::Debug for RabbitMqProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqProducer").finish_non_exhaustive()
    }
}

impl Producer for RabbitMqProducer {
    async fn publish(&self, records: Vec<Bytes>) -> anyhow::Result<()> {
        let messages = records
            .iter()
            .map(|payload| Message::builder().body(payload.to_vec()).build())
            .collect();
        let statuses = self.producer.batch_send_with_confirm(messages).await?;
        if statuses.len() != records.len() {
            bail!("{} confirms for {} messages", statuses.len(), records.len());
        }
        if let Some(status) = statuses.iter().find(|status| !status.confirmed()) {
            bail!("a message was not confirmed: {:?}", status.status());
        }
        Ok(())
    }
}
