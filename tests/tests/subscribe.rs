//! Subscriptions and fetches against the real broker: following with a
//! backlog, fetch long-polls, timestamp starts, one offset across partitions
//! of different lengths, a deleted topic, and a consumer whose stream is cut
//! halfway resuming without a gap or a repeat.

use std::time::{Duration, Instant};

use bytes::Bytes;
use postbox_client::{Consumer, ConsumerConfig, StartFrom};
use postbox_proto::v1 as pb;
use postbox_proto::v1::broker_client::BrokerClient;
use postbox_tests::broker::BrokerProcess;
use postbox_tests::proxy::CutProxy;
use tonic::transport::Channel;

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

async fn setup(
    topic: &str,
    partitions: u32,
) -> (tempfile::TempDir, BrokerProcess, BrokerClient<Channel>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let mut client = broker.client().await;
    client
        .create_topic(pb::CreateTopicRequest {
            name: topic.into(),
            partitions,
            ..Default::default()
        })
        .await
        .expect("create");
    (dir, broker, client)
}

/// Publishes `count` records of `bytes` bytes to `partition`, payload = index.
async fn fill(
    client: &mut BrokerClient<Channel>,
    topic: &str,
    partition: u32,
    count: usize,
    bytes: usize,
) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let records = chunk
            .iter()
            .map(|&i| {
                let mut payload = i.to_be_bytes().to_vec();
                payload.resize(bytes.max(8), 0xAB);
                pb::PublishRecord {
                    payload: Bytes::from(payload),
                    partition: Some(partition),
                    ..Default::default()
                }
            })
            .collect();
        client
            .publish(pb::PublishRequest {
                topic: topic.into(),
                records,
                fence: None,
            })
            .await
            .expect("publish");
    }
}

