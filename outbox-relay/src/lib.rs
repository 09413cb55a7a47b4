//! The Postbox outbox relay: from a PostgreSQL outbox table to the broker.
//!
//! The application inserts an event row in the transaction that makes the
//! change; the relay claims unpublished rows in order, publishes them with
//! their idempotency keys as the table's fenced leader, and deletes (or
//! marks) them in the claiming transaction once the broker acknowledged
//! them durably. Modules, leaves first:
//! - [`table`]: the outbox table's name and every name derived from it;
//! - [`layout`]: which column means what (default, Debezium, overrides);
//! - [`schema`]: what `postbox-relay init` creates ([`Schema`]);
//! - [`config`] and [`session`]: the database URL, the relay's session, its
//!   NOTIFY wake-ups and the bound on every call;
//! - [`leader`]: fenced leadership, one active relay per table;
//! - [`outbox`]: the claim, finish, dead-letter, cleanup and lag SQL;
//! - [`publish`]: rows to records, published under the fence;
//! - [`breaker`] and [`pacer`]: the circuit breaker and adaptive polling;
//! - [`pipeline`]: the leader's batches in flight, claimed, published and
//!   committed at once, on sessions of their own;
//! - [`relay`]: the running relay ([`run`]);
//! - [`status`] and [`dead_letters`]: the operator's commands.
//!
//! Architecture invariants: every SQL text is built from a validated
//! [`TableName`] and quoted column names, never from raw input; the relay
//! holds its leadership on a real PostgreSQL session ([`POOLER_NOTE`]);
//! nothing is deleted, marked or dead-lettered before the broker answered
//! for it; the library never prints the database URL, which may carry a
//! password.

pub mod breaker;
pub mod config;
pub mod dead_letters;
pub mod error;
pub mod housekeeping;
pub mod layout;
pub mod leader;
pub mod outbox;
pub mod pacer;
pub mod pipeline;
pub mod publish;
pub mod relay;
pub mod schema;
pub mod session;
pub mod status;
pub mod table;

pub use config::{
    DatabaseConfig, APPLICATION_NAME, CONNECT_TIMEOUT_MS, DATABASE_URL_ENV, POOLER_NOTE, TABLE_ENV,
};
pub use error::{Error, Result};
pub use layout::{Layout, LayoutKind, EVENT_TYPE_HEADER};
pub use leader::{Leadership, Lease, ADVISORY_LOCK_NAMESPACE, HOLDER_BYTES_MAX};
pub use outbox::{Claim, Lag, Locked, Mode, Outbox, OutboxRow};
pub use publish::{Failure, HeldKeys, Outcome, Publisher};
pub use relay::{run, RelayConfig};
pub use schema::{Schema, INIT_LOCK_TIMEOUT_MS, NOTIFY_CHANNEL};
pub use session::Session;
pub use status::Status;
pub use table::{
    TableName, DEFAULT_TABLE, IDENTIFIER_BYTES_MAX, LEADER_TABLE, TABLE_NAME_BYTES_MAX,
    TABLE_NAME_RULE,
};
