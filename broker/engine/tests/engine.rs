//! The storage engine through its public API, on the real file system and sled:
//! round trips, ordering, partitioning, dedup, offsets, retention, limits.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postbox_engine::limits::*;
use postbox_engine::storage::batch::HEADER_BYTES;
use postbox_engine::{
    Durability, Engine, EngineConfig, Error, Header, ManualClock, RecordInput, TopicConfig,
};

/// Where the tests' manual clocks start: 2026-01-01, so that append times
/// look like real ones.
const CLOCK_START_MS: i64 = 1_767_225_600_000;

struct Broker {
    dir: tempfile::TempDir,
}

impl Broker {
    fn new() -> Self {
        Broker {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn open(&self) -> Engine {
        Engine::open(EngineConfig::new(self.dir.path())).expect("open")
    }

    /// Opens the engine on a clock that moves only when the test says,
    /// starting at `CLOCK_START_MS`.
    fn open_on_manual_clock(&self) -> (Engine, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
        let config = EngineConfig {
            clock: clock.clone(),
            ..EngineConfig::new(self.dir.path())
        };
        (Engine::open(config).expect("open"), clock)
    }

    /// Opens the engine with a topic "t" of `partitions` partitions.
    fn open_with_topic(&self, partitions: u32) -> Engine {
        let engine = self.open();
        engine
            .create_topic("t", TopicConfig::with_partitions(partitions))
            .expect("create");
        engine
    }
}

fn keyed(key: &str, idem: Option<&str>, payload: &str) -> RecordInput {
    RecordInput {
        key: Some(Bytes::from(key.to_string())),
        idempotency_key: idem.map(|s| Bytes::from(s.to_string())),
        headers: vec![Header {
            name: Bytes::from_static(b"trace"),
            value: Bytes::from(format!("t-{payload}")),
        }],
        payload: Bytes::from(payload.to_string()),
        partition: None,
    }
}

fn end_offsets(engine: &Engine, topic: &str) -> Vec<u64> {
    engine
        .describe_topic(topic)
        .expect("topic")
        .partitions
        .iter()
        .map(|p| p.end_offset)
        .collect()
}

#[test]
fn batches_of_every_size_round_trip_with_dense_offsets() {
    let broker = Broker::new();
    let engine = broker.open_with_topic(1);
    let mut expected = Vec::new();
    for size in [1usize, 2, 7, 100, 1000, BATCH_RECORDS_MAX as usize] {
        let records: Vec<RecordInput> = (0..size)
            .map(|i| keyed("k", None, &format!("{size}-{i}")))
            .collect();
        let results = engine.publish("t", &records).expect("publish");
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.offset, expected.len() as u64 + i as u64);
            assert!(!r.duplicate);
        }
        expected.extend(records);
    }
    // A batch of one record at the record limit.
    let overhead = RecordInput::new("").encoded_bytes();
    let big = RecordInput::new(vec![9u8; (RECORD_BYTES_MAX as u64 - overhead) as usize]);
    engine
        .publish("t", std::slice::from_ref(&big))
        .expect("max record");
    expected.push(big);
    drop(engine);
    let engine = broker.open();
    let mut offset = 0;
    while offset < expected.len() as u64 {
        for record in engine.read("t", 0, offset, 1 << 20).expect("read") {
            let want = &expected[offset as usize];
            assert_eq!(record.offset, offset, "dense");
            assert_eq!(
                (&record.key, &record.headers, &record.payload),
                (&want.key, &want.headers, &want.payload)
            );
            offset += 1;
        }
    }
}

