//! The Postbox Rust client: a [`Producer`], a [`Consumer`] and an [`Admin`]
//! client, each connected to a broker by its address (`127.0.0.1:7411`,
//! `localhost:7411` or `http://...`), and the `postbox` CLI built on them.
//!
//! ```no_run
//! # async fn example() -> postbox_client::Result<()> {
//! use postbox_client::{OutgoingRecord, Producer, ProducerConfig};
//!
//! let producer = Producer::connect("127.0.0.1:7411", ProducerConfig::default()).await?;
//! let ack = producer
//!     .send("orders.created", OutgoingRecord::new("order 42").key("customer-7"))
//!     .await?;
//! println!("stored at {}:{}", ack.partition, ack.offset);
//! # Ok(())
//! # }
//! ```
//!
//! Architecture invariants: the client talks to the broker only over gRPC
//! (`postbox-proto`), and protobuf types never appear in its public API;
//! every call has a timeout; publishes are retried only with an idempotency
//! key on every record, so a retry cannot append twice; a record the broker
//! would refuse for a limit is refused before it is sent, against the
//! client's copies of the broker's limits ([`RECORD_BYTES_MAX`] and the
//! others), which never refuse what the broker accepts.

mod ack;
mod admin;
mod batch;
mod connection;
mod consumer;
mod error;
mod limits;
mod producer;
mod retry;
mod types;
mod wire;

pub use ack::Ack;
pub use admin::Admin;
pub use batch::BatchBuilder;
pub use connection::{
    normalize_address, CONNECT_TIMEOUT_MS, DEFAULT_BROKER, REQUEST_TIMEOUT_MS_DEFAULT,
};
pub use consumer::{Consumer, ConsumerConfig};
pub use error::{code_name, Error, Result};
// The client's copies of the broker's limits (`postbox_engine::limits`), checked
// before sending so that a request the broker would refuse fails at once.
pub use limits::{
    BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BATCH_RECORDS_MAX, HEADERS_PER_RECORD_MAX,
    HEADER_NAME_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX, KEY_BYTES_MAX, MESSAGE_BYTES_MAX,
    RECORD_BYTES_MAX, SUBSCRIBE_MESSAGE_BYTES_MAX,
};
pub use producer::{
    Producer, ProducerConfig, IN_FLIGHT_BATCHES_MAX, LINGER_MS_DEFAULT, LINGER_MS_MAX,
    MAX_BATCH_BYTES_DEFAULT, MAX_BATCH_RECORDS_DEFAULT, MAX_QUEUED_BYTES_DEFAULT, QUEUED_BYTES_MAX,
};
pub use retry::{
    RetryPolicy, RETRY_ATTEMPTS_MAX, RETRY_BASE_MS, RETRY_CAP_MS, RETRY_ELAPSED_MAX_MS,
};
pub use tonic::Code;
pub use types::{
    Durability, Fence, Fetched, OutgoingRecord, PartitionInfo, Record, StartFrom, TopicInfo,
    TopicSettings,
};
pub use wire::RecordCost;
