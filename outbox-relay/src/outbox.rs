//! The outbox table as the relay reads and changes it: claim, finish, dead
//! letter, cleanup and lag, as prepared SQL.
//!
//! Role: checks a [`Layout`] against the real table once per session, then
//! builds and prepares every statement the leader runs from it.
//!
//! Invariants:
//! - The claim never uses an `id > last_seen` cursor: it takes the first
//!   unpublished rows in claim order every time, so a row whose transaction
//!   commits late, with a lower id than rows already published, is claimed by
//!   the next claim after its commit.
//! - The claim locks the rows it takes (`FOR UPDATE`) until its transaction
//!   ends. With nothing of the leader's in flight it waits for rows locked by
//!   others; with batches in flight it skips locked rows (`SKIP LOCKED`),
//!   which are then the leader's own (see `pipeline` for why no other
//!   relay's remain). Where the claim order is a unique integer id, it may
//!   also pass over a gap-free run of ids of the leader's batches in flight
//!   ([`Locked::SkipRun`]): no other row can have those ids, so it takes the
//!   same rows without checking each lock.
//! - The claim takes rows only while its epoch is the table's in the
//!   leadership table: a deposed leader whose claim starts after its
//!   successor raised the epoch claims nothing, and locks nothing.
//! - The claim skips rows whose topic and partition key have a dead letter,
//!   so that a key's later rows wait behind it.
//! - Rows are deleted or marked, and dead-lettered, only by the caller's
//!   claim transaction, after the broker's acknowledgment.
//! - Rows and bytes per claim are bounded: at most `max_batch_rows` rows
//!   (fixed when the statements are prepared), and rows are taken only while
//!   the payloads before them sum to less than `max_batch_bytes` (the first
//!   row always, however large). Locked rows beyond the bounds are counted
//!   and stay locked, unsent.

use std::collections::HashMap;

use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, GenericClient, Row, Statement};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::session::timed;
use crate::table::{quote_identifier, TableName};

/// What happens to a published row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Delete it (the default): the table holds only unpublished rows.
    #[default]
    Delete,
    /// Set its `published_at`; cleanup deletes it after the retention period.
    Mark,
}

impl std::str::FromStr for Mode {
    type Err = Error;

    fn from_str(text: &str) -> Result<Mode> {
        match text {
            "delete" => Ok(Mode::Delete),
            "mark" => Ok(Mode::Mark),
            other => Err(Error::InvalidSetting {
                name: "mode".to_owned(),
                reason: format!("{other:?} is not a mode; use delete or mark"),
            }),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Delete => "delete",
            Mode::Mark => "mark",
        })
    }
}

/// One claimed row, as the relay publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The row's identity, as text.
    pub row_id: String,
    /// The topic, prefix included.
    pub topic: String,
    /// The record key.
    pub partition_key: Option<String>,
    /// The idempotency key, as text.
    pub idempotency_key: String,
    /// The headers column as JSON text.
    pub headers: Option<String>,
    /// The event type column, as text.
    pub event_type: Option<String>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What one claim took.
#[derive(Debug, Default)]
pub struct Claim {
    /// The rows, in claim order.
    pub rows: Vec<OutboxRow>,
    /// Rows locked: more than `rows` when the byte bound cut the batch
    /// short; the rest stay locked until the claim's transaction ends.
    pub locked_rows: usize,
}

