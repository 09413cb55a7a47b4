//! Postbox through `postbox-client`: a broker process the bench starts on a
//! temporary data directory (or one at an address it is given), a topic per
//! run, a `Producer` per bench producer and a `Consumer` per bench consumer.
//!
//! By default publishes go out as the client sends them, with a generated
//! idempotency key on every record, so the figures include the broker's dedup
//! work; `keyless` measures the log alone (`generate_idempotency_keys =
//! false`, as publishes to the peers carry no dedup id either).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use postbox_client::{
    Admin, Consumer as PostboxConsumer, ConsumerConfig, OutgoingRecord,
    Producer as PostboxProducer, ProducerConfig, TopicSettings,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{Consumer, Durability, Producer, System, Topic};

/// How long a started broker may take to listen.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A broker process of the bench's own, stopped (SIGKILL) and its data
/// directory deleted when dropped.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Child,
    pid: u32,
    _dir: tempfile::TempDir,
}

impl BrokerProcess {
    /// Starts `binary` on a free loopback port over a fresh directory in
    /// `parent`, returning it and its address.
    pub async fn start(binary: &Path, parent: &Path) -> anyhow::Result<(BrokerProcess, String)> {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::tempdir_in(parent)
            .with_context(|| format!("creating a data directory in {}", parent.display()))?;
        let log = std::fs::File::create(dir.path().join("broker.log"))?;
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("POSTBOX_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the broker exited at once"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        tokio::time::timeout(
            BROKER_START_TIMEOUT,
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("the broker did not listen in time")??;
        let Some(addr) = line.trim().strip_prefix("postbox-broker listening on ") else {
            bail!(
                "the broker did not announce its address (got {line:?}); see {}",
                dir.path().join("broker.log").display()
            );
        };
        let addr = addr.to_owned();
        let broker = BrokerProcess {
            child,
            pid,
            _dir: dir,
        };
        Ok((broker, addr))
    }

    /// Resets the process's peak resident set, so that the next
    /// [`BrokerProcess::peak_rss_bytes`] covers one run only.
    pub fn reset_peak_rss(&self) {
        // Linux: writing 5 to clear_refs resets VmHWM. Best effort: without
        // it, the peak covers the broker's life so far.
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }

    /// The process's peak resident set since start or the last reset. It
    /// counts the pages of segment files the broker has mapped to serve reads.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        status_bytes(self.pid, "VmHWM:")
    }

    /// Samples the process's anonymous resident memory (heap, stacks: what it
    /// allocated, not the log files it maps) every `SAMPLE_INTERVAL` until the
    /// returned guard is dropped; the guard then holds the highest sample.
    pub fn sample_anon_rss(&self) -> AnonRssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let (pid, sampled) = (self.pid, Arc::clone(&peak));
        let task = tokio::spawn(async move {
            loop {
                if let Some(bytes) = status_bytes(pid, "RssAnon:") {
                    sampled.fetch_max(bytes, Ordering::Relaxed);
                }
                tokio::time::sleep(ANON_RSS_SAMPLE_INTERVAL).await;
            }
        });
        AnonRssSampler { peak, task }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// How often the broker's anonymous memory is sampled during a run.
const ANON_RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// A field of `/proc/PID/status` given in kB, in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A running sample of a broker's anonymous memory; stops when dropped.
#[derive(Debug)]
pub struct AnonRssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AnonRssSampler {
    /// The highest sample so far.
    pub fn peak_bytes(&self) -> Option<u64> {
        Some(self.peak.load(Ordering::Relaxed)).filter(|&bytes| bytes > 0)
    }
}

impl Drop for AnonRssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `postbox-broker` binary beside this one (cargo builds both into the
/// same directory).
pub fn default_broker_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("postbox-broker")))
        .unwrap_or_else(|| PathBuf::from("postbox-broker"))
}

/// A Postbox broker at an address.
#[derive(Debug)]
pub struct Postbox {
    address: String,
    admin: Admin,
    /// Publish without idempotency keys.
    keyless: bool,
}

