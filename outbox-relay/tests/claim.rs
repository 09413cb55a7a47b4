//! The claim and the finish against a real PostgreSQL, with batches in
//! flight on other sessions: a claim that passes over a gap-free run of ids
//! in flight takes exactly what a claim that checks every locked row takes,
//! a late commit in a gap included; claims skip runs only where ids name one
//! row; the byte bound ends a batch and keeps the rest locked; a session
//! plans its claim once; a claimed batch holds no snapshot while it waits;
//! the lag's age is the first row's in claim order; a finish that fails
//! commits nothing of its transaction.

mod common;

use common::TestDatabase;
use postbox_relay::{Claim, Layout, Leadership, Locked, Mode, Outbox, TableName};
use tokio_postgres::Client;

/// Generous: these statements take milliseconds.
const TIMEOUT_MS: u64 = 30_000;
const MAX_BATCH_BYTES: u64 = 1024 * 1024;

/// The outbox statements on `client`, claiming at most `rows` rows.
async fn prepare(client: &Client, rows: u32) -> Outbox {
    Outbox::prepare(
        client,
        TIMEOUT_MS,
        &TableName::default(),
        &Layout::postbox(),
        Mode::Delete,
        rows,
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

/// Claims with `outbox` on `client`, in a transaction the claim begins.
async fn take(
    outbox: &Outbox,
    client: &Client,
    epoch: u64,
    max_batch_bytes: u64,
    locked: Locked,
) -> Claim {
    outbox
        .claim(client, TIMEOUT_MS, max_batch_bytes, epoch, locked)
        .await
        .expect("claim")
}

/// Claims up to `rows` rows on `client`; returns their ids.
async fn claim(client: &Client, epoch: u64, rows: u32, locked: Locked) -> Vec<i64> {
    take(
        &prepare(client, rows).await,
        client,
        epoch,
        MAX_BATCH_BYTES,
        locked,
    )
    .await
    .rows
    .iter()
    .map(|row| row.row_id.parse().expect("integer id"))
    .collect()
}

/// Takes the lead of the default table on `client`; returns the epoch.
async fn lead(client: &Client) -> u64 {
    Leadership::new(TableName::default(), "claim-test")
        .expect("holder")
        .acquire(client)
        .await
        .expect("acquire")
        .expect("the only relay leads")
        .epoch()
}

/// A fresh database led by a session of its own, with rows `1..=rows`.
async fn leading_with_rows(rows: i64) -> (TestDatabase, Client, u64) {
    let db = TestDatabase::initialised().await;
    let client = db.connect().await;
    let epoch = lead(&client).await;
    for id in 1..=rows {
        insert(&client, id).await;
    }
    (db, client, epoch)
}

#[tokio::test]
async fn a_claim_passing_over_a_run_in_flight_takes_what_checking_each_row_takes() {
    let db = TestDatabase::initialised().await;
    let leader = db.connect().await;
    let epoch = lead(&leader).await;
    let app = db.connect().await;
    for id in (1..=12).filter(|id| *id != 3) {
        insert(&app, id).await;
    }
    // Id 3 is taken by a transaction that commits late, after the first claim.
    let late = db.connect().await;
    late.batch_execute("BEGIN").await.expect("begin");
    insert(&late, 3).await;

    let (in_flight, ahead, checking) = (db.connect().await, db.connect().await, db.connect().await);
    assert!(
        prepare(&ahead, 3).await.skips_runs(),
        "a bigserial primary key orders the claim"
    );
    let batch = claim(&in_flight, epoch, 6, Locked::Wait).await;
    assert_eq!(batch, vec![1, 2, 4, 5, 6, 7]);
    late.batch_execute("COMMIT").await.expect("commit late");

    // The run 4..=7 has no gap: those rows are the batch's, locked.
    let passing = claim(&ahead, epoch, 3, Locked::SkipRun { first: 4, last: 7 }).await;
    assert_eq!(
        passing,
        vec![3, 8, 9],
        "the late commit in the gap comes first"
    );
    ahead.batch_execute("ROLLBACK").await.expect("rollback");
    let checked = claim(&checking, epoch, 3, Locked::Skip).await;
    assert_eq!(passing, checked);
    checking.batch_execute("ROLLBACK").await.expect("rollback");

    // Rows below a run fill the batch first; the rows above it that were
    // locked too stay locked, unsent: the batch is cut short.
    let run = Locked::SkipRun { first: 4, last: 7 };
    let claim_ahead = take(
        &prepare(&ahead, 1).await,
        &ahead,
        epoch,
        MAX_BATCH_BYTES,
        run,
    )
    .await;
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
    assert!(prepare(&client, 1).await.skips_runs());
    client
        .batch_execute(
            "ALTER TABLE postbox_outbox DROP CONSTRAINT postbox_outbox_pkey; \
             CREATE INDEX postbox_outbox_id ON postbox_outbox (id)",
        )
        .await
        .expect("make ids non-unique");
    assert!(
        !prepare(&client, 1).await.skips_runs(),
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
        1,
    )
    .await
    .expect("prepare");
    assert!(!outbox.skips_runs(), "timestamps are not a run of ids");
}

/// The finish sends its statement and `COMMIT` in one round trip: when the
/// statement fails, the `COMMIT` must end the transaction with a rollback,
/// taking the dead letter moved before it along.
#[tokio::test]
async fn a_finish_whose_statement_fails_commits_nothing() {
    let (_db, client, epoch) = leading_with_rows(3).await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN RAISE EXCEPTION 'row % may not go', OLD.id; END $$; \
             CREATE TRIGGER refuse_delete BEFORE DELETE ON postbox_outbox \
               FOR EACH ROW WHEN (OLD.id = 2) EXECUTE FUNCTION refuse_delete()",
        )
        .await
        .expect("install the refusing trigger");
    let outbox = prepare(&client, 3).await;
    let claimed = take(&outbox, &client, epoch, MAX_BATCH_BYTES, Locked::Wait).await;
    assert_eq!(claimed.rows.len(), 3);
    outbox
        .dead_letter(
            &client,
            TIMEOUT_MS,
            &claimed.rows[0],
            "refused for the test",
        )
        .await
        .expect("dead-letter row 1");
    let ids: Vec<String> = claimed.rows[1..]
        .iter()
        .map(|row| row.row_id.clone())
        .collect();
    let error = outbox
        .finish(&client, TIMEOUT_MS, &ids)
        .await
        .expect_err("row 2's delete is refused");
    assert!(
        error.to_string().contains("may not go"),
        "the statement's error, not the commit's: {error}"
    );

    let count = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("SELECT count(*) FROM postbox_outbox").await, 3);
    assert_eq!(
        count("SELECT count(*) FROM postbox_outbox_dead_letters").await,
        0
    );
    // The session is out of the failed transaction: a new claim begins.
    let again = take(&outbox, &client, epoch, MAX_BATCH_BYTES, Locked::Wait).await;
    assert_eq!(again.rows.len(), 3);
}