/// What a claim does with rows locked by other transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// Waits for them: with nothing of the leader's in flight, a locked row
    /// is someone else's, and skipping it could publish a later row of its
    /// key first.
    Wait,
    /// Skips them: with batches in flight they are the leader's own.
    Skip,
    /// Skips them, and does not even look at ids `first..=last`: a run of
    /// ids with no gap, every one a row of a batch in flight. With ids
    /// unique, no other row can have one of those ids, so the claim takes
    /// what `Skip` would without a lock check on each of those rows (about
    /// a quarter of a 1000-row claim with two batches in flight). The one
    /// difference: the batch finishing beside the claim may commit first,
    /// and the rows its commit leaves in the table (held behind a dead
    /// letter) then wait for a later claim instead of this one. Only for
    /// layouts where [`Outbox::skips_runs`].
    SkipRun { first: i64, last: i64 },
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    /// Rows not yet published (those held behind dead letters included).
    pub unpublished_rows: i64,
    /// Age in ms of the first of them in claim order (the oldest unless a
    /// transaction ran long before it inserted; in a layout without an
    /// ordering column, the oldest); `None` when there are none or the
    /// layout has no creation time.
    pub oldest_unpublished_age_ms: Option<i64>,
    /// Unpublished rows whose key has a dead letter: they wait for it.
    pub held_rows: i64,
    /// Rows in the dead-letter table.
    pub dead_letters: i64,
}

/// The outbox table's statements, prepared on one session.
#[derive(Debug)]
pub struct Outbox {
    table: TableName,
    mode: Mode,
    topic_prefix: String,
    claim: Statement,
    claim_skipping_locked: Statement,
    /// `None` unless the claim order is a unique integer id.
    claim_skipping_run: Option<Statement>,
    finish: Statement,
    dead_letter: Statement,
    cleanup: Option<Statement>,
    lag: Statement,
}

/// SQL fragments derived from a layout checked against the table.
struct Fragments {
    table: String,
    /// The leadership table.
    leader: String,
    dead_letters: String,
    id: String,
    id_type: String,
    /// The topic column as text, without the prefix.
    topic: String,
    /// The partition key column as text.
    partition_key: Option<String>,
    select: String,
    payload: String,
    unpublished: String,
    order: String,
    /// The claim order is a column of the table (not the physical order,
    /// `ctid`), which the claim's index follows.
    ordered_by_column: bool,
    /// The claim order is the id column, an integer with a unique index: a
    /// run of ids is a run of rows (see [`Locked::SkipRun`]).
    order_is_unique_integer_id: bool,
    published_at: Option<String>,
    created_at: Option<String>,
}

impl Outbox {
    /// Checks `layout` against `table` and prepares the statements on
    /// `client`'s session, with claims of at most `max_batch_rows` rows.
    /// Fails with [`Error::TableMissing`] or [`Error::Layout`] (both fatal)
    /// when the table cannot be read so.
    ///
    /// The row bound is written into the claim's text rather than passed as
    /// a parameter: with a parameter for `LIMIT`, a generic plan assumes a
    /// tenth of the table is wanted, so PostgreSQL kept planning each claim
    /// anew (its planning took longer than its execution). With the bound
    /// known, the plan is made once per session.
    pub async fn prepare(
        client: &Client,
        timeout_ms: u64,
        table: &TableName,
        layout: &Layout,
        mode: Mode,
        max_batch_rows: u32,
    ) -> Result<Outbox> {
        let types = column_types(client, timeout_ms, table).await?;
        let unique = unique_columns(client, timeout_ms, table).await?;
        let sql = Fragments::new(table, layout, mode, &types, &unique)?;
        let prepare = |text: String| async move {
            timed(
                timeout_ms,
                &format!("prepare the relay's statements on {table}"),
                client.prepare(&text),
            )
            .await
        };
        let cleanup = match mode {
            Mode::Mark => Some(prepare(sql.cleanup()).await?),
            Mode::Delete => None,
        };
        Ok(Outbox {
            table: table.clone(),
            mode,
            topic_prefix: layout.topic_prefix.clone(),
            claim: prepare(sql.claim(Locked::Wait, max_batch_rows)).await?,
            claim_skipping_locked: prepare(sql.claim(Locked::Skip, max_batch_rows)).await?,
            claim_skipping_run: match sql.order_is_unique_integer_id {
                true => {
                    let run = Locked::SkipRun { first: 0, last: 0 };
                    Some(prepare(sql.claim(run, max_batch_rows)).await?)
                }
                false => None,
            },
            finish: prepare(sql.finish(mode)).await?,
            dead_letter: prepare(sql.dead_letter()).await?,
            cleanup,
            lag: prepare(sql.lag()).await?,
        })
    }

