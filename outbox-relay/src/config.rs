//! Settings shared by every relay command, and opening a PostgreSQL session.
//!
//! Role: turns a database URL into a tokio-postgres configuration with the
//! relay's defaults, checked once, and opens sessions from it.
//!
//! Invariants:
//! - The relay connects without TLS (`NoTls`) for now, so a URL that demands
//!   TLS (`sslmode=require`) is refused here with a clear error instead of
//!   failing later at the handshake.
//! - A URL's own settings win over the relay's defaults (`connect_timeout`,
//!   `application_name`).
//! - Nothing here ever prints the URL: it may carry a password. Errors name
//!   the host, port and database only.
//! - The relay needs a real PostgreSQL session: its leadership is a
//!   session-level advisory lock. Connect directly to PostgreSQL or through a
//!   pooler in session mode; PgBouncer in transaction (or statement) mode hands
//!   each transaction to whichever server connection is free, so the lock
//!   would be held by a connection the relay no longer uses and leadership
//!   would mean nothing.

use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};

/// The environment variable that gives the database URL.
pub const DATABASE_URL_ENV: &str = "POSTBOX_DATABASE_URL";
/// The environment variable that gives the outbox table.
pub const TABLE_ENV: &str = "POSTBOX_TABLE";
/// How long opening a session may take unless the URL sets
/// `connect_timeout`: long enough for a busy server, short enough that a
/// wrong address fails while someone is still watching.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// The `application_name` the relay's sessions show in `pg_stat_activity`
/// unless the URL sets one.
pub const APPLICATION_NAME: &str = "postbox-relay";
/// What `--help` and the docs say about connection poolers.
pub const POOLER_NOTE: &str =
    "Connect directly to PostgreSQL or through a pooler in session mode: \
     the relay's leadership is a session-level advisory lock, which PgBouncer in transaction or \
     statement mode breaks.";

/// Where and how the relay connects to PostgreSQL.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The parsed URL with the relay's defaults filled in. Its `Debug` output
    /// redacts the password.
    config: tokio_postgres::Config,
}

impl DatabaseConfig {
    /// Parses a `postgres://` URL (or libpq key=value string) and fills in the
    /// relay's defaults.
    pub fn from_url(url: &str) -> Result<DatabaseConfig> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|error| Error::InvalidDatabaseUrl {
                reason: crate::error::describe(&error),
            })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(Error::InvalidDatabaseUrl {
                reason: "sslmode=require needs TLS, which postbox-relay does not support yet; \
                         use sslmode=disable or sslmode=prefer"
                    .to_owned(),
            });
        }
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(Error::InvalidDatabaseUrl {
                reason: "it names no host".to_owned(),
            });
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
        }
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        Ok(DatabaseConfig { config })
    }

    /// The tokio-postgres configuration, defaults filled in.
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Host(s), port(s) and database, for messages: never the credentials.
    pub fn target(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.config.get_ports().iter().map(u16::to_string).collect();
        let hosts = if hosts.is_empty() {
            self.config
                .get_hostaddrs()
                .iter()
                .map(|address| address.to_string())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            hosts.join(",")
        };
        let ports = if ports.is_empty() {
            "5432".to_owned()
        } else {
            ports.join(",")
        };
        let database = self
            .config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("(default database)");
        format!("{hosts}:{ports}/{database}")
    }

    /// Opens a session. Its connection is driven by a task of its own on the
    /// current tokio runtime, which ends when the session ends; a session
    /// ended by an error is logged at `warn`.
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|error| Error::Connect {
                    target: self.target(),
                    error,
                })?;
        let target = self.target();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(
                    %target,
                    error = %crate::error::describe(&error),
                    "PostgreSQL session ended"
                );
            }
        });
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        match DatabaseConfig::from_url(url) {
            Err(Error::InvalidDatabaseUrl { reason }) => reason,
            other => panic!("{url:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_what_the_url_leaves_out() {
        let config = DatabaseConfig::from_url("postgres://postgres@127.0.0.1:5432/postgres")
            .expect("valid URL");
        assert_eq!(
            config.config.get_connect_timeout(),
            Some(&Duration::from_millis(CONNECT_TIMEOUT_MS))
        );
        assert_eq!(config.config.get_application_name(), Some(APPLICATION_NAME));
    }

    #[test]
    fn the_urls_own_settings_win() {
        let config = DatabaseConfig::from_url(
            "postgres://db.internal/app?connect_timeout=3&application_name=orders-relay",
        )
        .expect("valid URL");
        assert_eq!(
            config.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert_eq!(config.config.get_application_name(), Some("orders-relay"));
    }

    #[test]
    fn target_names_host_port_and_database_but_never_the_password() {
        let config = DatabaseConfig::from_url("postgres://app:s3cret@db.internal:6543/orders")
            .expect("valid URL");
        assert_eq!(config.target(), "db.internal:6543/orders");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn tls_demands_are_refused_up_front() {
        assert!(reason("postgres://db.internal/app?sslmode=require").contains("sslmode=require"));
    }

    #[test]
    fn malformed_urls_are_refused_without_echoing_them() {
        let text = reason("postgres://app:s3cret@db.internal:notaport/app");
        assert!(text.contains("port"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn a_url_without_host_is_refused() {
        assert_eq!(reason("postgres:///app"), "it names no host");
    }
}
