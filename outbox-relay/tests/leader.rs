//! Fenced leadership against a real PostgreSQL: one leader per table, a
//! standby that takes over with a higher epoch when the leader's session is
//! ended behind its back, and a lease that then knows it is lost.

mod common;

use common::TestDatabase;
use postbox_relay::{Error, Leadership, Lease, Schema, TableName, ADVISORY_LOCK_NAMESPACE};
use tokio_postgres::Client;

fn leadership(holder: &str) -> Leadership {
    Leadership::new(TableName::default(), holder).expect("valid holder")
}

/// Acquires leadership for `holder`, which must get it (`why` says why).
async fn lead(holder: &str, client: &Client, why: &str) -> Lease {
    leadership(holder)
        .acquire(client)
        .await
        .expect("acquire")
        .expect(why)
}

async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

/// The relay's advisory locks held by `pid`, as the tables they lock.
async fn leader_locks_of(observer: &Client, pid: i32) -> Vec<String> {
    observer
        .query(
            "SELECT objid::regclass::text FROM pg_locks \
             WHERE locktype = 'advisory' AND classid = $1::int4::oid AND objsubid = 2 \
               AND pid = $2 AND granted",
            &[&ADVISORY_LOCK_NAMESPACE, &pid],
        )
        .await
        .expect("pg_locks")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Ends the session of server process `pid` and waits until it is gone.
async fn terminate(operator: &Client, pid: i32) {
    let terminated: bool = operator
        .query_one("SELECT pg_terminate_backend($1, 10000)", &[&pid])
        .await
        .expect("terminate")
        .get(0);
    assert!(terminated, "session {pid} ended within 10 s");
}

async fn stored_leader(client: &Client) -> (i64, String) {
    let row = client
        .query_one(
            "SELECT epoch, holder FROM postbox_relay_leader WHERE outbox_table = 'postbox_outbox'",
            &[],
        )
        .await
        .expect("leader row");
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn standby_takes_over_with_a_higher_epoch_when_the_leaders_session_is_terminated() {
    let db = TestDatabase::initialised().await;
    let first = db.connect().await;
    let second = db.connect().await;
    let operator = db.connect().await;

    let first_lease = lead("relay-a", &first, "the first relay leads").await;
    assert_eq!(first_lease.epoch(), 1);
    assert!(first_lease.still_held(&first).await.expect("check"));
    assert!(leadership("relay-b")
        .acquire(&second)
        .await
        .expect("acquire")
        .is_none());

    // The server ends the leader's session; the leader is not told.
    terminate(&operator, first_lease.backend_pid()).await;

    let second_lease = lead("relay-b", &second, "the standby takes over").await;
    assert_eq!(second_lease.epoch(), 2);
    assert!(second_lease.epoch() > first_lease.epoch());
    assert!(!first_lease.still_held(&first).await.expect("check"));
    assert!(second_lease.still_held(&second).await.expect("check"));
    assert_eq!(stored_leader(&operator).await, (2, "relay-b".to_owned()));
}

#[tokio::test]
async fn epochs_strictly_increase_across_acquisitions() {
    let db = TestDatabase::initialised().await;
    let operator = db.connect().await;
    let mut last_epoch = 0;
    for round in 0..6 {
        let client = db.connect().await;
        let lease = leadership(&format!("relay-{round}"))
            .acquire(&client)
            .await
            .expect("acquire")
            .expect("free after the last leader left");
        assert!(
            lease.epoch() > last_epoch,
            "{} after {last_epoch}",
            lease.epoch()
        );
        last_epoch = lease.epoch();
        // Leaders leave both ways: by releasing, and by losing their session
        // (terminate waits until the server process is gone, lock and all).
        if round % 2 == 0 {
            assert!(lease.release(&client).await.expect("release"));
        } else {
            terminate(&operator, lease.backend_pid()).await;
        }
    }
    assert_eq!(last_epoch, 6);
}

#[tokio::test]
async fn released_lease_is_not_held_and_frees_the_table() {
    let db = TestDatabase::initialised().await;
    let client = db.connect().await;
    let other = db.connect().await;
    let leadership = leadership("relay-a");
    let lease = leadership
        .acquire(&client)
        .await
        .expect("acquire")
        .expect("leads");
    let pid = lease.backend_pid();
    assert_eq!(leader_locks_of(&other, pid).await, ["postbox_outbox"]);

    assert!(lease.release(&client).await.expect("release"));

    assert!(leader_locks_of(&other, pid).await.is_empty());
    let next = leadership
        .acquire(&other)
        .await
        .expect("acquire")
        .expect("free after release");
    assert_eq!(next.epoch(), 2);
}

#[tokio::test]
async fn lease_is_lost_when_a_newer_epoch_exists_even_with_the_lock_still_held() {
    let db = TestDatabase::initialised().await;
    let client = db.connect().await;
    let operator = db.connect().await;
    let lease = lead("relay-a", &client, "leads").await;

    operator
        .batch_execute("UPDATE postbox_relay_leader SET epoch = epoch + 1")
        .await
        .expect("newer epoch");

    assert_eq!(
        leader_locks_of(&operator, lease.backend_pid()).await,
        ["postbox_outbox"]
    );
    assert!(!lease.still_held(&client).await.expect("check"));
}

#[tokio::test]
async fn lease_is_not_held_on_another_session() {
    let db = TestDatabase::initialised().await;
    let client = db.connect().await;
    let other = db.connect().await;
    let lease = lead("relay-a", &client, "leads").await;

    assert!(!lease.still_held(&other).await.expect("check"));
    assert!(lease.still_held(&client).await.expect("check"));
}

#[tokio::test]
async fn the_lock_is_the_documented_key_and_visible_to_operators() {
    let db = TestDatabase::initialised().await;
    let client = db.connect().await;
    let operator = db.connect().await;
    let lease = lead("relay-a", &client, "leads").await;

    // The query the module documentation gives operators.
    let rows = operator
        .query(
            "SELECT objid::regclass::text AS outbox_table, pid FROM pg_locks \
             WHERE locktype = 'advisory' AND classid = 1346522968 AND objsubid = 2",
            &[],
        )
        .await
        .expect("pg_locks");
    let seen: Vec<(String, i32)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(seen, [("postbox_outbox".to_owned(), lease.backend_pid())]);
}

#[tokio::test]
async fn each_table_has_a_leader_of_its_own() {
    let db = TestDatabase::create().await;
    let mut setup = db.connect().await;
    for name in ["orders_outbox", "billing_outbox"] {
        Schema::new(TableName::parse(name).expect("valid"))
            .apply(&mut setup)
            .await
            .expect("init");
    }
    let first = db.connect().await;
    let second = db.connect().await;

    let orders = Leadership::new(TableName::parse("orders_outbox").expect("valid"), "relay-a")
        .expect("valid holder")
        .acquire(&first)
        .await
        .expect("acquire")
        .expect("leads orders");
    let billing = Leadership::new(
        TableName::parse("billing_outbox").expect("valid"),
        "relay-b",
    )
    .expect("valid holder")
    .acquire(&second)
    .await
    .expect("acquire")
    .expect("leads billing while orders is led");

    assert_eq!((orders.epoch(), billing.epoch()), (1, 1));
    assert!(orders.still_held(&first).await.expect("check"));
    assert!(billing.still_held(&second).await.expect("check"));
}

#[tokio::test]
async fn acquiring_a_missing_table_says_to_run_init() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;

    let error = leadership("relay-a")
        .acquire(&client)
        .await
        .expect_err("no such table");

    assert!(matches!(error, Error::TableMissing { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "outbox table postbox_outbox does not exist (create it with `postbox-relay init`)"
    );
}

#[tokio::test]
async fn a_failed_acquisition_holds_no_lock() {
    let db = TestDatabase::create().await;
    let client = db.connect().await;
    let observer = db.connect().await;
    // An outbox table without the leadership table beside it.
    client
        .batch_execute("CREATE TABLE postbox_outbox (id bigserial PRIMARY KEY)")
        .await
        .expect("table");

    let error = leadership("relay-a")
        .acquire(&client)
        .await
        .expect_err("no leadership table");

    let text = error.to_string();
    assert!(
        text.starts_with(
            "cannot raise the leader epoch of postbox_outbox in \"postbox_relay_leader\": "
        ),
        "{text}"
    );
    assert!(text.contains("does not exist"), "{text}");
    assert!(leader_locks_of(&observer, backend_pid(&client).await)
        .await
        .is_empty());
}

#[tokio::test]
async fn still_held_reports_a_closed_session_as_lost_not_as_an_error() {
    let db = TestDatabase::initialised().await;
    let client = db.connect().await;
    let operator = db.connect().await;
    let lease = lead("relay-a", &client, "leads").await;
    terminate(&operator, lease.backend_pid()).await;

    // Twice: the first query may meet the server's goodbye, the second a
    // closed connection; both mean the lease is gone.
    assert!(!lease.still_held(&client).await.expect("check"));
    assert!(!lease.still_held(&client).await.expect("check"));
    assert!(!lease.release(&client).await.expect("release"));
}
