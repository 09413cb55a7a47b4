//! Fenced publishing (what the outbox relay's leaders use), against the real
//! broker: an older epoch is refused with FAILED_PRECONDITION and appends
//! nothing, across a broker crash too; a refused request leaves the epoch
//! as it was; and once a newer epoch published, nothing of the older one
//! lands after it.

use std::time::Duration;

use bytes::Bytes;
use postbox_proto::v1 as pb;
use postbox_proto::v1::broker_client::BrokerClient;
use postbox_tests::broker::BrokerProcess;
use postbox_tests::records::read_topic;
use tonic::transport::Channel;
use tonic::Code;

const TOPIC: &str = "outbox.events";
/// Acknowledged publishes of the old leader before the new one takes over.
const OLD_LEADER_PUBLISHES: u32 = 20;
/// How long the old leader may take to have them acknowledged.
const OLD_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

fn fenced(producer: &str, epoch: u64, payloads: &[&str]) -> pb::PublishRequest {
    pb::PublishRequest {
        topic: TOPIC.into(),
        records: payloads
            .iter()
            .map(|p| pb::PublishRecord {
                payload: Bytes::from(p.to_string()),
                ..Default::default()
            })
            .collect(),
        fence: Some(pb::Fence {
            producer: producer.into(),
            epoch,
        }),
    }
}

async fn start(data: &std::path::Path) -> (BrokerProcess, BrokerClient<Channel>) {
    let broker = BrokerProcess::start(data, &[]);
    let client = broker.client().await;
    (broker, client)
}

async fn create_topic(client: &mut BrokerClient<Channel>) {
    client
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            ..Default::default()
        })
        .await
        .expect("create");
}

async fn end_offset(client: &mut BrokerClient<Channel>) -> u64 {
    client
        .describe_topic(pb::DescribeTopicRequest { name: TOPIC.into() })
        .await
        .expect("describe")
        .into_inner()
        .partition_info[0]
        .end_offset
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_epoch_is_refused_and_stays_refused_after_a_crash() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let (mut broker, mut client) = start(&data).await;
    create_topic(&mut client).await;
    let relay = "relay.orders";
    client
        .publish(fenced(relay, 1, &["a"]))
        .await
        .expect("epoch 1");
    client
        .publish(fenced(relay, 5, &["b"]))
        .await
        .expect("epoch 5 takes over");
    client
        .publish(fenced(relay, 5, &["c"]))
        .await
        .expect("epoch 5 again");
    let before = end_offset(&mut client).await;
    let refused = client
        .publish(fenced(relay, 4, &["stale"]))
        .await
        .expect_err("epoch 4 is older");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    for needle in ["relay.orders", "epoch 4", "epoch 5"] {
        assert!(
            refused.message().contains(needle),
            "{needle}: {}",
            refused.message()
        );
    }
    assert_eq!(end_offset(&mut client).await, before, "nothing appended");

    // Other producers and unfenced publishes are unaffected.
    client
        .publish(fenced("relay.billing", 1, &["d"]))
        .await
        .expect("another producer");
    let mut plain = fenced(relay, 0, &["e"]);
    plain.fence = None;
    client.publish(plain).await.expect("unfenced");

    // A request refused for another reason leaves the epoch alone.
    let mut oversized = fenced(relay, 9, &["x"]);
    oversized.records[0].key = Some(Bytes::from(vec![0u8; 64 * 1024]));
    let refused = client
        .publish(oversized)
        .await
        .expect_err("key over the limit");
    assert_eq!(refused.code(), Code::InvalidArgument);
    client
        .publish(fenced(relay, 6, &["f"]))
        .await
        .expect("epoch 6 is still newer");

    let refused = client
        .publish(fenced("bad/name", 1, &["x"]))
        .await
        .expect_err("a bad producer name");
    assert_eq!(refused.code(), Code::InvalidArgument);

    broker.kill9();
    let (_broker, mut client) = start(&data).await;
    let refused = client
        .publish(fenced(relay, 5, &["stale after the crash"]))
        .await
        .expect_err("the epoch survived the crash");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    client
        .publish(fenced(relay, 6, &["g"]))
        .await
        .expect("the current epoch");
}

