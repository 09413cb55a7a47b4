//! CPU hot paths of a publish, each group beside a raw baseline measured on the
//! same data in the same run, so that figures can be quoted as ratios:
//!
//! - `batch/<record>B`: a 1000-record batch (each record with a 36-byte
//!   idempotency key) through `UnsealedBatch::encode` + `seal`
//!   (`encode_seal`) and `decode_frame` (`decode_frame`: header, CRC and
//!   records), against `raw_crc32` (`crc32fast::hash` over the sealed frame)
//!   and `raw_memcpy` (copying the frame into a buffer of its size). Throughput
//!   is in frame bytes.
//! - `index/100k`: `SparseIndex::floor` and `floor_before_timestamp` over
//!   100,000 entries, against `raw_binary_search` (`binary_search_by_key` over
//!   a `Vec<u64>` of the same offsets). Throughput is in lookups.
//! - `dedup/36B`: `dedup::Memory` and the store of sorted runs
//!   (`store_get`: `RunStore::get`; `store_insert`: one `RunStore::insert`
//!   of 1024 keys, a run written and fsynced) with UUID v7 strings, as
//!   the client sends them, against `raw_hashmap` (a `HashMap<Bytes, u64>`;
//!   its inserts share the key where `Memory` copies it). Lookups are of absent
//!   keys, as for a publish of fresh ones; the maps hold up to
//!   `DEDUP_MEMORY_KEYS_MAX` keys, the store holds those and what the inserts
//!   add. Throughput is in keys.
//! - `proto/<record>B`: prost `encode_to_vec` and `decode` (from `Bytes`, as
//!   tonic decodes) of the same batch as a `PublishRequest`, against
//!   `raw_memcpy` of the encoded bytes. Throughput is in encoded bytes.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use postbox_engine::dedup::runs::RunStore;
use postbox_engine::dedup::DedupEntry;
use postbox_engine::dedup::Memory;
use postbox_engine::limits::{DEDUP_KEYS_MAX_DEFAULT, DEDUP_MEMORY_KEYS_MAX};
use postbox_engine::storage::batch::{decode_frame, UnsealedBatch};
use postbox_engine::storage::index::{IndexEntry, SparseIndex};
use postbox_engine::storage::io::RealFs;
use postbox_engine::RecordInput;
use postbox_proto::v1 as pb;
use prost::Message;

const RECORD_SIZES: [usize; 2] = [100, 1024];
const BATCH_RECORDS: usize = 1000;
const INDEX_ENTRIES: u64 = 100_000;
/// Lookups (or inserts) per iteration of the index and dedup benchmarks.
const LOOKUPS: usize = 1024;

/// What a producer's client sends as an idempotency key: a hyphenated UUID v7.
fn uuid_key() -> Bytes {
    Bytes::from(uuid::Uuid::now_v7().hyphenated().to_string())
}

fn batch(record_bytes: usize) -> Vec<RecordInput> {
    let payload = Bytes::from(vec![0x5Au8; record_bytes]);
    (0..BATCH_RECORDS)
        .map(|_| RecordInput {
            idempotency_key: Some(uuid_key()),
            ..RecordInput::new(payload.clone())
        })
        .collect()
}

/// Copies `bytes` into a buffer of their size: the memory-bandwidth ceiling.
fn raw_memcpy(group: &mut BenchmarkGroup<'_, WallTime>, bytes: &[u8]) {
    let mut copy = vec![0u8; bytes.len()];
    group.bench_function("raw_memcpy", |b| {
        b.iter(|| copy.copy_from_slice(black_box(bytes)))
    });
}

fn batch_codec(c: &mut Criterion) {
    for record_bytes in RECORD_SIZES {
        let records = batch(record_bytes);
        let refs: Vec<&RecordInput> = records.iter().collect();
        let seal = |unsealed: UnsealedBatch| unsealed.seal(1_000_000, 1_700_000_000_000, 1_000_000);
        let frame = seal(UnsealedBatch::encode(&refs));
        let mut group = c.benchmark_group(format!("batch/{record_bytes}B"));
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function("encode_seal", |b| {
            b.iter(|| seal(UnsealedBatch::encode(black_box(&refs))))
        });
        group.bench_function("decode_frame", |b| {
            b.iter(|| decode_frame(black_box(&frame)).expect("a frame just sealed"))
        });
        group.bench_function("raw_crc32", |b| {
            b.iter(|| crc32fast::hash(black_box(&frame)))
        });
        raw_memcpy(&mut group, &frame);
        group.finish();
    }
}

/// Runs `lookup` on each of `items`, keeping every result.
fn each<T, R>(items: &[T], lookup: impl Fn(&T) -> R) {
    for item in items {
        black_box(lookup(black_box(item)));
    }
}

/// `LOOKUPS` pseudo-random values below `end`, spread over the whole range.
fn queries(end: u64) -> Vec<u64> {
    (0..LOOKUPS as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % end)
        .collect()
}

