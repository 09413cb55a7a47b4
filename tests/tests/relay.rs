//! The outbox relay end to end: the real `postbox-relay` process between a
//! real PostgreSQL and the real `postbox-broker` process.
//!
//! Every test checks the relay's contract on what the broker ends up
//! holding: each committed row exactly once (by idempotency key), per key in
//! insertion order, and the outbox drained. `POSTBOX_RELAY_KILL_CYCLES`
//! raises the number of SIGKILL cycles (default 5).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postbox_client::{Admin, TopicSettings};
use postbox_proto::v1 as pb;
use postbox_relay::{DatabaseConfig, Leadership, Publisher, TableName};
use postbox_tests::broker::BrokerProcess;
use postbox_tests::postgres::{connect, shared_url, TestDatabase, ThrowawayPostgres};
use postbox_tests::records::{read_topic, stored_count};
use postbox_tests::relay::{relay_command, RelayProcess};
use postbox_tests::wait::wait_until;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;

/// How long a test waits for the outbox to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a relay may take to lead, once the lead is free.
const LEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// A database with the outbox schema, a broker with topics, a place for logs.
struct Setup {
    db: TestDatabase,
    broker: BrokerProcess,
    dir: tempfile::TempDir,
}

impl Setup {
    /// On the shared PostgreSQL.
    async fn new(topics: &[(&str, u32)]) -> Setup {
        Setup::on(&shared_url(), topics).await
    }

    /// On the server at `server_url`, with `init` run by the real CLI.
    async fn on(server_url: &str, topics: &[(&str, u32)]) -> Setup {
        let db = TestDatabase::create(server_url).await;
        let init = relay_command(&["init", "--database-url", db.url()]);
        assert!(init.status.success(), "init: {init:?}");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
        let admin = Admin::connect(&broker.url()).await.expect("admin");
        for (topic, partitions) in topics {
            admin
                .create_topic(
                    topic,
                    TopicSettings {
                        partitions: *partitions,
                        ..TopicSettings::default()
                    },
                )
                .await
                .expect("create topic");
        }
        Setup { db, broker, dir }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn relay(&self, name: &str, extra_args: &[&str]) -> RelayProcess {
        RelayProcess::start(
            &self.log(name),
            self.db.url(),
            &self.broker.url(),
            extra_args,
        )
    }

    async fn records(&self, topic: &str) -> BTreeMap<(u32, u64), pb::Record> {
        read_topic(&mut self.broker.client().await, topic).await
    }

    /// How many records the topic holds, without reading them.
    async fn stored(&self, topic: &str) -> u64 {
        stored_count(&mut self.broker.client().await, topic).await
    }
}

/// Inserts one event row in its own transaction; returns its idempotency key.
async fn insert(client: &Client, topic: &str, key: &str, seq: u64) -> String {
    let row = client
        .query_one(
            "INSERT INTO postbox_outbox (topic, partition_key, headers, payload) \
             VALUES ($1, $2, jsonb_build_object('seq', $3::text), convert_to($2 || ':' || $3, 'UTF8')) \
             RETURNING idempotency_key::text",
            &[&topic, &key, &seq.to_string()],
        )
        .await
        .expect("insert an outbox row");
    row.get(0)
}

/// Counts the rows not yet published.
const UNPUBLISHED_SQL: &str = "SELECT count(*) FROM postbox_outbox WHERE published_at IS NULL";

/// Unpublished rows left in the outbox.
async fn unpublished(client: &Client) -> i64 {
    client
        .query_one(UNPUBLISHED_SQL, &[])
        .await
        .expect("count")
        .get(0)
}

/// Waits until the outbox has no unpublished rows.
async fn drained(client: &Client, relay: &RelayProcess) {
    wait_for_count(
        client,
        UNPUBLISHED_SQL,
        |unpublished| unpublished == 0,
        DRAIN_TIMEOUT,
        "the outbox did not drain",
        relay,
    )
    .await;
}

/// Polls `count_sql` (a `SELECT count(*)`) until `done` holds for its
/// answer; fails after `timeout` saying `what` did not happen.
async fn wait_for_count(
    client: &Client,
    count_sql: &str,
    done: impl Fn(i64) -> bool,
    timeout: Duration,
    what: &str,
    relay: &RelayProcess,
) {
    wait_until(
        timeout,
        async || {
            let count: i64 = client
                .query_one(count_sql, &[])
                .await
                .expect("count")
                .get(0);
            done(count)
        },
        || format!("{what}; relay log:\n{}", relay.log()),
    )
    .await;
}

/// Checks that the topic holds exactly the rows `expected` (idempotency key
/// to "key:seq" payload), each once, and per key in increasing seq order.
fn check_exactly_once_in_order(
    records: &BTreeMap<(u32, u64), pb::Record>,
    expected: &HashMap<String, String>,
) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for record in records.values() {
        let idempotency_key =
            String::from_utf8_lossy(record.idempotency_key.as_deref().unwrap_or_default())
                .into_owned();
        *seen.entry(idempotency_key.clone()).or_default() += 1;
        let payload = String::from_utf8_lossy(&record.payload).into_owned();
        assert_eq!(
            expected.get(&idempotency_key),
            Some(&payload),
            "record {idempotency_key} holds an unexpected payload"
        );
        let (key, seq) = payload.rsplit_once(':').expect("key:seq");
        assert_eq!(record.key.as_deref(), Some(key.as_bytes()), "record key");
        let seq: u64 = seq.parse().expect("seq");
        if let Some(previous) = last_seq.insert(key.to_owned(), seq) {
            assert!(
                seq > previous,
                "key {key}: seq {seq} after {previous}, out of insertion order"
            );
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} rows never published: {missing:?}",
        missing.len()
    );
}

