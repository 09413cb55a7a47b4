//! The broker as a process: killed with SIGKILL under load and restarted, it
//! serves every acknowledged record; stopped with SIGTERM under load, it
//! answers or refuses in-flight publishes cleanly, exits 0 and loses nothing
//! it acknowledged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postbox_proto::v1 as pb;
use postbox_tests::broker::BrokerProcess;
use postbox_tests::records::{
    check_acknowledged, keyed_record, publish_until_error, read_topic, Journal,
};
use postbox_tests::wait::wait_until;

const TOPIC: &str = "events";
const PUBLISHERS: usize = 4;
const BATCH: usize = 20;
const RECORD_BYTES: usize = 200;
/// The grace period the SIGTERM test gives in-flight calls; a subscriber
/// that reads nothing holds its call open until then.
const SHUTDOWN_GRACE_MS: u64 = 1000;
/// What a shutdown may take beyond the grace period (flushing, exiting).
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(4);
/// SIGKILL cycles; `POSTBOX_BROKER_KILL_CYCLES` raises it for soak runs.
const KILL_CYCLES_DEFAULT: usize = 3;
/// Acknowledgments a kill cycle waits for before the SIGKILL, so that it
/// lands with publishes in flight and after the log rolled segments (2000
/// records are about 400 KB): the first cycle's, and what each later cycle
/// adds.
const KILL_AFTER_ACKS: usize = 2000;
const KILL_AFTER_ACKS_STEP: usize = 1000;
/// Acknowledgments the SIGTERM test waits for before the SIGTERM.
const SIGTERM_AFTER_ACKS: usize = 1000;
/// How long the publishers may take to have those acknowledged.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

async fn create_topic(broker: &BrokerProcess) {
    broker
        .client()
        .await
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 3,
            // Small segments, so that kills land around segment rolls too.
            segment_bytes: Some(256 * 1024),
            ..Default::default()
        })
        .await
        .expect("create the topic");
}

/// Starts the publishers; they run until their publishes fail.
async fn start_publishers(
    broker: &BrokerProcess,
    cycle: usize,
    journal: &Journal,
) -> Vec<tokio::task::JoinHandle<tonic::Status>> {
    let mut tasks = Vec::new();
    for w in 0..PUBLISHERS {
        let client = broker.client().await;
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("c{cycle}-w{w}");
            publish_until_error(client, TOPIC, &name, BATCH, RECORD_BYTES, journal).await
        }));
    }
    tasks
}

/// Waits until the journal holds at least `acks` acknowledgments: the load
/// is under way, and the publishers are still at it (they run until refused).
async fn wait_for_acks(journal: &Journal, acks: usize) {
    let journaled = || journal.lock().expect("the journal").len();
    wait_until(
        LOAD_TIMEOUT,
        async || journaled() >= acks,
        || format!("{acks} publishes acknowledged: only {}", journaled()),
    )
    .await;
}

/// Every acknowledged key published again is a duplicate at its first offset.
async fn check_duplicates(broker: &BrokerProcess, acked: &[postbox_tests::records::Acked]) {
    let mut client = broker.client().await;
    for chunk in acked.chunks(1000) {
        let records = chunk
            .iter()
            .map(|a| keyed_record(&a.key, RECORD_BYTES))
            .collect();
        let acks = client
            .publish(pb::PublishRequest {
                topic: TOPIC.into(),
                records,
                fence: None,
            })
            .await
            .expect("publish again")
            .into_inner()
            .acks;
        for (a, ack) in chunk.iter().zip(acks) {
            assert!(ack.duplicate, "{} is a duplicate after the restart", a.key);
            assert_eq!(
                (ack.partition, ack.offset),
                (a.partition, a.offset),
                "{}",
                a.key
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_killed_with_sigkill_serves_every_acknowledged_record_after_restart() {
    let cycles = std::env::var("POSTBOX_BROKER_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KILL_CYCLES_DEFAULT);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let mut broker = BrokerProcess::start(&data, &[]);
    create_topic(&broker).await;
    let journal: Journal = Arc::new(Mutex::new(Vec::new()));
    for cycle in 0..cycles {
        let before = journal.lock().expect("the journal").len();
        let publishers = start_publishers(&broker, cycle, &journal).await;
        wait_for_acks(
            &journal,
            before + KILL_AFTER_ACKS + KILL_AFTER_ACKS_STEP * cycle,
        )
        .await;
        broker.kill9();
        for p in publishers {
            p.await.expect("a publisher task");
        }
        broker = BrokerProcess::start(&data, &[]);
    }
    let acked = journal.lock().expect("the journal").clone();
    assert!(
        acked.len() > 1000,
        "the load was real: {} acknowledged",
        acked.len()
    );
    let stored = read_topic(&mut broker.client().await, TOPIC).await;
    check_acknowledged(&acked, &stored, RECORD_BYTES);
    check_duplicates(&broker, &acked).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_exits_zero_and_keeps_every_acknowledged_record() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let grace = SHUTDOWN_GRACE_MS.to_string();
    let mut broker = BrokerProcess::start(&data, &["--shutdown-grace-ms", &grace]);
    create_topic(&broker).await;
    let journal: Journal = Arc::new(Mutex::new(Vec::new()));
    let publishers = start_publishers(&broker, 0, &journal).await;
    // A subscriber that reads nothing must not hold the shutdown up.
    let mut stalled = broker.client().await;
    let _stream = stalled
        .subscribe(pb::SubscribeRequest {
            topic: TOPIC.into(),
            follow: true,
            max_message_bytes: 4096,
            ..Default::default()
        })
        .await
        .expect("subscribe");
    wait_for_acks(&journal, SIGTERM_AFTER_ACKS).await;
    let stopping = std::time::Instant::now();
    broker.sigterm();
    let status = broker.wait();
    let stop_time = stopping.elapsed();
    let log = broker.log();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(
        stop_time < Duration::from_millis(SHUTDOWN_GRACE_MS) + SHUTDOWN_MARGIN,
        "stopped in {stop_time:?}: the grace period bounds the shutdown"
    );
    for p in publishers {
        let refusal = p.await.expect("a publisher task");
        // Refused, never half-done: the connection went away or the broker
        // said it was stopping.
        assert!(
            matches!(
                refusal.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            "a publish during shutdown fails cleanly: {refusal:?}"
        );
    }
    let acked = journal.lock().expect("the journal").clone();
    assert!(
        acked.len() > 100,
        "the load was real: {} acknowledged",
        acked.len()
    );
    let broker = BrokerProcess::start(&data, &[]);
    let stored = read_topic(&mut broker.client().await, TOPIC).await;
    check_acknowledged(&acked, &stored, RECORD_BYTES);
    check_duplicates(&broker, &acked).await;
}
