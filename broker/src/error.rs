//! The broker crate's error type: what serving can fail with, beside the
//! backend's own errors (which the service maps to gRPC status codes in
//! `server::status`).

/// Every error the broker library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server setting is unusable; nothing was started.
    #[error("invalid server setting: {0}")]
    Setting(String),
    /// The storage backend failed.
    #[error(transparent)]
    Backend(#[from] postbox_engine::Error),
    /// The reflection service could not be built from the descriptors.
    #[error("building the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
