//! The gRPC edge: `postbox.v1.Broker` over a storage [`Backend`], with the
//! standard health service and server reflection beside it.
//!
//! Protocol types (`postbox_proto`) live only in this module; the backend
//! below knows nothing of them, and this module knows the log only through
//! the [`Backend`] trait.
//!
//! Invariants:
//! - Every transport limit is set here, explicitly: message sizes, streams
//!   per connection, connections, subscriptions, flow-control windows.
//! - Shutdown: stop accepting, end subscriptions, let in-flight calls answer
//!   (for at most `shutdown_grace_ms`), then return; the caller shuts the
//!   backend down.

mod convert;
mod listener;
mod service;
mod status;
mod subscribe;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use postbox_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::limits::GRPC_MESSAGE_BYTES_MAX;
use crate::backend::Backend;
use crate::error::{Error, Result};
pub use service::BrokerService;

/// Default listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7411";
/// Default bound on open client connections.
pub const MAX_CONNECTIONS_DEFAULT: usize = 1024;
/// Default bound on concurrent calls (HTTP/2 streams) per connection.
pub const MAX_STREAMS_PER_CONNECTION_DEFAULT: u32 = 256;
/// Default bound on open subscriptions across all connections.
pub const MAX_SUBSCRIPTIONS_DEFAULT: usize = 4096;
/// Default time in-flight calls get to answer at shutdown.
pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 10_000;
/// Default interval of HTTP/2 keepalive pings to idle clients; a client that
/// does not answer within the same time is disconnected.
pub const KEEPALIVE_INTERVAL_MS_DEFAULT: u64 = 30_000;
/// HTTP/2 flow-control window per call: how much a publisher may send before
/// the broker reads it. Large enough for a 1 MiB batch to go in one window.
pub const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
/// HTTP/2 flow-control window per connection.
pub const CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// The server's settings (the engine has its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Open client connections; further clients wait to be accepted, so that
    /// each connection's buffers and tasks are paid for a bounded number.
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: MAX_CONNECTIONS_DEFAULT,
            max_streams_per_connection: MAX_STREAMS_PER_CONNECTION_DEFAULT,
            max_subscriptions: MAX_SUBSCRIPTIONS_DEFAULT,
            shutdown_grace_ms: SHUTDOWN_GRACE_MS_DEFAULT,
            keepalive_interval_ms: KEEPALIVE_INTERVAL_MS_DEFAULT,
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
        ];
        for (what, value) in positive {
            if value == 0 {
                return Err(Error::Setting(format!("{what} must be at least 1")));
            }
        }
        Ok(())
    }
}

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
    type Service<B> = pb::broker_server::BrokerServer<BrokerService<B>>;
    health.set_serving::<Service<B>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(Error::Reflection)?;
    let broker = pb::broker_server::BrokerServer::new(BrokerService::new(
        backend,
        config.max_subscriptions,
        shutdown_rx.clone(),
    ))
    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);

    let signal = async move {
        stop.await;
        tracing::info!(
            "shutting down: no new connections; subscriptions end; in-flight calls finish"
        );
        health.set_not_serving::<Service<B>>().await;
        // "" is the server as a whole, what most load balancers ask about.
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        shutdown_tx.send_replace(true);
    };
    let keepalive = Duration::from_millis(config.keepalive_interval_ms);
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .layer(tower::util::MapResponseLayer::new(
            status::refused_requests_are_invalid,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(broker)
        .serve_with_incoming_shutdown(listener::incoming(listener, config.max_connections), signal);

    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let mut stopping = shutdown_rx;
    let grace_over = async move {
        // An error means the signal future is gone, and with it the server.
        let _ = stopping.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served.map_err(Error::Transport),
        () = grace_over => {
            tracing::warn!(grace_ms = config.shutdown_grace_ms, "calls still open after the grace period; closing them");
            Ok(())
        }
    }
}
