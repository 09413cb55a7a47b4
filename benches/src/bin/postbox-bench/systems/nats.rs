//! NATS JetStream through `async-nats`: a file-storage stream per topic with
//! one subject per partition (`<topic>.<partition>`), publishes that await
//! JetStream's ack, and an ordered consumer per partition (the consumer the
//! NATS docs recommend for replay).
//!
//! JetStream writes a message to its file store before it acks, but syncs the
//! files to disk lazily (the server's `sync_interval`), so an ack means "in the
//! page cache" whatever the bench's `--durability`.

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, stream::StorageType};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::{Durability, MergedConsumer, Producer, System, Topic};

/// A NATS server with JetStream.
#[derive(Debug)]
pub struct Nats {
    address: String,
    jetstream: jetstream::Context,
}

impl Nats {
    pub async fn connect(address: &str) -> anyhow::Result<Nats> {
        let client = async_nats::connect(address).await?;
        // Asked raw: async-nats's typed account info does not parse a 2.9
        // server's answer.
        let info = client
            .request("$JS.API.INFO", Bytes::new())
            .await
            .context("asking for JetStream's account info")?;
        if info.payload.windows(7).any(|w| w == b"\"error\"") {
            bail!(
                "JetStream is not enabled on this server: {}",
                String::from_utf8_lossy(&info.payload)
            );
        }
        let jetstream = jetstream::new(client);
        Ok(Nats {
            address: address.to_owned(),
            jetstream,
        })
    }
}

async fn jetstream_at(address: &str) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::connect(address).await?;
    Ok(jetstream::new(client))
}

fn subject(topic: &Topic, partition: u32) -> String {
    format!("{}.{partition}", topic.name)
}

impl System for Nats {
    type Producer = NatsProducer;
    type Consumer = MergedConsumer;

    fn durability(&self, _durability: Durability) -> &'static str {
        "page cache at ack (file store, lazy fsync)"
    }

    async fn create(&self, topic: &Topic) -> anyhow::Result<()> {
        let _ = self.jetstream.delete_stream(&topic.name).await;
        let config = jetstream::stream::Config {
            name: topic.name.clone(),
            subjects: vec![format!("{}.>", topic.name)],
            storage: StorageType::File,
            ..Default::default()
        };
        self.jetstream.create_stream(config).await?;
        Ok(())
    }

    async fn delete(&self, topic: &Topic) -> anyhow::Result<()> {
        self.jetstream.delete_stream(&topic.name).await?;
        Ok(())
    }

    async fn producer(&self, topic: &Topic, partition: u32) -> anyhow::Result<NatsProducer> {
        Ok(NatsProducer {
            jetstream: jetstream_at(&self.address).await?,
            subject: subject(topic, partition),
        })
    }

    async fn consumer(
        &self,
        topic: &Topic,
        partitions: Vec<u32>,
    ) -> anyhow::Result<MergedConsumer> {
        let jetstream = jetstream_at(&self.address).await?;
        let stream = jetstream.get_stream(&topic.name).await?;
        let mut sources = Vec::new();
        for partition in partitions {
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: subject(topic, partition),
                    ..Default::default()
                })
                .await?;
            let messages = consumer
                .messages()
                .await?
                .map_ok(|message| message.payload.clone())
                .map_err(anyhow::Error::from);
            sources.push(messages.boxed());
        }
        Ok(MergedConsumer::new(sources))
    }
}

/// Publishes to one partition's subject on a connection of its own.
#[derive(Debug)]
pub struct NatsProducer {
    jetstream: jetstream::Context,
    subject: String,
}

impl Producer for NatsProducer {
    async fn publish(&self, records: Vec<Bytes>) -> anyhow::Result<()> {
        // Every message is sent before any ack is awaited: a batch costs one
        // round trip, as in `nats bench --js`.
        let mut acks = Vec::with_capacity(records.len());
        for payload in records {
            acks.push(
                self.jetstream
                    .publish(self.subject.clone(), payload)
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }
}