#[tokio::test(flavor = "multi_thread")]
async fn once_a_newer_epoch_published_nothing_older_lands_after_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (_broker, mut client) = start(&dir.path().join("data")).await;
    create_topic(&mut client).await;
    // The old leader publishes as fast as it can until it is refused, and
    // tells how many of its publishes were acknowledged so far.
    let mut old = client.clone();
    let (acknowledged, mut acknowledgments) = tokio::sync::watch::channel(0u32);
    let old_leader = tokio::spawn(async move {
        let mut published = 0u32;
        loop {
            match old.publish(fenced("relay", 1, &["old", "old"])).await {
                Ok(_) => {
                    published += 1;
                    acknowledged.send_replace(published);
                }
                Err(status) => return (published, status),
            }
        }
    });
    // The takeover comes while the old leader is under way.
    tokio::time::timeout(
        OLD_LEADER_TIMEOUT,
        acknowledgments.wait_for(|published| *published >= OLD_LEADER_PUBLISHES),
    )
    .await
    .expect("the old leader's publishes were not acknowledged in time")
    .expect("the old leader's task ended before the takeover");
    client
        .publish(fenced("relay", 2, &["new"]))
        .await
        .expect("the new leader");
    let (published, refusal) = old_leader.await.expect("the old leader's task");
    assert!(
        published > 0,
        "the old leader published before the takeover"
    );
    assert_eq!(refusal.code(), Code::FailedPrecondition, "{refusal:?}");

    let records = read_topic(&mut client, TOPIC).await;
    let first_new = records
        .values()
        .find(|r| r.payload == "new")
        .expect("the new leader's record")
        .offset;
    let last_old = records
        .values()
        .filter(|r| r.payload == "old")
        .map(|r| r.offset)
        .max()
        .expect("the old leader's records");
    assert!(
        last_old < first_new,
        "an old-epoch record at {last_old} after the new epoch's {first_new}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_client_producer_is_refused_at_once_after_a_takeover() {
    use postbox_client::{Code, Fence, OutgoingRecord, Producer, ProducerConfig};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (broker, mut client) = start(&dir.path().join("data")).await;
    create_topic(&mut client).await;
    let leader = |epoch| ProducerConfig {
        fence: Some(Fence {
            producer: "relay".into(),
            epoch,
        }),
        ..ProducerConfig::default()
    };
    let old = Producer::connect(&broker.url(), leader(1))
        .await
        .expect("connect");
    let new = Producer::connect(&broker.url(), leader(2))
        .await
        .expect("connect");
    old.send(TOPIC, OutgoingRecord::new("old"))
        .await
        .expect("the old leader publishes");
    new.send(TOPIC, OutgoingRecord::new("new"))
        .await
        .expect("the new leader takes over");
    let started = std::time::Instant::now();
    let refused = old
        .send(TOPIC, OutgoingRecord::new("stale"))
        .await
        .expect_err("the old leader is fenced");
    assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused without retries"
    );
    assert_eq!(end_offset(&mut client).await, 2);
}

#[tokio::test]
async fn advance_fence_refuses_the_older_epoch_before_the_newer_publishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut broker, mut client) = start(&dir.path().join("data")).await;
    create_topic(&mut client).await;
    let advance = |epoch| pb::AdvanceFenceRequest {
        fence: Some(pb::Fence {
            producer: "relay.events".into(),
            epoch,
        }),
    };
    client
        .publish(fenced("relay.events", 1, &["from 1"]))
        .await
        .expect("epoch 1 publishes");
    client
        .advance_fence(advance(2))
        .await
        .expect("advance to 2");
    client
        .advance_fence(advance(2))
        .await
        .expect("the same epoch again is accepted");
    let refused = client
        .publish(fenced("relay.events", 1, &["late from 1"]))
        .await
        .expect_err("epoch 1 is fenced off");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let backwards = client
        .advance_fence(advance(1))
        .await
        .expect_err("an epoch never goes back");
    assert_eq!(backwards.code(), Code::FailedPrecondition, "{backwards:?}");
    let missing = client
        .advance_fence(pb::AdvanceFenceRequest { fence: None })
        .await
        .expect_err("a request without a fence");
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert_eq!(
        end_offset(&mut client).await,
        1,
        "nothing of the refused publish"
    );

    // The advanced epoch is durable: still refused after a crash.
    broker.kill9();
    let (_broker, mut client) = start(&dir.path().join("data")).await;
    let refused = client
        .publish(fenced("relay.events", 1, &["after the crash"]))
        .await
        .expect_err("still fenced");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
}
