//! Storage engine benchmarks, each beside its raw baseline from the same run:
//!
//! - `append/<record>B/<durability>`: durable appends with 1, 8 and 64
//!   concurrent appenders, each appending batches of one record or of about
//!   64 KiB, against `raw_fdatasync_1MiB` (plain sequential writes of the same
//!   bytes, fdatasync'ed every 1 MiB, to a file in the same directory).
//! - `replay/1024B`: sequential reads of a partition from offset 0 against
//!   `raw_read_1MiB` (positional reads of the same segment files).
//!
//! Throughput is in bytes of record payload; criterion prints MiB/s (or GiB/s)
//! and the records/s follow from the record size.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use postbox_benches::{bench_dir, raw_read, raw_write_fdatasync};
use postbox_broker::{Durability, Engine, EngineConfig, RecordInput, TopicConfig};

const APPENDERS: [usize; 3] = [1, 8, 64];
/// Bytes per batch when appenders batch (what a producer sends per request).
const BATCH_BYTES: usize = 64 * 1024;

fn open_engine(dir: &std::path::Path, durability: Durability) -> Engine {
    let engine = Engine::open(EngineConfig::new(dir.join("data"))).expect("engine");
    let config = TopicConfig {
        durability,
        // Old segments go quickly so long runs do not fill the disk.
        retention_bytes: Some(512 * 1024 * 1024),
        ..TopicConfig::with_partitions(1)
    };
    engine.create_topic("bench", config).expect("topic");
    engine
}

/// Runs `appenders` threads, each appending `iters` batches; returns the time.
fn run_appenders(
    engine: &Arc<Engine>,
    appenders: usize,
    batch: &Arc<Vec<RecordInput>>,
    iters: u64,
) -> Duration {
    let barrier = Arc::new(Barrier::new(appenders + 1));
    let threads: Vec<_> = (0..appenders)
        .map(|_| {
            let (engine, batch, barrier) = (engine.clone(), batch.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    engine.publish("bench", &batch).expect("publish");
                }
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for t in threads {
        t.join().expect("appender");
    }
    started.elapsed()
}

fn append(c: &mut Criterion) {
    for record_bytes in [100usize, 1024] {
        for durability in [Durability::Sync, Durability::Async] {
            let name = format!("append/{record_bytes}B/{durability:?}").to_lowercase();
            let mut group = c.benchmark_group(name);
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(8))
                .warm_up_time(Duration::from_secs(1));
            let dir = bench_dir().expect("bench dir");
            let engine = Arc::new(open_engine(dir.path(), durability));
            for batch_records in [1, BATCH_BYTES / record_bytes] {
                let payload = Bytes::from(vec![0x5Au8; record_bytes]);
                let batch = Arc::new(vec![RecordInput::new(payload); batch_records]);
                for appenders in APPENDERS {
                    group.throughput(Throughput::Bytes(
                        (appenders * batch_records * record_bytes) as u64,
                    ));
                    let id = BenchmarkId::new("engine", format!("{appenders}x{batch_records}"));
                    group.bench_function(id, |b| {
                        b.iter_custom(|iters| run_appenders(&engine, appenders, &batch, iters))
                    });
                }
            }
            // The raw baseline for the largest per-iteration volume above.
            let bytes = 64 * BATCH_BYTES as u64;
            group.throughput(Throughput::Bytes(bytes));
            group.bench_function("raw_fdatasync_1MiB", |b| {
                b.iter_custom(|iters| raw_write_fdatasync(dir.path(), bytes * iters).expect("raw"))
            });
            group.finish();
        }
    }
}

fn replay(c: &mut Criterion) {
    let record_bytes = 1024usize;
    let total_bytes = 256 * 1024 * 1024;
    let dir = bench_dir().expect("bench dir");
    let engine = open_engine(dir.path(), Durability::Async);
    let batch =
        vec![RecordInput::new(Bytes::from(vec![0x33u8; record_bytes])); BATCH_BYTES / record_bytes];
    for _ in 0..total_bytes / BATCH_BYTES {
        engine.publish("bench", &batch).expect("prefill");
    }
    let topic = engine.topic("bench").expect("topic");
    let partition = topic.partitions()[0].clone();
    let end = partition.end_offset();
    let segment_files: Vec<_> = std::fs::read_dir(dir.path().join("data/topics/bench/0"))
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    let mut group = c.benchmark_group("replay/1024B");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(end * record_bytes as u64));
    group.bench_function("engine", |b| {
        b.iter(|| {
            let mut offset = 0;
            while offset < end {
                let records = partition.read(offset, 1024 * 1024).expect("read");
                offset = records.last().map_or(end, |r| r.offset + 1);
            }
        })
    });
    let file_bytes: u64 = segment_files
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    group.throughput(Throughput::Bytes(file_bytes));
    group.bench_function("raw_read_1MiB", |b| {
        b.iter(|| raw_read(&segment_files).expect("raw read"))
    });
    group.finish();
}

criterion_group!(benches, append, replay);
criterion_main!(benches);
