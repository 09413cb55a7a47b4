//! Which columns of the outbox table mean what: the default layout, Debezium's
//! outbox layout, and per-column overrides.
//!
//! Role: names the column behind each role the relay reads (the row's
//! identity, its topic, partition key, idempotency key, headers, event type,
//! payload, publication mark, creation time and claim order). [`crate::outbox`]
//! checks them against the real table and builds its SQL from them.
//!
//! Invariants:
//! - Column names are only ever put into SQL quoted
//!   ([`crate::table::quote_identifier`]), so any name PostgreSQL allows is
//!   safe here; the only checks are length and no NUL.
//! - A layout without a `published_at` column can only run in delete mode, and
//!   one without an `order_by` column claims in physical order (`ctid`), which
//!   gives no ordering guarantee (see [`Layout::order_note`]).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::table::IDENTIFIER_BYTES_MAX;

/// The header that carries the event type column (Debezium's `type`).
pub const EVENT_TYPE_HEADER: &str = "type";

/// The shape of the outbox table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayoutKind {
    /// The table `postbox-relay init` creates (the columns docs/DESIGN.md names).
    #[default]
    Postbox,
    /// Debezium's outbox layout: id uuid, aggregatetype, aggregateid, type,
    /// payload, read as it is.
    Debezium,
}

impl FromStr for LayoutKind {
    type Err = Error;

    fn from_str(text: &str) -> Result<LayoutKind> {
        match text {
            "postbox" => Ok(LayoutKind::Postbox),
            "debezium" => Ok(LayoutKind::Debezium),
            other => Err(Error::InvalidSetting {
                name: "layout".to_owned(),
                reason: format!("{other:?} is not a layout; use postbox or debezium"),
            }),
        }
    }
}

impl fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayoutKind::Postbox => "postbox",
            LayoutKind::Debezium => "debezium",
        })
    }
}

/// The column behind each role; `None` where the table has no such column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The shape this started from.
    pub kind: LayoutKind,
    /// The row's identity: what the relay deletes or marks by.
    pub id: String,
    /// The topic (with [`Layout::topic_prefix`] in front).
    pub topic: String,
    /// The record key: per-key order, and the partition.
    pub partition_key: Option<String>,
    /// The idempotency key; `None` uses the id.
    pub idempotency_key: Option<String>,
    /// A JSON object whose members become record headers.
    pub headers: Option<String>,
    /// A value sent as the header [`EVENT_TYPE_HEADER`].
    pub event_type: Option<String>,
    /// The record payload: bytea as it is, any other type as its UTF-8 text.
    pub payload: String,
    /// Set when a row is published (mark mode); unpublished rows have NULL.
    pub published_at: Option<String>,
    /// When the row was inserted, for the lag's age.
    pub created_at: Option<String>,
    /// The claim order; `None` claims in physical order (`ctid`).
    pub order_by: Option<String>,
    /// Put in front of every topic (Debezium's aggregatetype is often a bare
    /// type name like `order`).
    pub topic_prefix: String,
}

impl Layout {
    /// The columns of the table `init` creates.
    pub fn postbox() -> Layout {
        Layout {
            kind: LayoutKind::Postbox,
            id: "id".to_owned(),
            topic: "topic".to_owned(),
            partition_key: Some("partition_key".to_owned()),
            idempotency_key: Some("idempotency_key".to_owned()),
            headers: Some("headers".to_owned()),
            event_type: None,
            payload: "payload".to_owned(),
            published_at: Some("published_at".to_owned()),
            created_at: Some("created_at".to_owned()),
            order_by: Some("id".to_owned()),
            topic_prefix: String::new(),
        }
    }

    /// Debezium's outbox columns. It has no ordering column: map one with
    /// `order_by` (an added bigserial, or a timestamp) for per-key order.
    pub fn debezium() -> Layout {
        Layout {
            kind: LayoutKind::Debezium,
            id: "id".to_owned(),
            topic: "aggregatetype".to_owned(),
            partition_key: Some("aggregateid".to_owned()),
            idempotency_key: None,
            headers: None,
            event_type: Some("type".to_owned()),
            payload: "payload".to_owned(),
            published_at: None,
            created_at: None,
            order_by: None,
            topic_prefix: String::new(),
        }
    }

    /// The columns of `kind`.
    pub fn of(kind: LayoutKind) -> Layout {
        match kind {
            LayoutKind::Postbox => Layout::postbox(),
            LayoutKind::Debezium => Layout::debezium(),
        }
    }

