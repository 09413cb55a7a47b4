//! The Postbox broker: the `postbox.v1.Broker` gRPC service over a storage
//! [`backend::Backend`], and the `postbox-broker` binary.
//!
//! The log itself is in `postbox-engine` (the embedded backend, the
//! default), which knows nothing about gRPC or protobuf. See
//! `docs/ARCHITECTURE.md` for the map.

pub mod backend;
pub mod error;
pub mod server;

pub use error::{Error, Result};
