//! Power-loss tests: the engine runs on the simulated disk of `storage::sim`,
//! which at a simulated crash keeps, drops or trashes every write not yet
//! synced and may lose directory entries not yet synced. Thousands of seeds per
//! run (`POSTBOX_POWER_LOSS_SEEDS` raises it for soak runs); after every crash,
//! every acknowledged durable record must be read back byte for byte at its
//! offset, offsets must be dense, nothing unacknowledged may appear as garbage,
//! and acknowledged idempotency keys must still be duplicates.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::storage::io::Vfs;
use crate::testing::sim::{FailOp, Gate, SimFs, SimMeta};
use crate::{Durability, Engine, EngineConfig, Header, Record, RecordInput, TopicConfig};

const SEEDS_PER_TEST_DEFAULT: u64 = 2500;

fn seeds_per_test() -> u64 {
    std::env::var("POSTBOX_POWER_LOSS_SEEDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(SEEDS_PER_TEST_DEFAULT, |total| total.div_ceil(4))
}

pub(super) fn engine_config() -> EngineConfig {
    let mut config = EngineConfig::new("/data");
    // Small index spacing: many entries, so damaged and stale entries are common.
    config.index_interval_bytes = 256;
    // Nothing happens behind the test's back: it flushes and checkpoints itself.
    config.maintenance_interval_ms = 60_000;
    config.dedup_checkpoint_interval_ms = u64::MAX / 2;
    config.retention_check_interval_ms = u64::MAX / 2;
    // Failed partitions stay failed until a test reopens them.
    config.reopen_backoff_min_ms = crate::limits::REOPEN_BACKOFF_MS_MAX;
    config.reopen_backoff_max_ms = crate::limits::REOPEN_BACKOFF_MS_MAX;
    config
}

pub(super) fn topic_config(partitions: u32, durability: Durability) -> TopicConfig {
    TopicConfig {
        partitions,
        durability,
        segment_bytes: 4096,
        fsync_interval_ms: 3_600_000,
        ..TopicConfig::default()
    }
}

pub(super) fn open(fs: &SimFs, meta: &Arc<SimMeta>) -> Engine {
    Engine::open_with(engine_config(), Arc::new(fs.clone()), meta.clone())
        .expect("engine opens after any crash")
}

/// A new simulated disk and metadata store, and an engine open on them.
pub(super) fn fresh() -> (SimFs, Arc<SimMeta>, Engine) {
    let fs = SimFs::new();
    fs.create_dir_all(Path::new("/data")).expect("mkdir");
    fs.sync_dir(Path::new("/")).expect("sync");
    let meta = Arc::new(SimMeta::default());
    let engine = open(&fs, &meta);
    (fs, meta, engine)
}

#[derive(Debug, Clone)]
struct Acked {
    topic: &'static str,
    partition: u32,
    offset: u64,
    record: RecordInput,
}

struct Workload {
    rng: SmallRng,
    seed: u64,
    next: u64,
    attempted: HashMap<Bytes, RecordInput>,
}

impl Workload {
    fn record(&mut self) -> RecordInput {
        self.next += 1;
        let mut payload = format!("{}-{}-", self.seed, self.next).into_bytes();
        let len = self.rng.gen_range(0..700);
        payload.extend((0..len).map(|_| self.rng.gen::<u8>()));
        let record = RecordInput {
            key: self
                .rng
                .gen_bool(0.5)
                .then(|| Bytes::from(format!("key-{}", self.rng.gen_range(0..5)))),
            idempotency_key: self
                .rng
                .gen_bool(0.6)
                .then(|| Bytes::from(format!("id-{}-{}", self.seed, self.next))),
            headers: if self.rng.gen_bool(0.3) {
                vec![Header {
                    name: Bytes::from_static(b"h"),
                    value: Bytes::from(vec![self.rng.gen::<u8>(); 3]),
                }]
            } else {
                Vec::new()
            },
            payload: payload.into(),
            partition: None,
        };
        self.attempted
            .insert(record.payload.clone(), record.clone());
        record
    }
}

fn publish(engine: &Engine, topic: &'static str, records: Vec<RecordInput>) -> Option<Vec<Acked>> {
    let results = engine.publish(topic, &records).ok()?;
    Some(
        results
            .into_iter()
            .zip(records)
            .filter(|(r, _)| !r.duplicate)
            .map(|(r, record)| Acked {
                topic,
                partition: r.partition,
                offset: r.offset,
                record,
            })
            .collect(),
    )
}

pub(super) fn read_all(engine: &Engine, topic: &str, partition: u32) -> Vec<Record> {
    let t = engine.topic(topic).expect("topic survives");
    let p = t.partition(partition).expect("partition");
    let mut out: Vec<Record> = Vec::new();
    let mut offset = p.earliest_offset();
    while offset < p.end_offset() {
        let records = p
            .read(offset, 64 * 1024)
            .unwrap_or_else(|e| panic!("{topic}/{partition} at {offset}: {e}"));
        assert!(!records.is_empty(), "read made no progress at {offset}");
        for record in records {
            assert_eq!(record.offset, offset, "offsets are dense");
            offset += 1;
            out.push(record);
        }
    }
    out
}

fn same(record: &Record, input: &RecordInput) -> bool {
    record.payload == input.payload
        && record.key == input.key
        && record.idempotency_key == input.idempotency_key
        && record.headers == input.headers
}

/// Runs one seed's workload, crash and checks; whether the power went off
/// in the middle of a dedup checkpoint.
fn run_seed(seed: u64) -> bool {
    let (fs, meta, engine) = fresh();
    let mut w = Workload {
        rng: SmallRng::seed_from_u64(seed),
        seed,
        next: 0,
        attempted: HashMap::new(),
    };
    engine
        .create_topic("s", topic_config(2, Durability::Sync))
        .expect("create");
    engine
        .create_topic("a", topic_config(1, Durability::Async))
        .expect("create");

    let mut durable: Vec<Acked> = Vec::new();
    let mut written: Vec<Acked> = Vec::new();
    for _ in 0..w.rng.gen_range(1..50) {
        match w.rng.gen_range(0..10) {
            0..=5 => {
                let n = w.rng.gen_range(1..5);
                let mut records: Vec<RecordInput> = (0..n).map(|_| w.record()).collect();
                // Now and then a retry of an acknowledged record rides along.
                if let Some(old) = durable
                    .iter()
                    .filter(|a| a.topic == "s" && a.record.idempotency_key.is_some())
                    .last()
                {
                    if w.rng.gen_bool(0.2) {
                        records.push(old.record.clone());
                    }
                }
                durable.extend(publish(&engine, "s", records).expect("a healthy publish succeeds"));
            }
            6..=7 => {
                let n = w.rng.gen_range(1..4);
                let records = (0..n).map(|_| w.record()).collect();
                written.extend(publish(&engine, "a", records).expect("a healthy publish succeeds"));
            }
            8 => {
                let topic = engine.topic("a").expect("topic");
                topic.partitions()[0].flush().expect("flush");
                durable.append(&mut written);
            }
            _ => engine.checkpoint_dedup().expect("checkpoint"),
        }
    }
    // Now and then the power goes part-way through a dedup checkpoint: in
    // its run file, the run's naming, or the checkpoint file after it.
    let mut cut_mid_checkpoint = false;
    if w.rng.gen_bool(0.3) {
        fs.cut_power_after(w.rng.gen_range(0..CHECKPOINT_CHANGES_MAX));
        let checkpointed = engine.checkpoint_dedup();
        cut_mid_checkpoint = fs.power_is_off();
        assert_eq!(checkpointed.is_err(), cut_mid_checkpoint, "seed {seed}");
    } else if w.rng.gen_bool(0.3) {
        // The last write's fsync fails: nothing of it was acknowledged.
        fs.fail_next(FailOp::Sync);
        let records = (0..w.rng.gen_range(1..4)).map(|_| w.record()).collect();
        assert!(
            publish(&engine, "s", records).is_none(),
            "a failed fsync is not acknowledged"
        );
        let more = vec![w.record()];
        let partition_failed = publish(&engine, "s", more).is_none();
        let _ = partition_failed; // another partition of "s" may still accept appends
    }
    drop(engine);
    fs.crash(seed);
    meta.crash();

    let engine = open(&fs, &meta);
    let mut stored: BTreeMap<(&str, u32), Vec<Record>> = BTreeMap::new();
    for (topic, partitions) in [("s", 2), ("a", 1)] {
        for partition in 0..partitions {
            let records = read_all(&engine, topic, partition);
            for record in &records {
                let input = w.attempted.get(&record.payload).unwrap_or_else(|| {
                    panic!(
                        "seed {seed}: garbage record at {topic}/{partition}/{}",
                        record.offset
                    )
                });
                assert!(same(record, input), "seed {seed}: a record changed");
            }
            stored.insert((topic, partition), records);
        }
    }
    for acked in &durable {
        let records = &stored[&(acked.topic, acked.partition)];
        let found = records.get(acked.offset as usize);
        assert!(
            found.is_some_and(|r| same(r, &acked.record)),
            "seed {seed}: acknowledged record {}/{}/{} lost",
            acked.topic,
            acked.partition,
            acked.offset
        );
    }
    for acked in durable
        .iter()
        .filter(|a| a.record.idempotency_key.is_some())
    {
        let result = engine
            .publish(acked.topic, std::slice::from_ref(&acked.record))
            .expect("retry");
        assert!(
            result[0].duplicate,
            "seed {seed}: a retried key was appended again"
        );
        assert_eq!(
            (result[0].partition, result[0].offset),
            (acked.partition, acked.offset),
            "seed {seed}"
        );
    }
    let fresh = w.record();
    let result = engine
        .publish("s", &[fresh])
        .expect("appends continue after recovery");
    let end = stored[&("s", result[0].partition)].len() as u64;
    assert_eq!(
        result[0].offset, end,
        "seed {seed}: the next offset follows the recovered end"
    );
    cut_mid_checkpoint
}

/// More changes than one dedup checkpoint of the workload's topics makes
/// (a run file and its naming, the checkpoint file, a topic's first run
/// directory): a power cut after fewer falls inside it.
const CHECKPOINT_CHANGES_MAX: u32 = 16;

fn run_range(part: u64) {
    let n = seeds_per_test();
    let cut_mid_checkpoint = (part * n..(part + 1) * n)
        .filter(|&seed| run_seed(seed))
        .count() as u64;
    // About a quarter of the seeds cut a checkpoint short: far fewer means
    // the workload stopped reaching them.
    assert!(
        cut_mid_checkpoint * 10 >= n,
        "only {cut_mid_checkpoint} of {n} seeds lost power mid-checkpoint"
    );
}

#[test]
fn power_loss_seeds_part_0() {
    run_range(0);
}

#[test]
fn power_loss_seeds_part_1() {
    run_range(1);
}

#[test]
fn power_loss_seeds_part_2() {
    run_range(2);
}

#[test]
fn power_loss_seeds_part_3() {
    run_range(3);
}

#[test]
fn failed_fsync_latches_the_partition_until_reopened() {
    let (fs, meta, engine) = fresh();
    engine
        .create_topic("s", topic_config(1, Durability::Sync))
        .expect("create");
    engine
        .publish("s", &[RecordInput::new("first")])
        .expect("ok");
    fs.fail_next(FailOp::Sync);
    let err = engine
        .publish("s", &[RecordInput::new("second")])
        .expect_err("fsync failed");
    assert!(err.to_string().contains("refuses appends"), "{err}");
    // Never retried: the next append fails too, even though the disk works again.
    let err = engine
        .publish("s", &[RecordInput::new("third")])
        .expect_err("latched");
    assert!(matches!(err, crate::Error::PartitionFailed { .. }), "{err}");
    // Reads of what was acknowledged still work.
    assert_eq!(
        engine.read("s", 0, 0, 1024).expect("read")[0].payload,
        Bytes::from_static(b"first")
    );
    drop(engine);
    expect_recovered(&fs, &meta, "s", 0, b"first");
}

#[test]
fn failed_write_latches_the_partition() {
    let (fs, _meta, engine) = fresh();
    engine
        .create_topic("s", topic_config(1, Durability::Sync))
        .expect("create");
    fs.fail_next(FailOp::Write);
    assert!(engine.publish("s", &[RecordInput::new("x")]).is_err());
    assert!(engine.publish("s", &[RecordInput::new("y")]).is_err());
}

#[test]
fn a_failed_async_flush_is_never_retried() {
    let (fs, _meta, engine) = fresh();
    engine
        .create_topic("a", topic_config(1, Durability::Async))
        .expect("create");
    engine
        .publish("a", &[RecordInput::new("x")])
        .expect("written");
    let topic = engine.topic("a").expect("topic");
    let partition = &topic.partitions()[0];
    fs.fail_next(FailOp::Sync);
    assert!(partition.flush().is_err());
    // The disk works again, but the second flush must not "succeed" over pages
    // the kernel may have dropped.
    assert!(partition.flush().is_err());
    assert_eq!(partition.durable_end(), 0);
    assert!(
        engine.publish("a", &[RecordInput::new("y")]).is_err(),
        "latched"
    );
}

/// How long a test waits for a call to reach a gate, or for work that must
/// not wait for one.
const GATE_TEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until a call waits at `gate`; fails the test with `never` after
/// `GATE_TEST_DEADLINE`.
fn wait_until_held(gate: &Gate, never: &str) {
    let deadline = std::time::Instant::now() + GATE_TEST_DEADLINE;
    while gate.held() == 0 {
        assert!(std::time::Instant::now() < deadline, "{never}");
        std::thread::yield_now();
    }
}

/// Runs `work` on a thread of its own and waits up to `wait` for it: its
/// output, or `None` if it was still running (join the handle once whatever
/// held it is released).
fn within<T: Send + 'static>(
    wait: std::time::Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> (Option<T>, std::thread::JoinHandle<()>) {
    let (done, output) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = done.send(work());
    });
    (output.recv_timeout(wait).ok(), handle)
}

