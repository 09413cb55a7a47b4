//! `postbox-relay dead-letters list|retry|drop`: resolving rows the broker
//! refused for good.
//!
//! Role: an operator lists dead letters, fixes the cause (creates the topic,
//! raises a limit), then either moves them back into the outbox (`retry`) or
//! discards them (`drop`); either releases the rows of their keys that wait
//! behind them.
//!
//! Invariants:
//! - `retry` puts each row back exactly as it was (every column, its id
//!   included, so it keeps its place in the claim order before the rows that
//!   waited behind it) and removes its dead letter in the same transaction.
//! - Every command acts on an explicit selection (ids, a topic, a key, or
//!   all), never on everything by default.

use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::session::timed;
use crate::table::TableName;

/// Which dead letters a command acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Every dead letter (the other fields are then ignored).
    pub all: bool,
    /// These row ids.
    pub row_ids: Vec<String>,
    /// Those of this topic.
    pub topic: Option<String>,
    /// Those of this partition key.
    pub partition_key: Option<String>,
}

impl Selection {
    /// Whether the selection names anything.
    pub fn is_empty(&self) -> bool {
        !self.all && self.row_ids.is_empty() && self.topic.is_none() && self.partition_key.is_none()
    }

    /// The selection as [`SELECTED`]'s parameters $1 to $4.
    fn params(&self) -> [&(dyn ToSql + Sync); 4] {
        [&self.all, &self.row_ids, &self.topic, &self.partition_key]
    }

    /// Refuses an empty selection, so that no command acts on everything by
    /// accident.
    fn check(&self) -> Result<()> {
        if self.is_empty() {
            return Err(Error::InvalidSetting {
                name: "selection".to_owned(),
                reason: "name dead letters by --id, --topic or --partition-key, or pass --all"
                    .to_owned(),
            });
        }
        Ok(())
    }
}

/// A condition on the dead-letter table for `selection` bound as $1 to $4.
const SELECTED: &str = "($1::bool OR ((cardinality($2::text[]) = 0 OR row_id = ANY($2::text[])) \
       AND ($3::text IS NULL OR topic = $3::text) \
       AND ($4::text IS NULL OR partition_key = $4::text)))";

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The outbox row's identity.
    pub row_id: String,
    /// Its topic, as the relay published to it.
    pub topic: String,
    /// Its partition key.
    pub partition_key: Option<String>,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// Why the broker refused it.
    pub error: String,
    /// When it was refused.
    pub failed_at: String,
}

/// The selected dead letters, oldest refusal first.
pub async fn list(
    client: &Client,
    timeout_ms: u64,
    table: &TableName,
    selection: &Selection,
) -> Result<Vec<DeadLetter>> {
    let selection = Selection {
        all: selection.is_empty() || selection.all,
        ..selection.clone()
    };
    let action = format!("list the dead letters of {table}");
    let sql = format!(
        "SELECT row_id, topic, partition_key, idempotency_key, error, failed_at::text \
         FROM {} WHERE {SELECTED} ORDER BY failed_at, row_id",
        table.dead_letters_quoted()
    );
    let rows = timed(timeout_ms, &action, client.query(&sql, &selection.params())).await?;
    rows.iter()
        .map(|row| {
            let read = |error| Error::postgres(action.clone(), error);
            Ok(DeadLetter {
                row_id: row.try_get(0).map_err(read)?,
                topic: row.try_get(1).map_err(read)?,
                partition_key: row.try_get(2).map_err(read)?,
                idempotency_key: row.try_get(3).map_err(read)?,
                error: row.try_get(4).map_err(read)?,
                failed_at: row.try_get(5).map_err(read)?,
            })
        })
        .collect()
}

/// Moves the selected dead letters back into the outbox, as they were;
/// returns how many.
pub async fn retry(
    client: &Client,
    timeout_ms: u64,
    table: &TableName,
    selection: &Selection,
) -> Result<u64> {
    selection.check()?;
    let outbox = table.quoted();
    let sql = format!(
        "WITH moved AS (DELETE FROM {} WHERE {SELECTED} RETURNING row_data) \
         INSERT INTO {outbox} OVERRIDING SYSTEM VALUE \
         SELECT (jsonb_populate_record(NULL::{outbox}, row_data)).* FROM moved",
        table.dead_letters_quoted()
    );
    execute(
        client,
        timeout_ms,
        &format!("retry dead letters of {table}"),
        &sql,
        selection,
    )
    .await
}

/// Deletes the selected dead letters for good; returns how many.
pub async fn drop(
    client: &Client,
    timeout_ms: u64,
    table: &TableName,
    selection: &Selection,
) -> Result<u64> {
    selection.check()?;
    let sql = format!(
        "DELETE FROM {} WHERE {SELECTED}",
        table.dead_letters_quoted()
    );
    execute(
        client,
        timeout_ms,
        &format!("drop dead letters of {table}"),
        &sql,
        selection,
    )
    .await
}

async fn execute(
    client: &Client,
    timeout_ms: u64,
    action: &str,
    sql: &str,
    selection: &Selection,
) -> Result<u64> {
    timed(timeout_ms, action, client.execute(sql, &selection.params())).await
}
