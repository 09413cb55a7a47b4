//! Redis Streams through the `redis` crate: one stream key per partition
//! (`<topic>:<partition>`), a batch published as one pipeline of `XADD`s, and
//! consumers reading with blocking `XREAD`s.
//!
//! What an `XADD` reply means depends on the server's persistence settings,
//! read at connect (`CONFIG GET appendonly appendfsync`): memory only without
//! an append-only file, else the AOF's fsync policy.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Client, Value};

use super::{Consumer, Durability, Producer, System, Topic};

/// How long a reply may take: a pipeline of a large batch takes a while on a
/// loaded machine, and the client's default (500 ms) would fail it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most entries one `XREAD` returns.
const READ_COUNT_MAX: usize = 1_000;
/// How long one `XREAD` blocks for new entries before it is repeated.
const READ_BLOCK_MS: u64 = 1_000;
/// The field that holds a record's payload.
const PAYLOAD_FIELD: &str = "d";

/// A Redis server.
#[derive(Debug)]
pub struct Redis {
    client: Client,
    admin: MultiplexedConnection,
    durability: &'static str,
}

impl Redis {
    pub async fn connect(address: &str) -> anyhow::Result<Redis> {
        let client = Client::open(format!("redis://{address}/"))?;
        let mut admin = connection(&client).await?;
        let config: HashMap<String, String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("append*")
            .query_async(&mut admin)
            .await?;
        let durability = match (
            config.get("appendonly").map(String::as_str),
            config.get("appendfsync").map(String::as_str),
        ) {
            (Some("yes"), Some("always")) => "AOF fsync before reply",
            (Some("yes"), Some("everysec")) => "AOF page cache at reply, fsync every second",
            (Some("yes"), _) => "AOF page cache at reply, fsync left to the OS",
            _ => "memory only (no append-only file)",
        };
        Ok(Redis {
            client,
            admin,
            durability,
        })
    }
}

async fn connection(client: &Client) -> anyhow::Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

fn key(topic: &Topic, partition: u32) -> String {
    format!("{}:{partition}", topic.name)
}

fn all_keys(topic: &Topic) -> Vec<String> {
    (0..topic.partitions).map(|p| key(topic, p)).collect()
}

impl System for Redis {
    type Producer = RedisProducer;
    type Consumer = RedisConsumer;

    fn durability(&self, _durability: Durability) -> &'static str {
        self.durability
    }

    async fn create(&self, topic: &Topic) -> anyhow::Result<()> {
        // A stream key comes into being with its first XADD.
        self.delete(topic).await
    }

    async fn delete(&self, topic: &Topic) -> anyhow::Result<()> {
        let mut admin = self.admin.clone();
        let () = redis::cmd("DEL")
            .arg(all_keys(topic))
            .query_async(&mut admin)
            .await?;
        Ok(())
    }

    async fn producer(&self, topic: &Topic, partition: u32) -> anyhow::Result<RedisProducer> {
        Ok(RedisProducer {
            connection: connection(&self.client).await?,
            key: key(topic, partition),
        })
    }

    async fn consumer(&self, topic: &Topic, partitions: Vec<u32>) -> anyhow::Result<RedisConsumer> {
        let keys = partitions.iter().map(|&p| key(topic, p)).collect();
        Ok(RedisConsumer {
            connection: connection(&self.client).await?,
            last_ids: vec!["0".to_owned(); partitions.len()],
            keys,
        })
    }
}

/// Appends to one partition's stream key.
#[derive(Debug)]
pub struct RedisProducer {
    connection: MultiplexedConnection,
    key: String,
}

impl Producer for RedisProducer {
    async fn publish(&self, records: Vec<Bytes>) -> anyhow::Result<()> {
        let mut pipeline = redis::pipe();
        for payload in &records {
            pipeline
                .cmd("XADD")
                .arg(&self.key)
                .arg("*")
                .arg(PAYLOAD_FIELD)
                .arg(payload.as_ref())
                .ignore();
        }
        let mut connection = self.connection.clone();
        let () = pipeline.query_async(&mut connection).await?;
        Ok(())
    }
}

/// Reads its partitions' stream keys from their first entries.
#[derive(Debug)]
pub struct RedisConsumer {
    connection: MultiplexedConnection,
    keys: Vec<String>,
    /// Per key, the id of the last entry read ("0" before the first).
    last_ids: Vec<String>,
}

impl RedisConsumer {
    async fn read(&mut self) -> anyhow::Result<Option<StreamReadReply>> {
        Ok(redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT_MAX)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS")
            .arg(&self.keys)
            .arg(&self.last_ids)
            .query_async(&mut self.connection)
            .await?)
    }
}

impl Consumer for RedisConsumer {
    async fn next_batch(&mut self) -> anyhow::Result<Vec<Bytes>> {
        loop {
            let Some(reply) = self.read().await? else {
                continue;
            };
            let mut batch = Vec::new();
            for stream in reply.keys {
                let Some(index) = self.keys.iter().position(|key| *key == stream.key) else {
                    bail!("XREAD answered for a key not asked for: {}", stream.key);
                };
                for entry in stream.ids {
                    match entry.map.get(PAYLOAD_FIELD) {
                        Some(Value::BulkString(payload)) => {
                            batch.push(Bytes::from(payload.clone()))
                        }
                        other => bail!("entry {} has no payload field: {other:?}", entry.id),
                    }
                    self.last_ids[index] = entry.id;
                }
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}
