//! Connections that cannot lock clients out, against the real broker: silent
//! sockets past the connection limit are refused and those within it are
//! closed at the handshake deadline, a client at the limit hears why, idle
//! connections are closed and subscriptions are not, keepalive finds a peer
//! that went silent, a burst of connections is all answered; and the file
//! descriptor limit, checked (and raised) at start.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use postbox_client::{Admin, OutgoingRecord, Producer, ProducerConfig, TopicSettings};
use postbox_proto::v1 as pb;
use postbox_tests::broker::BrokerProcess;
use postbox_tests::peer::{Http2Peer, SilentSocket};

/// The connection limit of the limit test: 2x this many silent sockets.
const LIMIT: usize = 16;
/// The handshake deadline of the limit test: well past the broker's
/// `REFUSAL_WAIT_MS` (1 s), so that a refusal shows as coming before it.
const HANDSHAKE_MS: u64 = 4_000;
/// How soon after the deadline a client must get in: a functional bound
/// (the slots are free at the deadline), with a margin for a busy machine.
const AFTER_DEADLINE: Duration = Duration::from_secs(1);
/// Longest the broker may hold a connection that a rule should close: a
/// hung test, not a slow one.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections of the burst test, opened at once.
const BURST: usize = 2_000;
/// The broker's default connection limit, which the burst test exceeds.
const MAX_CONNECTIONS_DEFAULT: usize = 1024;
const TOPIC: &str = "events";

fn broker(extra_args: &[&str]) -> (tempfile::TempDir, BrokerProcess) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broker = BrokerProcess::start(&dir.path().join("data"), extra_args);
    (dir, broker)
}