    /// Applies one `ROLE=COLUMN` override; an empty COLUMN removes an optional
    /// role (`headers=`). Roles: id, topic, partition_key, idempotency_key,
    /// headers, type, payload, published_at, created_at, order_by.
    pub fn set_column(&mut self, assignment: &str) -> Result<()> {
        let invalid = |reason: String| Error::InvalidSetting {
            name: "column".to_owned(),
            reason: format!("{assignment:?}: {reason}"),
        };
        let (role, column) = assignment
            .split_once('=')
            .ok_or_else(|| invalid("expected ROLE=COLUMN".to_owned()))?;
        if column.len() > IDENTIFIER_BYTES_MAX {
            return Err(invalid(format!(
                "the column name is {} bytes, over PostgreSQL's limit of {IDENTIFIER_BYTES_MAX}",
                column.len()
            )));
        }
        if column.contains('\0') {
            return Err(invalid("the column name contains NUL".to_owned()));
        }
        let optional = (!column.is_empty()).then(|| column.to_owned());
        let required = || {
            optional
                .clone()
                .ok_or_else(|| invalid(format!("{role} cannot be left out")))
        };
        match role {
            "id" => self.id = required()?,
            "topic" => self.topic = required()?,
            "payload" => self.payload = required()?,
            "partition_key" => self.partition_key = optional,
            "idempotency_key" => self.idempotency_key = optional,
            "headers" => self.headers = optional,
            "type" => self.event_type = optional,
            "published_at" => self.published_at = optional,
            "created_at" => self.created_at = optional,
            "order_by" => self.order_by = optional,
            other => {
                return Err(invalid(format!(
                    "unknown role {other:?}; roles are id, topic, partition_key, \
                     idempotency_key, headers, type, payload, published_at, created_at, order_by"
                )))
            }
        }
        Ok(())
    }

    /// Every (role, column) the layout names, for checking against the table.
    pub fn columns(&self) -> Vec<(&'static str, &str)> {
        let optional = [
            ("partition_key", &self.partition_key),
            ("idempotency_key", &self.idempotency_key),
            ("headers", &self.headers),
            ("type", &self.event_type),
            ("published_at", &self.published_at),
            ("created_at", &self.created_at),
            ("order_by", &self.order_by),
        ];
        let mut columns = vec![
            ("id", self.id.as_str()),
            ("topic", self.topic.as_str()),
            ("payload", self.payload.as_str()),
        ];
        columns.extend(
            optional
                .into_iter()
                .filter_map(|(role, column)| column.as_deref().map(|column| (role, column))),
        );
        columns
    }

    /// What order the claim gives, for the startup log and `status`.
    pub fn order_note(&self) -> String {
        match &self.order_by {
            Some(column) => format!(
                "rows are claimed in {column} order; per partition key that is insertion order \
                 when the application serialises its writes per key"
            ),
            None => "the layout has no ordering column, so rows are claimed in physical order \
                     (ctid), which PostgreSQL does not keep in insertion order once space is \
                     reused: per-key order is not guaranteed; map an increasing column with \
                     --column order_by=NAME (an added bigserial, or a timestamp)"
                .to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_and_remove_columns() {
        let mut layout = Layout::debezium();
        layout.set_column("order_by=seq").expect("valid");
        layout.set_column("type=").expect("valid");
        assert_eq!(layout.order_by.as_deref(), Some("seq"));
        assert_eq!(layout.event_type, None);
        assert!(layout.columns().contains(&("order_by", "seq")));
    }

    #[test]
    fn bad_overrides_name_the_reason() {
        let mut layout = Layout::postbox();
        for (assignment, expected) in [
            ("topic", "expected ROLE=COLUMN"),
            ("topic=", "topic cannot be left out"),
            ("colour=red", "unknown role \"colour\""),
        ] {
            let text = layout
                .set_column(assignment)
                .expect_err(assignment)
                .to_string();
            assert!(text.contains(expected), "{text}");
        }
        let long = format!("topic={}", "c".repeat(IDENTIFIER_BYTES_MAX + 1));
        let text = layout.set_column(&long).expect_err("too long").to_string();
        assert!(text.contains("over PostgreSQL's limit of 63"), "{text}");
        assert_eq!(
            layout,
            Layout::postbox(),
            "a refused override changes nothing"
        );
    }
}
