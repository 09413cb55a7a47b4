//! The outbox schema: what `postbox-relay init` creates, as SQL.
//!
//! Role: one SQL script per outbox table, which [`Schema::apply`] runs in one
//! transaction and [`Schema::script`] prints for teams that run their
//! migrations themselves. Both come from the same text, so what is printed is
//! what would run.
//!
//! Invariants:
//! - Idempotent: every statement creates only what is missing
//!   (`IF NOT EXISTS`, `CREATE OR REPLACE FUNCTION`, a trigger created only if
//!   absent), so running it again changes nothing.
//! - It never reads, changes or deletes a row, and never drops or alters
//!   anything that exists: an existing table keeps its columns and rows (if
//!   it lacks a column the index needs, the script fails and creates nothing).
//!   Leaving out `--notify` does not remove an installed trigger.
//! - All or nothing: the script runs in one transaction.
//! - It waits at most [`INIT_LOCK_TIMEOUT_MS`] for a lock, so that it never
//!   queues the application's own inserts behind it for long.
//!
//! Needs PostgreSQL 13 or later (`gen_random_uuid()` in core).

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::leader::ADVISORY_LOCK_NAMESPACE;
use crate::table::{quote_literal, TableName};

/// The channel the optional trigger notifies, for every outbox table: a relay
/// woken by another table's insert merely polls once.
pub const NOTIFY_CHANNEL: &str = "postbox_outbox";

/// How long `init` waits for a lock before it gives up. Creating an index or
/// a trigger on an existing table locks it against inserts, and a waiting
/// lock queues every later insert behind it: better to fail and be run again
/// at a quiet moment than to stall the application.
pub const INIT_LOCK_TIMEOUT_MS: u64 = 5_000;

/// The second key of the transaction-level advisory lock that serialises
/// concurrent runs of the script (the first is [`ADVISORY_LOCK_NAMESPACE`]).
/// Leadership locks use a table's OID there, and no table has OID 0.
const INIT_LOCK_KEY: i32 = 0;

/// The schema `init` creates for one outbox table.
#[derive(Debug, Clone)]
pub struct Schema {
    /// The outbox table; every other name derives from it.
    table: TableName,
    /// Whether to install the optional NOTIFY trigger.
    notify_trigger: bool,
    /// Whether to create the outbox table itself (the default layout), or
    /// only the relay's own tables beside an existing one (another layout).
    outbox_table: bool,
}

impl Schema {
    /// The schema for `table`, without the NOTIFY trigger.
    pub fn new(table: TableName) -> Schema {
        Schema {
            table,
            notify_trigger: false,
            outbox_table: true,
        }
    }

    /// Leaves the outbox table as it is and creates only the relay's own
    /// tables (dead letters, leadership): for an existing table in another
    /// layout, such as Debezium's.
    pub fn existing_outbox_table(mut self) -> Schema {
        self.outbox_table = false;
        self
    }

    /// Also installs (when `install` is true) the trigger that notifies
    /// [`NOTIFY_CHANNEL`] after each insert statement.
    pub fn with_notify_trigger(mut self, install: bool) -> Schema {
        self.notify_trigger = install;
        self
    }

    /// The outbox table this schema is for.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The whole script, in its own transaction, as `--print` shows it.
    pub fn script(&self) -> String {
        format!(
            "-- postbox-relay init: the outbox schema for table {table}.\n\
             -- Idempotent: creates only what is missing and never touches existing rows.\n\
             BEGIN;\n\n{body}\nCOMMIT;\n",
            table = self.table,
            body = self.statements(),
        )
    }

    /// Runs the script in one transaction on `client`.
    pub async fn apply(&self, client: &mut Client) -> Result<()> {
        let action = || format!("create the outbox schema for table {}", self.table);
        let transaction = client
            .transaction()
            .await
            .map_err(|error| Error::postgres(action(), error))?;
        transaction
            .batch_execute(&self.statements())
            .await
            .map_err(|error| Error::postgres(action(), error))?;
        transaction
            .commit()
            .await
            .map_err(|error| Error::postgres(action(), error))
    }

