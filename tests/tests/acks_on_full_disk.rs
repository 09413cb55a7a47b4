//! Acknowledgments when the broker's disk fills part-way through a publish
//! (a real ENOSPC, on a small loop-mounted disk): the CLI prints an ack line
//! for exactly the records the broker holds and counts every other line,
//! and a `send_batch` cut into several publishes hands back the
//! acknowledgments of those before the one that failed.

use postbox_client::{
    Admin, Error, OutgoingRecord, Producer, ProducerConfig, RetryPolicy, TopicSettings,
};
use postbox_tests::broker::BrokerProcess;
use postbox_tests::cli::postbox;
use postbox_tests::disk::SmallDisk;
use postbox_tests::records::{check_acknowledged, payload_for, read_topic, Acked};
use serde_json::Value;

/// The broker's disk: room for its metadata and a few MiB of records once
/// the test has filled the rest.
const DISK_BYTES: u64 = 64 << 20;

const TOPIC: &str = "filling";

/// A broker whose data directory is a small disk of its own, with `TOPIC`
/// created. The data directory is the disk's root, so that the broker's log
/// (next to the data directory) stays off the disk the test fills.
async fn broker_on_small_disk() -> (SmallDisk, BrokerProcess) {
    let disk = SmallDisk::mount(DISK_BYTES);
    let broker = BrokerProcess::start(disk.path(), &[]);
    let admin = Admin::connect(&broker.url()).await.expect("connect");
    admin
        .create_topic(TOPIC, TopicSettings::default())
        .await
        .expect("create the topic");
    (disk, broker)
}

/// Line `i` of the CLI's input: its number, then filler, 1,000 bytes.
fn line(i: usize) -> String {
    let mut line = format!("line {i:05} ");
    while line.len() < 1_000 {
        line.push(char::from(b'a' + (line.len() % 26) as u8));
    }
    line
}

/// What the CLI's last stderr line says was not acknowledged: the count, the
/// first line and the last line of stdin.
fn not_acknowledged(stderr: &str) -> (usize, usize, usize) {
    let parse = || {
        let error = stderr.lines().last()?.strip_prefix("postbox: error: ")?;
        let (count, rest) = error.split_once(" record(s) not acknowledged, lines ")?;
        let (first, rest) = rest.split_once(" to ")?;
        let (last, _) = rest.split_once(" of stdin")?;
        Some((count.parse().ok()?, first.parse().ok()?, last.parse().ok()?))
    };
    parse().unwrap_or_else(|| panic!("no count of unacknowledged lines: {stderr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_an_ack_line_for_exactly_the_records_a_full_disk_kept() {
    const LINES: usize = 10_000;
    let (disk, broker) = broker_on_small_disk().await;
    // About 3.5 batches of lines fit; the input is 10 MiB.
    disk.fill_leaving(3_500 * 1024);
    let lines: Vec<String> = (0..LINES).map(line).collect();
    let input = lines.join("\n") + "\n";
    let url = broker.url();
    let out = tokio::task::spawn_blocking(move || {
        let args = ["publish", TOPIC, "--retry-elapsed-max-ms", "1000"];
        postbox(&url, &args, input.as_bytes())
    })
    .await
    .expect("the CLI ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the disk filled: {stderr}");
    let acks: Vec<Value> = String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    assert!(
        !acks.is_empty() && acks.len() < LINES,
        "the disk filled part-way: {} ack lines; {stderr}",
        acks.len()
    );

    let (count, first, last) = not_acknowledged(&stderr);
    assert_eq!(count, LINES - acks.len(), "every line without an ack line");
    assert_eq!(
        (first, last),
        (acks.len() + 1, LINES),
        "the lines without one"
    );

    let stored = read_topic(&mut broker.client().await, TOPIC).await;
    assert_eq!(
        stored.len(),
        acks.len(),
        "the broker holds the acknowledged records and no other"
    );
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack["duplicate"], false);
        let partition = ack["partition"].as_u64().expect("a partition") as u32;
        let offset = ack["offset"].as_u64().expect("an offset");
        let record = stored
            .get(&(partition, offset))
            .unwrap_or_else(|| panic!("ack line {i} names {partition}/{offset}, not stored"));
        assert_eq!(record.payload, lines[i].as_bytes(), "line {} ", i + 1);
        let key = record.idempotency_key.as_deref().unwrap_or_default();
        assert_eq!(
            ack["idempotency_key"].as_str(),
            std::str::from_utf8(key).ok()
        );
    }
}

/// Bytes of each record's payload in the producer test: two of them fill
/// 4 KiB, about 500 a publish of the default 1 MiB.
const PAYLOAD_BYTES: usize = 2_000;

fn keyed(i: usize) -> OutgoingRecord {
    let key = format!("split-{i}");
    OutgoingRecord::new(payload_for(&key, PAYLOAD_BYTES)).idempotency_key(key)
}

fn acked(acks: &[postbox_client::Ack]) -> Vec<Acked> {
    acks.iter()
        .map(|ack| Acked {
            key: String::from_utf8_lossy(&ack.idempotency_key).into_owned(),
            partition: ack.partition,
            offset: ack.offset,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_batch_whose_second_publish_fails_returns_the_acks_of_the_first() {
    let (disk, mut broker) = broker_on_small_disk().await;
    let config = ProducerConfig {
        retry: RetryPolicy::none(),
        ..ProducerConfig::default()
    };
    let records: Vec<OutgoingRecord> = (0..1_500).map(keyed).collect();
    let publishes = config.split_batch(TOPIC, records.clone());
    assert_eq!(publishes.len(), 3, "three publishes of about 1 MiB");
    let first: usize = publishes[0].len();
    // Room for the first publish and half the second.
    disk.fill_leaving(1_536 * 1024);

    let producer = Producer::connect(&broker.url(), config.clone())
        .await
        .expect("connect");
    let error = producer
        .send_batch(TOPIC, records.clone())
        .await
        .expect_err("the disk is full before the second publish");
    let Error::PartlyPublished {
        acks,
        unacknowledged,
        cause,
    } = error
    else {
        panic!("not PartlyPublished: {error:?}");
    };
    assert_eq!(acks.len(), first, "the first publish's acks: {cause}");
    assert_eq!(unacknowledged, records.len() - first);
    let stored = read_topic(&mut broker.client().await, TOPIC).await;
    assert_eq!(stored.len(), first, "the broker serves them, and no other");
    check_acknowledged(&acked(&acks), &stored, PAYLOAD_BYTES);

    // What the error says to do: with room again (and a restart, which
    // the partition needs after a failed write: a stop would fail to flush
    // it, so a kill), publish the rest only.
    disk.free();
    broker.kill9();
    let broker = BrokerProcess::start(disk.path(), &[]);
    let producer = Producer::connect(&broker.url(), config)
        .await
        .expect("connect");
    let rest = producer
        .send_batch(TOPIC, records[first..].to_vec())
        .await
        .expect("the rest is published");
    let stored = read_topic(&mut broker.client().await, TOPIC).await;
    assert_eq!(stored.len(), records.len(), "every record once");
    let every_ack: Vec<_> = acks.into_iter().chain(rest).collect();
    assert!(every_ack.iter().all(|ack| !ack.duplicate));
    check_acknowledged(&acked(&every_ack), &stored, PAYLOAD_BYTES);
}