/// Creates the topic and publishes one record with the Rust client, each on
/// a connection of its own; the record's offset.
async fn create_and_publish(url: &str) -> u64 {
    let admin = Admin::connect(url).await.expect("connecting");
    admin
        .create_topic(TOPIC, TopicSettings::default())
        .await
        .expect("creating the topic");
    let producer = Producer::connect(url, ProducerConfig::default())
        .await
        .expect("connecting");
    producer
        .send(TOPIC, OutgoingRecord::new("after the deadline"))
        .await
        .expect("publishing")
        .offset
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_sockets_past_the_limit_are_refused_and_the_rest_closed_at_the_handshake_deadline() {
    let limit = LIMIT.to_string();
    let handshake_ms = HANDSHAKE_MS.to_string();
    let (_dir, broker) = broker(&[
        "--max-connections",
        &limit,
        "--handshake-timeout-ms",
        &handshake_ms,
    ]);
    let handshake = Duration::from_millis(HANDSHAKE_MS);
    // One after another, so that the first LIMIT are the ones served.
    let mut served = Vec::new();
    for _ in 0..LIMIT {
        served.push(SilentSocket::open(broker.addr()).await);
    }
    let deadline = served.last().map(SilentSocket::opened).expect("sockets") + handshake;
    let mut refused = Vec::new();
    for _ in 0..LIMIT {
        refused.push(SilentSocket::open(broker.addr()).await);
    }

    // A client at the limit hears why, at once (create_topic is tried once).
    let admin = Admin::connect(&broker.url()).await.expect("connecting");
    let refusal = admin
        .create_topic(TOPIC, TopicSettings::default())
        .await
        .expect_err("a connection over the limit");
    assert!(
        Instant::now() < deadline,
        "the refusal came after the deadline: the test proves nothing"
    );
    assert_eq!(
        refusal.to_string(),
        format!("connection limit reached: max_connections {LIMIT} (RESOURCE_EXHAUSTED)")
    );
    assert!(refusal.is_retryable(), "{refusal:?}");
    drop(admin);

    let refused_after = join_all(refused.into_iter().map(|s| s.closed_after(CLOSE_TIMEOUT))).await;
    for after in &refused_after {
        assert!(
            *after < handshake,
            "a socket over the limit was held {after:?}, to the handshake deadline: {refused_after:?}"
        );
    }
    let served_after = join_all(served.into_iter().map(|s| s.closed_after(CLOSE_TIMEOUT))).await;
    for after in &served_after {
        assert!(
            *after >= handshake,
            "a served socket was closed after {after:?}, before the handshake deadline"
        );
    }

    // The slots are free at the deadline: a client gets in at once.
    let offset = create_and_publish(&broker.url()).await;
    let acknowledged = Instant::now();
    assert_eq!(offset, 0);
    assert!(
        acknowledged < deadline + AFTER_DEADLINE,
        "acknowledged {:?} after the deadline",
        acknowledged - deadline
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_sent_only_the_preface_is_closed_at_the_handshake_deadline() {
    let (_dir, broker) = broker(&["--handshake-timeout-ms", "1000"]);
    let handshake = Duration::from_millis(1000);
    // Opened first, so that its deadline has passed when the other's has.
    let mut calling = Http2Peer::connect(broker.addr()).await;
    calling
        .check_health()
        .await
        .expect("a call within the deadline");
    let preface_only = SilentSocket::open_with_preface(broker.addr()).await;

    let after = preface_only.closed_after(CLOSE_TIMEOUT).await;
    assert!(after >= handshake, "closed after {after:?}");
    // The deadline is for the first call only.
    assert!(
        !calling.is_closed(),
        "a connection that made a call was closed"
    );
    calling
        .check_health()
        .await
        .expect("a second call past the deadline, on the same connection");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_and_a_connection_with_a_subscription_is_not() {
    let idle_timeout = Duration::from_millis(1500);
    let (_dir, broker) = broker(&["--idle-timeout-ms", "1500"]);
    let mut admin = broker.client().await;
    admin
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 1,
            ..Default::default()
        })
        .await
        .expect("creating the topic");
    let mut subscriber = broker.client().await;
    let mut records = subscriber
        .subscribe(pb::SubscribeRequest {
            topic: TOPIC.into(),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("subscribing")
        .into_inner();
    let mut watching = Http2Peer::connect(broker.addr()).await;
    let _watch = watching.open_watch().await;

    let mut idle = Http2Peer::connect(broker.addr()).await;
    idle.check_health().await.expect("a health check");
    let last_call = Instant::now();
    let closed = idle.closed(CLOSE_TIMEOUT).await;
    assert!(
        closed.at - last_call >= idle_timeout,
        "closed {:?} after its last call",
        closed.at - last_call
    );
    assert!(
        closed.goaway && closed.result.is_ok(),
        "an idle connection ends with GOAWAY, gracefully: {closed:?}"
    );

    // Streaming calls have been open longer than the idle timeout, with
    // nothing to read: their connections are left alone, and a
    // subscription still delivers. The admin client's connection was idle
    // as long, and closed: its channel reconnects.
    assert!(
        !watching.goaway_received() && !watching.is_closed(),
        "a connection with a call in flight was closed as idle"
    );
    admin
        .publish(pb::PublishRequest {
            topic: TOPIC.into(),
            records: vec![postbox_tests::records::keyed_record("k", 10)],
            ..Default::default()
        })
        .await
        .expect("a publish on a fresh connection");
    let delivered = tokio::time::timeout(CLOSE_TIMEOUT, records.message())
        .await
        .expect("a record within the timeout")
        .expect("the subscription is open")
        .expect("a message");
    assert_eq!(delivered.records.len(), 1);
    assert_eq!(delivered.records[0].offset, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_closes_a_connection_whose_peer_stopped_answering() {
    let (_dir, broker) = broker(&["--keepalive-interval-ms", "300"]);
    let mut gone = Http2Peer::connect(broker.addr()).await;
    let mut healthy = Http2Peer::connect(broker.addr()).await;
    // Calls in flight, so that neither is idle.
    let _gone_watch = gone.open_watch().await;
    let _healthy_watch = healthy.open_watch().await;
    gone.freeze();

    gone.closed(CLOSE_TIMEOUT).await;
    assert!(
        !healthy.is_closed(),
        "a peer answering pings lost its connection"
    );
    healthy
        .check_health()
        .await
        .expect("a call on the healthy connection");
}

/// What one client of the burst got.
#[derive(Debug)]
enum Outcome {
    /// Its call was answered.
    Served {
        /// Holds the connection open to the end of the test.
        _channel: tonic::transport::Channel,
    },
    /// Refused with the broker's reason.
    Refused,
    /// Its connection was closed before a call could be answered: the
    /// broker was refusing too many to tell each why.
    Closed(tonic::Status),
}

async fn burst_client(url: String) -> Outcome {
    let channel = match tonic::transport::Endpoint::from_shared(url)
        .expect("a URL")
        .connect()
        .await
    {
        Ok(channel) => channel,
        Err(e) => return Outcome::Closed(tonic::Status::unavailable(e.to_string())),
    };
    let mut client = pb::broker_client::BrokerClient::new(channel.clone());
    match client.list_topics(pb::ListTopicsRequest {}).await {
        Ok(_) => Outcome::Served { _channel: channel },
        Err(status) if status.message().contains("connection limit reached") => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            Outcome::Refused
        }
        Err(status) => Outcome::Closed(status),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_connections_is_served_or_refused_and_none_hangs() {
    let (_dir, broker) = broker(&[]);
    let clients = (0..BURST).map(|_| {
        let url = broker.url();
        tokio::spawn(async move { tokio::time::timeout(CLOSE_TIMEOUT, burst_client(url)).await })
    });
    let outcomes: Vec<Outcome> = join_all(clients)
        .await
        .into_iter()
        .map(|joined| {
            joined
                .expect("a client task")
                .expect("a connection of the burst hung")
        })
        .collect();
    let served = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Served { .. }))
        .count();
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Refused))
        .count();
    let closed: Vec<&tonic::Status> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Closed(status) => Some(status),
            _ => None,
        })
        .collect();
    // Every served client still holds its connection: the limit is full.
    assert_eq!(
        served,
        MAX_CONNECTIONS_DEFAULT,
        "refused {refused}, closed {}: {:?}",
        closed.len(),
        closed.first()
    );
    assert!(refused > 0, "no client heard why it was refused");
    assert_eq!(served + refused + closed.len(), BURST);
}

/// The soft and hard descriptor limits of a process, from /proc.
fn open_files_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("the open files line");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|word| word.parse::<u64>().ok());
    let soft = numbers.next().expect("a soft limit");
    let hard = numbers.next().expect("a hard limit");
    (soft, hard)
}

