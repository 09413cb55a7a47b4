//! Recovery from damaged files on the real file system: torn tails cut at every
//! byte, garbage tails, flipped bits in sealed batches, damaged indexes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::storage::io::RealFs;
use crate::testing::sim::SimMeta;
use crate::{Engine, EngineConfig, Error, RecordInput, TopicConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    meta: Arc<SimMeta>,
    index_interval_bytes: u32,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        fs::create_dir_all(&data_dir).expect("mkdir");
        Fixture {
            _dir: dir,
            data_dir,
            meta: Arc::new(SimMeta::default()),
            index_interval_bytes: 1,
        }
    }

    fn open(&self) -> Engine {
        let mut config = EngineConfig::new(&self.data_dir);
        config.index_interval_bytes = self.index_interval_bytes;
        config.maintenance_interval_ms = 60_000;
        Engine::open_with(config, Arc::new(RealFs), self.meta.clone()).expect("opens")
    }

    fn log_path(&self, base: u64) -> PathBuf {
        self.data_dir
            .join("topics/t/0")
            .join(crate::storage::segment::log_file_name(base))
    }

    /// The first segment's log up to the end of its last frame, without the
    /// zero-filled space that small appends leave ahead of their data.
    fn log_data(&self, data_end: u64) -> Vec<u8> {
        let mut log = fs::read(self.log_path(0)).expect("log");
        assert!(log.len() as u64 >= data_end);
        assert!(
            log[data_end as usize..].iter().all(|b| *b == 0),
            "only zeros after the last frame"
        );
        log.truncate(data_end as usize);
        log
    }

    fn index_path(&self, base: u64) -> PathBuf {
        self.data_dir
            .join("topics/t/0")
            .join(crate::storage::segment::index_file_name(base))
    }
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("record-{i:04}-{}", "x".repeat((i % 7) as usize)))
}

/// Publishes `batches` batches of 3 records, each its own frame and fsync.
fn fill(engine: &Engine, batches: u64) -> Vec<u64> {
    engine
        .create_topic("t", TopicConfig::with_partitions(1))
        .expect("create");
    let mut frame_ends = Vec::new();
    for b in 0..batches {
        let records: Vec<RecordInput> = (0..3)
            .map(|i| RecordInput {
                idempotency_key: Some(Bytes::from(format!("id-{}", b * 3 + i))),
                ..RecordInput::new(payload(b * 3 + i))
            })
            .collect();
        engine.publish("t", &records).expect("publish");
        frame_ends.push(
            engine.topic("t").expect("t").partitions()[0]
                .info()
                .size_bytes,
        );
    }
    frame_ends
}

fn read_all(engine: &Engine) -> Result<Vec<Bytes>, Error> {
    let mut out = Vec::new();
    let end = engine.describe_topic("t")?.partitions[0].end_offset;
    while (out.len() as u64) < end {
        let records = engine.read("t", 0, out.len() as u64, 1 << 20)?;
        for r in records {
            assert_eq!(r.offset, out.len() as u64);
            out.push(r.payload);
        }
    }
    Ok(out)
}

fn expect_prefix(engine: &Engine, records: u64) {
    let got = read_all(engine).expect("readable");
    assert_eq!(got.len() as u64, records);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &payload(i as u64));
    }
    let next = engine
        .publish("t", &[RecordInput::new("next")])
        .expect("append after recovery");
    assert_eq!(
        next[0].offset, records,
        "the next offset follows the last whole batch"
    );
}

