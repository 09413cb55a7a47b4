//! The Postbox outbox relay: from a PostgreSQL outbox table to the broker.
//!
//! Empty until the relay issue.