impl Postbox {
    pub async fn connect(address: &str, keyless: bool) -> anyhow::Result<Postbox> {
        let admin = Admin::connect(address).await?;
        admin.list_topics().await?;
        Ok(Postbox {
            address: address.to_owned(),
            admin,
            keyless,
        })
    }
}

impl System for Postbox {
    type Producer = PartitionProducer;
    type Consumer = PostboxConsumer;

    fn durability(&self, durability: Durability) -> &'static str {
        match durability {
            Durability::Sync => "fsync before ack (group commit)",
            Durability::Async => "page cache at ack, fsync every 1000 ms",
        }
    }

    async fn create(&self, topic: &Topic) -> anyhow::Result<()> {
        let _ = self.admin.delete_topic(&topic.name).await;
        let settings = TopicSettings {
            partitions: topic.partitions,
            durability: match topic.durability {
                Durability::Sync => postbox_client::Durability::Sync,
                Durability::Async => postbox_client::Durability::Async,
            },
            ..TopicSettings::default()
        };
        self.admin.create_topic(&topic.name, settings).await?;
        Ok(())
    }

    async fn delete(&self, topic: &Topic) -> anyhow::Result<()> {
        Ok(self.admin.delete_topic(&topic.name).await?)
    }

    async fn producer(&self, topic: &Topic, partition: u32) -> anyhow::Result<PartitionProducer> {
        let config = ProducerConfig {
            generate_idempotency_keys: !self.keyless,
            // Single records go as soon as the batch before them is
            // acknowledged, batching whatever queued meanwhile: the setting
            // for latency, as the peers' clients send at once too.
            linger_ms: 0,
            ..ProducerConfig::default()
        };
        let producer = PostboxProducer::connect(&self.address, config).await?;
        Ok(PartitionProducer {
            producer,
            topic: topic.name.clone(),
            partition,
        })
    }

    async fn consumer(
        &self,
        topic: &Topic,
        partitions: Vec<u32>,
    ) -> anyhow::Result<PostboxConsumer> {
        let mut config = ConsumerConfig::new(topic.name.clone());
        if let [partition] = partitions[..] {
            config.partition = Some(partition);
        } else if partitions.len() != topic.partitions as usize {
            bail!("a Postbox consumer reads one partition or all of them");
        }
        Ok(PostboxConsumer::subscribe(&self.address, config).await?)
    }
}

/// A Postbox producer pinned to one partition.
#[derive(Debug)]
pub struct PartitionProducer {
    producer: PostboxProducer,
    topic: String,
    partition: u32,
}

impl Producer for PartitionProducer {
    async fn publish(&self, records: Vec<Bytes>) -> anyhow::Result<()> {
        let outgoing = |payload| OutgoingRecord::new(payload).partition(self.partition);
        if let [payload] = &records[..] {
            // One record: the client's batcher groups concurrent sends.
            self.producer
                .send(&self.topic, outgoing(payload.clone()))
                .await?;
        } else {
            let records = records.into_iter().map(outgoing).collect();
            self.producer.send_batch(&self.topic, records).await?;
        }
        Ok(())
    }
}

impl Consumer for PostboxConsumer {
    async fn next_batch(&mut self) -> anyhow::Result<Vec<Bytes>> {
        let mut batch = Vec::new();
        loop {
            match self.next().await {
                Some(Ok(record)) => batch.push(record.payload),
                Some(Err(error)) => return Err(error.into()),
                None => bail!("the subscription ended"),
            }
            if self.buffered_records() == 0 {
                return Ok(batch);
            }
        }
    }
}

/// Where the bench puts a started broker's data: `POSTBOX_BENCH_DIR`, or
/// `target/bench-data` (on the same disk as the peers' data on a single-disk
/// machine; never a tmpfs, where fsync would be free).
pub fn data_parent() -> PathBuf {
    std::env::var_os("POSTBOX_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench-data"))
}
