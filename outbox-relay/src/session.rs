//! A PostgreSQL session as the running relay uses it: bounded calls, and
//! NOTIFY wake-ups.
//!
//! Role: opens the relay's sessions with their statement timeout; the
//! leader's LISTENs on [`crate::NOTIFY_CHANNEL`] (which costs nothing while
//! no trigger notifies, and wakes the relay at once where `init --notify`
//! installed one); [`timed`] bounds every call
//! from the client side too, since `statement_timeout` cannot fire when the
//! server or the network is gone.
//!
//! Invariants: a call that passes its bound leaves its session unusable (the
//! reply may still arrive, out of step with the next call), so callers drop
//! the session on [`crate::Error::Timeout`] ([`crate::Error::session_lost`]
//! says true for it). A notification carries nothing the relay relies on: it
//! only wakes a claim, which polling would make anyway.

use std::future::Future;
use std::time::Duration;

use futures_util::stream::poll_fn;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::config::DatabaseConfig;
use crate::error::{describe, Error, Result};
use crate::schema::NOTIFY_CHANNEL;

/// How much longer than `statement_timeout` the client waits for an answer
/// before it gives the session up: the server's own timeout should fire
/// first, with a clearer error.
pub const CLIENT_TIMEOUT_MARGIN_MS: u64 = 5_000;

/// An open session and its wake-ups.
#[derive(Debug)]
pub struct Session {
    /// The session.
    pub client: Client,
    /// A message after notifications on [`NOTIFY_CHANNEL`].
    pub notifications: mpsc::Receiver<()>,
    /// The bound on each call, `statement_timeout` plus the margin.
    pub call_timeout_ms: u64,
}

impl Session {
    /// Opens a session with `statement_timeout_ms` and
    /// `idle_in_transaction_timeout_ms`, listening for NOTIFY wake-ups when
    /// `listen`.
    pub async fn open(
        database: &DatabaseConfig,
        statement_timeout_ms: u64,
        idle_in_transaction_timeout_ms: u64,
        listen: bool,
    ) -> Result<Session> {
        let (client, mut connection) =
            database
                .config()
                .connect(NoTls)
                .await
                .map_err(|error| Error::Connect {
                    target: database.target(),
                    error,
                })?;
        // One pending wake-up is as good as many.
        let (wake, notifications) = mpsc::channel(1);
        let target = database.target();
        tokio::spawn(async move {
            let mut messages = poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        let _ = wake.try_send(());
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%target, error = %describe(&error), "PostgreSQL session ended");
                        return;
                    }
                }
            }
        });
        let call_timeout_ms = statement_timeout_ms.saturating_add(CLIENT_TIMEOUT_MARGIN_MS);
        let mut setup = format!(
            "SET statement_timeout = {statement_timeout_ms}; \
             SET idle_in_transaction_session_timeout = {idle_in_transaction_timeout_ms}"
        );
        if listen {
            setup.push_str(&format!("; LISTEN {NOTIFY_CHANNEL}"));
        }
        timed(
            call_timeout_ms,
            "set up the relay's session",
            client.batch_execute(&setup),
        )
        .await?;
        Ok(Session {
            client,
            notifications,
            call_timeout_ms,
        })
    }
}

/// Runs one PostgreSQL call within `timeout_ms`; `action` names it in errors.
pub async fn timed<T>(
    timeout_ms: u64,
    action: &str,
    call: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), call).await {
        Ok(result) => result.map_err(|error| Error::postgres(action, error)),
        Err(_) => Err(Error::Timeout {
            action: action.to_owned(),
            timeout_ms,
        }),
    }
}
