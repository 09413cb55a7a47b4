//! `init`'s schema against a real PostgreSQL: exactly the designed table,
//! idempotent, never touching rows, all or nothing, bounded lock waits, the
//! optional trigger, and `--print`'s script equal to what runs.

mod common;

use std::time::Duration;

use common::TestDatabase;
use postbox_relay::{Schema, TableName, NOTIFY_CHANNEL};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Generous bound for things that take milliseconds, so that a hang fails
/// the test instead of stalling the suite.
const WAIT: Duration = Duration::from_secs(30);

fn default_schema() -> Schema {
    Schema::new(TableName::default())
}

async fn apply(client: &mut Client, schema: &Schema) {
    schema.apply(client).await.expect("init succeeds");
}

/// Columns of `table` as `name type nullable default`, in order.
async fn columns(client: &Client, schema: &str, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT concat_ws(' ', column_name, data_type, is_nullable, column_default) \
             FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&schema, &table],
        )
        .await
        .expect("columns")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Index definitions on `table`, by name.
async fn indexes(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
            &[&table],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Everything `init` can create, in every schema but the system's: tables
/// with their columns, indexes, constraints, functions and triggers.
async fn catalog(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT 'column ' || table_schema || '.' || table_name || ' ' || \
                    concat_ws(' ', column_name, data_type, is_nullable, column_default) \
             FROM information_schema.columns \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
             UNION ALL SELECT 'index ' || indexdef FROM pg_indexes \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
             UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) \
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace \
             UNION ALL SELECT 'function ' || proname || ' ' || pg_get_functiondef(oid) \
             FROM pg_proc WHERE pronamespace = 'public'::regnamespace \
             UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger \
             WHERE NOT tgisinternal \
             ORDER BY 1",
            &[],
        )
        .await
        .expect("catalog")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Every outbox row as text, in id order.
async fn outbox_rows(client: &Client) -> Vec<String> {
    client
        .query("SELECT o::text FROM postbox_outbox AS o ORDER BY id", &[])
        .await
        .expect("rows")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn exists(client: &Client, relation: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&relation])
        .await
        .expect("to_regclass")
        .get(0)
}

async fn notify_triggers(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT concat_ws(' ', trigger_name, action_timing, event_manipulation, \
                    action_orientation, event_object_table) \
             FROM information_schema.triggers ORDER BY trigger_name",
            &[],
        )
        .await
        .expect("triggers")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn init_creates_the_default_table_exactly_as_designed() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    apply(&mut client, &default_schema()).await;

    assert_eq!(
        columns(&client, "public", "postbox_outbox").await,
        [
            "id bigint NO nextval('postbox_outbox_id_seq'::regclass)",
            "topic text NO",
            "partition_key text YES",
            "idempotency_key uuid NO gen_random_uuid()",
            "headers jsonb NO '{}'::jsonb",
            "payload bytea NO",
            "created_at timestamp with time zone NO now()",
            "published_at timestamp with time zone YES",
        ]
    );
    assert_eq!(
        indexes(&client, "postbox_outbox").await,
        [
            "CREATE UNIQUE INDEX postbox_outbox_idempotency_key_key ON public.postbox_outbox \
             USING btree (idempotency_key)",
            "CREATE UNIQUE INDEX postbox_outbox_pkey ON public.postbox_outbox USING btree (id)",
            "CREATE INDEX postbox_outbox_published_idx ON public.postbox_outbox \
             USING btree (published_at) WHERE (published_at IS NOT NULL)",
            "CREATE INDEX postbox_outbox_unpublished_idx ON public.postbox_outbox \
             USING btree (id) WHERE (published_at IS NULL)",
        ]
    );
    assert_eq!(
        columns(&client, "public", "postbox_outbox_dead_letters").await,
        [
            "row_id text NO",
            "topic text NO",
            "partition_key text YES",
            "idempotency_key text NO",
            "row_data jsonb NO",
            "error text NO",
            "failed_at timestamp with time zone NO now()",
        ]
    );
    assert_eq!(
        indexes(&client, "postbox_outbox_dead_letters").await,
        [
            "CREATE UNIQUE INDEX postbox_outbox_dead_letters_pkey \
             ON public.postbox_outbox_dead_letters USING btree (row_id)",
            "CREATE INDEX postbox_outbox_held_idx ON public.postbox_outbox_dead_letters \
             USING btree (topic, partition_key)",
        ]
    );
    assert_eq!(
        columns(&client, "public", "postbox_relay_leader").await,
        [
            "outbox_table text NO",
            "epoch bigint NO",
            "producer text NO",
            "holder text YES",
            "acquired_at timestamp with time zone YES",
        ]
    );
    assert!(notify_triggers(&client).await.is_empty());
}

