//! The Postbox outbox relay: from a PostgreSQL outbox table to the broker.
//!
//! What exists so far is the relay's foundation, with no publishing yet:
//! - [`table`]: the outbox table's name and every name derived from it;
//! - [`schema`]: the tables, index and optional NOTIFY trigger that
//!   `postbox-relay init` creates ([`Schema`]);
//! - [`leader`]: fenced leadership of a table, one active relay at a time
//!   ([`Leadership`], [`Lease`]);
//! - [`config`]: the database URL and opening sessions ([`DatabaseConfig`]).
//!
//! Architecture invariants: every SQL text is built from a validated
//! [`TableName`], never from raw input; the relay holds its leadership on a
//! real PostgreSQL session ([`POOLER_NOTE`]); the library never prints the
//! database URL, which may carry a password.

pub mod config;
pub mod error;
pub mod leader;
pub mod schema;
pub mod table;

pub use config::{
    DatabaseConfig, APPLICATION_NAME, CONNECT_TIMEOUT_MS, DATABASE_URL_ENV, POOLER_NOTE, TABLE_ENV,
};
pub use error::{Error, Result};
pub use leader::{Leadership, Lease, ADVISORY_LOCK_NAMESPACE, HOLDER_BYTES_MAX};
pub use schema::{Schema, INIT_LOCK_TIMEOUT_MS, NOTIFY_CHANNEL};
pub use table::{
    TableName, DEFAULT_TABLE, IDENTIFIER_BYTES_MAX, LEADER_TABLE, TABLE_NAME_BYTES_MAX,
    TABLE_NAME_RULE,
};