#[test]
fn same_key_same_partition_and_order_is_kept() {
    let broker = Broker::new();
    let engine = broker.open_with_topic(8);
    let mut partition_of = std::collections::HashMap::new();
    for i in 0..400 {
        let key = format!("user-{}", i % 40);
        let r = engine
            .publish("t", &[keyed(&key, None, &format!("{key}/{i}"))])
            .expect("publish")[0];
        assert_eq!(*partition_of.entry(key).or_insert(r.partition), r.partition);
    }
    let used: HashSet<u32> = partition_of.values().copied().collect();
    assert!(used.len() > 4, "keys spread over partitions: {used:?}");
    for p in 0..8 {
        let records = engine.read("t", p, 0, 1 << 20).expect("read");
        let mut last_seq: std::collections::HashMap<Bytes, u32> = std::collections::HashMap::new();
        for r in records {
            let text = String::from_utf8(r.payload.to_vec()).expect("utf8");
            let seq: u32 = text
                .rsplit('/')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("seq");
            let key = r.key.clone().expect("key");
            assert!(
                last_seq.insert(key, seq).is_none_or(|prev| prev < seq),
                "publish order kept per key"
            );
        }
    }
}

#[test]
fn concurrent_appenders_get_dense_offsets_and_their_own_records() {
    let broker = Broker::new();
    let engine = Arc::new(broker.open_with_topic(1));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                (0..200)
                    .map(|i| {
                        let payload = format!("{t}-{i}");
                        let r = engine
                            .publish("t", &[RecordInput::new(payload.clone())])
                            .expect("publish")[0];
                        (r.offset, payload)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    acked.sort();
    for (i, (offset, payload)) in acked.iter().enumerate() {
        assert_eq!(*offset, i as u64, "dense");
        let record = &engine.read("t", 0, *offset, 1).expect("read")[0];
        assert_eq!(record.payload, Bytes::from(payload.clone()));
    }
}

#[test]
fn a_duplicate_key_returns_the_original_offset_before_and_after_restart() {
    let broker = Broker::new();
    let engine = broker.open_with_topic(4);
    let first = engine
        .publish("t", &[keyed("a", Some("id-1"), "one")])
        .expect("publish")[0];
    let ends = end_offsets(&engine, "t");
    // Same key again, with another payload and key: nothing appended.
    let again = engine
        .publish("t", &[keyed("zzz", Some("id-1"), "other")])
        .expect("publish")[0];
    assert!(again.duplicate);
    assert_eq!(
        (again.partition, again.offset),
        (first.partition, first.offset)
    );
    assert_eq!(end_offsets(&engine, "t"), ends);
    // Within one batch: the second copy is a duplicate of the first.
    let batch = engine
        .publish(
            "t",
            &[
                keyed("b", Some("id-2"), "x"),
                keyed("b", Some("id-2"), "y"),
                keyed("b", Some("id-3"), "z"),
            ],
        )
        .expect("publish");
    assert!(!batch[0].duplicate && batch[1].duplicate && !batch[2].duplicate);
    assert_eq!(batch[1].offset, batch[0].offset);
    // After a clean restart (keys in memory were checkpointed) and after a
    // checkpoint followed by a restart.
    drop(engine);
    let engine = broker.open();
    assert!(
        engine
            .publish("t", &[keyed("a", Some("id-1"), "one")])
            .expect("publish")[0]
            .duplicate
    );
    engine.checkpoint_dedup().expect("checkpoint");
    drop(engine);
    let engine = broker.open();
    let r = engine
        .publish("t", &[keyed("a", Some("id-1"), "one")])
        .expect("publish")[0];
    assert!(r.duplicate && r.offset == first.offset);
    let r = engine
        .publish("t", &[keyed("b", Some("id-3"), "z")])
        .expect("publish")[0];
    assert!(r.duplicate && r.offset == batch[2].offset);
}

#[test]
fn dedup_window_and_key_bound_forget_old_keys() {
    let broker = Broker::new();
    let (engine, clock) = broker.open_on_manual_clock();
    let config = TopicConfig {
        dedup_window_ms: 50,
        ..TopicConfig::with_partitions(1)
    };
    engine.create_topic("w", config).expect("create");
    engine
        .publish("w", &[keyed("k", Some("old"), "1")])
        .expect("publish");
    assert!(
        engine
            .publish("w", &[keyed("k", Some("old"), "1")])
            .expect("publish")[0]
            .duplicate
    );
    // The window is measured on record timestamps: time alone expires nothing...
    clock.advance(Duration::from_millis(80));
    assert!(
        engine
            .publish("w", &[keyed("k", Some("old"), "1")])
            .expect("publish")[0]
            .duplicate
    );
    // ...a record appended later than the window does.
    engine
        .publish("w", &[keyed("k", None, "later")])
        .expect("publish");
    let again = engine
        .publish("w", &[keyed("k", Some("old"), "1")])
        .expect("publish")[0];
    assert!(!again.duplicate);
    // The new record is now the one its key points to.
    let retry = engine
        .publish("w", &[keyed("k", Some("old"), "1")])
        .expect("publish")[0];
    assert!(retry.duplicate && retry.offset == again.offset);

    let config = TopicConfig {
        dedup_keys_max: 3,
        ..TopicConfig::with_partitions(1)
    };
    engine.create_topic("b", config).expect("create");
    // The bound is enforced a checkpoint at a time: two checkpoints of 3 keys.
    for i in 0..6 {
        engine
            .publish("b", &[keyed("k", Some(&format!("id-{i}")), "x")])
            .expect("publish");
        if i % 3 == 2 {
            engine.checkpoint_dedup().expect("checkpoint");
        }
    }
    assert!(
        !engine
            .publish("b", &[keyed("k", Some("id-0"), "x")])
            .expect("publish")[0]
            .duplicate,
        "oldest forgotten"
    );
    assert!(
        engine
            .publish("b", &[keyed("k", Some("id-5"), "x")])
            .expect("publish")[0]
            .duplicate,
        "newest kept"
    );
}

#[test]
fn committed_offsets_survive_a_restart_and_stay_inside_the_log() {
    let broker = Broker::new();
    let engine = broker.open_with_topic(2);
    for i in 0..10 {
        engine
            .publish(
                "t",
                &[RecordInput {
                    partition: Some(i % 2),
                    ..RecordInput::new("x")
                }],
            )
            .expect("publish");
    }
    engine.commit_offset("g", "t", 0, 3).expect("commit");
    engine.commit_offset("g", "t", 1, 5).expect("commit");
    let err = engine
        .commit_offset("g", "t", 1, 6)
        .expect_err("past the end");
    assert!(err.to_string().contains("past the end"), "{err}");
    assert!(matches!(
        engine.commit_offset("g/x", "t", 0, 1),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        engine.commit_offset("g", "t", 9, 1),
        Err(Error::PartitionNotFound { .. })
    ));
    engine.close().expect("close");
    let engine = broker.open();
    let mut offsets = engine.committed_offsets("g", "t").expect("offsets");
    offsets.sort_by_key(|o| o.partition);
    assert_eq!(
        offsets
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect::<Vec<_>>(),
        vec![(0, 3), (1, 5)]
    );
    assert!(engine
        .committed_offsets("other", "t")
        .expect("none")
        .is_empty());
}

#[test]
fn retention_deletes_old_segments_and_moves_the_earliest_offset() {
    let broker = Broker::new();
    let engine = broker.open();
    let config = TopicConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        retention_bytes: Some(3 * SEGMENT_BYTES_MIN),
        ..TopicConfig::with_partitions(1)
    };
    engine.create_topic("t", config).expect("create");
    for i in 0..200 {
        engine
            .publish("t", &[RecordInput::new(format!("{i:0>200}"))])
            .expect("publish");
    }
    let before = engine.describe_topic("t").expect("t").partitions[0].clone();
    assert!(before.segments > 5, "{before:?}");
    assert!(engine.enforce_retention().expect("retention") > 0);
    let after = engine.describe_topic("t").expect("t").partitions[0].clone();
    assert!(
        after.earliest_offset > 0 && after.size_bytes <= 3 * SEGMENT_BYTES_MIN + SEGMENT_BYTES_MIN,
        "{after:?}"
    );
    assert_eq!(after.end_offset, before.end_offset);
    let err = engine.read("t", 0, 0, 1024).expect_err("deleted");
    assert!(
        matches!(err, Error::OffsetOutOfRange { earliest, .. } if earliest == after.earliest_offset),
        "{err}"
    );
    let first = &engine
        .read("t", 0, after.earliest_offset, 1024)
        .expect("read")[0];
    assert_eq!(first.offset, after.earliest_offset);
    drop(engine);
    let engine = broker.open();
    assert_eq!(engine.describe_topic("t").expect("t").partitions[0], after);

    // By age: every sealed segment is older than 1 ms once time has passed.
    drop(engine);
    let (engine, clock) = broker.open_on_manual_clock();
    let config = TopicConfig {
        segment_bytes: SEGMENT_BYTES_MIN,
        retention_ms: Some(1),
        ..TopicConfig::with_partitions(1)
    };
    engine.create_topic("age", config).expect("create");
    for i in 0..100 {
        engine
            .publish("age", &[RecordInput::new(format!("{i:0>200}"))])
            .expect("publish");
    }
    engine.enforce_retention().expect("retention");
    let young = engine.describe_topic("age").expect("t").partitions[0].clone();
    assert!(
        young.segments > 1,
        "nothing is older than 1 ms yet: {young:?}"
    );
    clock.advance(Duration::from_millis(2));
    engine.enforce_retention().expect("retention");
    let info = engine.describe_topic("age").expect("t").partitions[0].clone();
    assert_eq!(
        info.segments, 1,
        "only the active segment is left: {info:?}"
    );
    assert_eq!(info.end_offset, 100);
}

#[test]
fn reads_by_timestamp_seek_to_the_first_later_record() {
    let broker = Broker::new();
    let (engine, clock) = broker.open_on_manual_clock();
    engine
        .create_topic("t", TopicConfig::with_partitions(1))
        .expect("create");
    engine
        .publish("t", &[RecordInput::new("early")])
        .expect("publish");
    clock.advance(Duration::from_millis(5));
    engine
        .publish("t", &[RecordInput::new("late")])
        .expect("publish");
    let records = engine.read("t", 0, 0, 1024).expect("read");
    let (t0, t1) = (records[0].timestamp_ms, records[1].timestamp_ms);
    assert_eq!(
        (t0, t1),
        (CLOCK_START_MS, CLOCK_START_MS + 5),
        "append times come from the engine's clock"
    );
    assert_eq!(engine.offset_for_timestamp("t", 0, t0).expect("ts"), 0);
    assert_eq!(engine.offset_for_timestamp("t", 0, t0 + 1).expect("ts"), 1);
    assert_eq!(
        engine.offset_for_timestamp("t", 0, t1 + 1000).expect("ts"),
        2,
        "past the end: the end"
    );
}

#[test]
fn a_waiting_reader_wakes_on_new_records() {
    let broker = Broker::new();
    let engine = Arc::new(broker.open_with_topic(1));
    let mut end = engine.watch_end("t", 0).expect("watch");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let publisher = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            engine
                .publish("t", &[RecordInput::new("hello")])
                .expect("publish")
        })
    };
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), end.wait_for(|e| *e >= 1))
            .await
            .expect("woken")
            .expect("open");
    });
    publisher.join().expect("publisher");
    assert_eq!(
        engine.read("t", 0, 0, 1024).expect("read")[0].payload,
        Bytes::from_static(b"hello")
    );
}