/// Generic and custom plans made so far for the one prepared statement of
/// the session whose text is `LIKE` the pattern and that has run.
async fn plan_counts(client: &Client, pattern: &str) -> (i64, i64) {
    let plans = client
        .query_one(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
             WHERE statement LIKE $1 AND generic_plans + custom_plans > 0 \
               AND statement NOT LIKE '%pg_prepared_statements%'",
            &[&pattern],
        )
        .await
        .expect("the statement's plan counts");
    (plans.get(0), plans.get(1))
}

/// With the row bound a parameter of `LIMIT`, PostgreSQL judged a generic
/// plan (made for a tenth of the table) worse than a fresh one, and planned
/// every claim anew, which took longer than running it. With the bound
/// written into the statement, the session plans it once.
#[tokio::test]
async fn a_session_plans_its_claim_once() {
    let (_db, client, epoch) = leading_with_rows(20).await;
    let outbox = prepare(&client, 10).await;
    const CLAIMS: i64 = 12;
    for _ in 0..CLAIMS {
        let claimed = take(&outbox, &client, epoch, MAX_BATCH_BYTES, Locked::Wait).await;
        assert_eq!(claimed.rows.len(), 10);
        client.batch_execute("ROLLBACK").await.expect("rollback");
    }
    let (generic, custom) = plan_counts(&client, "%claim_sort%").await;
    assert_eq!(generic + custom, CLAIMS);
    assert!(
        custom <= 5,
        "PostgreSQL tries custom plans 5 times, then keeps the generic one: \
         {custom} custom plans, {generic} generic"
    );
}

/// A claim ahead's run bounds are parameters; PostgreSQL would plan it
/// afresh for their values at every claim. Claims use the generic plan.
#[tokio::test]
async fn a_claim_ahead_is_never_planned_for_its_bounds() {
    let (_db, client, epoch) = leading_with_rows(20).await;
    let outbox = prepare(&client, 5).await;
    const CLAIMS: i64 = 8;
    for _ in 0..CLAIMS {
        let run = Locked::SkipRun { first: 3, last: 9 };
        let claimed = take(&outbox, &client, epoch, MAX_BATCH_BYTES, run).await;
        let ids: Vec<&str> = claimed.rows.iter().map(|row| row.row_id.as_str()).collect();
        assert_eq!(
            ids,
            ["1", "2", "10", "11", "12"],
            "the run 3..=9 is passed over"
        );
        client.batch_execute("ROLLBACK").await.expect("rollback");
    }
    let (generic, custom) = plan_counts(&client, "%UNION ALL%").await;
    assert_eq!((generic, custom), (CLAIMS, 0), "generic and custom plans");
}

