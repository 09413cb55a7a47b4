//! A subscriber that reads nothing while 100 MB are published: the broker's
//! memory stays bounded, publishers are not held back, and the subscriber,
//! once it reads, catches up with every record in order.

use std::time::{Duration, Instant};

use bytes::Bytes;
use postbox_proto::v1 as pb;
use postbox_tests::broker::BrokerProcess;

const TOPIC: &str = "firehose";
const RECORD_BYTES: usize = 1024;
const BATCH: usize = 1000;
/// 100 batches of 1000 records of 1 KiB: about 100 MB.
const SLOW_PHASE_BATCHES: usize = 100;
const BASELINE_BATCHES: usize = 20;
/// Growth of the broker's anonymous memory allowed while the subscriber
/// stalls: a few subscription messages and HTTP/2 buffers, far below the
/// 100 MB it is not reading.
const RSS_GROWTH_MAX_BYTES: u64 = 48 << 20;
/// Publishing with a stalled subscriber must keep at least this share of the
/// speed it had without one. Generous: it catches publishers waiting on the
/// subscriber, not the noise of a shared machine.
const SPEED_RATIO_MIN: f64 = 0.2;
/// How long the subscription may take to deliver its first message.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

fn batch(n: usize) -> pb::PublishRequest {
    let records = (0..BATCH)
        .map(|i| pb::PublishRecord {
            payload: Bytes::from(vec![(n + i) as u8; RECORD_BYTES]),
            ..Default::default()
        })
        .collect();
    pb::PublishRequest {
        topic: TOPIC.into(),
        records,
        fence: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_subscriber_neither_grows_memory_nor_slows_publishers() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let mut publisher = broker.client().await;
    publisher
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 1,
            ..Default::default()
        })
        .await
        .expect("create the topic");

    let started = Instant::now();
    for n in 0..BASELINE_BATCHES {
        publisher.publish(batch(n)).await.expect("publish");
    }
    let baseline_per_batch = started.elapsed() / BASELINE_BATCHES as u32;

    // Subscribe from the start, read the first message (the broker serves
    // the subscription) and then nothing.
    let mut stalled = broker.client().await;
    let mut stream = stalled
        .subscribe(pb::SubscribeRequest {
            topic: TOPIC.into(),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, stream.message())
        .await
        .expect("the subscription's first message in time")
        .expect("the subscription stream")
        .expect("the stream stays open");
    let rss_before = broker.rss_anon_bytes();
    let mut rss_peak = rss_before;
    let started = Instant::now();
    for n in 0..SLOW_PHASE_BATCHES {
        publisher.publish(batch(n)).await.expect("publish");
        rss_peak = rss_peak.max(broker.rss_anon_bytes());
    }
    let slow_per_batch = started.elapsed() / SLOW_PHASE_BATCHES as u32;
    assert!(
        rss_peak < rss_before + RSS_GROWTH_MAX_BYTES,
        "the broker's memory grew from {rss_before} to {rss_peak} bytes behind a stalled subscriber"
    );
    let ratio = baseline_per_batch.as_secs_f64() / slow_per_batch.as_secs_f64();
    assert!(
        ratio >= SPEED_RATIO_MIN,
        "publishes slowed behind a stalled subscriber: {baseline_per_batch:?} per batch before, {slow_per_batch:?} with it"
    );

    // The subscriber catches up: every record, in order, once.
    let total = ((BASELINE_BATCHES + SLOW_PHASE_BATCHES) * BATCH) as u64;
    let mut next = 0u64;
    let mut received = Some(first);
    while next < total {
        let response = match received.take() {
            Some(first) => first,
            None => stream
                .message()
                .await
                .expect("the subscription stream")
                .expect("the stream stays open"),
        };
        for r in response.records {
            assert_eq!(r.offset, next, "records arrive in order, once");
            assert_eq!(r.payload.len(), RECORD_BYTES);
            next += 1;
        }
    }
}