/// An async topic "a" holding record "x", and a flush of its partition held
/// in its sync (release it with `fs.syncs().release()`).
fn a_flush_held_in_its_sync() -> (
    SimFs,
    Arc<Engine>,
    Arc<crate::storage::partition::Partition>,
    std::thread::JoinHandle<crate::Result<()>>,
) {
    let (fs, _meta, engine) = fresh();
    let engine = Arc::new(engine);
    engine
        .create_topic("a", topic_config(1, Durability::Async))
        .expect("create");
    engine
        .publish("a", &[RecordInput::new("x")])
        .expect("written");
    let partition = Arc::clone(&engine.topic("a").expect("topic").partitions()[0]);
    fs.syncs().hold();
    let flushing = {
        let partition = Arc::clone(&partition);
        std::thread::spawn(move || partition.flush())
    };
    wait_until_held(fs.syncs(), "the flush never synced");
    (fs, engine, partition, flushing)
}

#[test]
fn an_async_flush_holds_up_no_append_and_covers_only_what_came_before_it() {
    let (fs, engine, partition, flushing) = a_flush_held_in_its_sync();
    // While the flush's sync is under way, an append is written and
    // acknowledged (an async topic acknowledges once written).
    let (published, publishing) = {
        let engine = Arc::clone(&engine);
        within(GATE_TEST_DEADLINE, move || {
            engine.publish("a", &[RecordInput::new("y")])
        })
    };
    fs.syncs().release();
    let published = published.expect("the append waited for the flush's sync");
    assert_eq!(published.expect("appended")[0].offset, 1);
    flushing.join().expect("flush thread").expect("flushed");
    publishing.join().expect("publish thread");
    // The sync started before "y" was written: only "x" counts as durable.
    assert_eq!(partition.durable_end(), 1);
    partition.flush().expect("flushed");
    assert_eq!(partition.durable_end(), 2);
}

