//! The Postbox Rust client (producer, consumer, admin) and the `postbox` CLI.
//!
//! Empty until the gRPC issue: the client talks to the broker only over gRPC.