/// Inserts `rows_per_key` rows for each of `keys` keys named
/// `<key_prefix>-<n>`, one task per key and
/// one row per transaction, so that each key's rows commit in seq order.
async fn insert_concurrently(
    db: &TestDatabase,
    topic: &str,
    key_prefix: &str,
    keys: usize,
    rows_per_key: u64,
) -> HashMap<String, String> {
    let mut tasks = Vec::new();
    for k in 0..keys {
        let client = db.connect().await;
        let topic = topic.to_owned();
        let key = format!("{key_prefix}-{k}");
        tasks.push(tokio::spawn(async move {
            let mut rows = HashMap::new();
            for seq in 1..=rows_per_key {
                let id = insert(&client, &topic, &key, seq).await;
                rows.insert(id, format!("{key}:{seq}"));
            }
            rows
        }));
    }
    let mut expected = HashMap::new();
    for task in tasks {
        expected.extend(task.await.expect("an inserting task"));
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transactions_and_a_late_commit_arrive_once_each_in_key_order() {
    let setup = Setup::new(&[("orders", 4)]).await;
    let relay = setup.relay("relay", &[]);
    let app = setup.db.connect().await;

    // A long transaction takes a low id and commits last.
    let mut long = setup.db.connect().await;
    let long_tx = long.transaction().await.expect("begin");
    let late_id: String = long_tx
        .query_one(
            "INSERT INTO postbox_outbox (topic, partition_key, payload) \
             VALUES ('orders', 'late', convert_to('late:1', 'UTF8')) \
             RETURNING idempotency_key::text",
            &[],
        )
        .await
        .expect("insert in the long transaction")
        .get(0);

    let mut expected = insert_concurrently(&setup.db, "orders", "round1", 8, 100).await;
    // Everything but the open transaction's row gets published...
    wait_until(
        DRAIN_TIMEOUT,
        async || setup.records("orders").await.len() >= expected.len(),
        || {
            format!(
                "the committed rows were not published; log:\n{}",
                relay.log()
            )
        },
    )
    .await;
    // ...and the row with the lowest id, committed last, still is.
    long_tx.commit().await.expect("commit the long transaction");
    expected.insert(late_id, "late:1".to_owned());
    drained(&app, &relay).await;

    let records = setup.records("orders").await;
    assert_eq!(records.len(), expected.len());
    check_exactly_once_in_order(&records, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let cycles: usize = std::env::var("POSTBOX_RELAY_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let setup = Setup::new(&[("orders", 4)]).await;
    let app = setup.db.connect().await;
    // The writers insert until every kill is done, so that each relay has
    // rows to be killed in the middle of.
    let writing = Arc::new(AtomicBool::new(true));
    let writers = tokio::spawn({
        let clients = futures_util::future::join_all((0..4).map(|_| setup.db.connect())).await;
        let writing = Arc::clone(&writing);
        async move {
            let mut tasks = Vec::new();
            for (k, client) in clients.into_iter().enumerate() {
                let writing = Arc::clone(&writing);
                tasks.push(tokio::spawn(async move {
                    let key = format!("key-{k}");
                    let mut rows = HashMap::new();
                    let mut seq = 0;
                    while writing.load(Ordering::Relaxed) {
                        seq += 1;
                        let id = insert(&client, "orders", &key, seq).await;
                        rows.insert(id, format!("{key}:{seq}"));
                    }
                    rows
                }));
            }
            let mut expected = HashMap::new();
            for task in tasks {
                expected.extend(task.await.expect("a writer"));
            }
            expected
        }
    });
    let seed: u64 = SmallRng::from_entropy().gen();
    eprintln!("kill moments seed {seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut relay = setup.relay("relay", &[]);
    for cycle in 0..cycles {
        // A random moment of the relay's work, told by what it has done, not
        // by the clock: once it leads, after a random number of rows it
        // published since (none: in its first claims).
        relay.wait_for_log("leading the outbox table", cycle + 1, LEAD_TIMEOUT);
        let from = setup.stored("orders").await;
        let rows = rng.gen_range(0..300);
        wait_until(
            DRAIN_TIMEOUT,
            async || setup.stored("orders").await >= from + rows,
            || {
                format!(
                    "the relay did not publish {rows} rows; log:\n{}",
                    relay.log()
                )
            },
        )
        .await;
        relay.kill9();
        relay = setup.relay("relay", &[]);
    }
    writing.store(false, Ordering::Relaxed);
    let expected = writers.await.expect("the writers");
    drained(&app, &relay).await;

    let records = setup.records("orders").await;
    check_exactly_once_in_order(&records, &expected);
    assert_eq!(records.len(), expected.len());
    assert!(
        relay.log().matches("leading the outbox table").count() >= 2,
        "every restart leads again:\n{}",
        relay.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_down_opens_the_circuit_then_the_backlog_drains_once() {
    let mut setup = Setup::new(&[("orders", 2)]).await;
    let relay = setup.relay("relay", &["--circuit-open-ms", "500"]);
    let app = setup.db.connect().await;
    let mut expected = insert_concurrently(&setup.db, "orders", "round2", 2, 20).await;
    drained(&app, &relay).await;

    let address = setup.broker.addr().to_string();
    setup.broker.kill9();
    expected.extend(insert_concurrently(&setup.db, "orders", "round3", 4, 50).await);
    relay.wait_for_log("circuit breaker open", 1, Duration::from_secs(30));
    // Kept down: the circuit probes, fails and opens again, rows wait.
    relay.wait_for_log("circuit breaker open", 2, Duration::from_secs(30));
    assert_eq!(
        unpublished(&app).await,
        200,
        "nothing is deleted while the broker is down"
    );

    setup.broker = BrokerProcess::start_at(&setup.dir.path().join("data"), &address, &[]);
    drained(&app, &relay).await;
    relay.wait_for_log("circuit breaker closed", 1, Duration::from_secs(10));
    let records = setup.records("orders").await;
    assert_eq!(records.len(), expected.len());
    check_exactly_once_in_order(&records, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_the_relay_it_reconnects_and_carries_on() {
    let mut postgres = ThrowawayPostgres::start();
    let setup = Setup::on(&postgres.url(), &[("orders", 2)]).await;
    let relay = setup.relay("relay", &[]);
    let mut expected = insert_concurrently(&setup.db, "orders", "round4", 2, 50).await;
    drained(&setup.db.connect().await, &relay).await;

    postgres.restart();
    expected.extend(insert_concurrently(&setup.db, "orders", "round5", 2, 50).await);
    postgres.kill();
    postgres.start_server();
    expected.extend(insert_concurrently(&setup.db, "orders", "round6", 2, 50).await);
    drained(&setup.db.connect().await, &relay).await;

    relay.wait_for_log("relay session failed", 1, Duration::from_secs(1));
    let records = setup.records("orders").await;
    assert_eq!(records.len(), expected.len());
    check_exactly_once_in_order(&records, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_one_publishes_the_other_takes_over_when_it_dies() {
    let setup = Setup::new(&[("orders", 2)]).await;
    let app = setup.db.connect().await;
    let mut first = setup.relay("first", &["--holder", "first"]);
    first.wait_for_log("leading the outbox table", 1, LEAD_TIMEOUT);
    let second = setup.relay("second", &["--holder", "second"]);
    let mut expected = insert_concurrently(&setup.db, "orders", "round7", 4, 50).await;
    drained(&app, &first).await;
    assert!(
        !second.log().contains("leading the outbox table"),
        "the standby must not lead:\n{}",
        second.log()
    );

    first.kill9();
    second.wait_for_log("leading the outbox table", 1, Duration::from_secs(30));
    expected.extend(insert_concurrently(&setup.db, "orders", "round8", 4, 50).await);
    drained(&app, &second).await;
    let holder: String = app
        .query_one("SELECT holder FROM postbox_relay_leader", &[])
        .await
        .expect("leader row")
        .get(0);
    assert_eq!(holder, "second");
    let records = setup.records("orders").await;
    assert_eq!(records.len(), expected.len());
    check_exactly_once_in_order(&records, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_behind_its_back_is_refused_by_the_broker() {
    let setup = Setup::new(&[("orders", 1)]).await;
    let database = DatabaseConfig::from_url(setup.db.url()).expect("url");
    let leadership = Leadership::new(TableName::default(), "old").expect("holder");
    let old_session = database.connect().await.expect("session");
    let old_lease = leadership
        .acquire(&old_session)
        .await
        .expect("acquire")
        .expect("free");
    let old = Publisher::connect(
        &setup.broker.url(),
        old_lease.producer(),
        old_lease.epoch(),
        5_000,
    )
    .await
    .expect("publisher");
    old.announce().await.expect("announce");

    // The server ends the old leader's session; it has not noticed.
    let operator = setup.db.connect().await;
    operator
        .execute(
            "SELECT pg_terminate_backend($1)",
            &[&old_lease.backend_pid()],
        )
        .await
        .expect("terminate");
    let new_session = database.connect().await.expect("session");
    let mut new_lease = None;
    wait_until(
        LEAD_TIMEOUT,
        async || {
            new_lease = Leadership::new(TableName::default(), "new")
                .expect("holder")
                .acquire(&new_session)
                .await
                .expect("acquire");
            new_lease.is_some()
        },
        || "the terminated leader's lead did not come free".to_owned(),
    )
    .await;
    let new_lease = new_lease.expect("the new lease");
    assert_eq!(new_lease.epoch(), old_lease.epoch() + 1);
    let new = Publisher::connect(
        &setup.broker.url(),
        new_lease.producer(),
        new_lease.epoch(),
        5_000,
    )
    .await
    .expect("publisher");
    new.announce().await.expect("announce");

    let row = postbox_relay::OutboxRow {
        row_id: "1".into(),
        topic: "orders".into(),
        partition_key: Some("k".into()),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        headers: None,
        event_type: None,
        payload: b"k:1".to_vec(),
    };
    match old
        .publish(std::slice::from_ref(&row), &Default::default())
        .await
    {
        Err(postbox_relay::Failure::Fenced(error)) => {
            assert!(error.to_string().contains("epoch"), "{error}")
        }
        other => panic!("the old leader must be fenced, got {other:?}"),
    }
    assert!(setup.records("orders").await.is_empty(), "nothing appended");
    let outcome = new
        .publish(&[row], &Default::default())
        .await
        .expect("the new leader publishes");
    assert_eq!(outcome.acked, ["1"]);
    assert!(!old_lease.still_held(&old_session).await.expect("check"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debezium_layout_is_read_as_it_is() {
    let setup = Setup::new(&[("outbox.event.order", 2)]).await;
    let app = setup.db.connect().await;
    app.batch_execute(
        "CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype varchar(255) NOT NULL, \
             aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload jsonb, \
             seq bigserial)",
    )
    .await
    .expect("a Debezium outbox table");
    let init = relay_command(&[
        "init",
        "--database-url",
        setup.db.url(),
        "--table",
        "outbox",
        "--layout",
        "debezium",
    ]);
    assert!(init.status.success(), "init: {init:?}");
    let mut expected = HashMap::new();
    for seq in 1..=30u64 {
        let id = uuid::Uuid::new_v4();
        let aggregate = format!("order-{}", seq % 3);
        app.execute(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) \
             VALUES ($1::text::uuid, 'order', $2, 'OrderCreated', jsonb_build_object('seq', $3::int8))",
            &[&id.to_string(), &aggregate, &(seq as i64)],
        )
        .await
        .expect("insert");
        expected.insert(id.to_string(), (aggregate, seq));
    }
    let relay = setup.relay(
        "relay",
        &[
            "--table",
            "outbox",
            "--layout",
            "debezium",
            "--column",
            "order_by=seq",
            "--topic-prefix",
            "outbox.event.",
        ],
    );
    wait_for_count(
        &app,
        "SELECT count(*) FROM outbox",
        |left| left == 0,
        DRAIN_TIMEOUT,
        "the Debezium outbox did not drain",
        &relay,
    )
    .await;
    let records = setup.records("outbox.event.order").await;
    assert_eq!(records.len(), expected.len());
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for record in records.values() {
        let id = String::from_utf8_lossy(record.idempotency_key.as_deref().unwrap_or_default())
            .into_owned();
        let (aggregate, seq) = expected.get(&id).expect("a known id").clone();
        assert_eq!(record.key.as_deref(), Some(aggregate.as_bytes()));
        let payload: serde_json::Value = serde_json::from_slice(&record.payload).expect("JSON");
        assert_eq!(payload["seq"], seq);
        let header: Vec<_> = record
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_ref()))
            .collect();
        assert_eq!(header, [("type", b"OrderCreated".as_ref())]);
        if let Some(previous) = last_seq.insert(aggregate.clone(), seq) {
            assert!(seq > previous, "{aggregate}: {seq} after {previous}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_rows_become_dead_letters_that_hold_their_key_until_retried_or_dropped() {
    dead_letters_hold_their_keys(false).await;
}

/// The same with one row per claim and every row there before the relay
/// starts: the batches after a dead letter's are claimed, and published,
/// before it commits, so only the pipeline's held keys hold them back (else
/// `late` k:2 would be published, refused and dead-lettered too).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_holds_its_key_in_batches_claimed_before_it_commits() {
    dead_letters_hold_their_keys(true).await;
}

async fn dead_letters_hold_their_keys(one_row_claims_of_a_backlog: bool) {
    let setup = Setup::new(&[("orders", 2)]).await;
    let app = setup.db.connect().await;
    let args: &[&str] = match one_row_claims_of_a_backlog {
        true => &["--max-batch-rows", "1"],
        false => &[],
    };
    let early_relay = (!one_row_claims_of_a_backlog).then(|| setup.relay("relay", args));
    let mut expected = HashMap::new();
    // "late" does not exist yet: its rows wait behind the first one.
    for (topic, key, seq) in [("orders", "a", 1), ("late", "k", 1), ("late", "k", 2)] {
        expected.insert(insert(&app, topic, key, seq).await, format!("{key}:{seq}"));
    }
    // Over the broker's 1 MiB record limit: refused for good.
    let too_large: String = app
        .query_one(
            "INSERT INTO postbox_outbox (topic, partition_key, payload) \
             VALUES ('orders', 'a', decode(repeat('00', 1100000), 'hex')) \
             RETURNING id::text",
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    for (key, seq) in [("a", 3), ("b", 1)] {
        expected.insert(
            insert(&app, "orders", key, seq).await,
            format!("{key}:{seq}"),
        );
    }

    let relay = early_relay.unwrap_or_else(|| setup.relay("relay", args));

    // a:1 and b:1 flow; the large row and late k:1 are dead; a:3 and k:2 wait.
    wait_for_count(
        &app,
        UNPUBLISHED_SQL,
        |unpublished| unpublished <= 2,
        DRAIN_TIMEOUT,
        "the rows not held back were not published",
        &relay,
    )
    .await;
    let status = relay_command(&["status", "--database-url", setup.db.url(), "--json"]);
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let list = relay_command(&["dead-letters", "list", "--database-url", setup.db.url()]);
    assert_eq!(
        status["unpublished_rows"],
        2,
        "{status}\n{}",
        String::from_utf8_lossy(&list.stdout)
    );
    assert_eq!(status["held_rows"], 2, "{status}");
    let list = relay_command(&["dead-letters", "list", "--database-url", setup.db.url()]);
    assert_eq!(
        status["dead_letters"],
        2,
        "{status}\n{}",
        String::from_utf8_lossy(&list.stdout)
    );
    let list = relay_command(&["dead-letters", "list", "--database-url", setup.db.url()]);
    let letters: Vec<serde_json::Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let large = letters
        .iter()
        .find(|l| l["row_id"] == too_large.as_str())
        .expect("the large row is a dead letter");
    assert!(
        large["error"].as_str().unwrap_or("").contains("1048576"),
        "{large}"
    );
    let late = letters
        .iter()
        .find(|l| l["topic"] == "late")
        .expect("the late row is a dead letter");
    assert!(
        late["error"].as_str().unwrap_or("").contains("late"),
        "{late}"
    );

    // Nothing selected is refused; then the fixes release the waiting rows.
    let refused = relay_command(&["dead-letters", "drop", "--database-url", setup.db.url()]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let dropped = relay_command(&[
        "dead-letters",
        "drop",
        "--database-url",
        setup.db.url(),
        "--id",
        &too_large,
    ]);
    assert!(dropped.status.success(), "{dropped:?}");
    Admin::connect(&setup.broker.url())
        .await
        .expect("admin")
        .create_topic("late", TopicSettings::default())
        .await
        .expect("create late");
    let retried = relay_command(&[
        "dead-letters",
        "retry",
        "--database-url",
        setup.db.url(),
        "--topic",
        "late",
    ]);
    assert!(retried.status.success(), "{retried:?}");
    assert!(String::from_utf8_lossy(&retried.stdout).starts_with("1 rows"));
    drained(&app, &relay).await;

    let mut records = setup.records("orders").await;
    records.extend(
        setup
            .records("late")
            .await
            .into_iter()
            .map(|((p, o), r)| ((p + 100, o), r)),
    );
    check_exactly_once_in_order(&records, &expected);
    assert_eq!(records.len(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mark_mode_marks_published_rows_and_cleans_them_up_after_retention() {
    let setup = Setup::new(&[("orders", 2)]).await;
    let app = setup.db.connect().await;
    let relay = setup.relay(
        "relay",
        &[
            "--mode",
            "mark",
            "--retention-ms",
            "1500",
            "--cleanup-interval-ms",
            "100",
            "--cleanup-batch-rows",
            "7",
        ],
    );
    let expected = insert_concurrently(&setup.db, "orders", "marked", 4, 25).await;
    drained(&app, &relay).await;
    let marked: i64 = app
        .query_one(
            "SELECT count(*) FROM postbox_outbox WHERE published_at IS NOT NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert!(marked > 0, "published rows stay, marked, until retention");
    wait_for_count(
        &app,
        "SELECT count(*) FROM postbox_outbox",
        |left| left == 0,
        DRAIN_TIMEOUT,
        "cleanup did not empty the table",
        &relay,
    )
    .await;
    relay.wait_for_log("cleaned up published rows past retention", 1, DRAIN_TIMEOUT);
    let records = setup.records("orders").await;
    assert_eq!(records.len(), expected.len());
    check_exactly_once_in_order(&records, &expected);
}

/// How long the relay may take to publish rows while its cleanup waits on
/// a row lock: well under the 30 s statement timeout that would end the wait.
const BESIDE_A_STUCK_CLEANUP: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cleanup_stuck_behind_a_row_lock_holds_up_no_claim() {
    let setup = Setup::new(&[("orders", 2)]).await;
    let app = setup.db.connect().await;
    app.execute(
        "INSERT INTO postbox_outbox (topic, partition_key, payload, published_at) \
         VALUES ('orders', 'old', '\\x00', now() - interval '1 hour')",
        &[],
    )
    .await
    .expect("insert a row published an hour ago");
    // The application holds a lock on the published row: cleanup must wait.
    let blocker = setup.db.connect().await;
    blocker
        .batch_execute(
            "BEGIN; SELECT id FROM postbox_outbox WHERE published_at IS NOT NULL FOR UPDATE",
        )
        .await
        .expect("lock the published row");
    let relay = setup.relay(
        "relay",
        &[
            "--mode",
            "mark",
            "--retention-ms",
            "1000",
            "--cleanup-interval-ms",
            "100",
        ],
    );
    wait_for_count(
        &app,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' \
           AND query LIKE 'DELETE%'",
        |waiting| waiting > 0,
        BESIDE_A_STUCK_CLEANUP,
        "the cleanup did not wait on the lock",
        &relay,
    )
    .await;

    let expected = insert_concurrently(&setup.db, "orders", "fresh", 2, 10).await;
    wait_for_count(
        &app,
        UNPUBLISHED_SQL,
        |unpublished| unpublished == 0,
        BESIDE_A_STUCK_CLEANUP,
        "rows waited for the stuck cleanup: not published",
        &relay,
    )
    .await;
    let records = setup.records("orders").await;
    assert_eq!(records.len(), expected.len());
    check_exactly_once_in_order(&records, &expected);

    // Once the lock is gone, the cleanup that waited deletes the old row.
    blocker.batch_execute("ROLLBACK").await.expect("unlock");
    wait_for_count(
        &app,
        "SELECT count(*) FROM postbox_outbox WHERE partition_key = 'old'",
        |old| old == 0,
        DRAIN_TIMEOUT,
        "cleanup did not delete the old row",
        &relay,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_the_batch_releases_the_lead_and_exits_zero() {
    let setup = Setup::new(&[("orders", 2)]).await;
    let app = setup.db.connect().await;
    let mut first = setup.relay("first", &["--holder", "first"]);
    first.wait_for_log("leading the outbox table", 1, LEAD_TIMEOUT);
    let second = setup.relay("second", &["--holder", "second"]);
    let writers = {
        let db_url = setup.db.url().to_owned();
        tokio::spawn(async move {
            let db = connect(&db_url).await;
            let mut rows = HashMap::new();
            for seq in 1..=300 {
                let id = insert(&db, "orders", "stopping", seq).await;
                rows.insert(id, format!("stopping:{seq}"));
            }
            rows
        })
    };
    // SIGTERM in the middle of the stream: once the first relay has
    // published some of the rows the writer is still inserting.
    wait_until(
        DRAIN_TIMEOUT,
        async || setup.stored("orders").await >= 20,
        || format!("the first relay published nothing; log:\n{}", first.log()),
    )
    .await;
    let status = first.stop();
    assert!(status.success(), "{status:?}; log:\n{}", first.log());
    assert!(first.log().contains("released the lead"), "{}", first.log());
    second.wait_for_log("leading the outbox table", 1, Duration::from_secs(10));
    let expected = writers.await.expect("the writer");
    drained(&app, &second).await;
    let records = setup.records("orders").await;
    assert_eq!(records.len(), expected.len());
    check_exactly_once_in_order(&records, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_stalled_by_a_lock_is_reported_in_the_log_and_in_status() {
    let setup = Setup::new(&[("orders", 1)]).await;
    let app = setup.db.connect().await;
    let relay = setup.relay("relay", &[]);
    relay.wait_for_log("leading the outbox table", 1, Duration::from_secs(30));
    let mut blocker = setup.db.connect().await;
    let lock = blocker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE postbox_outbox IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    relay.wait_for_log("is stalled in the database", 1, Duration::from_secs(30));
    let log = relay.log();
    assert!(log.contains("LOCK TABLE postbox_outbox"), "{log}");
    let status = relay_command(&["status", "--database-url", setup.db.url()]);
    assert!(status.status.success(), "{status:?}");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("leader_waiting_for          Lock: relation"),
        "{text}"
    );
    assert!(
        text.contains("leader_blocked_by") && text.contains("LOCK TABLE"),
        "{text}"
    );
    assert!(
        text.contains("lag                         unknown:"),
        "{text}"
    );

    lock.rollback().await.expect("release");
    let expected = insert_concurrently(&setup.db, "orders", "after", 2, 10).await;
    drained(&app, &relay).await;
    check_exactly_once_in_order(&setup.records("orders").await, &expected);
}