/// A claimed batch waits in its transaction while it is published. Its
/// session must not keep the claim's snapshot meanwhile: that snapshot's
/// xmin would keep PostgreSQL from pruning the rows that batches committed
/// since then deleted, and every claim after it would walk them again. The
/// database's default isolation is set to REPEATABLE READ here, where a
/// transaction keeps its snapshot to the end: the claim must not inherit it.
#[tokio::test]
async fn a_claimed_batch_waiting_for_its_publish_holds_no_snapshot() {
    let (db, client, epoch) = leading_with_rows(20).await;
    client
        .batch_execute("SET default_transaction_isolation = 'repeatable read'")
        .await
        .expect("a stricter default isolation");
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    let claimed = take(
        &prepare(&client, 5).await,
        &client,
        epoch,
        MAX_BATCH_BYTES,
        Locked::Wait,
    )
    .await;
    assert_eq!(claimed.rows.len(), 5);

    let other = db.connect().await;
    let session = other
        .query_one(
            "SELECT state, backend_xid IS NOT NULL, backend_xmin::text \
             FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("the claiming session's activity");
    let (state, holds_locks, xmin): (String, bool, Option<String>) =
        (session.get(0), session.get(1), session.get(2));
    assert_eq!(state, "idle in transaction");
    assert!(
        holds_locks,
        "the claim's row locks give it a transaction id"
    );
    assert_eq!(xmin, None, "no snapshot is held between statements");
    let isolation: String = client
        .query_one("SHOW transaction_isolation", &[])
        .await
        .expect("the claim's isolation")
        .get(0);
    assert_eq!(isolation, "read committed");
    client.batch_execute("ROLLBACK").await.expect("rollback");
}

/// The lag's age is the first unpublished row's in claim order, read
/// through the claim's index, not the oldest `created_at` of the table: a
/// row that came first in claim order but was created later says how far
/// behind the claims are. Claims in physical order (no ordering column)
/// keep the oldest `created_at`.
#[tokio::test]
async fn the_lag_age_is_the_first_unpublished_row_in_claim_order() {
    let (_db, client, _epoch) = leading_with_rows(0).await;
    client
        .batch_execute(
            "INSERT INTO postbox_outbox (id, topic, partition_key, payload, created_at) VALUES \
             (1, 'orders', 'k', '\\x00', now() - interval '10 seconds'), \
             (2, 'orders', 'k', '\\x00', now() - interval '1 hour')",
        )
        .await
        .expect("two rows, the second created earlier");
    let lag = prepare(&client, 10)
        .await
        .lag(&client, TIMEOUT_MS)
        .await
        .expect("the lag");
    assert_eq!(lag.unpublished_rows, 2);
    let age_ms = lag.oldest_unpublished_age_ms.expect("an age");
    assert!(
        (10_000..60_000).contains(&age_ms),
        "the first row in claim order is 10 s old: {age_ms} ms"
    );

    let physical_order = Layout {
        order_by: None,
        ..Layout::postbox()
    };
    let lag = Outbox::prepare(
        &client,
        TIMEOUT_MS,
        &TableName::default(),
        &physical_order,
        Mode::Delete,
        10,
    )
    .await
    .expect("prepare for physical order")
    .lag(&client, TIMEOUT_MS)
    .await
    .expect("the lag in physical order");
    let age_ms = lag.oldest_unpublished_age_ms.expect("an age");
    assert!(
        (3_600_000..3_660_000).contains(&age_ms),
        "in physical order, the oldest row's age (1 hour): {age_ms} ms"
    );
}

/// The byte bound: rows are taken while the payloads before them sum to less
/// than it, the first row however large; the locked rows beyond the bound
/// are counted, stay locked, and come back to no one else.
#[tokio::test]
async fn the_byte_bound_ends_a_batch_and_keeps_the_rest_locked() {
    let (db, client, epoch) = leading_with_rows(0).await;
    client
        .batch_execute(
            "INSERT INTO postbox_outbox (id, topic, partition_key, payload) \
             SELECT g, 'orders', 'k' || g, decode(repeat('ab', 100), 'hex') \
             FROM generate_series(1, 5) g",
        )
        .await
        .expect("insert five rows of 100 bytes");
    let outbox = prepare(&client, 10).await;
    let claimed = take(&outbox, &client, epoch, 250, Locked::Wait).await;
    let ids: Vec<&str> = claimed.rows.iter().map(|row| row.row_id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"], "0, 100 and 200 bytes before them");
    assert!(claimed.rows.iter().all(|row| row.payload == [0xab; 100]));
    assert_eq!(claimed.locked_rows, 5);

    let other = db.connect().await;
    let behind = take(&prepare(&other, 10).await, &other, epoch, 250, Locked::Skip).await;
    assert!(behind.rows.is_empty(), "rows 4 and 5 stay locked");
    other.batch_execute("ROLLBACK").await.expect("rollback");
    client.batch_execute("ROLLBACK").await.expect("rollback");

    // A bound smaller than one row.
    let alone = take(&outbox, &client, epoch, 10, Locked::Wait).await;
    assert_eq!(alone.rows.len(), 1, "the first row always goes");
    assert_eq!(alone.rows[0].payload.len(), 100);
}
