//! The client's one error type, and the only place a `tonic::Status` becomes one.
//!
//! Invariants: every error displays as one plain line that a person can act on
//! (the broker's own message for broker errors, the cause for connection
//! errors), and no variant carries a `source` whose text it already repeats,
//! so that a cause chain joined with ": " says each thing once.
//! [`Error::is_retryable`] is the single answer to "may this be tried again?",
//! used by the producer, the consumer and the admin client alike.
//! [`Error::PartlyPublished`] is the one error that carries results: a
//! `Producer::send_batch` that fails after some of its records were
//! acknowledged hands those acknowledgments back, never drops them.

use std::error::Error as StdError;
use std::io;

use tonic::Code;

use crate::ack::Ack;

/// Result with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a client call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The broker could not be reached (refused, unreachable, timed out, or a
    /// name that does not resolve).
    #[error("cannot reach the broker at {address}: {reason}")]
    Connect {
        /// The broker address, as the client dialled it (`http://host:port`).
        address: String,
        /// The innermost cause, as one line ("connection refused").
        reason: String,
    },
    /// The broker answered with an error status, or the call failed in transit.
    #[error("{message} ({})", code_name(*.code))]
    Status {
        /// The gRPC status code.
        code: Code,
        /// The broker's message, which names the limit or reason.
        message: String,
    },
    /// The broker refused the call and said a retry cannot succeed until
    /// something changes (a negative `grpc-retry-pushback-ms`): a full disk,
    /// say. Never retried.
    #[error("{message} ({})", code_name(*.code))]
    Refused {
        /// The gRPC status code.
        code: Code,
        /// The broker's message, which says what the operator can do.
        message: String,
    },
    /// The client refused a call or a setting before sending anything.
    #[error("{0}")]
    InvalidArgument(String),
    /// The producer was closed, or its background task is gone.
    #[error("the producer is closed")]
    Closed,
    /// `Producer::send_batch` published its records in several requests and
    /// one failed after the ones before it were acknowledged: the first
    /// `acks.len()` records are stored where `acks` says, the
    /// `unacknowledged` records after them are not acknowledged. Calling
    /// again with every record would publish the acknowledged ones twice
    /// (unless each has an idempotency key of the caller's own): send only
    /// the records from index `acks.len()` on. [`Error::code`] and
    /// [`Error::is_retryable`] answer for `cause`.
    #[error(
        "{unacknowledged} of {} records not acknowledged, from record {} on (the {} before \
         it were): {cause}",
        acks.len() + unacknowledged,
        acks.len(),
        acks.len()
    )]
    PartlyPublished {
        /// The acknowledgments of the records before the failed publish, in
        /// input order.
        acks: Vec<Ack>,
        /// How many records, all after those, were not acknowledged.
        unacknowledged: usize,
        /// Why the first publish that was not acknowledged failed. Shown in
        /// this error's own line, so it is no `source`.
        cause: Box<Error>,
    },
}

