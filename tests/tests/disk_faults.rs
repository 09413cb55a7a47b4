//! The broker process on a failing disk: a real full file system (a small
//! loop-mounted ext4) and system calls failed on purpose with strace (EIO
//! from fdatasync and fsync, EMFILE from openat). After each fault every
//! acknowledged record is intact, a full disk is refused as such and
//! appends resume by themselves once space is freed, and a topic creation
//! or deletion that fails changes nothing that a restart would bring back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postbox_proto::v1 as pb;
use postbox_proto::v1::broker_client::BrokerClient;
use postbox_tests::broker::BrokerProcess;
use postbox_tests::disk::SmallDisk;
use postbox_tests::records::{
    check_acknowledged, publish_keys, publish_until_error, read_topic, Journal,
};
use postbox_tests::strace::Injector;
use postbox_tests::wait::wait_until;
use tonic::transport::Channel;

const TOPIC: &str = "events";
const RECORD_BYTES: usize = 1000;
const BATCH: usize = 100;
/// The small disk: room for the broker's metadata and a few MiB of log.
const DISK_BYTES: u64 = 64 << 20;
/// What is left free before the publishers fill the rest.
const LEFT_FREE_BYTES: u64 = 3 << 20;
/// Reopen attempts come quickly, so that the test need not wait long.
const FAST_REOPEN: [&str; 4] = [
    "--reopen-backoff-min-ms",
    "100",
    "--reopen-backoff-max-ms",
    "400",
];
/// How long appends may take to resume once the fault is gone.
const RESUME_TIMEOUT: Duration = Duration::from_secs(30);

async fn create_topic(client: &mut BrokerClient<Channel>, name: &str) -> Result<(), tonic::Status> {
    client
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            partitions: 1,
            ..Default::default()
        })
        .await
        .map(drop)
}

async fn topic_names(client: &mut BrokerClient<Channel>) -> Vec<String> {
    client
        .list_topics(pb::ListTopicsRequest {})
        .await
        .expect("list topics")
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect()
}

/// Publishes one batch of keys `{name}-0..BATCH` until it is acknowledged.
async fn publish_once_resumed(client: &mut BrokerClient<Channel>, name: &str, journal: &Journal) {
    let keys = || (0..BATCH).map(|i| format!("{name}-{i}")).collect();
    wait_until(
        RESUME_TIMEOUT,
        async || {
            publish_keys(client, TOPIC, keys(), RECORD_BYTES, journal)
                .await
                .is_ok()
        },
        || "appends resume once the fault is gone".to_string(),
    )
    .await;
}