#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    let broker = Broker::new();
    let engine = broker.open_with_topic(2);
    engine
        .publish("t", &[RecordInput::new("ok")])
        .expect("publish");
    let ends = end_offsets(&engine, "t");
    let too_long = "a".repeat(TOPIC_NAME_BYTES_MAX + 1);
    for name in ["", ".", "..", "a/b", "../escape", too_long.as_str()] {
        assert!(
            matches!(
                engine.create_topic(name, TopicConfig::default()),
                Err(Error::InvalidName { .. })
            ),
            "{name:?}"
        );
        assert!(
            matches!(
                engine.publish(name, &[RecordInput::new("x")]),
                Err(Error::InvalidName { .. })
            ),
            "{name:?}"
        );
    }
    assert!(engine
        .create_topic(&"a".repeat(TOPIC_NAME_BYTES_MAX), TopicConfig::default())
        .is_ok());
    assert!(matches!(
        engine.create_topic("t", TopicConfig::default()),
        Err(Error::TopicExists(_))
    ));
    assert!(matches!(
        engine.publish("missing", &[RecordInput::new("x")]),
        Err(Error::TopicNotFound(_))
    ));
    assert!(matches!(
        engine.create_topic(
            "p",
            TopicConfig::with_partitions(PARTITIONS_PER_TOPIC_MAX + 1)
        ),
        Err(Error::LimitExceeded { .. })
    ));

    let overhead = RecordInput::new("").encoded_bytes();
    let too_big = RecordInput::new(vec![0u8; (RECORD_BYTES_MAX as u64 - overhead + 1) as usize]);
    let bad_batches: Vec<(&str, Vec<RecordInput>)> = vec![
        (
            "record over the limit",
            vec![RecordInput::new("fine"), too_big],
        ),
        (
            "too many records",
            vec![RecordInput::new(""); BATCH_RECORDS_MAX as usize + 1],
        ),
        ("empty batch", vec![]),
        (
            "no such partition",
            vec![RecordInput {
                partition: Some(2),
                ..RecordInput::new("x")
            }],
        ),
        (
            "key over the limit",
            vec![RecordInput {
                key: Some(vec![0; KEY_BYTES_MAX as usize + 1].into()),
                ..RecordInput::new("x")
            }],
        ),
        (
            "batch over the limit",
            vec![
                RecordInput::new(vec![0u8; (RECORD_BYTES_MAX as u64 - overhead) as usize]);
                (BATCH_BYTES_MAX as usize - HEADER_BYTES) / RECORD_BYTES_MAX as usize + 1
            ],
        ),
    ];
    for (what, batch) in bad_batches {
        let err = engine.publish("t", &batch).expect_err(what);
        let msg = err.to_string();
        if let Error::LimitExceeded { limit, .. } = &err {
            assert!(
                msg.contains(&limit.to_string()),
                "{what}: the limit is named: {msg}"
            );
        }
        assert_eq!(end_offsets(&engine, "t"), ends, "{what}: nothing appended");
    }
    let err = engine.read("t", 0, 99, 1024).expect_err("past the end");
    assert!(matches!(err, Error::OffsetOutOfRange { .. }), "{err}");
}

