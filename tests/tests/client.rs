//! The Rust client against the real broker: publish and replay, following
//! subscriptions, group offsets, duplicates, and a reply lost on the wire.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use postbox_client::{
    Admin, Consumer, ConsumerConfig, OutgoingRecord, Producer, ProducerConfig, Record, StartFrom,
    TopicSettings,
};
use postbox_tests::broker::BrokerProcess;
use postbox_tests::proxy::CutProxy;

/// Gives up on a subscription that should have delivered by now.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

async fn broker_with_topic(topic: &str, partitions: u32) -> (tempfile::TempDir, BrokerProcess) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let admin = Admin::connect(&broker.url()).await.expect("connect");
    let settings = TopicSettings {
        partitions,
        ..TopicSettings::default()
    };
    admin.create_topic(topic, settings).await.expect("create");
    (dir, broker)
}

/// The i-th test record: a key, two headers (one binary), a binary payload.
fn outgoing(i: usize) -> OutgoingRecord {
    let mut payload = format!("payload {i} ").into_bytes();
    payload.extend([0u8, 255, (i % 256) as u8]);
    OutgoingRecord::new(payload)
        .key(format!("key-{}", i % 5))
        .header("n", i.to_string())
        .header("bin", vec![0xFFu8, i as u8])
}

fn assert_same(record: &Record, i: usize) {
    let sent = outgoing(i);
    assert_eq!(&record.payload, sent.payload(), "payload of record {i}");
    assert_eq!(
        record.key.as_deref(),
        Some(format!("key-{}", i % 5).as_bytes())
    );
    let headers = vec![
        ("n".to_string(), Bytes::from(i.to_string())),
        ("bin".to_string(), Bytes::from(vec![0xFFu8, i as u8])),
    ];
    assert_eq!(record.headers, headers, "headers of record {i}");
    assert!(record.idempotency_key.is_some(), "the producer gave a key");
}

async fn next(consumer: &mut Consumer) -> Record {
    tokio::time::timeout(DELIVERY_TIMEOUT, consumer.next())
        .await
        .expect("a record in time")
        .expect("the stream is open")
        .expect("a record")
}

