//! The gRPC edge: `postbox.v1.Broker` over a storage [`Backend`], with the
//! standard health service and server reflection beside it.
//!
//! Protocol types (`postbox_proto`) live only in this module; the backend
//! below knows nothing of them, and this module knows the log only through
//! the [`Backend`] trait.
//!
//! Invariants:
//! - Every transport limit is set here, explicitly: message sizes, streams
//!   per connection, connections, subscriptions, flow-control windows, the
//!   accept backlog, the handshake deadline and the idle timeout.
//! - The broker serves each connection itself (`connection`), so that no
//!   client can hold a connection without using it: one that starts no call
//!   within `handshake_timeout_ms` is closed, one with no call in flight for
//!   `idle_timeout_ms` is sent GOAWAY. At `max_connections` the listener
//!   keeps accepting and `refusal` tells each new client why it is turned
//!   away, so that no client waits unanswered.
//! - Shutdown: stop accepting, end subscriptions, send every connection
//!   GOAWAY, let in-flight calls answer (for at most `shutdown_grace_ms`),
//!   then return; the caller shuts the backend down.

mod calls;
mod connection;
mod convert;
mod listener;
mod refusal;
mod service;
mod status;
mod subscribe;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use postbox_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::service::Routes;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::backend::limits::GRPC_MESSAGE_BYTES_MAX;
use crate::backend::Backend;
use crate::error::{Error, Result};
pub use listener::bind;
use listener::{Admission, Gate};
pub use refusal::{REFUSAL_WAIT_MS, REFUSING_CONNECTIONS_MAX};
pub use service::BrokerService;

/// Default listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7411";
/// Default bound on open client connections.
pub const MAX_CONNECTIONS_DEFAULT: usize = 1024;
/// Largest `max_connections`: as many descriptors as Linux lets a process
/// open by default (`fs.nr_open`), each connection holding one.
pub const MAX_CONNECTIONS_MAX: usize = 1 << 20;
/// Default bound on concurrent calls (HTTP/2 streams) per connection.
pub const MAX_STREAMS_PER_CONNECTION_DEFAULT: u32 = 256;
/// Default bound on open subscriptions across all connections.
pub const MAX_SUBSCRIPTIONS_DEFAULT: usize = 4096;
/// Default time in-flight calls get to answer at shutdown.
pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 10_000;
/// Default interval of HTTP/2 keepalive pings to idle clients; a client that
/// does not answer within the same time is disconnected.
pub const KEEPALIVE_INTERVAL_MS_DEFAULT: u64 = 30_000;
/// Default time a new connection has to send the HTTP/2 preface and start
/// its first call: a client on a slow link needs a round trip or two, a
/// socket that never speaks is closed long before it matters.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default time a connection may stay with no call in flight before it is
/// sent GOAWAY: long enough that a client between bursts keeps its
/// connection (gRPC's MaxConnectionIdle is unset, Kafka's
/// connections.max.idle.ms 10 minutes), short enough that abandoned ones
/// free their slot.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 300_000;
/// Default length of the kernel's queue of connections not yet accepted;
/// the listener accepts without pause, so it only absorbs bursts. Linux caps
/// it at `net.core.somaxconn` (4096 by default).
pub const ACCEPT_BACKLOG_DEFAULT: u32 = 1024;
/// Largest `accept_backlog`: what kernels before 4.1 could hold (16 bits);
/// any kernel lowers the value to its `net.core.somaxconn`.
pub const ACCEPT_BACKLOG_MAX: u32 = 65_535;
/// HTTP/2 flow-control window per call: how much a publisher may send before
/// the broker reads it. Large enough for a 1 MiB batch to go in one window.
pub const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// HTTP/2 flow-control window per connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// Descriptors the server holds beside its connections: the listener.
const LISTENER_DESCRIPTORS: u64 = 1;

/// The server's settings (the engine has its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Open client connections; clients over it are refused with
    /// RESOURCE_EXHAUSTED, so that each connection's buffers and tasks are
    /// paid for a bounded number (1 ..= `MAX_CONNECTIONS_MAX`).
    pub max_connections: usize,
    /// Concurrent calls (HTTP/2 streams) per connection.
    pub max_streams_per_connection: u32,
    /// Open subscriptions across connections; each holds up to three
    /// responses of its `max_message_bytes`.
    pub max_subscriptions: usize,
    /// Time in-flight calls get to answer once shutdown starts.
    pub shutdown_grace_ms: u64,
    /// HTTP/2 keepalive ping interval, and how long an answer may take
    /// before the connection is closed: finds clients that vanished.
    pub keepalive_interval_ms: u64,
    /// Time a new connection has to start its first call before it is
    /// closed: a socket that never speaks must not hold a slot.
    pub handshake_timeout_ms: u64,
    /// Time a connection may have no call in flight (an open subscription
    /// is one) before it is sent GOAWAY and closed.
    pub idle_timeout_ms: u64,
    /// Length of the kernel's queue of connections not yet accepted
    /// (1 ..= `ACCEPT_BACKLOG_MAX`); used by [`bind`].
    pub accept_backlog: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: MAX_CONNECTIONS_DEFAULT,
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION_DEFAULT,
            max_subscriptions: MAX_SUBSCRIPTIONS_DEFAULT,
            shutdown_grace_ms: SHUTDOWN_GRACE_MS_DEFAULT,
            keepalive_interval_ms: KEEPALIVE_INTERVAL_MS_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            accept_backlog: ACCEPT_BACKLOG_DEFAULT,
        }
    }
}