    /// The script's statements, without the transaction around them.
    fn statements(&self) -> String {
        let mut sql = self.preamble();
        if self.outbox_table {
            sql.push_str(&self.outbox_table());
        }
        sql.push_str(&self.dead_letters_table());
        sql.push_str(&self.leader_table());
        if self.notify_trigger {
            sql.push_str(&self.notify_trigger());
        }
        sql
    }

    fn preamble(&self) -> String {
        format!(
            "-- Give up after {INIT_LOCK_TIMEOUT_MS} ms waiting for a lock rather than queue the\n\
             -- application's inserts behind this script (an index or trigger on a busy table).\n\
             SET LOCAL lock_timeout = '{INIT_LOCK_TIMEOUT_MS}ms';\n\
             -- Two runs at once would race to create the same tables; the second waits here.\n\
             SELECT pg_advisory_xact_lock({ADVISORY_LOCK_NAMESPACE}, {INIT_LOCK_KEY});\n\n"
        )
    }

    fn outbox_table(&self) -> String {
        let table = self.table.quoted();
        let index = self.table.unpublished_index_quoted();
        let published_index = self.table.published_index_quoted();
        format!(
            "-- The outbox: the application inserts one row per event, in the transaction\n\
             -- that makes the change the event describes.\n\
             CREATE TABLE IF NOT EXISTS {table} (\n    \
                 id              bigserial PRIMARY KEY,\n    \
                 topic           text NOT NULL,\n    \
                 partition_key   text,\n    \
                 idempotency_key uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),\n    \
                 headers         jsonb NOT NULL DEFAULT '{{}}',\n    \
                 payload         bytea NOT NULL,\n    \
                 created_at      timestamptz NOT NULL DEFAULT now(),\n    \
                 published_at    timestamptz\n\
             );\n\n\
             -- The relay claims the oldest unpublished rows: WHERE published_at IS NULL\n\
             -- ORDER BY id. When published rows are deleted (the default) the primary key\n\
             -- alone would serve; when they are only marked, they stay until cleanup, and\n\
             -- this partial index, which holds unpublished rows only, keeps the claim from\n\
             -- walking past them and stays small however many wait for cleanup.\n\
             CREATE INDEX IF NOT EXISTS {index} ON {table} (id) WHERE published_at IS NULL;\n\n\
             -- Cleanup in mark mode deletes rows published before the retention period,\n\
             -- oldest first, in small batches; this index finds them without a scan.\n\
             CREATE INDEX IF NOT EXISTS {published_index} ON {table} (published_at)\n    \
                 WHERE published_at IS NOT NULL;\n\n"
        )
    }

    fn dead_letters_table(&self) -> String {
        let dead_letters = self.table.dead_letters_quoted();
        let held_index = self.table.held_index_quoted();
        format!(
            "-- Rows the broker refuses for good move here with the reason, so that none\n\
             -- vanishes: the whole outbox row as JSON (row_data, put back as it was by\n\
             -- `dead-letters retry`, its id and so its place in the order kept), and what the\n\
             -- relay made of it. Later rows with the same topic and partition key wait\n\
             -- while one is here, so that per-key order holds.\n\
             CREATE TABLE IF NOT EXISTS {dead_letters} (\n    \
                 row_id          text PRIMARY KEY,\n    \
                 topic           text NOT NULL,\n    \
                 partition_key   text,\n    \
                 idempotency_key text NOT NULL,\n    \
                 row_data        jsonb NOT NULL,\n    \
                 error           text NOT NULL,\n    \
                 failed_at       timestamptz NOT NULL DEFAULT now()\n\
             );\n\n\
             -- The claim asks, for each row, whether its key is held here.\n\
             CREATE INDEX IF NOT EXISTS {held_index} ON {dead_letters} (topic, partition_key);\n\n"
        )
    }

