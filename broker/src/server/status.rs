//! The one mapping from backend errors to gRPC status codes
//! (docs/DESIGN.md, contract 7).
//!
//! The message is the error's own text, which names the limit, the offset or
//! the reason; the code tells a client whether to retry: UNAVAILABLE and
//! RESOURCE_EXHAUSTED are worth retrying, INVALID_ARGUMENT and NOT_FOUND never.

use tonic::{Code, Status};

use crate::backend::Error;

/// The metadata key of gRPC's server pushback (the retry design's
/// `grpc-retry-pushback-ms`): a negative value tells a client not to retry.
pub const RETRY_PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// The status a client gets for `error`. A refusal that no retry can cure
/// until the operator acts (a full disk) carries a negative pushback, so
/// that clients that honour it do not retry it blindly.
pub fn status(error: Error) -> Status {
    let no_retry = matches!(error, Error::PartitionFull { .. });
    let mut status = Status::new(code(&error), error.to_string());
    if no_retry {
        status.metadata_mut().insert(
            RETRY_PUSHBACK_KEY,
            tonic::metadata::MetadataValue::from_static("-1"),
        );
    }
    status
}

fn code(error: &Error) -> Code {
    match error {
        Error::InvalidName { .. } | Error::InvalidArgument(_) | Error::LimitExceeded { .. } => {
            Code::InvalidArgument
        }
        Error::Busy { .. } | Error::PartitionFull { .. } => Code::ResourceExhausted,
        Error::TopicNotFound(_) | Error::PartitionNotFound { .. } => Code::NotFound,
        Error::TopicExists(_) => Code::AlreadyExists,
        Error::Fenced { .. } => Code::FailedPrecondition,
        Error::OffsetOutOfRange { .. } => Code::OutOfRange,
        Error::DataLoss { .. } => Code::DataLoss,
        // A failed partition (which the broker reopens by itself) or a
        // closing broker: another attempt can succeed, and idempotency keys
        // make it safe.
        Error::PartitionFailed { .. } | Error::ShuttingDown => Code::Unavailable,
        Error::Io { .. }
        | Error::Meta { .. }
        | Error::Corrupt { .. }
        | Error::TaskFailed(_)
        | Error::Poisoned { .. } => Code::Internal,
    }
}

/// tonic refuses a request it cannot take with codes that say "retry" or
/// "our fault": a message over `GRPC_MESSAGE_BYTES_MAX` with OUT_OF_RANGE,
/// one that is not valid protobuf (a header name that is not UTF-8, say)
/// with INTERNAL. Both are the request's fault and permanent, so contract 7
/// wants INVALID_ARGUMENT: a client must not retry them. The message, which
/// names the limit or the reason, is kept. Applied to every response.
pub fn refused_requests_are_invalid<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(refusal) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let oversized = refusal.code() == Code::OutOfRange
        && refusal.message().contains("message length too large");
    let undecodable = refusal.code() == Code::Internal
        && refusal
            .message()
            .contains("failed to decode Protobuf message");
    if oversized || undecodable {
        let invalid = Status::invalid_argument(refusal.message());
        if let Err(e) = invalid.add_header(response.headers_mut()) {
            tracing::warn!(error = %e, "rewriting the status of a refused request");
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_invalid_arguments_and_capacity_is_exhaustion() {
        let limit = Error::limit("record", 10, 11);
        assert_eq!(status(limit).code(), Code::InvalidArgument);
        let busy = Error::Busy {
            what: "keys".into(),
            limit: 1,
            actual: 1,
        };
        let s = status(busy);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("retry later"), "{}", s.message());
        assert_eq!(
            status(Error::TopicNotFound("t".into())).code(),
            Code::NotFound
        );
    }
}