fn index_of(payload: &[u8]) -> usize {
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[..8]);
    usize::from_be_bytes(b)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_following_subscription_delivers_a_backlog_while_another_partition_is_idle() {
    // Partition 0 holds several reads' worth of records, partition 1 none:
    // the whole backlog arrives without any further publish.
    let (_dir, _broker, mut client) = setup("backlog", 2).await;
    let count = 4000;
    fill(&mut client, "backlog", 0, count, 1024).await;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            topic: "backlog".into(),
            follow: true,
            max_message_bytes: 64 * 1024,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut next = 0u64;
    while next < count as u64 {
        let response = tokio::time::timeout(DELIVERY_TIMEOUT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("stalled at offset {next} of {count}"))
            .expect("the stream")
            .expect("open");
        for r in response.records {
            assert_eq!((r.partition, r.offset), (0, next));
            next += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_returns_records_and_long_polls_at_the_end() {
    let (_dir, _broker, mut client) = setup("pull", 1).await;
    fill(&mut client, "pull", 0, 10, 100).await;
    let fetch = |offset, max_wait_ms| pb::FetchRequest {
        topic: "pull".into(),
        partition: 0,
        offset,
        max_bytes: 0,
        max_wait_ms,
    };
    let got = client.fetch(fetch(4, 0)).await.expect("fetch").into_inner();
    let offsets: Vec<u64> = got.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (4..10).collect::<Vec<_>>());
    assert_eq!(
        (got.next_offset, got.earliest_offset, got.end_offset),
        (10, 0, 10)
    );

    // At the end with a wait: answers empty after the wait...
    let started = Instant::now();
    let empty = client
        .fetch(fetch(10, 300))
        .await
        .expect("fetch")
        .into_inner();
    assert!(empty.records.is_empty());
    assert_eq!(empty.next_offset, 10);
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited");

    // ...or as soon as a record arrives.
    let mut waiter = client.clone();
    let poll = tokio::spawn(async move { waiter.fetch(fetch(10, 20_000)).await });
    // Not synchronisation: whether the record lands before or after the
    // poll starts waiting, the poll must answer with it well before its
    // 20 s timeout. The pause makes the wake-up the usual case.
    tokio::time::sleep(Duration::from_millis(200)).await;
    fill(&mut client, "pull", 0, 1, 100).await;
    let woke = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll answers when a record arrives, not at its timeout")
        .expect("the task")
        .expect("fetch")
        .into_inner();
    assert_eq!(woke.records.len(), 1);
    assert_eq!(woke.records[0].offset, 10);
}

/// The append time of one record.
async fn stamp(client: &mut BrokerClient<Channel>, topic: &str, offset: u64) -> i64 {
    let fetched = client
        .fetch(pb::FetchRequest {
            topic: topic.into(),
            partition: 0,
            offset,
            max_bytes: 1,
            max_wait_ms: 0,
        })
        .await
        .expect("fetch")
        .into_inner();
    fetched.records[0].timestamp_ms
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_starts_at_a_timestamp() {
    let (_dir, _broker, mut client) = setup("timed", 1).await;
    fill(&mut client, "timed", 0, 5, 10).await;
    // Append times have millisecond resolution: publish until a record is
    // stamped later than the first five (no sleep; usually one or two).
    let early_ms = stamp(&mut client, "timed", 4).await;
    let mut first_later = 5;
    loop {
        fill(&mut client, "timed", 0, 1, 10).await;
        if stamp(&mut client, "timed", first_later).await > early_ms {
            break;
        }
        first_later += 1;
        assert!(
            first_later < 100_000,
            "append times never moved past {early_ms}"
        );
    }
    fill(&mut client, "timed", 0, 2, 10).await;
    let cut_ms = early_ms + 1;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            topic: "timed".into(),
            start: Some(pb::subscribe_request::Start::TimestampMs(cut_ms)),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut offsets = Vec::new();
    while let Some(response) = stream.message().await.expect("the stream") {
        offsets.extend(response.records.iter().map(|r| r.offset));
    }
    assert_eq!(
        offsets,
        (first_later..first_later + 3).collect::<Vec<u64>>(),
        "the first record stamped at or after the cut, and every one after it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_offset_across_partitions_of_different_lengths() {
    let (_dir, _broker, mut client) = setup("uneven", 3).await;
    fill(&mut client, "uneven", 0, 10, 10).await;
    fill(&mut client, "uneven", 1, 3, 10).await;
    let from = |offset, partition| pb::SubscribeRequest {
        topic: "uneven".into(),
        partition,
        start: Some(pb::subscribe_request::Start::Offset(offset)),
        ..Default::default()
    };
    let mut stream = client
        .subscribe(from(5, None))
        .await
        .expect("subscribe")
        .into_inner();
    let mut got = Vec::new();
    while let Some(response) = stream.message().await.expect("the stream") {
        got.extend(response.records.iter().map(|r| (r.partition, r.offset)));
    }
    assert_eq!(
        got,
        (5..10).map(|o| (0, o)).collect::<Vec<_>>(),
        "shorter partitions give nothing"
    );
    let refused = client
        .subscribe(from(5, Some(1)))
        .await
        .expect_err("one partition named: past its end is an error");
    assert_eq!(refused.code(), tonic::Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_topic_ends_its_subscriptions_with_not_found() {
    let (_dir, _broker, mut client) = setup("doomed", 1).await;
    fill(&mut client, "doomed", 0, 3, 10).await;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            topic: "doomed".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("the stream")
        .expect("records");
    assert_eq!(first.records.len(), 3);
    client
        .delete_topic(pb::DeleteTopicRequest {
            name: "doomed".into(),
        })
        .await
        .expect("delete");
    // Recreated at once: the old subscription must not read the new topic.
    client
        .create_topic(pb::CreateTopicRequest {
            name: "doomed".into(),
            ..Default::default()
        })
        .await
        .expect("recreate");
    fill(&mut client, "doomed", 0, 5, 10).await;
    let ended = tokio::time::timeout(DELIVERY_TIMEOUT, stream.message())
        .await
        .expect("the stream ends");
    let status = ended.expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_whose_stream_is_cut_resumes_without_a_gap_or_a_repeat() {
    let (_dir, broker, mut client) = setup("cut", 2).await;
    let per_partition = 6000;
    fill(&mut client, "cut", 0, per_partition, 1024).await;
    fill(&mut client, "cut", 1, per_partition, 1024).await;
    let proxy = CutProxy::start(broker.addr()).await;
    let config = ConsumerConfig {
        start: StartFrom::Earliest,
        follow: true,
        max_message_bytes: 32 * 1024,
        ..ConsumerConfig::new("cut")
    };
    let mut consumer = Consumer::subscribe(&proxy.url(), config)
        .await
        .expect("subscribe");
    let mut next = [0u64; 2];
    let total = 2 * per_partition;
    for received in 0..total {
        if received == 1000 {
            proxy.arm();
        }
        let record = tokio::time::timeout(DELIVERY_TIMEOUT, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {received} records"))
            .expect("the stream stays open")
            .expect("a record");
        let p = record.partition as usize;
        assert_eq!(
            record.offset, next[p],
            "partition {p}: in order, no gap, no repeat"
        );
        assert_eq!(index_of(&record.payload), next[p] as usize);
        next[p] += 1;
    }
    assert_eq!(proxy.cuts(), 1, "the stream was cut once");
}