fn index(c: &mut Criterion) {
    let timestamp = |i: u64| 1_700_000_000_000 + i as i64;
    let mut index = SparseIndex::default();
    for i in 0..INDEX_ENTRIES {
        index.push(IndexEntry {
            offset: i * 10,
            position: (i * 100) as u32,
            timestamp_ms: timestamp(i),
        });
    }
    let offsets: Vec<u64> = index.entries().iter().map(|e| e.offset).collect();
    let targets = queries(INDEX_ENTRIES * 10);
    let mut group = c.benchmark_group("index/100k");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    group.bench_function("floor", |b| b.iter(|| each(&targets, |&t| index.floor(t))));
    let times: Vec<i64> = targets.iter().map(|&t| timestamp(t / 10)).collect();
    group.bench_function("floor_before_timestamp", |b| {
        b.iter(|| each(&times, |&t| index.floor_before_timestamp(t)))
    });
    group.bench_function("raw_binary_search", |b| {
        b.iter(|| each(&targets, |t| offsets.binary_search_by_key(t, |&o| o)))
    });
    group.finish();
}

/// Inserts `LOOKUPS` keys per iteration into `map`, walking through `keys` and
/// starting from an empty map (not timed) each time they run out, as memory
/// empties at a checkpoint.
fn insert_rounds<M>(
    iters: u64,
    keys: &[Bytes],
    new: impl Fn() -> M,
    mut insert: impl FnMut(&mut M, &Bytes),
) -> Duration {
    let (mut map, mut elapsed) = (new(), Duration::ZERO);
    for i in 0..iters as usize {
        let at = (i * LOOKUPS) % keys.len();
        if at == 0 {
            map = new();
        }
        let started = Instant::now();
        keys[at..at + LOOKUPS]
            .iter()
            .for_each(|key| insert(&mut map, key));
        elapsed += started.elapsed();
    }
    elapsed
}

fn dedup(c: &mut Criterion) {
    let keys: Vec<Bytes> = (0..DEDUP_MEMORY_KEYS_MAX / LOOKUPS * LOOKUPS)
        .map(|_| uuid_key())
        .collect();
    let absent: Vec<Bytes> = (0..LOOKUPS).map(|_| uuid_key()).collect();
    let entry = |i: usize| DedupEntry {
        partition: 0,
        offset: i as u64,
        timestamp_ms: 1_700_000_000_000,
    };
    let mut memory = Memory::default();
    let mut map = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        memory.insert(key, entry(i));
        map.insert(key.clone(), i as u64);
    }
    let dir = postbox_benches::bench_dir().expect("bench dir");
    let store = RunStore::open(Arc::new(RealFs), dir.path().join("dedup")).expect("run store");
    let store_insert = |keys: &[Bytes]| {
        let entries: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), entry(i)))
            .collect();
        store
            .insert("bench", &entries, 0, DEDUP_KEYS_MAX_DEFAULT)
            .expect("dedup insert");
    };
    keys.chunks(LOOKUPS).for_each(store_insert);

    let mut group = c.benchmark_group("dedup/36B");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    group.bench_function("memory_get", |b| {
        b.iter(|| each(&absent, |k| memory.get(k)))
    });
    group.bench_function("store_get", |b| {
        b.iter(|| each(&absent, |k| store.get("bench", k).expect("dedup get")))
    });
    group.bench_function("raw_hashmap_get", |b| {
        b.iter(|| each(&absent, |k| map.get(&k[..]).copied()))
    });
    // The filled maps go before the inserts, which fill maps of their own.
    drop((memory, map));
    group.bench_function("memory_insert", |b| {
        b.iter_custom(|iters| {
            insert_rounds(iters, &keys, Memory::default, |m, k| m.insert(k, entry(0)))
        })
    });
    group.bench_function("store_insert", |b| {
        b.iter_batched(
            || (0..LOOKUPS).map(|_| uuid_key()).collect::<Vec<_>>(),
            |fresh| store_insert(&fresh),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("raw_hashmap_insert", |b| {
        b.iter_custom(|iters| {
            insert_rounds(iters, &keys, HashMap::new, |m, k| {
                m.insert(k.clone(), 0u64);
            })
        })
    });
    group.finish();
}

fn proto(c: &mut Criterion) {
    for record_bytes in RECORD_SIZES {
        let request = pb::PublishRequest {
            topic: "bench".into(),
            records: batch(record_bytes)
                .into_iter()
                .map(|r| pb::PublishRecord {
                    idempotency_key: r.idempotency_key,
                    payload: r.payload,
                    ..Default::default()
                })
                .collect(),
            fence: None,
        };
        let encoded = Bytes::from(request.encode_to_vec());
        let mut group = c.benchmark_group(format!("proto/{record_bytes}B"));
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_function("encode", |b| b.iter(|| black_box(&request).encode_to_vec()));
        group.bench_function("decode", |b| {
            b.iter(|| pb::PublishRequest::decode(black_box(encoded.clone())).expect("just encoded"))
        });
        raw_memcpy(&mut group, &encoded);
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Short runs: these are CPU-bound and steady, and the file runs in about a minute.
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = batch_codec, index, dedup, proto
}
criterion_main!(benches);
