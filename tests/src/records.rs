//! Records whose payload is a function of their idempotency key, publishers
//! that keep a journal of what the broker acknowledged, and a reader of a
//! whole topic: what the process-level tests check a broker against.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use postbox_proto::v1 as pb;
use postbox_proto::v1::broker_client::BrokerClient;
use tonic::transport::Channel;

/// The payload for an idempotency key: any record read back can be checked.
pub fn payload_for(key: &str, bytes: usize) -> Bytes {
    Bytes::from(key.bytes().cycle().take(bytes).collect::<Vec<u8>>())
}

/// A record with an idempotency key, a partition key and a header.
pub fn keyed_record(key: &str, bytes: usize) -> pb::PublishRecord {
    pb::PublishRecord {
        key: Some(Bytes::from(format!("k{}", crc(key) % 17))),
        idempotency_key: Some(Bytes::from(key.to_string())),
        headers: vec![pb::Header {
            name: "source".into(),
            value: Bytes::from_static(b"test"),
        }],
        payload: payload_for(key, bytes),
        partition: None,
    }
}

fn crc(s: &str) -> u32 {
    s.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
}

/// An acknowledged record: its idempotency key, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub key: String,
    pub partition: u32,
    pub offset: u64,
}

/// What every publisher got acknowledged, shared between tasks.
pub type Journal = Arc<Mutex<Vec<Acked>>>;

/// Publishes batches of `batch` records of `bytes` bytes, keys `{name}-{n}`,
/// until a publish fails; journals every acknowledgment. Returns the error.
pub async fn publish_until_error(
    mut client: BrokerClient<Channel>,
    topic: &str,
    name: &str,
    batch: usize,
    bytes: usize,
    journal: Journal,
) -> tonic::Status {
    let mut n = 0usize;
    loop {
        let keys: Vec<String> = (n..n + batch).map(|i| format!("{name}-{i}")).collect();
        n += batch;
        if let Err(status) = publish_keys(&mut client, topic, keys, bytes, &journal).await {
            return status;
        }
    }
}

/// Publishes one batch, a record of `bytes` bytes per key, and journals its
/// acknowledgments.
pub async fn publish_keys(
    client: &mut BrokerClient<Channel>,
    topic: &str,
    keys: Vec<String>,
    bytes: usize,
    journal: &Journal,
) -> Result<(), tonic::Status> {
    let records = keys.iter().map(|k| keyed_record(k, bytes)).collect();
    let request = pb::PublishRequest {
        topic: topic.into(),
        records,
        fence: None,
    };
    let acks = client.publish(request).await?.into_inner().acks;
    let mut journal = journal.lock().expect("the journal");
    for (key, ack) in keys.into_iter().zip(acks) {
        journal.push(Acked {
            key,
            partition: ack.partition,
            offset: ack.offset,
        });
    }
    Ok(())
}

/// Every record of a topic as it is now, by (partition, offset), read with a
/// subscription that ends at the end.
pub async fn read_topic(
    client: &mut BrokerClient<Channel>,
    topic: &str,
) -> BTreeMap<(u32, u64), pb::Record> {
    let request = pb::SubscribeRequest {
        topic: topic.into(),
        follow: false,
        ..Default::default()
    };
    let mut stream = client
        .subscribe(request)
        .await
        .expect("subscribe")
        .into_inner();
    let mut records = BTreeMap::new();
    while let Some(response) = stream.message().await.expect("the subscription stream") {
        for r in response.records {
            let previous = records.insert((r.partition, r.offset), r);
            assert!(previous.is_none(), "a record was delivered twice");
        }
    }
    records
}

/// Checks that every acknowledged record is stored at its offset, byte for
/// byte, that offsets are dense, and that nothing else is stored.
pub fn check_acknowledged(
    acked: &[Acked],
    stored: &BTreeMap<(u32, u64), pb::Record>,
    bytes: usize,
) {
    for a in acked {
        let r = stored
            .get(&(a.partition, a.offset))
            .unwrap_or_else(|| panic!("acknowledged {a:?} is missing"));
        let key = String::from_utf8_lossy(r.idempotency_key.as_deref().unwrap_or_default());
        assert_eq!(key, a.key, "the record at {}/{}", a.partition, a.offset);
        assert_eq!(
            r.payload,
            payload_for(&a.key, bytes),
            "payload of {}",
            a.key
        );
    }
    let mut expected: BTreeMap<u32, u64> = BTreeMap::new();
    for &(partition, offset) in stored.keys() {
        let next = expected.entry(partition).or_insert(0);
        assert_eq!(offset, *next, "offsets of partition {partition} are dense");
        *next += 1;
    }
    for r in stored.values() {
        let key = String::from_utf8_lossy(r.idempotency_key.as_deref().unwrap_or_default());
        assert_eq!(
            r.payload,
            payload_for(&key, bytes),
            "no garbage at {}/{}",
            r.partition,
            r.offset
        );
    }
}

/// How many records a topic holds now: the sum of its partitions' end
/// offsets (one `DescribeTopic`, where [`read_topic`] reads them all).
pub async fn stored_count(client: &mut BrokerClient<Channel>, topic: &str) -> u64 {
    client
        .describe_topic(pb::DescribeTopicRequest { name: topic.into() })
        .await
        .expect("describe the topic")
        .into_inner()
        .partition_info
        .iter()
        .map(|p| p.end_offset)
        .sum()
}