#[test]
fn a_flush_waits_for_a_sync_under_way_in_another_flush() {
    let (fs, _engine, partition, first) = a_flush_held_in_its_sync();
    // "x" is not durable until the held sync ends: a second flush must not
    // report success before then.
    let (second, second_thread) = {
        let partition = Arc::clone(&partition);
        within(std::time::Duration::from_millis(200), move || {
            partition.flush()
        })
    };
    fs.syncs().release();
    assert!(
        second.is_none(),
        "a flush returned during another's sync: {second:?}"
    );
    first.join().expect("first flush thread").expect("flushed");
    second_thread.join().expect("second flush thread");
    assert_eq!(partition.durable_end(), 1);
}

#[test]
fn keys_a_checkpoint_is_moving_stay_duplicates_and_keyed_appends_go_on() {
    let (fs, _meta, engine) = fresh();
    let engine = Arc::new(engine);
    engine
        .create_topic("k", topic_config(1, Durability::Sync))
        .expect("create");
    assert_eq!(engine.publish("k", &[keyed("a")]).expect("a")[0].offset, 0);
    let topic = engine.topic("k").expect("topic");
    // Held in the run file's sync: the segments' syncs go on.
    fs.syncs().hold_under(Path::new("/data/dedup"));
    let checkpointing = {
        let topic = Arc::clone(&topic);
        std::thread::spawn(move || topic.dedup().checkpoint(topic.partitions()))
    };
    wait_until_held(fs.syncs(), "no checkpoint reached the store");
    // While the store insert is under way, "a" is out of the memory map it
    // was in but must still be found, and a new key must go in.
    let (published, publishing) = {
        let engine = Arc::clone(&engine);
        within(GATE_TEST_DEADLINE, move || {
            let again = engine.publish("k", &[keyed("a")]);
            (again, engine.publish("k", &[keyed("b")]))
        })
    };
    fs.syncs().release();
    let (again, new) = published.expect("keyed appends waited for the checkpoint");
    let again = again.expect("publish a again")[0];
    assert!(again.duplicate && again.offset == 0, "{again:?}");
    let new = new.expect("publish b")[0];
    assert!(!new.duplicate && new.offset == 1, "{new:?}");
    checkpointing
        .join()
        .expect("checkpoint thread")
        .expect("checkpointed");
    publishing.join().expect("publish thread");
    let stored = topic
        .dedup()
        .lookup_stored(&[&Bytes::from_static(b"a")])
        .expect("store");
    assert_eq!(stored[0].map(|e| e.offset), Some(0), "a moved to the store");
    for (key, offset) in [("a", 0), ("b", 1)] {
        let retry = engine.publish("k", &[keyed(key)]).expect("retry")[0];
        assert!(
            retry.duplicate && retry.offset == offset,
            "{key}: {retry:?}"
        );
    }
}

