//! The engine: the data directory, the topics in it, the metadata and dedup
//! run stores, and
//! two background threads: maintenance (async flushes, retention) and
//! checkpoints (dedup checkpoints, paced so as to spare the publish path).
//!
//! This is the storage engine's whole public face; the gRPC service (a later
//! layer) calls only this. Blocking: callers in async code use
//! `block_in_place` or `spawn_blocking` for appends and reads.
//!
//! Layout of the data directory:
//!
//! ```text
//! <data-dir>/meta/                       sled: consumer offsets, fences
//! <data-dir>/dedup/store.id              the run store's id (checkpoints name it)
//! <data-dir>/dedup/<store key, hex>/     dedup keys, one sorted run per checkpoint
//! <data-dir>/topics/<topic>/topic.json   the topic's settings (source of truth)
//! <data-dir>/topics/<topic>/dedup.checkpoint
//! <data-dir>/topics/<topic>/<partition>/<base:020>.log|.index
//! ```
//!
//! Invariants:
//! - Topic names are validated before they touch a path.
//! - A committed offset is clamped to the partition's log when read, so it never
//!   points past the end or before the earliest offset.
//! - Dropping the engine stops its threads and syncs nothing (like a crash);
//!   [`Engine::close`] flushes everything first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::watch;

use crate::config::{EngineConfig, TopicConfig};
use crate::dedup::runs::RunStore;
use crate::error::{Error, IoContext, Result};
use crate::limits::READ_BYTES_MAX;
use crate::meta::{MetaStore, SledMeta};
use crate::names::{validate_group, validate_producer, validate_topic};
use crate::storage::batch::{validate_batch, Record, RecordInput};
use crate::storage::io::{create_dir_durable, RealFs, Vfs};
use crate::storage::zero_fill::ZeroFillBudget;
use crate::sync::{lock, read, write};
use crate::topic::{PublishResult, Topic, TopicInfo, TOPIC_FILE};

/// The dedup run store's directory in the data directory.
const RUNS_DIR: &str = "dedup";
/// The topics' directory in the data directory.
const TOPICS_DIR: &str = "topics";

/// The storage engine.
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    /// The background threads, taken (and joined) by the first close or drop.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// An exclusive lock on `<data-dir>/LOCK` for the engine's life: two
    /// processes recovering and appending to the same files would overwrite
    /// each other's acknowledged records.
    data_dir_lock: Option<std::fs::File>,
}

mod background;
mod data_dir;
mod descriptors;
mod fences;
mod reopen;

use data_dir::lock_data_dir;
pub use data_dir::LOCK_FILE;
pub use descriptors::DataDirFiles;
pub use fences::Fence;
use fences::Fences;

#[derive(Debug)]
struct Inner {
    config: EngineConfig,
    vfs: Arc<dyn Vfs>,
    meta: Arc<dyn MetaStore>,
    /// Every topic's checkpointed dedup keys.
    runs: Arc<RunStore>,
    /// Zeros written ahead of data, shared by every partition's writer.
    zero_fill: Arc<ZeroFillBudget>,
    topics_dir: PathBuf,
    /// Poisoned: goes on (see `crate::sync`): one insert or remove at a time.
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic creation and deletion. Poisoned: goes on (guards
    /// nothing; a creation or deletion cut short is finished or undone at
    /// the next open, from the directory).
    admin: Mutex<()>,
    /// Tells the background threads to stop.
    stopping: AtomicBool,
    /// Fenced producers' epochs, and the locks that serialise them.
    fences: Fences,
}

/// A group's committed offset for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedOffset {
    pub partition: u32,
    /// Where the group's next read starts (clamped to the log).
    pub offset: u64,
}