async fn drain(mut consumer: Consumer) -> Vec<Record> {
    let mut records = Vec::new();
    while let Some(record) = tokio::time::timeout(DELIVERY_TIMEOUT, consumer.next())
        .await
        .expect("the stream ends in time")
    {
        records.push(record.expect("a record"));
    }
    records
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_then_replay_from_an_offset_returns_exactly_the_records_from_there_on() {
    let (_dir, broker) = broker_with_topic("replayed", 1).await;
    let producer = Producer::connect(&broker.url(), ProducerConfig::default())
        .await
        .expect("connect");
    let acks = producer
        .send_batch("replayed", (0..50).map(outgoing).collect())
        .await
        .expect("publish");
    let offsets: Vec<u64> = acks.iter().map(|a| a.offset).collect();
    assert_eq!(offsets, (0..50).collect::<Vec<u64>>());

    let config = ConsumerConfig {
        start: StartFrom::Offset(20),
        follow: false,
        ..ConsumerConfig::new("replayed")
    };
    let consumer = Consumer::subscribe(&broker.url(), config)
        .await
        .expect("subscribe");
    let records = drain(consumer).await;
    assert_eq!(records.len(), 30, "exactly offsets 20 to 49");
    for (record, i) in records.iter().zip(20..) {
        assert_eq!(record.offset, i as u64);
        assert_same(record, i);
        assert_eq!(
            record.idempotency_key.as_ref(),
            Some(&acks[i].idempotency_key)
        );
    }

    // A bounded range of one partition.
    let config = ConsumerConfig {
        partition: Some(0),
        start: StartFrom::Offset(5),
        stop_offset: Some(8),
        follow: false,
        ..ConsumerConfig::new("replayed")
    };
    let consumer = Consumer::subscribe(&broker.url(), config)
        .await
        .expect("subscribe");
    let offsets: Vec<u64> = drain(consumer).await.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![5, 6, 7]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_following_subscription_receives_records_published_after_it_started() {
    let (_dir, broker) = broker_with_topic("live", 3).await;
    let config = ConsumerConfig {
        start: StartFrom::Latest,
        ..ConsumerConfig::new("live")
    };
    let mut consumer = Consumer::subscribe(&broker.url(), config)
        .await
        .expect("subscribe");
    let producer = Producer::connect(&broker.url(), ProducerConfig::default())
        .await
        .expect("connect");
    for round in 0..3 {
        // No pause needed: `subscribe` returned with its stream open from the
        // end offsets it read first, and every earlier round was read, so
        // this round is published after the subscription started and comes
        // over the open stream: nothing of it is buffered yet.
        assert_eq!(consumer.buffered_records(), 0, "round {round}");
        let acks = producer
            .send_batch(
                "live",
                (round * 10..round * 10 + 10).map(outgoing).collect(),
            )
            .await
            .expect("publish");
        let mut expected: BTreeMap<(u32, u64), usize> = acks
            .iter()
            .zip(round * 10..)
            .map(|(a, i)| ((a.partition, a.offset), i))
            .collect();
        while !expected.is_empty() {
            let record = next(&mut consumer).await;
            let i = expected
                .remove(&(record.partition, record.offset))
                .unwrap_or_else(|| {
                    panic!("unexpected record {}/{}", record.partition, record.offset)
                });
            assert_same(&record, i);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_groups_committed_offset_is_where_its_next_subscription_starts() {
    let (_dir, broker) = broker_with_topic("grouped", 1).await;
    let producer = Producer::connect(&broker.url(), ProducerConfig::default())
        .await
        .expect("connect");
    producer
        .send_batch("grouped", (0..30).map(outgoing).collect())
        .await
        .expect("publish");
    let config = ConsumerConfig {
        group: Some("billing".into()),
        start: StartFrom::Committed,
        ..ConsumerConfig::new("grouped")
    };
    let mut first = Consumer::subscribe(&broker.url(), config.clone())
        .await
        .expect("subscribe");
    for i in 0..12 {
        assert_eq!(
            next(&mut first).await.offset,
            i,
            "a new group starts at the earliest"
        );
    }
    first.commit().await.expect("commit");
    drop(first);
    let admin = Admin::connect(&broker.url()).await.expect("connect");
    assert_eq!(
        admin
            .get_offsets("billing", "grouped")
            .await
            .expect("offsets"),
        vec![(0, 12)]
    );

    let mut second = Consumer::subscribe(&broker.url(), config.clone())
        .await
        .expect("subscribe");
    assert_eq!(next(&mut second).await.offset, 12, "resumes at the commit");
    drop(second);

    // An operator moves the group back.
    admin
        .commit_offsets("billing", "grouped", &[(0, 3)])
        .await
        .expect("set offsets");
    let mut third = Consumer::subscribe(&broker.url(), config)
        .await
        .expect("subscribe");
    assert_eq!(next(&mut third).await.offset, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_idempotency_key_returns_the_first_offset_and_appends_nothing() {
    let (_dir, broker) = broker_with_topic("dedup", 4).await;
    let producer = Producer::connect(&broker.url(), ProducerConfig::default())
        .await
        .expect("connect");
    let record = || OutgoingRecord::new("charge 42").idempotency_key("order-42-charged");
    let first = producer.send("dedup", record()).await.expect("publish");
    assert!(!first.duplicate);
    let admin = Admin::connect(&broker.url()).await.expect("connect");
    let ends = |info: postbox_client::TopicInfo| -> Vec<u64> {
        info.partition_info.iter().map(|p| p.end_offset).collect()
    };
    let before = ends(admin.describe_topic("dedup").await.expect("describe"));

    let again = producer
        .send("dedup", record())
        .await
        .expect("publish again");
    assert!(again.duplicate);
    assert_eq!(
        (again.partition, again.offset),
        (first.partition, first.offset)
    );
    // Also inside a batch with new records.
    let acks = producer
        .send_batch("dedup", vec![OutgoingRecord::new("new"), record()])
        .await
        .expect("publish a batch");
    assert!(!acks[0].duplicate && acks[1].duplicate);
    assert_eq!(
        (acks[1].partition, acks[1].offset),
        (first.partition, first.offset)
    );
    let mut after = ends(admin.describe_topic("dedup").await.expect("describe"));
    after[acks[0].partition as usize] -= 1;
    assert_eq!(after, before, "only the new record was appended");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_reply_is_retried_with_the_same_keys_and_answered_as_duplicates() {
    let (_dir, broker) = broker_with_topic("lossy", 2).await;
    let proxy = CutProxy::start(broker.addr()).await;
    let producer = Producer::connect(&proxy.url(), ProducerConfig::default())
        .await
        .expect("connect through the proxy");
    // A first publish so the connection is up before the cut is armed.
    producer.send("lossy", outgoing(0)).await.expect("publish");
    proxy.arm();
    let acks = producer
        .send_batch("lossy", (1..21).map(outgoing).collect())
        .await
        .expect("the producer retries past the lost reply");
    assert_eq!(proxy.cuts(), 1, "the reply was lost once");
    assert!(
        acks.iter().all(|a| a.duplicate),
        "the retry found the first attempt's records: {acks:?}"
    );

    // Each key once in the log, at the offset the retry reported.
    let config = ConsumerConfig {
        follow: false,
        ..ConsumerConfig::new("lossy")
    };
    let records = drain(
        Consumer::subscribe(&broker.url(), config)
            .await
            .expect("subscribe"),
    )
    .await;
    assert_eq!(records.len(), 21, "nothing appended twice");
    let stored: BTreeMap<Bytes, (u32, u64)> = records
        .iter()
        .map(|r| {
            let key = r.idempotency_key.clone().expect("a key");
            (key, (r.partition, r.offset))
        })
        .collect();
    assert_eq!(stored.len(), 21, "every key is stored once");
    for (ack, i) in acks.iter().zip(1..) {
        assert_eq!(
            stored.get(&ack.idempotency_key),
            Some(&(ack.partition, ack.offset)),
            "record {i} is where the retry said"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_generated_keys_records_go_keyless_and_a_lost_reply_is_not_retried() {
    let (_dir, broker) = broker_with_topic("keyless", 1).await;
    let proxy = CutProxy::start(broker.addr()).await;
    let config = ProducerConfig {
        generate_idempotency_keys: false,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&proxy.url(), config)
        .await
        .expect("connect through the proxy");
    let ack = producer
        .send("keyless", outgoing(0))
        .await
        .expect("publish");
    assert!(
        ack.idempotency_key.is_empty(),
        "no key was generated: {ack:?}"
    );
    // A record's own key still counts.
    let own = || outgoing(1).idempotency_key("mine");
    producer.send("keyless", own()).await.expect("publish");
    assert!(
        producer
            .send("keyless", own())
            .await
            .expect("again")
            .duplicate
    );

    proxy.arm();
    let lost = producer
        .send_batch("keyless", (2..12).map(outgoing).collect())
        .await;
    assert!(lost.is_err(), "a keyless batch is not retried: {lost:?}");
    assert_eq!(proxy.cuts(), 1);

    let config = ConsumerConfig {
        follow: false,
        ..ConsumerConfig::new("keyless")
    };
    let records = drain(
        Consumer::subscribe(&broker.url(), config)
            .await
            .expect("subscribe"),
    )
    .await;
    // The lost batch is in the log at most once (once if its reply was lost
    // after the append, never if the request was).
    assert!(
        records.len() == 2 || records.len() == 12,
        "{} records",
        records.len()
    );
    let keys: Vec<_> = records.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(keys[0], None);
    assert_eq!(keys[1].as_deref(), Some(&b"mine"[..]));
    assert!(keys[2..].iter().all(Option::is_none), "{keys:?}");
}
