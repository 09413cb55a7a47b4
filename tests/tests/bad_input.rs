//! docs/DESIGN.md, contract 7, over gRPC, against the real broker process: every kind of
//! bad input gets the right status code and a message naming the limit or the
//! reason, and changes nothing (the topics, their end offsets, the groups'
//! offsets and the data directory are as before).

use bytes::Bytes;
use postbox_engine::limits::*;
use postbox_proto::v1 as pb;
use postbox_proto::v1::broker_client::BrokerClient;
use postbox_tests::broker::BrokerProcess;
use tonic::transport::Channel;
use tonic::Code;

type Client = BrokerClient<Channel>;

const TOPIC: &str = "orders.created";
const GROUP: &str = "billing";

/// Everything a bad request must leave alone.
#[derive(Debug, PartialEq)]
struct Snapshot {
    topics: Vec<(String, Vec<u64>)>,
    committed: Vec<(u32, u64)>,
    files: Vec<String>,
}

async fn snapshot(client: &mut Client, broker: &BrokerProcess) -> Snapshot {
    let topics = client
        .list_topics(pb::ListTopicsRequest {})
        .await
        .expect("list topics")
        .into_inner()
        .topics
        .into_iter()
        .map(|t| {
            let ends = t.partition_info.iter().map(|p| p.end_offset).collect();
            (t.name, ends)
        })
        .collect();
    let committed = client
        .get_offsets(pb::GetOffsetsRequest {
            group: GROUP.into(),
            topic: TOPIC.into(),
        })
        .await
        .expect("get offsets")
        .into_inner()
        .offsets
        .into_iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(broker.data_dir().join("topics"))
        .expect("the topics directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    Snapshot {
        topics,
        committed,
        files,
    }
}

fn record(payload: impl Into<Bytes>) -> pb::PublishRecord {
    pb::PublishRecord {
        payload: payload.into(),
        ..Default::default()
    }
}

fn publish(topic: &str, records: Vec<pb::PublishRecord>) -> pb::PublishRequest {
    pb::PublishRequest {
        topic: topic.into(),
        records,
        fence: None,
    }
}

/// Checks a refusal: its code, that its message holds every `needle`.
fn refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needles: &[&str],
) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {}", status.message());
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{what}: the message names {needle:?}: {}",
            status.message()
        );
    }
}

