//! Storage engine benchmarks, each beside its raw baseline from the same run:
//!
//! - `append/<record>B/<durability>`: durable appends with 1, 8 and 64
//!   concurrent appenders, each appending batches of one record or of about
//!   64 KiB (`engine_keyed`: with a fresh idempotency key per record), against `raw_fdatasync_1MiB` (plain sequential writes of the same
//!   bytes, fdatasync'ed every 1 MiB, to a file in the same directory).
//! - `replay/1024B`: sequential reads of a partition from offset 0 against
//!   `raw_read_1MiB` (positional reads of the same segment files).
//!
//! Throughput is in bytes of record payload; criterion prints MiB/s (or GiB/s)
//! and the records/s follow from the record size.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use postbox_benches::{bench_dir, raw_read, raw_write_fdatasync};
use postbox_engine::{Durability, Engine, EngineConfig, RecordInput, TopicConfig};

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

/// Appender threads that live for a whole benchmark, so that a sample measures
/// appends and not thread start-up.
struct Appenders {
    work: Vec<mpsc::Sender<u64>>,
    done: mpsc::Receiver<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Appenders {
    /// Starts `count` threads appending `batch`; with `keyed`, every record gets
    /// a fresh 16-byte idempotency key (what the client's producer does by
    /// default), so the dedup path is measured too.
    fn start(engine: &Arc<Engine>, count: usize, batch: &[RecordInput], keyed: bool) -> Self {
        let (done_tx, done) = mpsc::channel();
        let mut threads = Vec::with_capacity(count);
        let work = (0..count)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<u64>();
                let (engine, mut batch, done_tx) =
                    (engine.clone(), batch.to_vec(), done_tx.clone());
                threads.push(std::thread::spawn(move || {
                    for iters in rx {
                        for _ in 0..iters {
                            if keyed {
                                for record in &mut batch {
                                    record.idempotency_key = Some(Bytes::copy_from_slice(
                                        uuid::Uuid::now_v7().as_bytes(),
                                    ));
                                }
                            }
                            engine.publish("bench", &batch).expect("publish");
                        }
                        if done_tx.send(()).is_err() {
                            return;
                        }
                    }
                }));
                tx
            })
            .collect();
        Appenders {
            work,
            done,
            threads,
        }
    }

    /// Each thread appends `iters` batches; returns the time they all took.
    fn run(&self, iters: u64) -> Duration {
        let started = Instant::now();
        for tx in &self.work {
            tx.send(iters).expect("appender alive");
        }
        for _ in &self.work {
            self.done.recv().expect("appender done");
        }
        started.elapsed()
    }
}

impl Drop for Appenders {
    /// Stops the threads and waits for them, so that the engine they share is
    /// gone before the next benchmark starts.
    fn drop(&mut self) {
        self.work.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
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
            // The raw baseline first, while nothing else touches the disk.
            let bytes = 64 * BATCH_BYTES as u64;
            group.throughput(Throughput::Bytes(bytes));
            group.bench_function("raw_fdatasync_1MiB", |b| {
                b.iter_custom(|iters| raw_write_fdatasync(dir.path(), bytes * iters).expect("raw"))
            });
            // Keyed runs last: their dedup checkpoints continue in the
            // background for a while after each run. Each configuration gets a
            // fresh engine and directory, so none inherits another's files.
            for keyed in [false, true] {
                for batch_records in [1, BATCH_BYTES / record_bytes] {
                    if keyed && (record_bytes != 1024 || batch_records == 1) {
                        continue;
                    }
                    let payload = Bytes::from(vec![0x5Au8; record_bytes]);
                    let batch = vec![RecordInput::new(payload); batch_records];
                    for appenders in APPENDERS {
                        let bytes = (appenders * batch_records * record_bytes) as u64;
                        group.throughput(Throughput::Bytes(bytes));
                        let engine_dir = bench_dir().expect("bench dir");
                        let engine = Arc::new(open_engine(engine_dir.path(), durability));
                        let pool = Appenders::start(&engine, appenders, &batch, keyed);
                        drop(engine);
                        let name = if keyed { "engine_keyed" } else { "engine" };
                        let id = BenchmarkId::new(name, format!("{appenders}x{batch_records}"));
                        group.bench_function(id, |b| b.iter_custom(|iters| pool.run(iters)));
                    }
                }
            }
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
    // The raw baseline first, so that the engine's reads cannot warm or cool
    // the page cache for it. Its throughput counts file bytes (frame and record
    // headers included); the engine's counts payload bytes only.
    let file_bytes: u64 = segment_files
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    group.throughput(Throughput::Bytes(file_bytes));
    group.bench_function("raw_read_1MiB", |b| {
        b.iter(|| raw_read(&segment_files).expect("raw read"))
    });
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
    group.finish();
}

criterion_group!(benches, append, replay);
criterion_main!(benches);