#[test]
fn a_second_engine_on_the_same_data_dir_is_refused_and_changes_nothing() {
    let broker = Broker::new();
    let engine = broker.open_with_topic(1);
    engine
        .publish("t", &[RecordInput::new("x")])
        .expect("publish");
    let err = Engine::open(EngineConfig::new(broker.dir.path())).expect_err("locked");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    let entries: Vec<String> = std::fs::read_dir(broker.dir.path())
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(
        !entries.iter().any(|e| e.starts_with("meta.broken")),
        "the live store was not moved aside: {entries:?}"
    );
    assert!(engine.publish("t", &[RecordInput::new("y")]).is_ok());
}

#[test]
fn deleted_topics_are_gone_and_can_be_created_again() {
    let broker = Broker::new();
    let engine = broker.open_with_topic(1);
    engine
        .publish("t", &[keyed("k", Some("id"), "x")])
        .expect("publish");
    engine.commit_offset("g", "t", 0, 1).expect("commit");
    engine.delete_topic("t").expect("delete");
    assert!(matches!(
        engine.delete_topic("t"),
        Err(Error::TopicNotFound(_))
    ));
    assert!(!broker.dir.path().join("topics/t").exists());
    engine
        .create_topic("t", TopicConfig::with_partitions(1))
        .expect("recreate");
    assert!(
        !engine
            .publish("t", &[keyed("k", Some("id"), "x")])
            .expect("publish")[0]
            .duplicate,
        "keys went with the topic"
    );
    assert!(engine
        .committed_offsets("g", "t")
        .expect("offsets")
        .is_empty());
    drop(engine);
    let engine = broker.open();
    assert_eq!(engine.list_topics().len(), 1);
}