async fn setup() -> (tempfile::TempDir, BrokerProcess, Client) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let mut client = broker.client().await;
    client
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 2,
            ..Default::default()
        })
        .await
        .expect("create the topic");
    let records = (0..10).map(|i| record(format!("r{i}"))).collect();
    client
        .publish(publish(TOPIC, records))
        .await
        .expect("publish");
    client
        .commit_offsets(pb::CommitOffsetsRequest {
            group: GROUP.into(),
            topic: TOPIC.into(),
            offsets: vec![pb::PartitionOffset {
                partition: 0,
                offset: 2,
            }],
        })
        .await
        .expect("commit");
    (dir, broker, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_names_are_invalid_arguments_and_create_nothing() {
    let (_dir, broker, mut client) = setup().await;
    let before = snapshot(&mut client, &broker).await;
    let long = "n".repeat(TOPIC_NAME_BYTES_MAX + 1);
    let bad_names: [(&str, &str); 8] = [
        ("", "empty"),
        (".", "`.`"),
        ("..", "`..`"),
        ("../escape", "'/'"),
        ("a/b", "'/'"),
        ("back\\slash", "'\\\\'"),
        ("white space", "' '"),
        (&long, "249"),
    ];
    for (name, reason) in bad_names {
        let create = pb::CreateTopicRequest {
            name: name.into(),
            ..Default::default()
        };
        refused(
            &format!("create {name:?}"),
            client.create_topic(create).await,
            Code::InvalidArgument,
            &[reason],
        );
        refused(
            &format!("publish to {name:?}"),
            client.publish(publish(name, vec![record("x")])).await,
            Code::InvalidArgument,
            &[reason],
        );
        let describe = pb::DescribeTopicRequest { name: name.into() };
        refused(
            &format!("describe {name:?}"),
            client.describe_topic(describe).await,
            Code::InvalidArgument,
            &[],
        );
        let commit = pb::CommitOffsetsRequest {
            group: name.into(),
            topic: TOPIC.into(),
            offsets: vec![pb::PartitionOffset {
                partition: 0,
                offset: 1,
            }],
        };
        refused(
            &format!("commit for group {name:?}"),
            client.commit_offsets(commit).await,
            Code::InvalidArgument,
            &["group"],
        );
    }
    assert_eq!(snapshot(&mut client, &broker).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_topics_and_partitions_are_not_found() {
    let (_dir, broker, mut client) = setup().await;
    let before = snapshot(&mut client, &broker).await;
    let missing = "no.such.topic";
    refused(
        "publish",
        client.publish(publish(missing, vec![record("x")])).await,
        Code::NotFound,
        &[missing],
    );
    refused(
        "describe",
        client
            .describe_topic(pb::DescribeTopicRequest {
                name: missing.into(),
            })
            .await,
        Code::NotFound,
        &[missing],
    );
    refused(
        "delete",
        client
            .delete_topic(pb::DeleteTopicRequest {
                name: missing.into(),
            })
            .await,
        Code::NotFound,
        &[missing],
    );
    let subscribe = pb::SubscribeRequest {
        topic: missing.into(),
        ..Default::default()
    };
    refused(
        "subscribe",
        client.subscribe(subscribe).await,
        Code::NotFound,
        &[missing],
    );
    let fetch = pb::FetchRequest {
        topic: missing.into(),
        ..Default::default()
    };
    refused(
        "fetch",
        client.fetch(fetch).await,
        Code::NotFound,
        &[missing],
    );
    let get = pb::GetOffsetsRequest {
        group: GROUP.into(),
        topic: missing.into(),
    };
    refused(
        "get offsets",
        client.get_offsets(get).await,
        Code::NotFound,
        &[missing],
    );

    // Partition 2 of a 2-partition topic.
    let mut explicit = record("x");
    explicit.partition = Some(2);
    refused(
        "publish to a missing partition",
        client
            .publish(publish(TOPIC, vec![record("ok"), explicit]))
            .await,
        Code::NotFound,
        &["partition 2"],
    );
    let subscribe = pb::SubscribeRequest {
        topic: TOPIC.into(),
        partition: Some(2),
        ..Default::default()
    };
    refused(
        "subscribe to a missing partition",
        client.subscribe(subscribe).await,
        Code::NotFound,
        &["partition 2"],
    );
    let commit = pb::CommitOffsetsRequest {
        group: GROUP.into(),
        topic: TOPIC.into(),
        offsets: vec![
            pb::PartitionOffset {
                partition: 0,
                offset: 1,
            },
            pb::PartitionOffset {
                partition: 5,
                offset: 0,
            },
        ],
    };
    refused(
        "commit to a missing partition (with a good one first)",
        client.commit_offsets(commit).await,
        Code::NotFound,
        &["partition 5"],
    );
    assert_eq!(snapshot(&mut client, &broker).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_and_batches_over_a_limit_name_the_limit_and_append_nothing() {
    let (_dir, broker, mut client) = setup().await;
    let before = snapshot(&mut client, &broker).await;
    let limit = |n: u64| n.to_string();
    let big = || Bytes::from(vec![7u8; RECORD_BYTES_MAX as usize - 64]);

    let cases: Vec<(&str, Vec<pb::PublishRecord>, String)> = vec![
        (
            "a record over RECORD_BYTES_MAX",
            vec![
                record("fine"),
                record(vec![0u8; RECORD_BYTES_MAX as usize + 1]),
            ],
            limit(RECORD_BYTES_MAX.into()),
        ),
        (
            "more records than BATCH_RECORDS_MAX",
            (0..=BATCH_RECORDS_MAX).map(|_| record("x")).collect(),
            limit(BATCH_RECORDS_MAX.into()),
        ),
        (
            "a batch over BATCH_BYTES_MAX",
            (0..=BATCH_BYTES_MAX / RECORD_BYTES_MAX)
                .map(|_| record(big()))
                .collect(),
            limit(BATCH_BYTES_MAX.into()),
        ),
        (
            "a key over KEY_BYTES_MAX",
            vec![pb::PublishRecord {
                key: Some(vec![1u8; KEY_BYTES_MAX as usize + 1].into()),
                ..record("x")
            }],
            limit(KEY_BYTES_MAX.into()),
        ),
        (
            "an idempotency key over IDEMPOTENCY_KEY_BYTES_MAX",
            vec![pb::PublishRecord {
                idempotency_key: Some(vec![b'k'; IDEMPOTENCY_KEY_BYTES_MAX as usize + 1].into()),
                ..record("x")
            }],
            limit(IDEMPOTENCY_KEY_BYTES_MAX.into()),
        ),
        (
            "more headers than HEADERS_PER_RECORD_MAX",
            vec![pb::PublishRecord {
                headers: (0..=HEADERS_PER_RECORD_MAX)
                    .map(|i| pb::Header {
                        name: format!("h{i}"),
                        value: Bytes::new(),
                    })
                    .collect(),
                ..record("x")
            }],
            limit(HEADERS_PER_RECORD_MAX.into()),
        ),
        (
            "a header name over HEADER_NAME_BYTES_MAX",
            vec![pb::PublishRecord {
                headers: vec![pb::Header {
                    name: "h".repeat(HEADER_NAME_BYTES_MAX as usize + 1),
                    value: Bytes::new(),
                }],
                ..record("x")
            }],
            limit(HEADER_NAME_BYTES_MAX.into()),
        ),
        ("an empty batch", vec![], "at least one record".into()),
    ];
    let mut keys = Vec::new();
    for (n, (what, mut records, needle)) in cases.into_iter().enumerate() {
        // Every refused record carries an idempotency key the broker must
        // not remember: dedup state is part of "nothing changed".
        for (i, r) in records.iter_mut().enumerate() {
            if r.idempotency_key.is_none() {
                let key = format!("refused-{n}-{i}");
                r.idempotency_key = Some(Bytes::from(key.clone()));
                keys.push(key);
            }
        }
        refused(
            what,
            client.publish(publish(TOPIC, records)).await,
            Code::InvalidArgument,
            &[&needle],
        );
        assert_eq!(snapshot(&mut client, &broker).await, before, "{what}");
    }
    let fresh: Vec<pb::PublishRecord> = keys
        .iter()
        .take(BATCH_RECORDS_MAX as usize)
        .map(|k| pb::PublishRecord {
            idempotency_key: Some(Bytes::from(k.clone())),
            ..record("now")
        })
        .collect();
    let acks = client
        .publish(publish(TOPIC, fresh))
        .await
        .expect("publish the refused keys")
        .into_inner()
        .acks;
    assert!(
        acks.iter().all(|a| !a.duplicate),
        "no refused key was remembered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_subscriptions_and_names_on_every_call_are_refused() {
    let (_dir, broker, mut client) = setup().await;
    let before = snapshot(&mut client, &broker).await;
    let subscribe = |change: fn(&mut pb::SubscribeRequest)| {
        let mut req = pb::SubscribeRequest {
            topic: TOPIC.into(),
            ..Default::default()
        };
        change(&mut req);
        req
    };
    let cases: [(&str, pb::SubscribeRequest, Code, &str); 5] = [
        (
            "max_message_bytes over READ_BYTES_MAX",
            subscribe(|r| r.max_message_bytes = READ_BYTES_MAX + 1),
            Code::InvalidArgument,
            "16777216",
        ),
        (
            "an unknown start position",
            subscribe(|r| r.start = Some(pb::subscribe_request::Start::Position(9))),
            Code::InvalidArgument,
            "start position 9",
        ),
        (
            "resume naming a partition not subscribed",
            subscribe(|r| {
                r.partition = Some(0);
                r.resume = vec![pb::PartitionOffset {
                    partition: 1,
                    offset: 0,
                }];
            }),
            Code::InvalidArgument,
            "partition 1",
        ),
        (
            "resume past the end",
            subscribe(|r| {
                r.resume = vec![pb::PartitionOffset {
                    partition: 0,
                    offset: 99,
                }];
            }),
            Code::OutOfRange,
            "offset 99",
        ),
        (
            "a bad topic name",
            subscribe(|r| r.topic = "../x".into()),
            Code::InvalidArgument,
            "'/'",
        ),
    ];
    for (what, req, code, needle) in cases {
        refused(what, client.subscribe(req).await, code, &[needle]);
    }
    let bad = "a/b";
    let fetch = pb::FetchRequest {
        topic: bad.into(),
        ..Default::default()
    };
    refused(
        "fetch",
        client.fetch(fetch).await,
        Code::InvalidArgument,
        &["'/'"],
    );
    let get = pb::GetOffsetsRequest {
        group: GROUP.into(),
        topic: bad.into(),
    };
    refused(
        "get offsets",
        client.get_offsets(get).await,
        Code::InvalidArgument,
        &["'/'"],
    );
    let get = pb::GetOffsetsRequest {
        group: bad.into(),
        topic: TOPIC.into(),
    };
    refused(
        "get offsets of a bad group",
        client.get_offsets(get).await,
        Code::InvalidArgument,
        &["'/'"],
    );
    let delete = pb::DeleteTopicRequest { name: bad.into() };
    refused(
        "delete",
        client.delete_topic(delete).await,
        Code::InvalidArgument,
        &["'/'"],
    );
    assert_eq!(snapshot(&mut client, &broker).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_settings_offsets_and_sizes_are_refused_with_the_reason() {
    let (_dir, broker, mut client) = setup().await;
    let before = snapshot(&mut client, &broker).await;

    let too_many = pb::CreateTopicRequest {
        name: "wide".into(),
        partitions: PARTITIONS_PER_TOPIC_MAX + 1,
        ..Default::default()
    };
    refused(
        "too many partitions",
        client.create_topic(too_many).await,
        Code::InvalidArgument,
        &[&PARTITIONS_PER_TOPIC_MAX.to_string()],
    );
    let tiny_segments = pb::CreateTopicRequest {
        name: "tiny".into(),
        segment_bytes: Some(SEGMENT_BYTES_MIN - 1),
        ..Default::default()
    };
    refused(
        "segments under the minimum",
        client.create_topic(tiny_segments).await,
        Code::InvalidArgument,
        &["segment_bytes", &SEGMENT_BYTES_MIN.to_string()],
    );
    let unknown_durability = pb::CreateTopicRequest {
        name: "odd".into(),
        durability: 7,
        ..Default::default()
    };
    refused(
        "an unknown durability",
        client.create_topic(unknown_durability).await,
        Code::InvalidArgument,
        &["durability"],
    );
    let again = pb::CreateTopicRequest {
        name: TOPIC.into(),
        partitions: 5,
        ..Default::default()
    };
    refused(
        "an existing topic",
        client.create_topic(again).await,
        Code::AlreadyExists,
        &[TOPIC],
    );

    // Partition 0 holds records 0..5 (round-robin over 2 partitions).
    let past_end = pb::SubscribeRequest {
        topic: TOPIC.into(),
        partition: Some(0),
        start: Some(pb::subscribe_request::Start::Offset(6)),
        ..Default::default()
    };
    refused(
        "subscribing to a partition past its end",
        client.subscribe(past_end).await,
        Code::OutOfRange,
        &["offset 6", "0 to 5"],
    );
    let fetch_past_end = pb::FetchRequest {
        topic: TOPIC.into(),
        partition: 1,
        offset: 99,
        ..Default::default()
    };
    refused(
        "fetching past the end",
        client.fetch(fetch_past_end).await,
        Code::OutOfRange,
        &["offset 99"],
    );
    let long_wait = pb::FetchRequest {
        topic: TOPIC.into(),
        max_wait_ms: FETCH_WAIT_MS_MAX + 1,
        ..Default::default()
    };
    refused(
        "a fetch wait over FETCH_WAIT_MS_MAX",
        client.fetch(long_wait).await,
        Code::InvalidArgument,
        &[&FETCH_WAIT_MS_MAX.to_string()],
    );
    let huge_read = pb::FetchRequest {
        topic: TOPIC.into(),
        max_bytes: READ_BYTES_MAX + 1,
        ..Default::default()
    };
    refused(
        "a fetch over READ_BYTES_MAX",
        client.fetch(huge_read).await,
        Code::InvalidArgument,
        &[&READ_BYTES_MAX.to_string()],
    );
    let no_group = pb::SubscribeRequest {
        topic: TOPIC.into(),
        start: Some(pb::subscribe_request::Start::Position(
            pb::StartPosition::Committed.into(),
        )),
        ..Default::default()
    };
    refused(
        "committed without a group",
        client.subscribe(no_group).await,
        Code::InvalidArgument,
        &["group"],
    );
    let commit_past_end = pb::CommitOffsetsRequest {
        group: GROUP.into(),
        topic: TOPIC.into(),
        offsets: vec![
            pb::PartitionOffset {
                partition: 0,
                offset: 3,
            },
            pb::PartitionOffset {
                partition: 1,
                offset: 6,
            },
        ],
    };
    refused(
        "committing past the end (with a good offset first)",
        client.commit_offsets(commit_past_end).await,
        Code::InvalidArgument,
        &["past the end"],
    );
    assert_eq!(snapshot(&mut client, &broker).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_the_grpc_message_limit_is_an_invalid_argument() {
    let (_dir, broker, mut client) = setup().await;
    let before = snapshot(&mut client, &broker).await;
    // A client that sends what the broker will not decode.
    let mut unbounded = broker
        .client()
        .await
        .max_encoding_message_size(2 * GRPC_MESSAGE_BYTES_MAX);
    let payload = Bytes::from(vec![1u8; RECORD_BYTES_MAX as usize - 64]);
    let records = (0..GRPC_MESSAGE_BYTES_MAX / RECORD_BYTES_MAX as usize + 2)
        .map(|_| record(payload.clone()))
        .collect();
    refused(
        "a request over GRPC_MESSAGE_BYTES_MAX",
        unbounded.publish(publish(TOPIC, records)).await,
        Code::InvalidArgument,
        &[&GRPC_MESSAGE_BYTES_MAX.to_string()],
    );
    assert_eq!(snapshot(&mut client, &broker).await, before);
}
