//! The gRPC connection to one broker: address parsing, channel settings, one
//! call with a timeout, and reconnection after a transient failure.
//!
//! Invariants: the first connection is made eagerly, so a wrong address fails
//! at once with [`Error::Connect`]; after any retryable failure the channel is
//! replaced, so the next attempt goes over a fresh connection rather than one
//! that may have been cut or hung; every call has a timeout. Message sizes are
//! set explicitly, never left to tonic's defaults.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use postbox_proto::v1::broker_client::BrokerClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::limits::MESSAGE_BYTES_MAX;
use crate::retry::{retry, RetryPolicy};

/// Where the broker listens by default.
pub const DEFAULT_BROKER: &str = "http://127.0.0.1:7411";

/// How long one connection attempt may take: a reachable broker answers in
/// milliseconds, and a dead host should not hang a command for minutes.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Default timeout of one call (one attempt). A sync publish waits for an
/// fsync, which on a loaded disk can take seconds, but not this long.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// HTTP/2 ping interval: a consumer tailing an idle stream notices a broker
/// host that vanished without closing the connection.
const KEEPALIVE_INTERVAL_MS: u64 = 20_000;

/// How long a ping may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT_MS: u64 = 10_000;

/// The broker address as a URI: `host:port` gets `http://` in front.
pub fn normalize_address(address: &str) -> String {
    let address = address.trim();
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    }
}

/// A connection to one broker, shared by every call of a client.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The normalised address, for logs.
    address: String,
    /// The channel settings, kept to build a fresh channel after a failure.
    endpoint: Endpoint,
    /// The current channel; replaced (not mutated) on reconnection, so calls
    /// in flight on the old one finish or fail on their own.
    client: Mutex<BrokerClient<Channel>>,
}

impl Connection {
    /// Connects to `address` (`host:port` or `http://host:port`) now.
    pub(crate) async fn open(address: &str) -> Result<Connection> {
        let address = normalize_address(address);
        let endpoint = Endpoint::from_shared(address.clone())
            .map_err(|e| {
                Error::InvalidArgument(format!("invalid broker address {address:?}: {e}"))
            })?
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::connect(&address, &e))?;
        Ok(Connection {
            address,
            client: Mutex::new(broker_client(channel)),
            endpoint,
        })
    }

    /// A handle on the current channel (cheap: channels are shared).
    pub(crate) fn client(&self) -> BrokerClient<Channel> {
        // A poisoned lock still holds a valid handle: nothing can be left
        // half-updated by a replacement.
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the channel after a transient failure. The new channel
    /// connects on its first call, so this never waits.
    pub(crate) fn reconnect(&self) {
        tracing::debug!(address = %self.address, "reconnecting");
        let fresh = broker_client(self.endpoint.connect_lazy());
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// Reconnects if `error` says the connection may be broken. Any transient
    /// failure may mean a cut or hung connection, and a fresh one costs one
    /// TCP handshake, far less than the backoff before the retry.
    pub(crate) fn note_failure(&self, error: &Error) {
        if error.is_retryable() {
            self.reconnect();
        }
    }

    /// One attempt of `call` on the current channel, within `timeout_ms`.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        operation: &str,
        timeout_ms: u64,
        call: F,
    ) -> Result<T>
    where
        F: FnOnce(BrokerClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let timeout = Duration::from_millis(timeout_ms);
        let result = match tokio::time::timeout(timeout, call(self.client())).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::from(status)),
            Err(_elapsed) => Err(Error::timed_out(operation, timeout_ms)),
        };
        if let Err(error) = &result {
            self.note_failure(error);
        }
        result
    }

    /// `call` retried on transient failures under `policy`. Only for calls
    /// that are safe to repeat.
    pub(crate) async fn call_with_retry<T, F, Fut>(
        &self,
        policy: RetryPolicy,
        operation: &str,
        timeout_ms: u64,
        call: F,
    ) -> Result<T>
    where
        F: Fn(BrokerClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        retry(policy, operation, || {
            self.call(operation, timeout_ms, &call)
        })
        .await
    }
}

/// A client on `channel` with the message size limits set.
fn broker_client(channel: Channel) -> BrokerClient<Channel> {
    BrokerClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_gets_http_scheme() {
        assert_eq!(normalize_address("127.0.0.1:7411"), "http://127.0.0.1:7411");
        assert_eq!(normalize_address("localhost:7411"), "http://localhost:7411");
        assert_eq!(
            normalize_address(" localhost:7411 "),
            "http://localhost:7411"
        );
    }

    #[test]
    fn address_with_scheme_is_kept() {
        assert_eq!(
            normalize_address("http://127.0.0.1:7411"),
            "http://127.0.0.1:7411"
        );
        assert_eq!(
            normalize_address("https://broker:443"),
            "https://broker:443"
        );
    }

    #[tokio::test]
    async fn refused_connection_is_a_one_line_connect_error() {
        // Port 1 (tcpmux) is not listening on a test machine.
        let error = Connection::open("127.0.0.1:1").await.err();
        assert_eq!(
            error.map(|e| e.to_string()).as_deref(),
            Some("cannot reach the broker at http://127.0.0.1:1: connection refused")
        );
    }

    #[tokio::test]
    async fn unparsable_address_is_invalid_argument() {
        let error = Connection::open("http://bad host:1").await.err();
        assert!(
            matches!(error, Some(Error::InvalidArgument(_))),
            "{error:?}"
        );
    }
}