impl ServerConfig {
    /// Checks every setting is usable.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection.into(),
            ),
            ("max_subscriptions", self.max_subscriptions as u64),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("accept_backlog", self.accept_backlog.into()),
        ];
        for (what, value) in positive {
            if value == 0 {
                return Err(Error::Setting(format!("{what} must be at least 1")));
            }
        }
        let bounded = [
            (
                "max_connections",
                self.max_connections as u64,
                MAX_CONNECTIONS_MAX as u64,
            ),
            (
                "accept_backlog",
                self.accept_backlog.into(),
                ACCEPT_BACKLOG_MAX.into(),
            ),
        ];
        for (what, value, max) in bounded {
            if value > max {
                return Err(Error::Setting(format!(
                    "{what} is {value}, over the limit of {max}"
                )));
            }
        }
        Ok(())
    }

    /// File descriptors the server may hold at once: the listener, every
    /// connection it serves and every one it is refusing.
    pub fn descriptors_max(&self) -> u64 {
        LISTENER_DESCRIPTORS + self.max_connections as u64 + REFUSING_CONNECTIONS_MAX as u64
    }
}

/// Every service the broker serves, behind the one rewrite of responses.
type Services = tower::util::MapResponse<Routes, fn(http::Response<Body>) -> http::Response<Body>>;

/// The broker's gRPC service as tonic serves it.
type BrokerServer<B> = pb::broker_server::BrokerServer<BrokerService<B>>;

/// Serves `backend` on `listener` until `stop` completes, then shuts down
/// gracefully. Does not shut the backend down.
pub async fn serve<B: Backend>(
    backend: Arc<B>,
    listener: TcpListener,
    config: &ServerConfig,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    config.validate()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<BrokerServer<B>>().await;
    let services = services(backend, config, health_service, shutdown_rx.clone())?;
    let signal = async move {
        stop.await;
        tracing::info!(
            "shutting down: no new connections; subscriptions end; in-flight calls finish"
        );
        health.set_not_serving::<BrokerServer<B>>().await;
        // "" is the server as a whole, what most load balancers ask about.
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        shutdown_tx.send_replace(true);
    };
    let gate = Gate::new(config.max_connections);
    let http2 = Arc::new(connection::http2(config));
    let deadlines = connection::Deadlines::of(config);
    let refusal = refusal::Refusal::of(config);
    listener::accept(
        listener,
        &gate,
        signal,
        |stream, admission| match admission {
            Admission::Serve(slot) => {
                tokio::spawn(connection::serve(
                    stream,
                    services.clone(),
                    http2.clone(),
                    deadlines,
                    shutdown_rx.clone(),
                    slot,
                ));
            }
            Admission::Refuse(slot) => {
                tokio::spawn(refusal.clone().refuse(stream, http2.clone(), slot));
            }
        },
    )
    .await;

    let grace = Duration::from_millis(config.shutdown_grace_ms);
    if tokio::time::timeout(grace, gate.drained()).await.is_err() {
        tracing::warn!(
            grace_ms = config.shutdown_grace_ms,
            "calls still open after the grace period; closing them"
        );
    }
    Ok(())
}

/// The broker service over `backend`, health and reflection, with their
/// message limits and the rewrite of refused requests' codes.
fn services<B: Backend>(
    backend: Arc<B>,
    config: &ServerConfig,
    health: HealthServer<impl Health>,
    shutdown: watch::Receiver<bool>,
) -> Result<Services> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(Error::Reflection)?;
    let broker = BrokerServer::new(BrokerService::new(
        backend,
        config.max_subscriptions,
        shutdown,
    ))
    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let routes = Routes::new(health)
        .add_service(reflection)
        .add_service(broker)
        .prepare();
    Ok(tower::util::MapResponse::new(
        routes,
        status::refused_requests_are_invalid as fn(_) -> _,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(config: ServerConfig) -> String {
        config.validate().expect_err("a bad setting").to_string()
    }

    #[test]
    fn connection_settings_are_checked_just_over_their_limits() {
        assert!(ServerConfig::default().validate().is_ok());
        let limits = ServerConfig {
            max_connections: MAX_CONNECTIONS_MAX,
            accept_backlog: ACCEPT_BACKLOG_MAX,
            handshake_timeout_ms: 1,
            idle_timeout_ms: 1,
            ..ServerConfig::default()
        };
        assert!(limits.validate().is_ok());
        assert_eq!(
            refusal(ServerConfig {
                max_connections: MAX_CONNECTIONS_MAX + 1,
                ..limits.clone()
            }),
            "invalid server setting: max_connections is 1048577, over the limit of 1048576"
        );
        assert_eq!(
            refusal(ServerConfig {
                accept_backlog: ACCEPT_BACKLOG_MAX + 1,
                ..limits.clone()
            }),
            "invalid server setting: accept_backlog is 65536, over the limit of 65535"
        );
        assert_eq!(
            refusal(ServerConfig {
                handshake_timeout_ms: 0,
                ..limits.clone()
            }),
            "invalid server setting: handshake_timeout_ms must be at least 1"
        );
        assert_eq!(
            refusal(ServerConfig {
                idle_timeout_ms: 0,
                ..limits
            }),
            "invalid server setting: idle_timeout_ms must be at least 1"
        );
    }

    #[test]
    fn the_server_counts_a_descriptor_per_connection_it_may_hold() {
        let config = ServerConfig {
            max_connections: 16,
            ..ServerConfig::default()
        };
        assert_eq!(
            config.descriptors_max(),
            1 + 16 + REFUSING_CONNECTIONS_MAX as u64
        );
    }
}