    /// Whether claims can pass over a run of ids ([`Locked::SkipRun`]):
    /// when the claim order is a unique integer id.
    pub fn skips_runs(&self) -> bool {
        self.claim_skipping_run.is_some()
    }

    /// Begins a transaction on `client` and claims in it the first
    /// unpublished rows in claim order as the leader at `epoch`, doing with
    /// locked rows what `locked` says (see the module's invariants for the
    /// bounds: the rows prepared for, and `max_batch_bytes`). A `SkipRun`
    /// claim on a table where claims cannot skip runs is a `Skip` claim.
    /// The transaction stays open: [`Outbox::finish`] commits it, a
    /// `ROLLBACK` gives the rows back.
    ///
    /// `BEGIN` and the claim go in one round trip: tokio-postgres sends
    /// requests in the order they are first polled, and `join!` polls in
    /// order, so the claim always runs inside the transaction. The
    /// transaction uses generic plans only: a claim ahead's run bounds are
    /// parameters, and PostgreSQL judged a plan made for their values worth
    /// making at every claim (3% of its time in a drain); the generic plan is
    /// the same index scans.
    ///
    /// `CLOSE ALL` follows in the same round trip. The claim's portal, a
    /// finished `SELECT`, would otherwise live until the transaction's next
    /// statement, holding the snapshot it ran with and so the session's
    /// xmin: while the batch waits for its publish, PostgreSQL could not
    /// mark the rows that batches committed since then deleted as dead in
    /// the index, and every claim below the run walked their heap tuples
    /// again (a batch's worth of heap pages per claim ahead). Without a
    /// snapshot, what a waiting batch still holds back is its own
    /// transaction id, newer than those of the batches committed before it
    /// (batches commit in claim order). READ COMMITTED is named, whatever
    /// the database's default: under REPEATABLE READ the transaction's
    /// snapshot would last until its commit, and a locked row changed since
    /// it was taken would fail the claim.
    pub async fn claim(
        &self,
        client: &Client,
        timeout_ms: u64,
        max_batch_bytes: u64,
        epoch: u64,
        locked: Locked,
    ) -> Result<Claim> {
        let begin = timed(
            timeout_ms,
            "begin a claim",
            client.batch_execute(
                "BEGIN ISOLATION LEVEL READ COMMITTED; \
                 SET LOCAL plan_cache_mode = force_generic_plan",
            ),
        );
        let claim = async {
            let max_bytes = i64::try_from(max_batch_bytes).unwrap_or(i64::MAX);
            let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
            let table_name = self.table.name();
            let mut params: Vec<&(dyn ToSql + Sync)> =
                vec![&max_bytes, &self.topic_prefix, &table_name, &epoch];
            let run = match locked {
                Locked::SkipRun { first, last } => [first, last],
                Locked::Wait | Locked::Skip => [0, 0],
            };
            let statement = match (locked, &self.claim_skipping_run) {
                (Locked::Wait, _) => &self.claim,
                (Locked::Skip, _) | (Locked::SkipRun { .. }, None) => &self.claim_skipping_locked,
                (Locked::SkipRun { .. }, Some(statement)) => {
                    params.extend([&run[0] as &(dyn ToSql + Sync), &run[1]]);
                    statement
                }
            };
            timed(
                timeout_ms,
                &format!("claim rows of {}", self.table),
                client.query(statement, &params),
            )
            .await
        };
        let close = timed(
            timeout_ms,
            "close the claim's portal",
            client.batch_execute("CLOSE ALL"),
        );
        let (begun, rows, closed) = tokio::join!(begin, claim, close);
        begun?;
        let rows = rows?;
        closed?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            if !self.column::<bool>(row, 7)? {
                break;
            }
            claimed.push(self.row(row)?);
        }
        Ok(Claim {
            rows: claimed,
            locked_rows: rows.len(),
        })
    }

    /// Column `index` of a claimed row.
    fn column<'r, T: FromSql<'r>>(&self, row: &'r Row, index: usize) -> Result<T> {
        row.try_get(index)
            .map_err(|error| Error::postgres(self.reading(), error))
    }

    fn reading(&self) -> String {
        format!("read a claimed row of {}", self.table)
    }

    /// A column of a claimed row that may not be NULL.
    fn text(&self, row: &Row, index: usize, what: &str) -> Result<String> {
        self.column::<Option<String>>(row, index)?
            .ok_or_else(|| Error::Unexpected {
                action: self.reading(),
                detail: format!("its {what} is NULL"),
            })
    }

    fn row(&self, row: &Row) -> Result<OutboxRow> {
        let required = |index: usize, what: &str| self.text(row, index, what);
        Ok(OutboxRow {
            row_id: required(0, "id")?,
            topic: required(1, "topic")?,
            partition_key: self.column(row, 2)?,
            idempotency_key: required(3, "idempotency key")?,
            headers: self.column(row, 4)?,
            event_type: self.column(row, 5)?,
            payload: self.column::<Option<Vec<u8>>>(row, 6)?.unwrap_or_default(),
        })
    }

    /// Deletes (or marks) published rows in the claim's transaction and
    /// commits it; returns how many rows it changed.
    ///
    /// The statement and `COMMIT` go in one round trip, in that order (see
    /// `claim`). Should the statement fail, PostgreSQL ends the transaction
    /// at `COMMIT` with a rollback, and the statement's error is returned:
    /// nothing is committed.
    pub async fn finish(
        &self,
        client: &Client,
        timeout_ms: u64,
        row_ids: &[String],
    ) -> Result<u64> {
        let verb = match self.mode {
            Mode::Delete => "delete",
            Mode::Mark => "mark",
        };
        let action = format!("{verb} published rows of {}", self.table);
        let params: [&(dyn ToSql + Sync); 1] = [&row_ids];
        let finish = timed(timeout_ms, &action, client.execute(&self.finish, &params));
        let commit = timed(
            timeout_ms,
            "commit a claim's transaction",
            client.batch_execute("COMMIT"),
        );
        let (finished, committed) = tokio::join!(finish, commit);
        let finished = finished?;
        committed?;
        Ok(finished)
    }

    /// Moves `row` to the dead-letter table with `reason`.
    pub async fn dead_letter(
        &self,
        client: &impl GenericClient,
        timeout_ms: u64,
        row: &OutboxRow,
        reason: &str,
    ) -> Result<()> {
        timed(
            timeout_ms,
            &format!(
                "move row {} of {} to its dead letters",
                row.row_id, self.table
            ),
            client.execute(
                &self.dead_letter,
                &[
                    &row.row_id,
                    &row.topic,
                    &row.partition_key,
                    &row.idempotency_key,
                    &reason,
                ],
            ),
        )
        .await
        .map(drop)
    }

    /// Mark mode: deletes up to `batch_rows` rows published more than
    /// `retention_ms` ago, oldest first; returns how many. Nothing in delete
    /// mode.
    pub async fn cleanup(
        &self,
        client: &Client,
        timeout_ms: u64,
        retention_ms: u64,
        batch_rows: u32,
    ) -> Result<u64> {
        let Some(cleanup) = &self.cleanup else {
            return Ok(0);
        };
        let retention_ms = i64::try_from(retention_ms).unwrap_or(i64::MAX);
        timed(
            timeout_ms,
            &format!("clean up published rows of {}", self.table),
            client.execute(cleanup, &[&retention_ms, &i64::from(batch_rows)]),
        )
        .await
    }

    /// The lag, on any session.
    pub async fn lag(&self, client: &impl GenericClient, timeout_ms: u64) -> Result<Lag> {
        let action = format!("measure the lag of {}", self.table);
        let row = timed(
            timeout_ms,
            &action,
            client.query_one(&self.lag, &[&self.topic_prefix]),
        )
        .await?;
        let get = |index: usize| -> Result<Option<i64>> {
            row.try_get(index)
                .map_err(|error| Error::postgres(action.clone(), error))
        };
        Ok(Lag {
            unpublished_rows: get(0)?.unwrap_or(0),
            oldest_unpublished_age_ms: get(1)?,
            held_rows: get(2)?.unwrap_or(0),
            dead_letters: get(3)?.unwrap_or(0),
        })
    }
}