#[test]
fn torn_tail_cut_at_every_byte_of_the_last_two_batches() {
    let fx = Fixture::new();
    let ends = fill(&fx.open(), 4);
    let log = fx.log_data(ends[3]);
    let index = fs::read(fx.index_path(0)).expect("index");
    let start = ends[1] as usize;
    for cut in start..log.len() {
        fs::write(fx.log_path(0), &log[..cut]).expect("cut");
        fs::write(fx.index_path(0), &index).expect("index");
        let engine = fx.open();
        let whole = ends.iter().filter(|e| **e as usize <= cut).count() as u64;
        let len = fs::metadata(fx.log_path(0)).expect("meta").len();
        assert_eq!(
            len,
            ends[whole as usize - 1],
            "cut at {cut}: truncated to the last whole batch"
        );
        expect_prefix(&engine, whole * 3);
    }
}

#[test]
fn a_tail_of_zeros_or_random_bytes_is_cut_back_to_the_last_whole_batch() {
    let mut rng = SmallRng::seed_from_u64(7);
    for garbage in ["zeros", "random", "zeros-over-last", "huge-length"] {
        let fx = Fixture::new();
        let ends = fill(&fx.open(), 3);
        let mut log = fx.log_data(ends[2]);
        let mut kept_batches = 3;
        match garbage {
            "zeros" => log.extend(vec![0u8; 8192]),
            "random" => log.extend((0..8192).map(|_| rng.gen::<u8>())),
            "zeros-over-last" => {
                for b in &mut log[ends[1] as usize..] {
                    *b = 0;
                }
                log.extend(vec![0u8; 100]);
                kept_batches = 2;
            }
            _ => {
                log[ends[1] as usize..ends[1] as usize + 4]
                    .copy_from_slice(&u32::MAX.to_le_bytes());
                kept_batches = 2;
            }
        }
        fs::write(fx.log_path(0), &log).expect("write");
        let engine = fx.open();
        expect_prefix(&engine, kept_batches * 3);
    }
}

#[test]
fn a_flipped_bit_in_a_sealed_batch_is_data_loss_and_nothing_after_it_is_lost() {
    // Fields of the middle batch (of five) to damage: byte offsets within it.
    let fields = [
        ("length", 1usize),
        ("crc", 5),
        ("header", 17),
        ("record", 44),
        ("payload", 60),
    ];
    // Every frame indexed, and one index entry for the whole segment: a read past
    // the damage must seek to it either way.
    for (interval, (field, at)) in [1, 1 << 20]
        .into_iter()
        .flat_map(|i| fields.map(|f| (i, f)))
    {
        let mut fx = Fixture::new();
        fx.index_interval_bytes = interval;
        let ends = fill(&fx.open(), 5);
        let mut log = fx.log_data(ends[4]);
        let len_before = log.len();
        log[ends[1] as usize + at] ^= 0x10;
        fs::write(fx.log_path(0), &log).expect("write");
        let engine = fx.open();
        assert_eq!(
            fs::metadata(fx.log_path(0)).expect("meta").len() as usize,
            len_before,
            "{field}: nothing truncated"
        );
        assert_eq!(
            engine.describe_topic("t").expect("t").partitions[0].end_offset,
            15,
            "{field}"
        );
        // Before the damage: readable. At it: data loss, naming offset and file.
        assert_eq!(
            engine.read("t", 0, 0, 1 << 20).expect("before").len(),
            6,
            "{field}"
        );
        let err = engine.read("t", 0, 6, 1 << 20).expect_err("damaged");
        match &err {
            Error::DataLoss { offset, .. } => assert_eq!(*offset, 6, "{field}"),
            other => panic!("{field}: expected data loss, got {other}"),
        }
        assert!(err.to_string().contains(".log"), "{err}");
        // After it: every record still there, and appends continue.
        let after = engine.read("t", 0, 9, 1 << 20).expect("after the damage");
        assert_eq!(
            after.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
            (9..15).map(payload).collect::<Vec<_>>(),
            "{field}"
        );
        let next = engine
            .publish("t", &[RecordInput::new("next")])
            .expect("append");
        assert_eq!(next[0].offset, 15, "{field}");
        // Keys of the undamaged batches are still remembered after the rebuild.
        let retry = engine
            .publish(
                "t",
                &[RecordInput {
                    idempotency_key: Some(Bytes::from("id-12")),
                    ..RecordInput::new("again")
                }],
            )
            .expect("retry");
        assert!(retry[0].duplicate && retry[0].offset == 12, "{field}");
    }
}

