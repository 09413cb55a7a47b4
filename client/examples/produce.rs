//! Publishes a few records with keys and headers and prints their acks.
//!
//! Run a broker (`postbox-broker`), create the topic
//! (`postbox topics create orders.created --partitions 3`), then:
//!
//! ```sh
//! cargo run -p postbox-client --example produce [BROKER]
//! ```

use postbox_client::{OutgoingRecord, Producer, ProducerConfig, DEFAULT_BROKER};

#[tokio::main]
async fn main() -> Result<(), postbox_client::Error> {
    let broker = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_BROKER.to_owned());
    let producer = Producer::connect(&broker, ProducerConfig::default()).await?;

    // `send` queues each record at once; the batcher publishes them together
    // once the linger (5 ms) passes, and each future resolves to its ack.
    let pending: Vec<_> = (0..10)
        .map(|order| {
            let record = OutgoingRecord::new(format!("{{\"order\":{order}}}"))
                .key(format!("customer-{}", order % 3))
                .header("type", "order.created");
            producer.send("orders.created", record)
        })
        .collect();
    for ack in pending {
        let ack = ack.await?;
        println!(
            "partition {} offset {} duplicate {} key {}",
            ack.partition,
            ack.offset,
            ack.duplicate,
            String::from_utf8_lossy(&ack.idempotency_key)
        );
    }

    // Publishing the same idempotency key twice stores the record once.
    let record = OutgoingRecord::new("charged").idempotency_key("order-7/charge");
    let first = producer
        .send_batch("orders.created", vec![record.clone()])
        .await?;
    let again = producer.send_batch("orders.created", vec![record]).await?;
    println!("first {:?}, again {:?}", first, again);

    producer.close().await
}
