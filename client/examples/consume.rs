//! Reads a topic as a member of a consumer group, committing as it goes.
//!
//! Starts from the group's committed offsets (the earliest record the first
//! time), prints what is stored, commits every second while reading, and
//! commits once more at the end:
//!
//! ```sh
//! cargo run -p postbox-client --example consume [BROKER]
//! ```

use postbox_client::{Consumer, ConsumerConfig, StartFrom, DEFAULT_BROKER};

#[tokio::main]
async fn main() -> Result<(), postbox_client::Error> {
    let broker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_BROKER.to_owned());
    let config = ConsumerConfig {
        group: Some("example-billing".into()),
        start: StartFrom::Committed,
        // Stop at the end instead of waiting for new records.
        follow: false,
        auto_commit_interval_ms: Some(1_000),
        ..ConsumerConfig::new("orders.created")
    };
    let mut consumer = Consumer::subscribe(&broker, config).await?;
    while let Some(record) = consumer.next().await {
        let record = record?;
        println!(
            "{}:{} {}",
            record.partition,
            record.offset,
            String::from_utf8_lossy(&record.payload)
        );
    }
    // Auto-commit runs inside `next`; the last records need this one.
    consumer.commit().await?;
    println!("positions {:?}", consumer.positions());
    Ok(())
}