/// The table's columns and their types (`format_type`), by name.
async fn column_types(
    client: &Client,
    timeout_ms: u64,
    table: &TableName,
) -> Result<HashMap<String, String>> {
    let rows = timed(
        timeout_ms,
        &format!("read the columns of {table}"),
        client.query(
            "SELECT to_regclass($1) IS NOT NULL, a.attname::text, \
                    format_type(a.atttypid, a.atttypmod) \
             FROM (SELECT 1) one LEFT JOIN pg_attribute a \
               ON a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.quoted()],
        ),
    )
    .await?;
    let exists = rows.first().is_some_and(|row| row.get::<_, bool>(0));
    if !exists {
        return Err(Error::TableMissing {
            table: table.to_string(),
        });
    }
    Ok(rows
        .iter()
        .filter_map(|row| Some((row.get::<_, Option<String>>(1)?, row.get(2))))
        .collect())
}

/// Column types (as `format_type` names them) whose values have no gaps
/// between consecutive ones.
const INTEGER_TYPES: [&str; 3] = ["smallint", "integer", "bigint"];

/// Columns of `table` with a unique index of their own (not partial, not
/// on an expression, valid): a value there names one row.
async fn unique_columns(
    client: &Client,
    timeout_ms: u64,
    table: &TableName,
) -> Result<Vec<String>> {
    let rows = timed(
        timeout_ms,
        &format!("read the unique indexes of {table}"),
        client.query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid \
               AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL",
            &[&table.quoted()],
        ),
    )
    .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

