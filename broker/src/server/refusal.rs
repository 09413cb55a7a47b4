//! Connections over `max_connections`: accepted all the same, so that no
//! client waits unanswered in the kernel's queue, and told why they are
//! turned away.
//!
//! Every call on such a connection is answered RESOURCE_EXHAUSTED
//! "connection limit reached: max_connections N"; after the first, the
//! connection is sent GOAWAY and closes. A status on a call, not a GOAWAY
//! with debug data alone, because a client sees the status whatever the
//! timing: a GOAWAY that arrives before the client's first request ends the
//! connection with nothing but "connection closed" for that request (hyper's
//! client and tonic keep no more). A client that retries
//! RESOURCE_EXHAUSTED with backoff, as `postbox-client` does, gets in once
//! connections close, by their peers or by the deadlines.
//!
//! Invariants: at most `REFUSING_CONNECTIONS_MAX` connections are being
//! refused at once (past it, a connection is closed as soon as it is
//! accepted); each is closed `REFUSAL_WAIT_MS` (or `handshake_timeout_ms`,
//! if shorter) after it was accepted at the latest, called or not.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tonic::body::Body;
use tonic::Status;

use super::connection::Http2;
use super::ServerConfig;

/// Connections being refused at once: each costs a descriptor and a task for
/// up to `REFUSAL_WAIT_MS`, so a flood of them is bounded, while a burst of
/// real clients over the limit still hears why.
pub const REFUSING_CONNECTIONS_MAX: usize = 64;
/// Longest a refused connection stays open: time for a client to send its
/// first call and read the answer, a round trip or two.
pub const REFUSAL_WAIT_MS: u64 = 1_000;

/// How connections over the limit are refused.
#[derive(Debug, Clone)]
pub(super) struct Refusal {
    /// The answer's message, naming the limit.
    message: Arc<str>,
    wait: Duration,
}

impl Refusal {
    pub(super) fn of(config: &ServerConfig) -> Refusal {
        Refusal {
            message: format!(
                "connection limit reached: max_connections {}",
                config.max_connections
            )
            .into(),
            wait: Duration::from_millis(REFUSAL_WAIT_MS.min(config.handshake_timeout_ms)),
        }
    }

    /// Answers every call on `stream` with the refusal until the first one
    /// has been answered and GOAWAY acknowledged, or the wait is over.
    /// `_slot` is the connection's place under `REFUSING_CONNECTIONS_MAX`.
    pub(super) async fn refuse(
        self,
        stream: TcpStream,
        http2: Arc<Http2>,
        _slot: OwnedSemaphorePermit,
    ) {
        let called = Arc::new(Notify::new());
        let answer = {
            let called = Arc::clone(&called);
            let message = Arc::clone(&self.message);
            hyper::service::service_fn(move |_request| {
                called.notify_one();
                let refusal = Status::resource_exhausted(message.as_ref()).into_http::<Body>();
                std::future::ready(Ok::<_, Infallible>(refusal))
            })
        };
        let connection = http2.serve_connection(TokioIo::new(stream), answer);
        let mut connection = std::pin::pin!(connection);
        let deadline = tokio::time::Instant::now() + self.wait;
        tokio::select! {
            _ = connection.as_mut() => return,
            () = tokio::time::sleep_until(deadline) => return,
            () = called.notified() => connection.as_mut().graceful_shutdown(),
        }
        // The answer and GOAWAY go out; a peer that has not finished closing
        // by the deadline is cut off.
        let _ = tokio::time::timeout_at(deadline, connection).await;
    }
}