impl Engine {
    /// Opens (or creates) the data directory on the real file system.
    pub fn open(config: EngineConfig) -> Result<Engine> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .context(|| format!("creating {}", config.data_dir.display()))?;
        let lock = lock_data_dir(&config.data_dir)?;
        let meta = SledMeta::open(&config.data_dir.join("meta"), config.meta_cache_bytes)?;
        let mut engine = Self::open_with(config, Arc::new(RealFs), Arc::new(meta))?;
        engine.data_dir_lock = Some(lock);
        Ok(engine)
    }

    /// Opens with a given file system and metadata store (tests use a
    /// simulated disk). The dedup runs are on `vfs` too.
    pub fn open_with(
        config: EngineConfig,
        vfs: Arc<dyn Vfs>,
        meta: Arc<dyn MetaStore>,
    ) -> Result<Engine> {
        config.validate()?;
        let topics_dir = config.data_dir.join(TOPICS_DIR);
        create_dir_durable(vfs.as_ref(), &topics_dir)
            .context(|| format!("creating {}", topics_dir.display()))?;
        let runs = RunStore::open(vfs.clone(), config.data_dir.join(RUNS_DIR))?;
        let zero_fill = Arc::new(ZeroFillBudget::new(config.zero_fill_bytes_max));
        let inner = Arc::new(Inner {
            config,
            vfs,
            meta: meta.clone(),
            runs: Arc::new(runs),
            zero_fill,
            topics_dir,
            topics: RwLock::new(BTreeMap::new()),
            admin: Mutex::new(()),
            stopping: AtomicBool::new(false),
            fences: Fences::new(meta.clone()),
        });
        inner.open_topics()?;
        let mut background = Vec::new();
        for (name, work) in [
            ("postbox-maintenance", Inner::maintenance_loop as fn(&Inner)),
            ("postbox-checkpoints", Inner::checkpoint_loop),
        ] {
            let thread_inner = inner.clone();
            let thread = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || work(&thread_inner))
                .context(|| format!("starting the {name} thread"))?;
            background.push(thread);
        }
        Ok(Engine {
            inner,
            background: Mutex::new(background),
            data_dir_lock: None,
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Creates a topic. Fails if it exists or the settings are invalid. A
    /// creation that fails is undone: nothing of it comes back at a restart.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        validate_topic(name)?;
        config.validate()?;
        let inner = &self.inner;
        let _admin = lock(&inner.admin);
        if read(&inner.topics).contains_key(name) {
            return Err(Error::TopicExists(name.to_string()));
        }
        let dir = inner.topics_dir.join(name);
        if inner.vfs.exists(&dir) {
            // Left over from an interrupted creation or deletion.
            inner
                .vfs
                .remove_dir_all(&dir)
                .context(|| format!("removing {}", dir.display()))?;
        }
        let topic = inner
            .create_and_open(name, &dir, &config)
            .inspect_err(|error| {
                tracing::warn!(topic = name, %error, "creating the topic failed; undoing it");
                inner.undo_creation(name, &dir);
            })?;
        let info = topic.info();
        write(&inner.topics).insert(name.to_string(), topic);
        tracing::info!(
            topic = name,
            partitions = info.config.partitions,
            "created topic"
        );
        Ok(info)
    }

    /// Deletes a topic, its files and its metadata. Answers OK once the
    /// deletion is durable; a deletion that fails before that leaves the
    /// topic whole and usable. Leftovers of a deletion (files that could not
    /// be removed) are logged and removed at the next open.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        validate_topic(name)?;
        let inner = &self.inner;
        let _admin = lock(&inner.admin);
        let topic = inner.topic(name)?;
        // Waits for publishes and maintenance work in flight on this topic;
        // later ones wait for the outcome.
        let mut deleted = topic.deletion_guard();
        inner.remove_settings(&topic)?;
        *deleted = true;
        write(&inner.topics).remove(name);
        drop(deleted);
        inner.clean_up_deleted(&topic);
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// An open topic.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner.topic(name)
    }

    pub fn list_topics(&self) -> Vec<TopicInfo> {
        read(&self.inner.topics)
            .values()
            .map(|t| t.info())
            .collect()
    }

    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        Ok(self.topic(name)?.info())
    }

    /// Appends records and waits for their acknowledgment; see [`Topic::publish`].
    pub fn publish(&self, topic: &str, records: &[RecordInput]) -> Result<Vec<PublishResult>> {
        self.topic(topic)?.publish(records)
    }

    /// Publishes as [`Engine::publish`] for a fenced producer (an outbox
    /// relay's leader): refused with [`Error::Fenced`] when the producer has
    /// published with a higher epoch before, so a leader that lost its
    /// leadership without noticing cannot publish. A higher epoch is made
    /// durable before anything is appended under it, so an older one stays
    /// refused across crashes. A producer's publishes are serialised, so a
    /// refusal and an acceptance never overlap. A request that is refused
    /// for any reason leaves the epoch as it was.
    pub fn publish_fenced(
        &self,
        topic: &str,
        records: &[RecordInput],
        fence: Fence<'_>,
    ) -> Result<Vec<PublishResult>> {
        validate_producer(fence.producer)?;
        let t = self.topic(topic)?;
        for record in records {
            record.validate()?;
            if let Some(partition) = record.partition {
                t.partition(partition)?;
            }
        }
        validate_batch(records)?;
        let slot = self.inner.fences.slot(fence.producer)?;
        let _serialised = self.inner.fences.enter(&slot, fence)?;
        t.publish(records)
    }

    /// Raises a fenced producer's epoch without publishing (an outbox relay's
    /// new leader announcing itself), so that an older instance is refused
    /// from now on even before the new one publishes. Waits for the
    /// producer's publishes in flight. Refused with [`Error::Fenced`] when a
    /// higher epoch was seen; the same epoch again is accepted.
    pub fn advance_fence(&self, fence: Fence<'_>) -> Result<()> {
        validate_producer(fence.producer)?;
        let slot = self.inner.fences.slot(fence.producer)?;
        self.inner.fences.enter(&slot, fence).map(drop)
    }

    /// Reads records of one partition from `from` on, about `max_bytes` of them.
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_bytes: u32,
    ) -> Result<Vec<Record>> {
        let topic = self.topic(topic)?;
        topic
            .partition(partition)?
            .read(from, max_bytes.min(READ_BYTES_MAX))
    }

    /// The first offset of a partition appended at or after `timestamp_ms`.
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64> {
        self.topic(topic)?
            .partition(partition)?
            .offset_for_timestamp(timestamp_ms)
    }

    /// A receiver of a partition's end offset, to wait for new records.
    pub fn watch_end(&self, topic: &str, partition: u32) -> Result<watch::Receiver<u64>> {
        Ok(self.topic(topic)?.partition(partition)?.watch_end())
    }

    /// Commits a group's offset (the next offset it will read) for a partition.
    pub fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<()> {
        self.commit_offsets(group, topic, &[(partition, offset)])
    }

    /// Commits a group's offsets, `(partition, offset)`: all of them or, when
    /// one is bad (no such partition, past the end), none. Durable when it
    /// returns: an operator who moves a group back must not see it move
    /// forward again after a crash.
    pub fn commit_offsets(&self, group: &str, topic: &str, offsets: &[(u32, u64)]) -> Result<()> {
        validate_group(group)?;
        let t = self.topic(topic)?;
        for &(partition, offset) in offsets {
            let end = t.partition(partition)?.end_offset();
            if offset > end {
                return Err(Error::InvalidArgument(format!(
                    "offset {offset} is past the end of {topic}/{partition} ({end}); a committed offset is the next offset to read"
                )));
            }
        }
        self.inner
            .meta
            .commit_offsets(t.store_key(), group, offsets)?;
        self.inner.meta.sync()
    }

    /// A group's committed offsets in a topic, clamped to each partition's log.
    pub fn committed_offsets(&self, group: &str, topic: &str) -> Result<Vec<CommittedOffset>> {
        validate_group(group)?;
        let t = self.topic(topic)?;
        let mut out = Vec::new();
        for (partition, offset) in self.inner.meta.committed_offsets(t.store_key(), group)? {
            let Ok(p) = t.partition(partition) else {
                continue;
            };
            out.push(CommittedOffset {
                partition,
                offset: offset.clamp(p.earliest_offset(), p.end_offset()),
            });
        }
        Ok(out)
    }

    /// Applies retention to every topic now.
    pub fn enforce_retention(&self) -> Result<usize> {
        self.inner
            .enforce_retention(self.inner.config.clock.now_ms())
    }

    /// Probes and reopens every failed partition now (the maintenance thread
    /// does it by itself, with backoff). Returns how many were reopened; the
    /// first error, after trying them all.
    pub fn reopen_failed_partitions(&self) -> Result<usize> {
        let mut reopened = 0;
        let mut first_error = None;
        for topic in self.inner.all_topics() {
            let Ok(_live) = topic.live() else { continue };
            for id in 0..topic.config().partitions {
                match topic.reopen_partition(id) {
                    Ok(Some(_)) => reopened += 1,
                    Ok(None) => {}
                    Err(error) => {
                        first_error.get_or_insert(error);
                    }
                }
            }
        }
        first_error.map_or(Ok(reopened), Err)
    }

    /// Checkpoints every topic's dedup keys now.
    pub fn checkpoint_dedup(&self) -> Result<()> {
        for topic in self.inner.all_topics() {
            topic.dedup().checkpoint(topic.partitions())?;
        }
        Ok(())
    }

    /// Flushes everything (async partitions, dedup, metadata) and stops.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    /// Stops the background threads and flushes everything, without waiting
    /// for other holders of a shared engine to let go: a server whose
    /// connections outlive it still closes its engine. Appends that race it
    /// are still acknowledged only once durable.
    pub fn shutdown(&self) -> Result<()> {
        self.stop();
        self.flush()
    }

    /// Makes everything acknowledged so far durable: flushes `async`
    /// partitions, checkpoints dedup keys and syncs the metadata store. Fails
    /// only when something acknowledged could not be made durable: a failed
    /// partition all of whose acknowledged records are durable flushes
    /// nothing, and a failed checkpoint loses nothing (the next open rebuilds
    /// its keys from the log), so both are logged and passed over.
    pub fn flush(&self) -> Result<()> {
        for topic in self.inner.all_topics() {
            for partition in topic.partitions() {
                partition.flush()?;
            }
            if let Err(error) = topic.dedup().checkpoint(topic.partitions()) {
                tracing::warn!(topic = topic.name(), %error, "dedup checkpoint failed; the next open rebuilds its keys from the log");
            }
        }
        self.inner.meta.sync()
    }

    fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut *lock(&self.background));
        for thread in threads {
            thread.thread().unpark();
            if thread.join().is_err() {
                tracing::error!("a background thread of the engine panicked");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        validate_topic(name)?;
        read(&self.topics)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))
    }

    fn all_topics(&self) -> Vec<Arc<Topic>> {
        read(&self.topics).values().cloned().collect()
    }

    /// Opens every topic directory; removes unfinished creations and deletions.
    fn open_topics(&self) -> Result<()> {
        let names = self
            .vfs
            .list_dir(&self.topics_dir)
            .context(|| format!("listing {}", self.topics_dir.display()))?;
        for name in names {
            let dir = self.topics_dir.join(&name);
            if validate_topic(&name).is_err() {
                tracing::warn!(dir = %dir.display(), "ignoring a directory that is not a topic name");
                continue;
            }
            let Some(stored) = Topic::read_config(self.vfs.as_ref(), &dir)? else {
                tracing::warn!(topic = %name, "removing a topic directory left by an interrupted creation or deletion");
                self.vfs
                    .remove_dir_all(&dir)
                    .context(|| format!("removing {}", dir.display()))?;
                continue;
            };
            let started = Instant::now();
            let topic = Topic::open(
                self.vfs.clone(),
                self.runs.clone(),
                self.zero_fill.clone(),
                &self.config,
                &name,
                dir,
                stored,
            )?;
            tracing::info!(topic = %name, elapsed_ms = started.elapsed().as_millis() as u64, "opened topic");
            write(&self.topics).insert(name, Arc::new(topic));
        }
        Ok(())
    }

    /// Creates a topic's files and opens it; see [`Engine::create_topic`].
    fn create_and_open(&self, name: &str, dir: &Path, config: &TopicConfig) -> Result<Arc<Topic>> {
        let stored = Topic::create(&self.vfs, dir, config)?;
        self.vfs
            .sync_dir(&self.topics_dir)
            .context(|| format!("syncing {}", self.topics_dir.display()))?;
        let topic = Topic::open(
            self.vfs.clone(),
            self.runs.clone(),
            self.zero_fill.clone(),
            &self.config,
            name,
            dir.to_path_buf(),
            stored,
        )?;
        Ok(Arc::new(topic))
    }

    /// Undoes a failed creation. The settings file is what makes a directory
    /// a topic at the next open: once its removal is durable the creation is
    /// undone, whatever else of the directory is left (the next open or
    /// creation removes it).
    fn undo_creation(&self, name: &str, dir: &Path) {
        let settings = dir.join(TOPIC_FILE);
        let undone = match self.vfs.exists(&settings) {
            true => self.vfs.remove_file(&settings),
            false => Ok(()),
        }
        .and_then(|()| self.vfs.sync_dir(dir));
        if let Err(error) = undone {
            tracing::error!(topic = name, %error, "could not undo a failed topic creation: the topic may come back at the next restart");
        }
        if let Err(error) = self.vfs.remove_dir_all(dir) {
            tracing::warn!(topic = name, %error, "could not remove a failed creation's directory; the next open removes it");
        }
    }

    /// The deletion's commit point: the settings file removed, durably. On
    /// failure the file is put back, so the topic stays whole.
    fn remove_settings(&self, topic: &Topic) -> Result<()> {
        let settings = topic.dir().join(TOPIC_FILE);
        self.vfs
            .remove_file(&settings)
            .context(|| format!("removing {}", settings.display()))?;
        let synced = self
            .vfs
            .sync_dir(topic.dir())
            .context(|| format!("syncing {}", topic.dir().display()));
        if synced.is_err() {
            if let Err(error) = topic.restore_settings(self.vfs.as_ref()) {
                tracing::error!(topic = topic.name(), %error, "could not restore the settings of a topic whose deletion failed: it stays usable until the broker restarts, and is gone after that");
            }
        }
        synced
    }

    /// Removes what a durable deletion leaves: the topic's dedup runs, its
    /// metadata and its directory. Failures are logged, not returned: the
    /// topic is gone either way, its runs and metadata are keyed by an
    /// incarnation no topic has again, and the next open removes the directory.
    fn clean_up_deleted(&self, topic: &Topic) {
        let name = topic.name();
        let steps: [(&str, Result<()>); 2] = [
            ("dedup runs", self.runs.delete_topic(topic.store_key())),
            (
                "metadata",
                self.meta
                    .delete_topic(topic.store_key())
                    .and_then(|()| self.meta.sync()),
            ),
        ];
        for (what, done) in steps {
            if let Err(error) = done {
                tracing::warn!(topic = name, %error, "removing a deleted topic's {what} failed; they are left unused");
            }
        }
        let removed = self
            .vfs
            .remove_dir_all(topic.dir())
            .and_then(|()| self.vfs.sync_dir(&self.topics_dir));
        if let Err(error) = removed {
            tracing::warn!(topic = name, %error, "removing a deleted topic's directory failed; the next open removes it");
        }
    }

    fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        let mut deleted = 0;
        for topic in self.all_topics() {
            let Ok(_live) = topic.live() else { continue };
            let config = topic.config();
            if config.retention_ms.is_none() && config.retention_bytes.is_none() {
                continue;
            }
            for partition in topic.partitions() {
                deleted += partition.enforce_retention(
                    now_ms,
                    config.retention_ms,
                    config.retention_bytes,
                )?;
            }
        }
        Ok(deleted)
    }
}