#[test]
fn a_damaged_or_missing_index_is_rebuilt() {
    for damage in ["garbage", "missing", "stale"] {
        let fx = Fixture::new();
        let ends = fill(&fx.open(), 6);
        let index_path = fx.index_path(0);
        let good_index = fs::read(&index_path).expect("index");
        match damage {
            "garbage" => {
                let mut bytes = good_index.clone();
                for b in bytes.iter_mut().skip(30).step_by(3) {
                    *b ^= 0x5A;
                }
                fs::write(&index_path, bytes).expect("write");
            }
            "missing" => fs::remove_file(&index_path).expect("rm"),
            _ => {
                // Entries pointing into a tail the log no longer has.
                let log = fx.log_data(ends[5]);
                fs::write(fx.log_path(0), &log[..log.len() / 2]).expect("cut");
            }
        }
        let engine = fx.open();
        let records = read_all(&engine).expect("readable");
        if damage != "stale" {
            assert_eq!(records.len(), 18, "{damage}");
            assert_eq!(
                fs::read(&index_path).expect("index"),
                good_index,
                "{damage}: rebuilt entry for entry"
            );
        }
        let end = records.len() as u64;
        for from in 0..end {
            assert_eq!(
                engine.read("t", 0, from, 1).expect("seek")[0].payload,
                payload(from),
                "{damage}"
            );
        }
    }
}

#[test]
fn reopening_twice_changes_nothing() {
    let fx = Fixture::new();
    let ends = fill(&fx.open(), 3);
    let snapshot = |p: &Path| fs::read(p).expect("read");
    let log = fx.log_data(ends[2]);
    drop(fx.open());
    assert_eq!(
        snapshot(&fx.log_path(0)),
        log,
        "the first reopen trims the zero-filled space, nothing else"
    );
    drop(fx.open());
    drop(fx.open());
    assert_eq!(snapshot(&fx.log_path(0)), log);
    expect_prefix(&fx.open(), 9);
}

#[test]
fn a_short_or_garbled_dedup_checkpoint_means_a_rebuild_not_a_crash() {
    for content in [vec![0u8; 4], vec![], vec![0xFF; 27], b"PBXD".to_vec()] {
        let fx = Fixture::new();
        fill(&fx.open(), 2);
        let path = fx
            .data_dir
            .join("topics/t")
            .join(crate::dedup::CHECKPOINT_FILE);
        fs::write(&path, &content).expect("write");
        let engine = fx.open();
        let retry = RecordInput {
            idempotency_key: Some(Bytes::from("id-4")),
            ..RecordInput::new("again")
        };
        let r = engine.publish("t", &[retry]).expect("publish")[0];
        assert!(r.duplicate && r.offset == 4, "{content:?}");
    }
}

/// Log files of partition 0 of "t", in base offset order, with their lengths.
fn log_files(fx: &Fixture) -> Vec<(PathBuf, u64)> {
    let mut logs: Vec<(PathBuf, u64)> = fs::read_dir(fx.data_dir.join("topics/t/0"))
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| {
            let len = fs::metadata(&p).expect("meta").len();
            (p, len)
        })
        .collect();
    logs.sort();
    logs
}

/// Where the run of whole, valid frames from byte 0 of a log ends.
fn whole_frames_end(path: &Path, len: u64) -> u64 {
    use crate::storage::io::Vfs;
    use crate::storage::segment::{Frame, FrameReader};
    let file = RealFs.open(path, false).expect("open");
    let mut reader = FrameReader::new(file, 0, len);
    let mut end = 0;
    while let Frame::Whole {
        position, header, ..
    } = reader.next_frame().expect("read")
    {
        end = position + header.frame_bytes as u64;
    }
    end
}

