//! Many partitions written once, as a broker with many quiet topics has
//! them: the zeros written ahead of active segments' data stay within the
//! engine-wide budget instead of costing a step of disk per partition, and
//! a restart cuts them.

use postbox_engine::limits::{PREALLOCATE_STEP_BYTES, ZERO_FILL_BYTES_MAX_DEFAULT};
use postbox_proto::v1 as pb;
use postbox_tests::broker::BrokerProcess;

const TOPICS: u32 = 100;
const PARTITIONS: u32 = 4;

/// Bytes of every segment log file under `dir`.
fn log_file_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("list").flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += log_file_bytes(&path);
        } else if path.extension().is_some_and(|e| e == "log") {
            total += entry.metadata().expect("metadata").len();
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_written_once_cost_no_more_zero_fill_than_the_budget() {
    // Without the budget, every partition would hold a step of zeros.
    const _: () = assert!(
        (TOPICS * PARTITIONS) as u64 * PREALLOCATE_STEP_BYTES > 2 * ZERO_FILL_BYTES_MAX_DEFAULT
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let mut broker = BrokerProcess::start(&data_dir, &[]);
    let mut client = broker.client().await;
    let mut data_bytes = 0;
    for t in 0..TOPICS {
        let name = format!("quiet-{t}");
        client
            .create_topic(pb::CreateTopicRequest {
                name: name.clone(),
                partitions: PARTITIONS,
                ..Default::default()
            })
            .await
            .expect("create");
        let records = (0..PARTITIONS)
            .map(|p| pb::PublishRecord {
                partition: Some(p),
                payload: bytes::Bytes::from_static(b"one small record"),
                ..Default::default()
            })
            .collect();
        client
            .publish(pb::PublishRequest {
                topic: name.clone(),
                records,
                fence: None,
            })
            .await
            .expect("publish");
        let info = client
            .describe_topic(pb::DescribeTopicRequest { name })
            .await
            .expect("describe")
            .into_inner();
        data_bytes += info
            .partition_info
            .iter()
            .map(|p| p.size_bytes)
            .sum::<u64>();
    }
    let running = log_file_bytes(&data_dir);
    assert!(
        running <= data_bytes + ZERO_FILL_BYTES_MAX_DEFAULT,
        "{running} bytes of logs for {data_bytes} bytes of data"
    );
    assert!(
        running > data_bytes,
        "the first partitions written still get their zeros"
    );
    drop(client);
    broker.sigterm();
    assert!(broker.wait().success(), "{}", broker.log());
    drop(broker);
    let broker = BrokerProcess::start(&data_dir, &[]);
    assert_eq!(
        log_file_bytes(&data_dir),
        data_bytes,
        "a restart cuts the zeros"
    );
    drop(broker);
}