impl Fragments {
    fn new(
        table: &TableName,
        layout: &Layout,
        mode: Mode,
        types: &HashMap<String, String>,
        unique: &[String],
    ) -> Result<Fragments> {
        let invalid = |reason: String| Error::Layout {
            table: table.to_string(),
            reason,
        };
        for (role, column) in layout.columns() {
            if !types.contains_key(column) {
                return Err(invalid(format!(
                    "it has no column {column:?} (the {role} of the {} layout); \
                     name the right one with --column {role}=COLUMN",
                    layout.kind
                )));
            }
        }
        if mode == Mode::Mark && layout.published_at.is_none() {
            return Err(invalid(
                "mark mode needs a published_at column (--column published_at=COLUMN); \
                 use --mode delete"
                    .to_owned(),
            ));
        }
        let column = |name: &str| format!("o.{}", quote_identifier(name));
        let type_of = |name: &str| types.get(name).cloned().unwrap_or_default();
        if let Some(headers) = &layout.headers {
            let kind = type_of(headers);
            if kind != "jsonb" && kind != "json" {
                return Err(invalid(format!(
                    "its headers column {headers:?} is {kind}; it must be json or jsonb"
                )));
            }
        }
        let text_or_null = |name: &Option<String>| match name {
            Some(name) => format!("{}::text", column(name)),
            None => "NULL::text".to_owned(),
        };
        let payload = if type_of(&layout.payload) == "bytea" {
            column(&layout.payload)
        } else {
            format!("convert_to({}::text, 'UTF8')", column(&layout.payload))
        };
        let id = column(&layout.id);
        let topic = format!("{}::text", column(&layout.topic));
        let partition_key = layout
            .partition_key
            .as_ref()
            .map(|key| format!("{}::text", column(key)));
        let idempotency_key = text_or_null(&Some(
            layout
                .idempotency_key
                .clone()
                .unwrap_or_else(|| layout.id.clone()),
        ));
        let select = format!(
            "{id}::text AS row_id, $2::text || {topic} AS topic, {key} AS partition_key, \
             {idempotency_key} AS idempotency_key, {headers} AS headers, \
             {event_type} AS event_type, {payload} AS payload",
            key = text_or_null(&layout.partition_key),
            headers = text_or_null(&layout.headers),
            event_type = text_or_null(&layout.event_type),
        );
        let unpublished = match &layout.published_at {
            Some(published_at) => format!("{} IS NULL", column(published_at)),
            None => "TRUE".to_owned(),
        };
        let dead_letters = table.dead_letters_quoted();
        Ok(Fragments {
            table: format!("{} o", table.quoted()),
            leader: table.leader_table_quoted(),
            dead_letters,
            id,
            id_type: type_of(&layout.id),
            topic,
            partition_key,
            select,
            payload,
            unpublished,
            order: layout
                .order_by
                .as_deref()
                .map_or_else(|| "o.ctid".to_owned(), column),
            ordered_by_column: layout.order_by.is_some(),
            order_is_unique_integer_id: layout.order_by.as_deref() == Some(layout.id.as_str())
                && INTEGER_TYPES.contains(&type_of(&layout.id).as_str())
                && unique.contains(&layout.id),
            published_at: layout.published_at.as_deref().map(quote_identifier),
            created_at: layout.created_at.as_deref().map(column),
        })
    }