/// Stops the broker with SIGTERM (it must exit 0), starts it again over the
/// same data directory and checks every acknowledged record.
async fn restart_and_check(broker: BrokerProcess, journal: &Journal) -> BrokerProcess {
    let mut broker = broker;
    broker.sigterm();
    let status = broker.wait();
    assert!(
        status.success(),
        "shutdown exits 0: {status}; log:\n{}",
        broker.log()
    );
    let data_dir = broker.data_dir().to_path_buf();
    drop(broker);
    let broker = BrokerProcess::start(&data_dir, &[]);
    let stored = read_topic(&mut broker.client().await, TOPIC).await;
    check_acknowledged(&journal.lock().expect("the journal"), &stored, RECORD_BYTES);
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_refused_as_such_and_appends_resume_once_space_is_freed() {
    let disk = SmallDisk::mount(DISK_BYTES);
    let data_dir = disk.path().join("data");
    let broker = BrokerProcess::start(&data_dir, &FAST_REOPEN);
    let mut client = broker.client().await;
    create_topic(&mut client, TOPIC).await.expect("create");
    disk.fill_leaving(LEFT_FREE_BYTES);
    let journal: Journal = Arc::new(Mutex::new(Vec::new()));

    let refusal = publish_until_error(
        client.clone(),
        TOPIC,
        "before",
        BATCH,
        RECORD_BYTES,
        journal.clone(),
    )
    .await;
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    let message = refusal.message();
    assert!(
        message.contains(&format!("partition {TOPIC}/0 is out of disk space"))
            && message.contains("bytes free")
            && message.contains("resumes appending by itself"),
        "{message}"
    );
    let pushback = refusal.metadata().get("grpc-retry-pushback-ms");
    assert_eq!(pushback.and_then(|v| v.to_str().ok()), Some("-1"));
    assert!(
        !journal.lock().expect("the journal").is_empty(),
        "some appends fit"
    );
    // While the disk stays full, appends stay refused.
    let again = publish_keys(
        &mut client,
        TOPIC,
        vec!["full".into()],
        RECORD_BYTES,
        &journal,
    )
    .await
    .expect_err("the disk is still full");
    assert_eq!(again.code(), tonic::Code::ResourceExhausted, "{again:?}");

    disk.free();
    publish_once_resumed(&mut client, "after", &journal).await;
    assert!(
        broker.log().contains("reopened a failed partition"),
        "{}",
        broker.log()
    );
    let stored = read_topic(&mut client, TOPIC).await;
    check_acknowledged(&journal.lock().expect("the journal"), &stored, RECORD_BYTES);
    drop(client);
    restart_and_check(broker, &journal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_is_reopened_from_the_disk_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    // No dedup checkpoint fdatasyncs while the fault is armed: only appends'.
    let mut args = FAST_REOPEN.to_vec();
    args.extend(["--dedup-checkpoint-interval-ms", "3600000"]);
    let broker = BrokerProcess::start(&data_dir, &args);
    let mut client = broker.client().await;
    create_topic(&mut client, TOPIC).await.expect("create");
    let journal: Journal = Arc::new(Mutex::new(Vec::new()));
    publish_keys(
        &mut client,
        TOPIC,
        (0..BATCH).map(|i| format!("ok-{i}")).collect(),
        RECORD_BYTES,
        &journal,
    )
    .await
    .expect("publish");

    let injector = Injector::attach(broker.pid(), "fdatasync", "EIO", 1);
    let failed = publish_keys(
        &mut client,
        TOPIC,
        vec!["lost".into()],
        RECORD_BYTES,
        &journal,
    )
    .await
    .expect_err("the fdatasync failed");
    assert!(injector.injected(), "strace failed an fdatasync");
    drop(injector);
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    assert!(
        failed.message().contains("Input/output error"),
        "{failed:?}"
    );

    publish_once_resumed(&mut client, "after", &journal).await;
    let stored = read_topic(&mut client, TOPIC).await;
    check_acknowledged(&journal.lock().expect("the journal"), &stored, RECORD_BYTES);
    assert!(
        !stored
            .values()
            .any(|r| r.idempotency_key.as_deref() == Some(b"lost".as_slice())),
        "the append whose fdatasync failed is not kept"
    );
    drop(client);
    restart_and_check(broker, &journal).await;
}

/// The system calls a topic creation or deletion is failed at, one call at
/// a time: the disk's and the descriptor table's. One kind each, since
/// strace counts calls per kind (and per thread).
const FAULTS: [(&str, &str); 3] = [("fsync", "EIO"), ("fdatasync", "EIO"), ("openat", "EMFILE")];
/// More calls of one kind than any creation or deletion makes.
const CALLS_MAX: u32 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_creation_failed_at_any_call_leaves_nothing_that_comes_back() {
    for (syscalls, errno) in FAULTS {
        for nth in 1..=CALLS_MAX {
            let dir = tempfile::tempdir().expect("tempdir");
            let data_dir = dir.path().join("data");
            let mut broker = BrokerProcess::start(&data_dir, &[]);
            let mut client = broker.client().await;
            let injector = Injector::attach(broker.pid(), syscalls, errno, nth);
            let created = create_topic(&mut client, TOPIC).await;
            let injected = injector.injected();
            drop(injector);
            let at = format!("{syscalls} call {nth} failed with {errno}");
            if !injected {
                assert!(created.is_ok(), "{at}: {created:?}");
                assert!(nth > 2, "{at}: a creation makes several such calls");
                break;
            }
            let listed = topic_names(&mut client).await.contains(&TOPIC.to_string());
            assert_eq!(listed, created.is_ok(), "{at}: {created:?}");
            drop(client);
            broker.kill9();
            let broker = BrokerProcess::start(&data_dir, &[]);
            let mut client = broker.client().await;
            let after_restart = topic_names(&mut client).await.contains(&TOPIC.to_string());
            assert_eq!(after_restart, created.is_ok(), "{at}: after a restart");
            if created.is_err() {
                create_topic(&mut client, TOPIC)
                    .await
                    .unwrap_or_else(|e| panic!("{at}: a retry creates the topic: {e:?}"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deletion_failed_at_any_call_leaves_the_topic_whole_and_usable() {
    for (syscalls, errno) in FAULTS {
        for nth in 1..=CALLS_MAX {
            let dir = tempfile::tempdir().expect("tempdir");
            let data_dir = dir.path().join("data");
            let mut broker = BrokerProcess::start(&data_dir, &[]);
            let mut client = broker.client().await;
            create_topic(&mut client, TOPIC).await.expect("create");
            let journal: Journal = Arc::new(Mutex::new(Vec::new()));
            let keys = |name: &str| (0..10).map(|i| format!("{name}-{i}")).collect();
            publish_keys(&mut client, TOPIC, keys("kept"), RECORD_BYTES, &journal)
                .await
                .expect("publish");
            let injector = Injector::attach(broker.pid(), syscalls, errno, nth);
            let deleted = client
                .delete_topic(pb::DeleteTopicRequest { name: TOPIC.into() })
                .await;
            let injected = injector.injected();
            drop(injector);
            let at = format!("{syscalls} call {nth} failed with {errno}");
            if !injected {
                assert!(deleted.is_ok(), "{at}: {deleted:?}");
                break;
            }
            let listed = topic_names(&mut client).await.contains(&TOPIC.to_string());
            assert_eq!(listed, deleted.is_err(), "{at}: {deleted:?}");
            if deleted.is_err() {
                publish_keys(&mut client, TOPIC, keys("more"), RECORD_BYTES, &journal)
                    .await
                    .unwrap_or_else(|e| panic!("{at}: the topic stays usable: {e:?}"));
            }
            drop(client);
            broker.kill9();
            let broker = BrokerProcess::start(&data_dir, &[]);
            let mut client = broker.client().await;
            let after_restart = topic_names(&mut client).await.contains(&TOPIC.to_string());
            assert_eq!(after_restart, deleted.is_err(), "{at}: after a restart");
            if deleted.is_err() {
                let stored = read_topic(&mut client, TOPIC).await;
                check_acknowledged(&journal.lock().expect("the journal"), &stored, RECORD_BYTES);
            }
        }
    }
}