#[tokio::test]
async fn the_defaults_give_an_insert_of_topic_and_payload_a_full_row() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    apply(&mut client, &default_schema()).await;

    let row = client
        .query_one(
            "INSERT INTO postbox_outbox (topic, payload) VALUES ('orders', '\\x01') \
             RETURNING id, idempotency_key IS NOT NULL, headers::text, \
                       created_at IS NOT NULL, published_at IS NULL",
            &[],
        )
        .await
        .expect("insert");
    assert_eq!(row.get::<_, i64>(0), 1);
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, String>(2), "{}");
    assert!(row.get::<_, bool>(3));
    assert!(row.get::<_, bool>(4));
}

#[tokio::test]
async fn init_again_changes_nothing_and_keeps_every_row() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    let schema = default_schema();
    apply(&mut client, &schema).await;
    client
        .batch_execute(
            "INSERT INTO postbox_outbox (topic, partition_key, headers, payload) \
                 VALUES ('orders', 'customer-7', '{\"a\": \"b\"}', '\\x0102'); \
             INSERT INTO postbox_outbox (topic, payload, published_at) \
                 VALUES ('billing', '\\x03', now()); \
             INSERT INTO postbox_outbox_dead_letters \
                 (row_id, topic, idempotency_key, row_data, error) \
                 VALUES ('9', 'orders', gen_random_uuid(), '{}', 'too large'); \
             INSERT INTO postbox_relay_leader (outbox_table, epoch, producer, holder) \
                 VALUES ('postbox_outbox', 7, 'postbox-relay.postbox_outbox.1', 'relay-a');",
        )
        .await
        .expect("rows");
    let catalog_before = catalog(&client).await;
    let rows_before = outbox_rows(&client).await;
    assert_eq!(rows_before.len(), 2);

    apply(&mut client, &schema).await;

    assert_eq!(catalog(&client).await, catalog_before);
    assert_eq!(outbox_rows(&client).await, rows_before);
    let kept: (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM postbox_outbox_dead_letters), \
                        (SELECT epoch FROM postbox_relay_leader)",
                &[],
            )
            .await
            .expect("counts");
        (row.get(0), row.get(1))
    };
    assert_eq!(kept, (1, 7));
    // The id sequence carries on where it was.
    let next: i64 = client
        .query_one(
            "INSERT INTO postbox_outbox (topic, payload) VALUES ('orders', '\\x') RETURNING id",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    assert_eq!(next, 3);
}

#[tokio::test]
async fn a_failing_init_creates_nothing_and_leaves_the_existing_table_alone() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    // A table of the same name made by someone else, without published_at.
    client
        .batch_execute(
            "CREATE TABLE postbox_outbox (id bigserial PRIMARY KEY, topic text, payload bytea); \
             INSERT INTO postbox_outbox (topic, payload) VALUES ('orders', '\\x01');",
        )
        .await
        .expect("existing table");
    let catalog_before = catalog(&client).await;

    let error = default_schema()
        .apply(&mut client)
        .await
        .expect_err("the index needs published_at");

    let text = error.to_string();
    assert!(
        text.starts_with("cannot create the outbox schema for table postbox_outbox: "),
        "{text}"
    );
    assert!(text.contains("published_at"), "{text}");
    assert_eq!(
        error.postgres_error().and_then(|e| e.code()),
        Some(&SqlState::UNDEFINED_COLUMN)
    );
    assert!(!exists(&client, "postbox_relay_leader").await);
    assert!(!exists(&client, "postbox_outbox_dead_letters").await);
    assert_eq!(catalog(&client).await, catalog_before);
    let count: i64 = client
        .query_one("SELECT count(*) FROM postbox_outbox", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn init_gives_up_on_a_lock_held_too_long_instead_of_queueing_inserts() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    apply(&mut client, &default_schema()).await;
    // A long transaction holding a lock that conflicts with the index's.
    let mut holder = db.connect().await;
    let holding = holder.transaction().await.expect("begin");
    holding
        .batch_execute("LOCK TABLE postbox_outbox IN ROW EXCLUSIVE MODE")
        .await
        .expect("lock");

    let result = tokio::time::timeout(WAIT, default_schema().apply(&mut client))
        .await
        .expect("init gives up well before the test's bound");

    let error = result.expect_err("init cannot get its lock");
    assert_eq!(
        error.postgres_error().and_then(|e| e.code()),
        Some(&SqlState::LOCK_NOT_AVAILABLE),
        "{error}"
    );
    holding.rollback().await.expect("rollback");
}

