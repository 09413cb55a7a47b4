//! The claim against a real PostgreSQL, with batches in flight on other
//! sessions: a claim that passes over a gap-free run of ids in flight takes
//! exactly what a claim that checks every locked row takes, a late commit
//! in a gap included; and claims skip runs only where ids name one row.

mod common;

use common::TestDatabase;
use postbox_relay::{Layout, Leadership, Locked, Mode, Outbox, TableName};
use tokio_postgres::Client;

/// Generous: these statements take milliseconds.
const TIMEOUT_MS: u64 = 30_000;
const MAX_BATCH_BYTES: u64 = 1024 * 1024;

async fn prepare(client: &Client) -> Outbox {
    Outbox::prepare(
        client,
        TIMEOUT_MS,
        &TableName::default(),
        &Layout::postbox(),
        Mode::Delete,
    )
    .await
    .expect("prepare")
}

/// Inserts a row with id `id` on `client` (in its transaction, if open).
async fn insert(client: &Client, id: i64) {
    client
        .execute(
            "INSERT INTO postbox_outbox (id, topic, partition_key, payload) \
             VALUES ($1::int8, 'orders', 'k' || ($1::int8 % 3), '\\x00')",
            &[&id],
        )
        .await
        .expect("insert");
}

/// Begins a transaction on `client` and claims `rows` rows in it.
async fn claim(
    outbox: &Outbox,
    client: &Client,
    epoch: u64,
    rows: u32,
    locked: Locked,
) -> Vec<i64> {
    client.batch_execute("BEGIN").await.expect("begin");
    outbox
        .claim(client, TIMEOUT_MS, (rows, MAX_BATCH_BYTES), epoch, locked)
        .await
        .expect("claim")
        .rows
        .iter()
        .map(|row| row.row_id.parse().expect("integer id"))
        .collect()
}

#[tokio::test]
async fn a_claim_passing_over_a_run_in_flight_takes_what_checking_each_row_takes() {
    let db = TestDatabase::initialised().await;
    let leader = db.connect().await;
    let epoch = Leadership::new(TableName::default(), "claim-test")
        .expect("holder")
        .acquire(&leader)
        .await
        .expect("acquire")
        .expect("the only relay leads")
        .epoch();
    let app = db.connect().await;
    for id in (1..=12).filter(|id| *id != 3) {
        insert(&app, id).await;
    }
    // Id 3 is taken by a transaction that commits late, after the first claim.
    let late = db.connect().await;
    late.batch_execute("BEGIN").await.expect("begin");
    insert(&late, 3).await;

    let (in_flight, ahead, checking) = (db.connect().await, db.connect().await, db.connect().await);
    let (outbox_in_flight, outbox_ahead, outbox_checking) = (
        prepare(&in_flight).await,
        prepare(&ahead).await,
        prepare(&checking).await,
    );
    assert!(
        outbox_ahead.skips_runs(),
        "a bigserial primary key orders the claim"
    );
    let batch = claim(&outbox_in_flight, &in_flight, epoch, 6, Locked::Wait).await;
    assert_eq!(batch, vec![1, 2, 4, 5, 6, 7]);
    late.batch_execute("COMMIT").await.expect("commit late");

    // The run 4..=7 has no gap: those rows are the batch's, locked.
    let passing = claim(
        &outbox_ahead,
        &ahead,
        epoch,
        3,
        Locked::SkipRun { first: 4, last: 7 },
    )
    .await;
    assert_eq!(
        passing,
        vec![3, 8, 9],
        "the late commit in the gap comes first"
    );
    ahead.batch_execute("ROLLBACK").await.expect("rollback");
    let checked = claim(&outbox_checking, &checking, epoch, 3, Locked::Skip).await;
    assert_eq!(passing, checked);
    checking.batch_execute("ROLLBACK").await.expect("rollback");

    // Rows below a run fill the batch first; the rows above it that were
    // locked too stay locked, unsent: the batch is cut short.
    ahead.batch_execute("BEGIN").await.expect("begin");
    let claim_ahead = outbox_ahead
        .claim(
            &ahead,
            TIMEOUT_MS,
            (1, MAX_BATCH_BYTES),
            epoch,
            Locked::SkipRun { first: 4, last: 7 },
        )
        .await
        .expect("claim");
    let ids: Vec<&str> = claim_ahead
        .rows
        .iter()
        .map(|row| row.row_id.as_str())
        .collect();
    assert_eq!(ids, vec!["3"]);
    assert_eq!(claim_ahead.locked_rows, 2, "row 3, and row 8 above the run");
}

#[tokio::test]
async fn claims_skip_runs_only_where_the_order_is_a_unique_integer_id() {
    let db = TestDatabase::initialised().await;
    let client = db.connect().await;
    assert!(prepare(&client).await.skips_runs());
    client
        .batch_execute(
            "ALTER TABLE postbox_outbox DROP CONSTRAINT postbox_outbox_pkey; \
             CREATE INDEX postbox_outbox_id ON postbox_outbox (id)",
        )
        .await
        .expect("make ids non-unique");
    assert!(
        !prepare(&client).await.skips_runs(),
        "without a unique index, two rows may share an id of a run"
    );
    let mut by_time = Layout::postbox();
    by_time.set_column("order_by=created_at").expect("valid");
    let outbox = Outbox::prepare(
        &client,
        TIMEOUT_MS,
        &TableName::default(),
        &by_time,
        Mode::Delete,
    )
    .await
    .expect("prepare");
    assert!(!outbox.skips_runs(), "timestamps are not a run of ids");
}