#[test]
fn async_topics_acknowledge_before_the_flush_and_flush_on_close() {
    let broker = Broker::new();
    let engine = broker.open();
    let config = TopicConfig {
        durability: Durability::Async,
        fsync_interval_ms: 3_600_000,
        ..TopicConfig::with_partitions(1)
    };
    engine.create_topic("a", config).expect("create");
    let topic = engine.topic("a").expect("topic");
    engine
        .publish("a", &[RecordInput::new("x")])
        .expect("publish");
    assert_eq!(
        topic.partitions()[0].end_offset(),
        1,
        "readable once written"
    );
    assert_eq!(topic.partitions()[0].durable_end(), 0, "not yet flushed");
    drop(topic);
    engine.close().expect("close flushes");
    let engine = broker.open();
    assert_eq!(
        engine.read("a", 0, 0, 1024).expect("read")[0].payload,
        Bytes::from_static(b"x")
    );
}

#[test]
fn appends_past_the_in_flight_limit_wait_for_room_instead_of_failing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EngineConfig::new(dir.path());
    // The smallest allowed: one largest batch at a time may be in flight.
    config.in_flight_bytes_per_partition = BATCH_BYTES_MAX as u64;
    let engine = Arc::new(Engine::open(config).expect("open"));
    engine
        .create_topic("t", TopicConfig::with_partitions(1))
        .expect("create");
    let overhead = RecordInput::new("").encoded_bytes();
    let record = RecordInput::new(vec![1u8; (RECORD_BYTES_MAX as u64 - overhead) as usize]);
    // Each batch is just under the limit, so two in flight would be over it.
    let per_batch = (BATCH_BYTES_MAX as usize - HEADER_BYTES) / RECORD_BYTES_MAX as usize;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (topic, done) = (engine.topic("t").expect("topic"), done.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(topic.partitions()[0].info().in_flight_bytes);
            }
            most
        })
    };
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (engine, record) = (engine.clone(), record.clone());
            std::thread::spawn(move || {
                (0..4)
                    .map(|_| {
                        let batch = vec![record.clone(); per_batch];
                        engine.publish("t", &batch).expect("waits, then appends")[0].offset
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut firsts: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("appender"))
        .collect();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most_in_flight = watcher.join().expect("watcher");
    assert!(most_in_flight > 0, "the watcher saw appends in flight");
    assert!(
        most_in_flight <= BATCH_BYTES_MAX as u64,
        "in flight: {most_in_flight}"
    );
    firsts.sort_unstable();
    let expected: Vec<u64> = (0..12).map(|i| i * per_batch as u64).collect();
    assert_eq!(
        firsts, expected,
        "every batch appended whole, offsets dense"
    );
}

/// Bytes of every segment log file under `dir`, as the file system has them.
fn log_file_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("list").flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += log_file_bytes(&path);
        } else if path.extension().is_some_and(|e| e == "log") {
            total += entry.metadata().expect("metadata").len();
        }
    }
    total
}

