//! The broker's error type: one enum, with the context a caller needs to act
//! (the limit that was exceeded, the offset that was lost, the file that failed).

use std::io;
use std::path::PathBuf;

/// Every error the broker library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A topic or group name breaks the naming rule.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        kind: &'static str,
        name: String,
        reason: String,
    },
    /// An argument is out of range or malformed; nothing was changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A size or count limit was exceeded; nothing was changed.
    #[error("{what} is {actual}, over the limit of {limit}")]
    LimitExceeded {
        what: String,
        limit: u64,
        actual: u64,
    },
    /// The broker is at a capacity limit for now (not the request's fault);
    /// the same request may succeed later. Nothing was changed.
    #[error("{what} is {actual}, at the limit of {limit}; retry later")]
    Busy {
        what: String,
        limit: u64,
        actual: u64,
    },
    /// A fenced producer published with an epoch older than one it used
    /// before: another instance has taken over. Nothing was appended.
    #[error("producer {producer:?} is fenced: epoch {epoch} is older than its epoch {current}; a newer instance has taken over")]
    Fenced {
        producer: String,
        epoch: u64,
        current: u64,
    },
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("topic {topic:?} has {partitions} partitions; partition {partition} does not exist")]
    PartitionNotFound {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    /// A requested offset lies outside the partition's log.
    #[error("offset {offset} is out of range for {topic}/{partition}: the log holds offsets {earliest} to {end} (exclusive)")]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        earliest: u64,
        end: u64,
    },
    /// Stored records failed their checksum or structure check. They are not
    /// skipped: the reader stops here.
    #[error(
        "data loss in {topic}/{partition} at offset {offset} ({file}, byte {position}): {reason}"
    )]
    DataLoss {
        topic: String,
        partition: u32,
        offset: u64,
        file: PathBuf,
        position: u64,
        reason: String,
    },
    /// A write or fsync failed earlier; the partition refuses appends until the
    /// broker has reopened it with new files and recovered it from what is on
    /// disk, which it tries by itself, with backoff, once a probe write works.
    #[error(
        "partition {topic}/{partition} is failed and refuses appends until the broker reopens it, which it tries by itself once the disk takes writes again (or restart the broker): {cause}"
    )]
    PartitionFailed {
        topic: String,
        partition: u32,
        cause: String,
    },
    /// The file system holding the partition is full: appends are refused
    /// until space is freed; the broker then reopens the partition by itself.
    #[error(
        "partition {topic}/{partition} is out of disk space ({free_bytes} bytes free on its file system): appends are refused until space is freed (delete topics, shorten retention or grow the disk); the broker then resumes appending by itself"
    )]
    PartitionFull {
        topic: String,
        partition: u32,
        free_bytes: u64,
    },
    /// A thread panicked while it changed state that later work would trust
    /// (see `crate::sync`): whatever relies on it is refused until the broker
    /// restarts and rebuilds it from the log.
    #[error("{what} is unusable since a thread panicked while changing it; restart the broker, which rebuilds it from the log")]
    Poisoned { what: String },
    /// The engine is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("metadata store: {context}: {source}")]
    Meta {
        context: String,
        #[source]
        source: sled::Error,
    },
    /// A task running an engine call ended without an answer (it panicked or
    /// its runtime is shutting down); whether the call took effect is unknown.
    #[error("a broker task failed: {0}")]
    TaskFailed(String),
    #[error("corrupt {what} in {path}: {reason}")]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The broker's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A limit error: `what` names the measured thing, with its unit.
    pub fn limit(what: impl Into<String>, limit: u64, actual: u64) -> Self {
        Error::LimitExceeded {
            what: what.into(),
            limit,
            actual,
        }
    }

    /// Whether this is a full file system (ENOSPC, or a quota's EDQUOT).
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            Error::PartitionFull { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn meta(context: impl Into<String>, source: sled::Error) -> Self {
        Error::Meta {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to I/O results.
pub(crate) trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::io(context(), source))
    }
}