#[test]
fn after_a_checkpoint_memory_has_room_for_as_many_keys_as_the_last_interval_brought() {
    let (_fs, _meta, engine) = fresh();
    engine
        .create_topic("k", topic_config(1, Durability::Sync))
        .expect("create");
    let keys = 5_000;
    let records: Vec<RecordInput> = (0..keys)
        .map(|i| RecordInput {
            idempotency_key: Some(Bytes::from(format!("key-{i}"))),
            ..RecordInput::new("v")
        })
        .collect();
    engine.publish("k", &records).expect("publish");
    let topic = engine.topic("k").expect("topic");
    topic
        .dedup()
        .checkpoint(topic.partitions())
        .expect("checkpoint");
    assert_eq!(
        topic.dedup().memory_keys(),
        0,
        "every key moved to the store"
    );
    // The next interval's keys go in without the map growing (and moving
    // every key it holds, under the dedup lock) on the way.
    assert!(
        topic.dedup().memory_capacity() >= keys,
        "room for {} keys",
        topic.dedup().memory_capacity()
    );
}

#[test]
fn a_checkpoint_taken_while_rebuilding_covers_only_what_was_scanned() {
    // More keys than memory holds, never checkpointed: the reopen rebuilds
    // from the window's start and checkpoints part-way. A crash right after
    // must not lose the keys that were not scanned yet.
    let (fs, meta, engine) = fresh();
    engine
        .create_topic("k", topic_config(2, Durability::Sync))
        .expect("create");
    let per_partition = crate::limits::DEDUP_MEMORY_KEYS_MAX as u64 * 3 / 4;
    let key = |p: u32, i: u64| Bytes::from(format!("{p}-{i}"));
    for p in 0..2u32 {
        for chunk in 0..per_partition.div_ceil(10_000) {
            let records: Vec<RecordInput> = (chunk * 10_000
                ..((chunk + 1) * 10_000).min(per_partition))
                .map(|i| RecordInput {
                    idempotency_key: Some(key(p, i)),
                    partition: Some(p),
                    // Enough bytes that a partition takes several reads to scan.
                    payload: Bytes::from(vec![0u8; 200]),
                    ..RecordInput::default()
                })
                .collect();
            engine.publish("k", &records).expect("publish");
        }
    }
    drop(engine);
    meta.crash();
    drop(open(&fs, &meta)); // rebuilds, checkpointing part-way
    fs.crash(1);
    meta.crash();
    let engine = open(&fs, &meta);
    for p in 0..2u32 {
        for i in [0, per_partition / 2, per_partition - 1] {
            let retry = RecordInput {
                idempotency_key: Some(key(p, i)),
                partition: Some(p),
                ..RecordInput::default()
            };
            let r = engine.publish("k", &[retry]).expect("retry")[0];
            assert!(r.duplicate && r.offset == i, "key {p}-{i} forgotten: {r:?}");
        }
    }
}