#[test]
fn small_appends_write_into_zero_filled_space_that_a_reopen_trims() {
    use crate::limits::PREALLOCATE_STEP_BYTES;
    let fx = Fixture::new();
    let engine = fx.open();
    let ends = fill(&engine, 3);
    let file_len = || fs::metadata(fx.log_path(0)).expect("meta").len();
    assert_eq!(
        file_len(),
        ends[0] + PREALLOCATE_STEP_BYTES,
        "the first append zero-fills a step ahead; the next two land inside it"
    );
    assert_eq!(
        read_all(&engine).expect("readable").len(),
        9,
        "zeros are not records"
    );
    drop(engine);
    let engine = fx.open();
    assert_eq!(
        file_len(),
        ends[2],
        "a reopen cuts the log at its last frame"
    );
    expect_prefix(&engine, 9);
    assert!(
        file_len() > ends[2] + PREALLOCATE_STEP_BYTES / 2,
        "the next small append zero-fills again"
    );
}

#[test]
fn a_sealed_segment_ends_at_its_last_frame_and_large_groups_add_no_zeros() {
    use crate::limits::PREALLOCATE_GROUP_BYTES_MAX;
    let fx = Fixture::new();
    let engine = fx.open();
    let segment_bytes = 64 * 1024;
    let config = TopicConfig {
        segment_bytes,
        ..TopicConfig::with_partitions(1)
    };
    engine.create_topic("t", config).expect("create");
    for i in 0..200 {
        engine
            .publish("t", &[RecordInput::new(vec![b'r'; 1000 + i])])
            .expect("publish");
    }
    let logs = log_files(&fx);
    assert!(logs.len() >= 3, "rolled: {logs:?}");
    let (sealed, active) = logs.split_at(logs.len() - 1);
    for (path, len) in sealed {
        assert_eq!(
            whole_frames_end(path, *len),
            *len,
            "{}: whole frames up to the file's end, no zeros after them",
            path.display()
        );
    }
    assert_eq!(
        active[0].1, segment_bytes,
        "the active segment is zero-filled up to the segment size, not past it"
    );
    // Zeros after a sealed segment's data (a file system that lost the trim) are
    // cut at open, not taken for damage.
    let (first, first_len) = &sealed[0];
    let mut bytes = fs::read(first).expect("read");
    bytes.extend(vec![0u8; 5000]);
    fs::write(first, &bytes).expect("write");
    drop(engine);
    let engine = fx.open();
    assert_eq!(fs::metadata(first).expect("meta").len(), *first_len);
    let all = read_all(&engine).expect("no data loss reported");
    assert_eq!(all.len(), 200);
    for (i, payload) in all.iter().enumerate() {
        assert_eq!(payload.len(), 1000 + i, "record {i}");
    }

    let fx = Fixture::new();
    let engine = fx.open();
    engine
        .create_topic("t", TopicConfig::with_partitions(1))
        .expect("create");
    let large = vec![b'L'; PREALLOCATE_GROUP_BYTES_MAX as usize + 1];
    engine
        .publish("t", &[RecordInput::new(large)])
        .expect("publish");
    let size = engine.describe_topic("t").expect("t").partitions[0].size_bytes;
    assert_eq!(
        log_files(&fx)[0].1,
        size,
        "a large group only grows the file"
    );

    let fx = Fixture::new();
    let engine = fx.open();
    let config = TopicConfig {
        durability: crate::Durability::Async,
        ..TopicConfig::with_partitions(1)
    };
    engine.create_topic("t", config).expect("create");
    engine
        .publish("t", &[RecordInput::new("small")])
        .expect("publish");
    let size = engine.describe_topic("t").expect("t").partitions[0].size_bytes;
    assert_eq!(log_files(&fx)[0].1, size, "an async topic adds no zeros");
}
