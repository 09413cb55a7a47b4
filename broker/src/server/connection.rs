//! One served connection's life: HTTP/2 (hyper's server, the one tonic's
//! own is built on) with the broker's transport limits, and the rules that
//! keep a client from holding a connection it does not use.
//!
//! Invariants:
//! - A connection that has not started a call within `handshake_timeout_ms`
//!   of being accepted (no preface, or a preface and nothing after it) is
//!   closed without more ado: its peer has not shown it speaks HTTP/2.
//! - A connection with no call in flight for `idle_timeout_ms` is sent
//!   GOAWAY and closes once its peer has acknowledged it: a call sent in
//!   the meantime is still served, and the client reconnects for the next.
//!   A call in flight, an open subscription included, keeps it open.
//! - At shutdown every connection is sent GOAWAY; its calls in flight
//!   finish (`serve` bounds how long).
//! - A dead peer is found by HTTP/2 keepalive: a ping every
//!   `keepalive_interval_ms` of silence, the connection closed when one goes
//!   unanswered as long.
//!
//! Not here: the `grpc-timeout` header (tonic's server enforced it; the
//! broker's clients do not send it, and a client past its deadline resets
//! the call, which drops the work).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::calls::{self, Calls};
use super::{ServerConfig, Services, CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};

/// The HTTP/2 server settings every connection is served with.
pub(super) type Http2 = hyper::server::conn::http2::Builder<TokioExecutor>;

/// The HTTP/2 settings of `config`: streams per connection, windows,
/// keepalive; hyper's defaults for the rest (header list size, reset-stream
/// limits), as tonic leaves them.
pub(super) fn http2(config: &ServerConfig) -> Http2 {
    let keepalive = Duration::from_millis(config.keepalive_interval_ms);
    let mut http2 = Http2::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_streams_per_connection)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive);
    http2
}

/// The times a connection gets.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    handshake: Duration,
    idle: Duration,
}

impl Deadlines {
    pub(super) fn of(config: &ServerConfig) -> Deadlines {
        Deadlines {
            handshake: Duration::from_millis(config.handshake_timeout_ms),
            idle: Duration::from_millis(config.idle_timeout_ms),
        }
    }
}

/// Why a connection is closed by the broker.
#[derive(Debug, Clone, Copy)]
enum Close {
    /// Dropped: no call started within the handshake deadline.
    Handshake,
    /// GOAWAY: no call in flight for the idle timeout.
    Idle,
    /// GOAWAY: the broker is shutting down.
    Shutdown,
}

/// Serves `services` on `stream` until the peer leaves or a rule closes it.
/// `_slot` is the connection's place under `max_connections`.
pub(super) async fn serve(
    stream: TcpStream,
    services: Services,
    http2: Arc<Http2>,
    deadlines: Deadlines,
    shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let peer = stream.peer_addr().ok();
    let (services, calls) = calls::track(services);
    let connection =
        http2.serve_connection(TokioIo::new(stream), TowerToHyperService::new(services));
    let mut connection = std::pin::pin!(connection);
    let close = tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(?peer, error = %e, "connection ended with an error");
            }
            return;
        }
        close = until_closed(calls, shutdown, deadlines) => close,
    };
    tracing::debug!(?peer, ?close, "closing a connection");
    if let Close::Handshake = close {
        return;
    }
    connection.as_mut().graceful_shutdown();
    if let Err(e) = connection.await {
        tracing::debug!(?peer, error = %e, "connection ended with an error while closing");
    }
}

/// Completes when a rule closes the connection.
async fn until_closed(
    mut calls: watch::Receiver<Calls>,
    mut shutdown: watch::Receiver<bool>,
    deadlines: Deadlines,
) -> Close {
    tokio::select! {
        // An error means the server is gone: close as at shutdown.
        _ = shutdown.wait_for(|stopping| *stopping) => Close::Shutdown,
        close = rules(&mut calls, deadlines) => close,
    }
}

async fn rules(calls: &mut watch::Receiver<Calls>, deadlines: Deadlines) -> Close {
    let first_call = calls.wait_for(|calls| calls.started);
    // The guard the wait returns, which holds the count's updates back, is
    // dropped with the condition.
    if tokio::time::timeout(deadlines.handshake, first_call)
        .await
        .is_err()
    {
        return Close::Handshake;
    }
    idle(calls, deadlines.idle).await;
    Close::Idle
}

/// Completes once no call has been in flight for `idle`. Never completes if
/// the count's sender is gone (the connection is ending anyway).
async fn idle(calls: &mut watch::Receiver<Calls>, idle: Duration) {
    loop {
        if calls.wait_for(|calls| calls.in_flight == 0).await.is_err() {
            return std::future::pending().await;
        }
        // Any change (a call started, even one that has ended since)
        // restarts the wait.
        if tokio::time::timeout(idle, calls.changed()).await.is_err() {
            return;
        }
    }
}