#[test]
fn a_publish_refused_by_one_partition_still_writes_what_it_queued_on_another() {
    let (fs, _meta, engine) = fresh();
    engine
        .create_topic("s", topic_config(2, Durability::Sync))
        .expect("create");
    fs.fail_next(FailOp::Sync);
    assert!(
        engine.publish("s", &[on(1, "lost")]).is_err(),
        "partition 1 latched"
    );
    // Partition 0's frame is queued before partition 1 refuses the batch: it
    // must be written, not left in the queue with nobody to write it.
    assert!(engine.publish("s", &[on(0, "a"), on(1, "b")]).is_err());
    let topic = engine.topic("s").expect("topic");
    assert_eq!(topic.partitions()[0].end_offset(), 1);
    assert_eq!(
        engine
            .publish("s", &[on(0, "c")])
            .expect("partition 0 works")[0]
            .offset,
        1
    );
}

#[test]
fn a_panicking_leader_latches_its_partition_and_others_keep_serving() {
    let (fs, meta, engine) = fresh();
    engine
        .create_topic("s", topic_config(2, Durability::Sync))
        .expect("create");
    engine
        .create_topic("other", topic_config(1, Durability::Sync))
        .expect("create");
    engine.publish("s", &[on(0, "first")]).expect("ok");
    fs.fail_next(FailOp::PanicOnWrite);
    let err = engine
        .publish("s", &[on(0, "second")])
        .expect_err("the leader panicked mid-group");
    assert!(err.to_string().contains("a writer panicked"), "{err}");
    // Latched: refused with the reason, though the disk works again.
    let err = engine.publish("s", &[on(0, "third")]).expect_err("latched");
    assert!(
        matches!(err, crate::Error::PartitionFailed { ref cause, .. } if cause.contains("panicked")),
        "{err}"
    );
    // The topic's other partition and other topics keep accepting appends.
    engine
        .publish("s", &[on(1, "elsewhere")])
        .expect("the other partition");
    engine
        .publish("other", &[RecordInput::new("x")])
        .expect("another topic");
    drop(engine);
    expect_recovered(&fs, &meta, "s", 0, b"first");
}