    /// Whether the row's key has a dead letter, with the topic prefix bound
    /// to `prefix` (a parameter such as `$2`). The first `EXISTS` is not
    /// correlated, so PostgreSQL evaluates it once per statement (an init
    /// plan): with no dead letters, the usual case, no row pays a lookup. That
    /// lookup was a fifth of a 1000-row claim's time.
    fn held(&self, prefix: &str) -> String {
        let Fragments {
            dead_letters,
            topic,
            ..
        } = self;
        match &self.partition_key {
            Some(key) => format!(
                "(EXISTS (SELECT FROM {dead_letters}) AND EXISTS (SELECT FROM {dead_letters} d \
                 WHERE d.topic = {prefix}::text || {topic} AND d.partition_key = {key}))"
            ),
            None => "FALSE".to_owned(),
        }
    }

    /// At most `max_rows` rows; $1 most payload bytes, $2 topic prefix, $3
    /// the outbox table's name, $4 the epoch in the leadership table and, to
    /// skip a run, $5 and $6 its first and last id. The rows are locked in a
    /// subquery (no window function may share its level); every locked row
    /// comes back, in claim order, and `in_batch` tells those within the row
    /// and byte bounds, a prefix (the others, locked but unsent, come
    /// without their payload). A run is skipped by locking the rows below it
    /// and those above it, up to `max_rows` each. One window computes both
    /// bounds: a window per bound, and a third to count the locked rows,
    /// made half of the claim's execution time.
    fn claim(&self, locked: Locked, max_rows: u32) -> String {
        let Fragments {
            select, payload, ..
        } = self;
        let locking = match locked {
            Locked::Wait => self.locking("TRUE", "", max_rows),
            Locked::Skip => self.locking("TRUE", " SKIP LOCKED", max_rows),
            Locked::SkipRun { .. } => {
                let id = &self.id;
                // Each side in a subquery of its own: a set operation
                // refuses FOR UPDATE in its branches.
                format!(
                    "SELECT * FROM ({}) below UNION ALL SELECT * FROM ({}) above",
                    self.locking(&format!("{id} < $5::int8"), " SKIP LOCKED", max_rows),
                    self.locking(&format!("{id} > $6::int8"), " SKIP LOCKED", max_rows),
                )
            }
        };
        format!(
            "SELECT row_id, topic, partition_key, idempotency_key, headers, event_type, \
                    CASE WHEN in_batch THEN payload END, in_batch \
             FROM (SELECT {select}, o.claim_sort, \
                          row_number() OVER w <= {max_rows} \
                            AND sum(octet_length({payload})) OVER w - octet_length({payload}) \
                                < $1::int8 AS in_batch \
                   FROM ({locking}) o \
                   WINDOW w AS (ORDER BY o.claim_sort ROWS UNBOUNDED PRECEDING)) claim \
             ORDER BY claim_sort"
        )
    }