#[test]
fn zeros_ahead_of_the_data_stay_within_the_engine_wide_budget() {
    let broker = Broker::new();
    let config = EngineConfig {
        zero_fill_bytes_max: 4 * PREALLOCATE_STEP_BYTES,
        ..EngineConfig::new(broker.dir.path())
    };
    let engine = Engine::open(config).expect("open");
    let partitions = 32;
    engine
        .create_topic("t", TopicConfig::with_partitions(partitions))
        .expect("create");
    for p in 0..partitions {
        let record = RecordInput {
            partition: Some(p),
            ..RecordInput::new("one small record")
        };
        engine.publish("t", &[record]).expect("publish");
    }
    let data_bytes: u64 = engine
        .describe_topic("t")
        .expect("describe")
        .partitions
        .iter()
        .map(|p| p.size_bytes)
        .sum();
    let on_disk = log_file_bytes(broker.dir.path());
    // The first four partitions written got their step of zeros; the rest none.
    assert_eq!(
        on_disk,
        data_bytes + 4 * PREALLOCATE_STEP_BYTES,
        "{on_disk} bytes of logs"
    );
    // Closed, the zeros are cut at the next open and the budget is free again.
    engine.close().expect("close");
    let engine = broker.open();
    assert_eq!(log_file_bytes(broker.dir.path()), data_bytes);
    engine
        .publish("t", &[RecordInput::new("after")])
        .expect("publish");
    assert!(log_file_bytes(broker.dir.path()) > data_bytes + PREALLOCATE_STEP_BYTES / 2);
}