#[tokio::test]
async fn concurrent_inits_all_succeed() {
    let db = TestDatabase::create().await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        let mut client = db.connect().await;
        runs.push(tokio::spawn(async move {
            default_schema()
                .with_notify_trigger(true)
                .apply(&mut client)
                .await
        }));
    }
    for run in runs {
        run.await
            .expect("the init task completes")
            .expect("every concurrent init succeeds");
    }
    let client = db.connect().await;
    assert_eq!(notify_triggers(&client).await.len(), 1);
}

#[tokio::test]
async fn notify_trigger_fires_once_per_statement_and_is_installed_once() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    let schema = default_schema().with_notify_trigger(true);
    apply(&mut client, &schema).await;
    apply(&mut client, &schema).await;
    // Without --notify, an installed trigger stays.
    apply(&mut client, &default_schema()).await;

    assert_eq!(
        notify_triggers(&client).await,
        ["postbox_outbox_notify AFTER INSERT STATEMENT postbox_outbox"]
    );

    let (listener, mut connection) = tokio_postgres::connect(db.url(), NoTls)
        .await
        .expect("listener");
    let (sender, mut notifications) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(notification) = message {
                let heard = (
                    notification.channel().to_owned(),
                    notification.payload().to_owned(),
                );
                if sender.send(heard).await.is_err() {
                    return;
                }
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await
        .expect("listen");

    // Three rows in one statement, then a marker from a later transaction:
    // notifications arrive in commit order, so the marker ends the count.
    client
        .batch_execute(
            "INSERT INTO postbox_outbox (topic, payload) \
             VALUES ('a', '\\x'), ('b', '\\x'), ('c', '\\x')",
        )
        .await
        .expect("insert");
    client
        .batch_execute(&format!("NOTIFY {NOTIFY_CHANNEL}, 'marker'"))
        .await
        .expect("marker");

    let mut heard = Vec::new();
    while heard
        .last()
        .map(|(_, payload): &(String, String)| payload.as_str())
        != Some("marker")
    {
        let next = tokio::time::timeout(WAIT, notifications.recv())
            .await
            .expect("a notification in time")
            .expect("the listener is running");
        heard.push(next);
    }
    assert_eq!(
        heard,
        [
            (NOTIFY_CHANNEL.to_owned(), String::new()),
            (NOTIFY_CHANNEL.to_owned(), "marker".to_owned()),
        ]
    );
}

#[tokio::test]
async fn printed_script_builds_the_same_schema_as_init() {
    let applied = TestDatabase::create().await;
    let printed = TestDatabase::create().await;
    let schema = default_schema().with_notify_trigger(true);
    let mut applied_client = applied.connect().await;
    apply(&mut applied_client, &schema).await;
    let printed_client = printed.connect().await;
    printed_client
        .batch_execute(&schema.script())
        .await
        .expect("the printed script runs as it is");

    let expected = catalog(&applied_client).await;
    assert!(expected.len() > 20, "{expected:#?}");
    assert_eq!(catalog(&printed_client).await, expected);
}

#[tokio::test]
async fn schema_qualified_table_keeps_everything_in_its_schema() {
    let db = TestDatabase::create().await;
    let mut client = db.connect().await;
    client
        .batch_execute("CREATE SCHEMA app")
        .await
        .expect("schema");
    let table = TableName::parse("app.events").expect("valid");
    apply(&mut client, &Schema::new(table).with_notify_trigger(true)).await;

    let tables: Vec<String> = client
        .query(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "app.events",
            "app.events_dead_letters",
            "app.postbox_relay_leader"
        ]
    );
    assert_eq!(
        indexes(&client, "events").await.last().map(String::as_str),
        Some(
            "CREATE INDEX events_unpublished_idx ON app.events USING btree (id) \
             WHERE (published_at IS NULL)"
        )
    );
    assert_eq!(
        notify_triggers(&client).await,
        ["events_notify AFTER INSERT STATEMENT events"]
    );
}