    /// The first `max_rows` claimable rows where `range` holds, locked.
    fn locking(&self, range: &str, skip: &str, max_rows: u32) -> String {
        let Fragments {
            table,
            leader,
            unpublished,
            order,
            ..
        } = self;
        let held = self.held("$2");
        format!(
            "SELECT o.*, {order} AS claim_sort FROM {table} \
             WHERE {unpublished} AND {range} AND NOT {held} \
               AND EXISTS (SELECT FROM {leader} l \
                           WHERE l.outbox_table = $3::text AND l.epoch = $4::int8) \
             ORDER BY {order} \
             LIMIT {max_rows} \
             FOR UPDATE OF o{skip}"
        )
    }

    /// $1 the row ids, as text.
    fn finish(&self, mode: Mode) -> String {
        let Fragments {
            table, id, id_type, ..
        } = self;
        match (mode, &self.published_at) {
            (Mode::Mark, Some(published_at)) => format!(
                "UPDATE {table} SET {published_at} = now() \
                 WHERE {id} = ANY($1::text[]::{id_type}[]) AND o.{published_at} IS NULL"
            ),
            _ => format!("DELETE FROM {table} WHERE {id} = ANY($1::text[]::{id_type}[])"),
        }
    }

    /// $1 row id, $2 topic, $3 partition key, $4 idempotency key, $5 reason.
    fn dead_letter(&self) -> String {
        let Fragments {
            table,
            dead_letters,
            id,
            id_type,
            ..
        } = self;
        format!(
            "WITH moved AS (DELETE FROM {table} WHERE {id} = $1::text::{id_type} RETURNING o.*) \
             INSERT INTO {dead_letters} \
                 (row_id, topic, partition_key, idempotency_key, row_data, error) \
             SELECT $1::text, $2::text, $3::text, $4::text, to_jsonb(moved), $5::text FROM moved \
             ON CONFLICT (row_id) DO UPDATE SET topic = EXCLUDED.topic, \
                 partition_key = EXCLUDED.partition_key, \
                 idempotency_key = EXCLUDED.idempotency_key, row_data = EXCLUDED.row_data, \
                 error = EXCLUDED.error, failed_at = now()"
        )
    }

    /// $1 retention in ms, $2 most rows.
    fn cleanup(&self) -> String {
        let Fragments { table, id, .. } = self;
        let published_at = self.published_at.as_deref().unwrap_or("published_at");
        format!(
            "DELETE FROM {table} WHERE {id} IN ( \
                 SELECT {id} FROM {table} \
                 WHERE o.{published_at} < now() - $1::int8 * interval '1 millisecond' \
                 ORDER BY o.{published_at} LIMIT $2::int8)"
        )
    }

    /// $1 topic prefix. Where the claim order is a column, the age is that
    /// of the first unpublished row in claim order (rows held behind a dead
    /// letter included), read through the claim's index: `min(created_at)`
    /// read the whole table (30 ms per 100,000 rows here, every lag line).
    /// That row is the oldest but for transactions that ran long before they
    /// inserted. In physical order (`ctid`) the first row says nothing of
    /// age, and no index helps: there the age is still `min(created_at)`.
    fn lag(&self) -> String {
        let Fragments {
            table,
            dead_letters,
            unpublished,
            order,
            ..
        } = self;
        let held = self.held("$1");
        let age_ms =
            |created_at: &str| format!("(extract(epoch FROM now() - {created_at}) * 1000)::int8");
        let age = match (&self.created_at, self.ordered_by_column) {
            (Some(created_at), true) => format!(
                "(SELECT {age} FROM {table} \
                  WHERE {unpublished} AND {created_at} IS NOT NULL ORDER BY {order} LIMIT 1)",
                age = age_ms(created_at)
            ),
            (Some(created_at), false) => format!(
                "(SELECT {age} FROM {table} WHERE {unpublished})",
                age = age_ms(&format!("min({created_at})"))
            ),
            (None, _) => "NULL::int8".to_owned(),
        };
        format!(
            "SELECT (SELECT count(*) FROM {table} WHERE {unpublished}), {age}, \
                    (SELECT count(*) FROM {table} WHERE {unpublished} AND {held}), \
                    (SELECT count(*) FROM {dead_letters})"
        )
    }
}