impl Error {
    /// Whether trying again may succeed: the broker was unreachable, busy or
    /// restarting, or the call was cut or timed out. Busy is
    /// RESOURCE_EXHAUSTED, a capacity limit that frees up as others finish:
    /// subscriptions, dedup memory, or connections ("connection limit
    /// reached: max_connections N", retried on a fresh connection, with
    /// backoff, within the retry policy's bounds). Errors about the request
    /// itself (bad argument, unknown topic, offset out of range, data loss)
    /// fail the same way every time and are not retryable.
    ///
    /// `Cancelled` counts as transient: the client never cancels its own
    /// calls, so the status comes from the transport (hyper reports requests
    /// dropped with their connection as cancelled).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Status { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Internal
                    | Code::Unknown
                    | Code::ResourceExhausted
                    | Code::Cancelled
            ),
            Error::Refused { .. } | Error::InvalidArgument(_) | Error::Closed => false,
            Error::PartlyPublished { cause, .. } => cause.is_retryable(),
        }
    }

    /// Whether the broker refuses until its operator acts (a full disk):
    /// not retried, and not the request's fault either, so a caller that
    /// sets refused records aside (the outbox relay's dead letters) waits
    /// instead.
    pub fn waits_for_operator(&self) -> bool {
        match self {
            Error::Refused { .. } => true,
            Error::PartlyPublished { cause, .. } => cause.waits_for_operator(),
            _ => false,
        }
    }

    /// The gRPC status code, for broker errors (for
    /// [`Error::PartlyPublished`], its cause's).
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status { code, .. } | Error::Refused { code, .. } => Some(*code),
            Error::PartlyPublished { cause, .. } => cause.code(),
            _ => None,
        }
    }

    /// The error of a split publish that failed with `cause` after `acks`
    /// were acknowledged, with `unacknowledged` records left: `cause` itself
    /// when nothing was acknowledged.
    pub(crate) fn after_acks(acks: Vec<Ack>, unacknowledged: usize, cause: Error) -> Error {
        if acks.is_empty() {
            return cause;
        }
        Error::PartlyPublished {
            acks,
            unacknowledged,
            cause: Box::new(cause),
        }
    }

    /// A call that did not answer within its timeout.
    pub(crate) fn timed_out(operation: &str, timeout_ms: u64) -> Error {
        Error::Status {
            code: Code::DeadlineExceeded,
            message: format!("{operation} got no answer within {timeout_ms} ms"),
        }
    }

    /// A broker answer that breaks the protocol's promises.
    pub(crate) fn protocol(message: String) -> Error {
        Error::Status {
            code: Code::Internal,
            message,
        }
    }

    /// A failed connection attempt to `address`, reduced to its innermost cause.
    pub(crate) fn connect(address: &str, error: &tonic::transport::Error) -> Error {
        Error::Connect {
            address: address.to_owned(),
            reason: innermost_reason(error),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let mut message = if status.message().is_empty() {
            // Transport failures sometimes carry no message; the code alone
            // still tells the reader what kind of failure it was.
            status.code().description().to_owned()
        } else {
            status.message().to_owned()
        };
        // A failure in transit keeps its cause ("transport error" alone says
        // little: a broker that closed the connection, say); said once.
        if let Some(source) = StdError::source(&status) {
            let cause = innermost_reason(source);
            if !message.to_lowercase().contains(&cause.to_lowercase()) {
                message = format!("{message}: {cause}");
            }
        }
        let pushback = status.metadata().get(RETRY_PUSHBACK_KEY);
        // gRPC's retry design: a pushback that is not a non-negative number
        // of milliseconds means "do not retry".
        let no_retry = pushback.is_some_and(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .is_none()
        });
        let code = status.code();
        match no_retry {
            true => Error::Refused { code, message },
            false => Error::Status { code, message },
        }
    }
}

/// The metadata key of gRPC's server pushback.
const RETRY_PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// The canonical gRPC name of a status code, as the protocol documentation
/// and other gRPC clients spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The most specific cause in an error's source chain: the I/O error when
/// there is one (what the operating system said), else the last source.
fn innermost_reason(error: &(dyn StdError + 'static)) -> String {
    let mut innermost = error;
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(io_error) = cause.downcast_ref::<io::Error>() {
            return io_message(io_error);
        }
        innermost = cause;
        current = cause.source();
    }
    innermost.to_string()
}