    fn leader_table(&self) -> String {
        let leader = self.table.leader_table_quoted();
        format!(
            "-- Leadership: one row per outbox table. A relay that takes the table's advisory\n\
             -- lock raises its epoch by one; it sends the epoch with every publish and the\n\
             -- broker refuses older ones, so a relay that lost its lock cannot publish.\n\
             -- producer: the relay's identity at the broker, random, made with the row.\n\
             CREATE TABLE IF NOT EXISTS {leader} (\n    \
                 outbox_table text PRIMARY KEY,\n    \
                 epoch        bigint NOT NULL CHECK (epoch > 0),\n    \
                 producer     text NOT NULL,\n    \
                 holder       text,\n    \
                 acquired_at  timestamptz\n\
             );\n\n"
        )
    }

    fn notify_trigger(&self) -> String {
        let table = self.table.quoted();
        let function = self.table.notify_function_quoted();
        let trigger = self.table.notify_trigger_name();
        let trigger_quoted = crate::table::quote_identifier(&trigger);
        let trigger_literal = quote_literal(&trigger);
        let table_literal = quote_literal(&table);
        let channel = quote_literal(NOTIFY_CHANNEL);
        format!(
            "-- Optional wake-up for the relay, which polls in any case. FOR EACH STATEMENT:\n\
             -- one notification per INSERT statement, however many rows it inserts, where a\n\
             -- row trigger would call the function once per row. (PostgreSQL also folds\n\
             -- identical notifications of one transaction into one.) Cost: a transaction\n\
             -- that notifies takes a lock global to the server at commit, which serialises the\n\
             -- commits of all inserting transactions. To remove it:\n\
             -- DROP TRIGGER {trigger_quoted} ON {table};\n\
             CREATE OR REPLACE FUNCTION {function}() RETURNS trigger\n\
             LANGUAGE plpgsql AS $function$\n\
             BEGIN\n    \
                 PERFORM pg_notify({channel}, '');\n    \
                 RETURN NULL;\n\
             END\n\
             $function$;\n\n\
             DO $do$\n\
             BEGIN\n    \
                 IF NOT EXISTS (\n        \
                     SELECT FROM pg_trigger\n        \
                     WHERE tgrelid = {table_literal}::regclass AND tgname = {trigger_literal}\n    \
                 ) THEN\n        \
                     CREATE TRIGGER {trigger_quoted} AFTER INSERT ON {table}\n            \
                         FOR EACH STATEMENT EXECUTE FUNCTION {function}();\n    \
                 END IF;\n\
             END\n\
             $do$;\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_one_transaction() {
        let script = Schema::new(TableName::default()).script();
        assert!(script.contains("\nBEGIN;\n"));
        assert!(script.ends_with("\nCOMMIT;\n"));
        assert_eq!(script.matches("BEGIN;").count(), 1);
    }

    #[test]
    fn trigger_only_when_asked() {
        let without = Schema::new(TableName::default()).script();
        assert!(!without.contains("CREATE TRIGGER"));
        let with = Schema::new(TableName::default())
            .with_notify_trigger(true)
            .script();
        assert!(with.contains("FOR EACH STATEMENT EXECUTE FUNCTION \"postbox_outbox_notify\"()"));
        assert!(with.contains("PERFORM pg_notify('postbox_outbox', '');"));
    }

    #[test]
    fn every_name_is_quoted_and_qualified() {
        let table = TableName::parse("app.events").expect("valid");
        let script = Schema::new(table).with_notify_trigger(true).script();
        for expected in [
            "CREATE TABLE IF NOT EXISTS \"app\".\"events\" (",
            "CREATE INDEX IF NOT EXISTS \"events_unpublished_idx\" ON \"app\".\"events\" (id)",
            "CREATE TABLE IF NOT EXISTS \"app\".\"events_dead_letters\" (",
            "CREATE TABLE IF NOT EXISTS \"app\".\"postbox_relay_leader\" (",
            "CREATE OR REPLACE FUNCTION \"app\".\"events_notify\"()",
            "WHERE tgrelid = '\"app\".\"events\"'::regclass AND tgname = 'events_notify'",
        ] {
            assert!(
                script.contains(expected),
                "missing {expected:?} in\n{script}"
            );
        }
    }
}