/// The number after `before` in `text`.
fn number_after(text: &str, before: &str) -> u64 {
    let start = text
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} in {text:?}"))
        + before.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number after {before:?} in {text:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_short_of_file_descriptors_refuses_to_start_in_one_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().join("data");
    let flags = ["--max-connections", "16"];
    {
        // 64 partitions: a log and an index each, about 128 descriptors
        // beside the broker's 150 or so of its own.
        let mut broker = BrokerProcess::start(&data_dir, &flags);
        broker
            .client()
            .await
            .create_topic(pb::CreateTopicRequest {
                name: TOPIC.into(),
                partitions: 64,
                ..Default::default()
            })
            .await
            .expect("creating the topic");
        broker.sigterm();
        assert!(broker.wait().success());
    }

    let (status, stderr) =
        BrokerProcess::start_failing(&["prlimit", "--nofile=200:200"], &data_dir, &flags);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    let line = lines[0];
    assert!(
        line.starts_with("postbox-broker: error: too few file descriptors: the broker needs "),
        "{line}"
    );
    let needed = number_after(line, "needs ");
    assert!(needed > 200, "{line}");
    assert!(line.contains("but may open 200 (hard limit 200)"), "{line}");
    assert!(line.contains(&format!("ulimit -n {needed}")), "{line}");
    assert!(line.contains(&format!("LimitNOFILE={needed}")), "{line}");

    // Just enough: it starts.
    let exactly = format!("--nofile={needed}:{needed}");
    let broker =
        BrokerProcess::start_under(&["prlimit", &exactly], &data_dir, "127.0.0.1:0", &flags);
    let info = broker
        .client()
        .await
        .describe_topic(pb::DescribeTopicRequest { name: TOPIC.into() })
        .await;
    assert_eq!(info.expect("the topic").into_inner().partitions, 64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_raises_its_soft_descriptor_limit_to_the_hard_one() {
    let (_, hard) = open_files_limits("self");
    let dir = tempfile::tempdir().expect("a temporary directory");
    // A soft limit below what even an empty data directory needs.
    let nofile = format!("--nofile=100:{hard}");
    let broker = BrokerProcess::start_under(
        &["prlimit", &nofile],
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--max-connections", "16"],
    );
    assert_eq!(open_files_limits(&broker.pid().to_string()), (hard, hard));
    assert!(
        broker.log().contains("soft_limit_before=100"),
        "{}",
        broker.log()
    );
}

#[test]
fn connection_settings_out_of_range_are_refused_before_the_data_directory_is_made() {
    let cases = [
        (
            "--accept-backlog",
            "65536",
            "accept_backlog is 65536, over the limit of 65535",
        ),
        (
            "--max-connections",
            "1048577",
            "max_connections is 1048577, over the limit of 1048576",
        ),
        (
            "--handshake-timeout-ms",
            "0",
            "handshake_timeout_ms must be at least 1",
        ),
        (
            "--idle-timeout-ms",
            "0",
            "idle_timeout_ms must be at least 1",
        ),
    ];
    for (flag, value, reason) in cases {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data_dir = dir.path().join("data");
        let (status, stderr) = BrokerProcess::start_failing(&[], &data_dir, &[flag, value]);
        assert_eq!(status.code(), Some(1), "{flag} {value}: {stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!("postbox-broker: error: invalid server setting: {reason}")
        );
        assert!(!data_dir.exists(), "{flag} {value} made the data directory");
    }
}