/// An I/O error as a lower-case phrase without the OS error number:
/// "Connection refused (os error 111)" becomes "connection refused".
fn io_message(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(cut) if text.ends_with(')') => &text[..cut],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", error.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_displays_message_and_code_name() {
        let error = Error::from(tonic::Status::not_found("topic orders not found"));
        assert_eq!(error.to_string(), "topic orders not found (NOT_FOUND)");
    }

    #[test]
    fn empty_status_message_falls_back_to_the_code_description() {
        let error = Error::from(tonic::Status::unavailable(""));
        assert_eq!(
            error.to_string(),
            "The service is currently unavailable (UNAVAILABLE)"
        );
    }

    #[test]
    fn transient_codes_are_retryable_and_request_errors_are_not() {
        let retryable = [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Internal,
            Code::Unknown,
            Code::ResourceExhausted,
            Code::Cancelled,
        ];
        let permanent = [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::DataLoss,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Unimplemented,
        ];
        let status = |code| Error::Status {
            code,
            message: String::new(),
        };
        for code in retryable {
            assert!(status(code).is_retryable(), "{code:?}");
        }
        for code in permanent {
            assert!(!status(code).is_retryable(), "{code:?}");
        }
        let connect = Error::Connect {
            address: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert!(connect.is_retryable());
        assert!(!Error::InvalidArgument("bad".into()).is_retryable());
        assert!(!Error::Closed.is_retryable());
    }

    #[test]
    fn a_negative_pushback_is_a_refusal_never_retried() {
        let with_pushback = |value: &'static str| {
            let mut status = tonic::Status::resource_exhausted("disk full");
            status.metadata_mut().insert(
                RETRY_PUSHBACK_KEY,
                tonic::metadata::MetadataValue::from_static(value),
            );
            Error::from(status)
        };
        let refused = with_pushback("-1");
        assert!(matches!(refused, Error::Refused { .. }), "{refused:?}");
        assert!(!refused.is_retryable());
        assert!(refused.waits_for_operator());
        assert_eq!(refused.code(), Some(Code::ResourceExhausted));
        let partly = Error::PartlyPublished {
            acks: Vec::new(),
            unacknowledged: 1,
            cause: Box::new(refused),
        };
        assert!(partly.waits_for_operator());
        assert!(!Error::InvalidArgument("bad".into()).waits_for_operator());
        assert!(with_pushback("250").is_retryable());
        assert!(Error::from(tonic::Status::resource_exhausted("busy")).is_retryable());
    }

    #[test]
    fn a_partly_published_batch_names_both_parts_and_answers_for_its_cause() {
        let ack = |offset| Ack {
            partition: 0,
            offset,
            duplicate: false,
            idempotency_key: bytes::Bytes::from("k"),
        };
        let cause = Error::from(tonic::Status::unavailable("partition 0 failed a write"));
        let error = Error::after_acks(vec![ack(7), ack(8)], 3, cause.clone());
        assert_eq!(
            error.to_string(),
            "3 of 5 records not acknowledged, from record 2 on (the 2 before it were): \
             partition 0 failed a write (UNAVAILABLE)"
        );
        assert_eq!(error.code(), Some(Code::Unavailable));
        assert!(error.is_retryable());
        assert!(
            std::error::Error::source(&error).is_none(),
            "the cause is said once"
        );
        // Nothing acknowledged: the cause alone.
        assert_eq!(Error::after_acks(Vec::new(), 5, cause.clone()), cause);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Wrapper(#[source] io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Transport(#[source] io::Error);

    #[test]
    fn a_failure_in_transit_says_its_cause_once() {
        let cut = tonic::Status::from_error(Box::new(Transport(io::Error::from_raw_os_error(104))));
        assert_eq!(
            Error::from(cut).to_string(),
            "transport error: connection reset by peer (UNKNOWN)"
        );
        let bare = tonic::Status::from_error(Box::new(io::Error::from_raw_os_error(104)));
        assert_eq!(
            Error::from(bare).to_string(),
            "Connection reset by peer (os error 104) (UNKNOWN)"
        );
    }

    #[test]
    fn reason_is_the_io_error_without_its_os_number() {
        let io_error = io::Error::from_raw_os_error(111);
        let wrapped = Wrapper(io_error);
        let reason = innermost_reason(&wrapped);
        assert_eq!(reason, "connection refused");
    }

    #[test]
    fn reason_without_io_error_is_the_last_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner cause")]
        struct Inner;
        assert_eq!(innermost_reason(&Outer(Inner)), "inner cause");
    }

    #[test]
    fn connect_error_is_one_line() {
        let error = Error::Connect {
            address: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            error.to_string(),
            "cannot reach the broker at http://127.0.0.1:1: connection refused"
        );
    }
}
