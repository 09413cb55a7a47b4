//! End-to-end benchmarks over gRPC on loopback: a broker served in this
//! process (its own runtime) and raw `postbox.v1` clients (another runtime).
//!
//! - `grpc_publish/<record>B/batch<N>/producers<P>`: P concurrent producers,
//!   each on its own connection, publishing batches of N records to a `sync`
//!   topic (fsync before every acknowledgment); beside it
//!   `raw_fdatasync_1MiB`, plain sequential writes of the same bytes with an
//!   fdatasync every 1 MiB, in the same directory. Publish latency
//!   percentiles (p50, p99) of every benchmark are printed to stderr at the
//!   end.
//! - `grpc_subscribe/1024B/1M`: a subscription replaying 1,000,000 records
//!   from offset 0 to the end.
//!
//! Throughput is in bytes of record payload.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hdrhistogram::Histogram;
use postbox_benches::{bench_dir, raw_write_fdatasync, Broker};
use postbox_proto::v1 as pb;
use postbox_proto::v1::broker_client::BrokerClient;
use tokio::runtime::Runtime;
use tonic::transport::Channel;

const RECORD_SIZES: [usize; 2] = [100, 1024];
const BATCHES: [usize; 3] = [1, 100, 1000];
const PRODUCERS: [usize; 2] = [1, 8];
const REPLAY_RECORDS: usize = 1_000_000;

async fn create_topic(client: &mut BrokerClient<Channel>, name: &str) {
    client
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            partitions: 1,
            // Old segments go, so that long runs do not fill the disk.
            retention_bytes: Some(512 << 20),
            ..Default::default()
        })
        .await
        .expect("create topic");
}

fn request(topic: &str, batch: usize, record_bytes: usize) -> pb::PublishRequest {
    let payload = Bytes::from(vec![0x5Au8; record_bytes]);
    pb::PublishRequest {
        topic: topic.into(),
        records: (0..batch)
            .map(|_| pb::PublishRecord {
                payload: payload.clone(),
                ..Default::default()
            })
            .collect(),
        fence: None,
    }
}

/// Each producer publishes `iters` batches; returns the wall time.
async fn publish_round(
    clients: &[BrokerClient<Channel>],
    request: &pb::PublishRequest,
    iters: u64,
    latencies: &Mutex<Histogram<u64>>,
) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .map(|client| {
            let (mut client, request) = (client.clone(), request.clone());
            tokio::spawn(async move {
                let mut local = Histogram::<u64>::new(3).expect("histogram");
                for _ in 0..iters {
                    let sent = Instant::now();
                    client.publish(request.clone()).await.expect("publish");
                    let _ = local.record(sent.elapsed().as_micros() as u64);
                }
                local
            })
        })
        .collect();
    for task in tasks {
        let local = task.await.expect("producer task");
        let _ = latencies.lock().expect("histogram").add(local);
    }
    started.elapsed()
}

fn publish(c: &mut Criterion) {
    let client_rt = Runtime::new().expect("client runtime");
    let mut report = Vec::new();
    for record_bytes in RECORD_SIZES {
        let mut group = c.benchmark_group(format!("grpc_publish/{record_bytes}B"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(4));
        for batch in BATCHES {
            for producers in PRODUCERS {
                let bytes = (record_bytes * batch * producers) as u64;
                group.throughput(Throughput::Bytes(bytes));
                let id = format!("batch{batch}/producers{producers}");
                let raw_dir = bench_dir().expect("bench dir");
                group.bench_function(BenchmarkId::new("raw_fdatasync_1MiB", &id), |b| {
                    b.iter_custom(|iters| {
                        raw_write_fdatasync(raw_dir.path(), bytes * iters).expect("raw write")
                    })
                });
                let broker = Broker::start();
                let clients: Vec<_> = client_rt.block_on(async {
                    let mut first = broker.client().await;
                    create_topic(&mut first, "bench").await;
                    let mut clients = vec![first];
                    for _ in 1..producers {
                        clients.push(broker.client().await);
                    }
                    clients
                });
                let req = request("bench", batch, record_bytes);
                let latencies = Mutex::new(Histogram::<u64>::new(3).expect("histogram"));
                group.bench_function(BenchmarkId::new("postbox", &id), |b| {
                    b.iter_custom(|iters| {
                        client_rt.block_on(publish_round(&clients, &req, iters, &latencies))
                    })
                });
                let h = latencies.lock().expect("histogram");
                report.push(format!(
                    "grpc_publish/{record_bytes}B/{id}: p50 {} µs, p99 {} µs, max {} µs ({} publishes)",
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.max(),
                    h.len()
                ));
            }
        }
        group.finish();
    }
    eprintln!("\npublish latency:");
    for line in report {
        eprintln!("  {line}");
    }
}

fn subscribe(c: &mut Criterion) {
    let client_rt = Runtime::new().expect("client runtime");
    let broker = Broker::start();
    let record_bytes = 1024;
    let mut client = client_rt.block_on(async {
        let mut client = broker.client().await;
        client
            .create_topic(pb::CreateTopicRequest {
                name: "replay".into(),
                partitions: 1,
                durability: pb::Durability::Async.into(),
                ..Default::default()
            })
            .await
            .expect("create topic");
        let req = request("replay", 1000, record_bytes);
        for _ in 0..REPLAY_RECORDS / 1000 {
            client.publish(req.clone()).await.expect("prefill");
        }
        client
    });
    let mut group = c.benchmark_group("grpc_subscribe/1024B");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Bytes((REPLAY_RECORDS * record_bytes) as u64));
    group.bench_function("1M", |b| {
        b.iter(|| {
            client_rt.block_on(async {
                let mut stream = client
                    .subscribe(pb::SubscribeRequest {
                        topic: "replay".into(),
                        follow: false,
                        ..Default::default()
                    })
                    .await
                    .expect("subscribe")
                    .into_inner();
                let mut records = 0usize;
                while let Some(response) = stream.message().await.expect("stream") {
                    records += response.records.len();
                }
                assert_eq!(records, REPLAY_RECORDS);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, publish, subscribe);
criterion_main!(benches);
