//! The relay library's one error type.
//!
//! Invariants: every error displays as one line that a person can act on, and
//! names what the relay was doing when it failed. A PostgreSQL error is kept
//! whole in the variant (for [`Error::postgres`] and [`Error::session_lost`])
//! but is not exposed as a `source`: tokio-postgres displays its causes as
//! "db error" followed by a multi-line server message, so the variant renders
//! it once, on one line, itself ([`describe`]). A database URL is never
//! echoed, since it may carry a password.

/// Result with the relay's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the relay library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A table name broke the identifier rule ([`crate::TABLE_NAME_RULE`]).
    #[error("invalid table name {name:?}: {reason}; {}", crate::TABLE_NAME_RULE)]
    InvalidTableName {
        /// The name as given.
        name: String,
        /// Which part of the rule it broke.
        reason: String,
    },
    /// A leadership holder name broke its rule.
    #[error("invalid holder name {holder:?}: {reason}")]
    InvalidHolder {
        /// The name as given.
        holder: String,
        /// Which part of the rule it broke.
        reason: String,
    },
    /// The database URL could not be parsed or asks for something the relay
    /// does not do.
    #[error("invalid database URL: {reason}")]
    InvalidDatabaseUrl {
        /// What is wrong with it; never the URL itself.
        reason: String,
    },
    /// No connection to PostgreSQL could be opened.
    #[error("cannot connect to PostgreSQL at {target}: {}", describe(.error))]
    Connect {
        /// Host(s), port(s) and database, without credentials.
        target: String,
        /// What tokio-postgres reported.
        error: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("cannot {action}: {}", describe(.error))]
    Postgres {
        /// What the relay was doing, as a phrase after "cannot".
        action: String,
        /// What tokio-postgres reported.
        error: tokio_postgres::Error,
    },
    /// The outbox table the relay was pointed at does not exist.
    #[error("outbox table {table} does not exist (create it with `postbox-relay init`)")]
    TableMissing {
        /// The table name as configured.
        table: String,
    },
    /// A relay setting is out of its range or malformed.
    #[error("invalid setting {name}: {reason}")]
    InvalidSetting {
        /// The setting, as its flag is named without dashes.
        name: String,
        /// What is wrong with it, with the limit.
        reason: String,
    },
    /// The outbox table lacks a column the layout names, or has it with a
    /// type the relay cannot read.
    #[error("outbox table {table}: {reason}")]
    Layout {
        /// The table as configured.
        table: String,
        /// Which role and column, and what to do.
        reason: String,
    },
    /// A PostgreSQL call did not answer in time; its session is dropped.
    #[error("cannot {action}: no answer from PostgreSQL within {timeout_ms} ms")]
    Timeout {
        /// What the relay was doing, as a phrase after "cannot".
        action: String,
        /// The limit that passed.
        timeout_ms: u64,
    },
    /// A call to the broker failed.
    #[error("cannot {action}: {error}")]
    Broker {
        /// What the relay was doing.
        action: String,
        /// What the client reported.
        error: postbox_client::Error,
    },
    /// PostgreSQL answered something the relay's own SQL rules out.
    #[error("unexpected answer from PostgreSQL while trying to {action}: {detail}")]
    Unexpected {
        /// What the relay was doing.
        action: String,
        /// What was wrong with the answer.
        detail: String,
    },
}

impl Error {
    /// A failed statement, with what the relay was doing when it failed.
    pub(crate) fn postgres(action: impl Into<String>, error: tokio_postgres::Error) -> Error {
        Error::Postgres {
            action: action.into(),
            error,
        }
    }

    /// Whether retrying cannot help until an operator changes something: a
    /// setting, a missing table or column. The relay stops on these and
    /// retries everything else with backoff.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::InvalidTableName { .. }
                | Error::InvalidHolder { .. }
                | Error::InvalidDatabaseUrl { .. }
                | Error::InvalidSetting { .. }
                | Error::TableMissing { .. }
                | Error::Layout { .. }
        )
    }

    /// The PostgreSQL error underneath, if there is one.
    pub fn postgres_error(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Error::Connect { error, .. } | Error::Postgres { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether the PostgreSQL session this error came from is gone: the
    /// connection closed, or the server ended the session (terminated by an
    /// administrator, shutting down, crashed). Everything the session held,
    /// its advisory locks included, is then released by the server.
    pub fn session_lost(&self) -> bool {
        matches!(self, Error::Timeout { .. }) || self.postgres_error().is_some_and(session_lost)
    }
}

/// Whether `error` says that its session is gone (see [`Error::session_lost`]).
pub(crate) fn session_lost(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;

    if error.is_closed() {
        return true;
    }
    // Class 57 is "operator intervention": pg_terminate_backend, shutdown,
    // crash shutdown. Each ends the session with a FATAL message.
    error.code().is_some_and(|code| {
        *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
    })
}

/// A tokio-postgres error as one line: a server error as its message, SQLSTATE,
/// detail and hint; any other error as its own text and its causes joined
/// with ": " ("error connecting to server: Connection refused (os error 111)").
pub fn describe(error: &tokio_postgres::Error) -> String {
    let text = match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str("; ");
                text.push_str(detail);
            }
            if let Some(hint) = db.hint() {
                text.push_str("; hint: ");
                text.push_str(hint);
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(error);
            while let Some(inner) = cause {
                text.push_str(": ");
                text.push_str(&inner.to_string());
                cause = inner.source();
            }
            text
        }
    };
    one_line(&text)
}

/// Joins the lines of `text` with spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_lines_and_squeezes_spaces() {
        assert_eq!(one_line("a\nDETAIL:  b\n"), "a DETAIL: b");
    }

    #[test]
    fn invalid_table_name_names_the_rule() {
        let error = Error::InvalidTableName {
            name: "Orders".into(),
            reason: "upper-case letter 'O'".into(),
        };
        let text = error.to_string();
        assert!(text.starts_with("invalid table name \"Orders\": upper-case letter 'O'; "));
        assert!(text.ends_with(crate::TABLE_NAME_RULE), "{text}");
    }
}