#[test]
fn a_panic_holding_the_dedup_memory_refuses_keyed_appends_until_a_restart() {
    let (fs, meta, engine) = fresh();
    engine
        .create_topic("k", topic_config(1, Durability::Sync))
        .expect("create");
    engine.publish("k", &[keyed("a")]).expect("a");
    engine.topic("k").expect("topic").dedup().poison_memory();
    // A duplicate might go unseen: keyed appends and checkpoints are refused.
    let err = engine.publish("k", &[keyed("b")]).expect_err("poisoned");
    assert!(
        matches!(err, crate::Error::Poisoned { .. }) && err.to_string().contains("restart"),
        "{err}"
    );
    assert!(engine.checkpoint_dedup().is_err(), "no checkpoint either");
    // Keyless appends need no dedup index and go on.
    engine
        .publish("k", &[RecordInput::new("keyless")])
        .expect("keyless");
    drop(engine);
    // A restart rebuilds the index from the log: "a" is a duplicate again.
    let engine = open(&fs, &meta);
    let retry = engine.publish("k", &[keyed("a")]).expect("retry")[0];
    assert!(retry.duplicate && retry.offset == 0, "{retry:?}");
}

/// A record with idempotency key `key`.
pub(super) fn keyed(key: &'static str) -> RecordInput {
    RecordInput {
        idempotency_key: Some(Bytes::from_static(key.as_bytes())),
        ..RecordInput::new("v")
    }
}

/// A record pinned to a partition.
pub(super) fn on(partition: u32, payload: &'static str) -> RecordInput {
    RecordInput {
        partition: Some(partition),
        ..RecordInput::new(payload)
    }
}

/// Reopens the engine on a disk where `partition` latched: recovery keeps
/// the record acknowledged before the latch (`first`), and the partition
/// accepts appends again, at the next dense offset.
fn expect_recovered(fs: &SimFs, meta: &Arc<SimMeta>, topic: &str, partition: u32, first: &[u8]) {
    let engine = open(fs, meta);
    let after = engine
        .publish(topic, &[on(partition, "after reopen")])
        .expect("a reopened partition accepts appends");
    let records = read_all(&engine, topic, partition);
    assert_eq!(records[0].payload, first);
    assert_eq!(
        records.last().map(|r| r.payload.clone()),
        Some(Bytes::from_static(b"after reopen"))
    );
    assert_eq!(after[0].offset, records.len() as u64 - 1);
}
