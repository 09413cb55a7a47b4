//! The outbox relay against its own SQL, in one process: how much of
//! PostgreSQL's drain rate the relay keeps, how soon a committed row reaches
//! a subscriber, and what a running relay costs the application's inserts.
//!
//! A load tool with a plain `main`, not criterion: every drain measurement
//! moves 100,000 rows, far too slow to repeat for statistics. Each figure is
//! quoted against a baseline measured in the same run, on the same server, so
//! that the ratios mean something on any machine:
//!
//! 1. Drain rate (rows/s), for 100 and 1000 rows per claim, in delete and mark
//!    mode. The table is filled with `POSTBOX_BENCH_ROWS` rows (topic
//!    `events`, 1000 partition keys, 512-byte payloads), then drained. The
//!    baseline runs the relay's own prepared claim and delete (or mark)
//!    statements in a loop without publishing, through the relay's own calls
//!    (`Outbox::claim` and `Outbox::finish`, so with the same round trips):
//!    the ceiling the relay could reach if the broker cost nothing. The relay run times from the relay's
//!    start to the moment no unpublished row is left, polled every 10 ms: the
//!    broker's end offset while it moves, then an `EXISTS` (which walks the
//!    index past every row deleted so far, so asking PostgreSQL all along
//!    would take its time from the relay; a `count(*)` over 100,000 rows
//!    would take a core's share). Every run starts from a truncated,
//!    refilled, vacuumed and checkpointed table, with autovacuum of the table
//!    off while the drains run, so the runs are comparable; each is repeated
//!    (rounds interleaved) and the medians are shown.
//!    Beside them, the relay's publisher alone sends the same number of rows
//!    from memory to a topic of its own: the relay overlaps its SQL and its
//!    publishes (three batches in flight), so its time is bounded below by
//!    the slower of the two. Issue target: the relay reaches at least 70% of
//!    the baseline.
//! 2. Commit-to-delivery latency at a steady `POSTBOX_BENCH_RATE` rows/s:
//!    8 connections (`POSTBOX_BENCH_LATENCY_CONNECTIONS`) insert one row per
//!    (autocommit) transaction, paced on a shared schedule, with the relay
//!    running at its defaults. Each row's
//!    idempotency key is made here, and its commit instant is taken when the
//!    INSERT returns; a following subscriber notes when each key arrives.
//!    Delivery comes after the broker's acknowledgment, so this is an upper
//!    bound of commit-to-acknowledgment. Rows of the load's first tenth (at
//!    most 1 s) are left out: the relay comes from idle, with its poll backed
//!    off. Target: p99 under 25 ms.
//! 3. Application insert rate: 16 connections insert one row per transaction
//!    as fast as they can, with no relay, with the relay running, and with
//!    the relay running and the optional NOTIFY trigger installed; quoted
//!    against the first. A fourth case, the trigger without a relay, tells
//!    the trigger's own cost (its commit-time lock) from the relay's.
//!
//! Everything shares the machine: PostgreSQL, the broker (served in this
//! process on its own runtime, topic `events` with the default settings: one
//! partition, sync durability) and the relay with the load (another runtime).
//! Each drain round and each later section gets a fresh broker: a broker's
//! publish rate falls as its log grows, and one shared broker would make
//! later measurements pay for earlier ones.
//!
//! Results go to stdout as plain text tables; progress and the relay's logs
//! (`RUST_LOG`, default `warn`; `RUST_LOG=postbox_relay=info` shows its lag
//! lines) go to stderr. Environment:
//! - `POSTBOX_TEST_DATABASE_URL`: the PostgreSQL server, default
//!   `postgres://postgres@127.0.0.1:5432/postgres`. Each run creates its own
//!   database `relay_bench_<uuid>` there and drops it at the end, pass or
//!   fail (a killed run leaves it behind).
//! - `POSTBOX_BENCH_ROWS`: rows per drain measurement, default 100000.
//! - `POSTBOX_BENCH_ROUNDS`: rounds of each drain measurement, default 3; the
//!   table shows medians and the range of the per-round ratios.
//! - `POSTBOX_BENCH_SECONDS`: length of the latency run, default 10; each
//!   insert-rate run lasts half of it.
//! - `POSTBOX_BENCH_RATE`: inserted rows/s of the latency run, default 5000.
//! - `POSTBOX_BENCH_LATENCY_CONNECTIONS`: sessions that share that rate,
//!   default 8. Each waits for its commit, so on a slow machine 8 cannot
//!   reach the rate; the output shows the rate achieved.
//! - `POSTBOX_BENCH_DIR`: where the broker keeps its files (a fresh
//!   directory in it, deleted at the end), default the system temp directory.
//! - `POSTBOX_BENCH_ONLY`: what to run, comma-separated, from `delete/100`,
//!   `delete/1000`, `mark/100`, `mark/1000` (drain cases), `latency` and
//!   `inserts`; default all of them. For profiling one case, or repeating
//!   it for statistics without the rest.
//!
//! Run: `cargo bench -p postbox-benches --bench relay`; a quick check:
//! `POSTBOX_BENCH_ROWS=5000 POSTBOX_BENCH_SECONDS=2 cargo bench -p
//! postbox-benches --bench relay`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use postbox_benches::Broker;
use postbox_client::{Admin, Consumer, ConsumerConfig, StartFrom, TopicSettings};
use postbox_relay::relay::{MAX_BATCH_BYTES_DEFAULT, STATEMENT_TIMEOUT_MS_DEFAULT};
use postbox_relay::{
    DatabaseConfig, Layout, Leadership, Locked, Mode, Outbox, OutboxRow, Publisher, RelayConfig,
    Schema, TableName,
};
// The one `with_database` of the workspace's tests and benchmarks.
use postbox_tests::postgres::with_database;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement};
use uuid::Uuid;

/// The server when `POSTBOX_TEST_DATABASE_URL` does not say otherwise.
const SERVER_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DRAIN_ROWS_DEFAULT: u64 = 100_000;
/// Rounds of each drain measurement: one 100,000-row drain takes seconds, and
/// the broker's and PostgreSQL's background work (flushes, checkpoints) makes
/// single runs vary by up to twice; the median of three is steadier.
const DRAIN_ROUNDS_DEFAULT: u32 = 3;
const LATENCY_SECONDS_DEFAULT: f64 = 10.0;
const LATENCY_RATE_ROWS_PER_S_DEFAULT: u64 = 5_000;

/// The one topic every row goes to.
const TOPIC: &str = "events";
/// The topic of the publish-only measurement, so that its records stay out
/// of the relay's counts.
const PUBLISH_ONLY_TOPIC: &str = "events_publish_only";
/// Distinct partition keys, as in an application with many aggregates.
const PARTITION_KEYS: u64 = 1_000;
const PAYLOAD_BYTES: usize = 512;
/// Rows per claim of the drain measurements: the relay's default, and a
/// tenth of it.
const DRAIN_BATCH_ROWS: [u32; 2] = [100, 1_000];
/// How often the drain's end is looked for: fine enough for runs of seconds.
const DRAIN_POLL_MS: u64 = 10;
/// Longest a drain may take before the benchmark gives up on it.
const DRAIN_LIMIT_MS: u64 = 600_000;
const LATENCY_CONNECTIONS_DEFAULT: usize = 8;
/// Rows committed in the load's first part are left out of the latency
/// figures: the relay comes from idle, its poll backed off (up to its 500 ms
/// poll_max) and the figures are meant for the steady state. A tenth of the
/// run, at most this.
const LATENCY_WARM_UP_MS_MAX: u64 = 1_000;
const INSERT_CONNECTIONS: usize = 16;
/// How long to wait for the last rows of the latency run after the load
/// stops; rows still missing then are reported as such.
const DELIVERY_GRACE_MS: u64 = 10_000;
/// How long the relay may take to start leading and publish a first row.
const RELAY_START_LIMIT_MS: u64 = 30_000;
/// The bound on the baseline's statements: the relay's own.
const STATEMENT_TIMEOUT_MS: u64 = STATEMENT_TIMEOUT_MS_DEFAULT;
/// The largest latency the histogram tells apart; longer ones count as it.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Issue targets, printed beside the figures.
const DRAIN_TARGET_PERCENT: f64 = 70.0;
const P99_TARGET_MS: f64 = 25.0;

const INSERT_SQL: &str =
    "INSERT INTO postbox_outbox (topic, partition_key, idempotency_key, payload) \
     VALUES ('events', $1, $2::text::uuid, $3)";

fn main() -> Result<()> {
    init_logs();
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("build the client runtime")?;
    let database = runtime.block_on(BenchDatabase::create(&settings.server_url))?;
    let result = run(&settings, &runtime, &database);
    let dropped = runtime.block_on(database.drop());
    result.and(dropped)
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only on a terminal, so that redirected logs stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// What the environment asks for (see the module documentation).
#[derive(Debug)]
struct Settings {
    server_url: String,
    drain_rows: u64,
    drain_rounds: u32,
    latency_run_ms: u64,
    insert_run_ms: u64,
    latency_rate_rows_per_s: u64,
    latency_connections: usize,
    /// The parts asked for by `POSTBOX_BENCH_ONLY`; `None` runs them all.
    only: Option<Vec<String>>,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let seconds: f64 = env_or("POSTBOX_BENCH_SECONDS", LATENCY_SECONDS_DEFAULT)?;
        if !(seconds > 0.0 && seconds.is_finite()) {
            bail!("POSTBOX_BENCH_SECONDS must be a positive number of seconds");
        }
        let latency_run_ms = ((seconds * 1000.0) as u64).max(1);
        let settings = Settings {
            server_url: std::env::var("POSTBOX_TEST_DATABASE_URL")
                .unwrap_or_else(|_| SERVER_URL_DEFAULT.to_owned()),
            drain_rows: env_or("POSTBOX_BENCH_ROWS", DRAIN_ROWS_DEFAULT)?,
            drain_rounds: env_or("POSTBOX_BENCH_ROUNDS", DRAIN_ROUNDS_DEFAULT)?,
            latency_run_ms,
            insert_run_ms: (latency_run_ms / 2).max(1),
            latency_rate_rows_per_s: env_or("POSTBOX_BENCH_RATE", LATENCY_RATE_ROWS_PER_S_DEFAULT)?,
            latency_connections: env_or(
                "POSTBOX_BENCH_LATENCY_CONNECTIONS",
                LATENCY_CONNECTIONS_DEFAULT,
            )?,
            only: only_from_env()?,
        };
        if settings.drain_rows == 0
            || settings.drain_rounds == 0
            || settings.latency_rate_rows_per_s == 0
            || settings.latency_connections == 0
        {
            bail!(
                "POSTBOX_BENCH_ROWS, POSTBOX_BENCH_ROUNDS, POSTBOX_BENCH_RATE and \
                 POSTBOX_BENCH_LATENCY_CONNECTIONS must be at least 1"
            );
        }
        Ok(settings)
    }
}

impl Settings {
    /// Whether `part` (a name of [`PARTS`]) is to run.
    fn wants(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|wanted| wanted == part))
    }
}

/// Every part `POSTBOX_BENCH_ONLY` may name.
const PARTS: [&str; 6] = [
    "delete/100",
    "delete/1000",
    "mark/100",
    "mark/1000",
    "latency",
    "inserts",
];

/// The parts `POSTBOX_BENCH_ONLY` names, each checked against [`PARTS`].
fn only_from_env() -> Result<Option<Vec<String>>> {
    let Ok(text) = std::env::var("POSTBOX_BENCH_ONLY") else {
        return Ok(None);
    };
    let parts: Vec<String> = text.split(',').map(|part| part.trim().to_owned()).collect();
    if let Some(unknown) = parts.iter().find(|part| !PARTS.contains(&part.as_str())) {
        bail!(
            "POSTBOX_BENCH_ONLY names {unknown:?}; the parts are {}",
            PARTS.join(", ")
        );
    }
    Ok(Some(parts))
}

fn env_or<T>(name: &str, default: T) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|error| anyhow::anyhow!("{name}={text:?}: {error}")),
        Err(_) => Ok(default),
    }
}

/// This run's own database on the server.
struct BenchDatabase {
    name: String,
    server_url: String,
    url: String,
}

impl BenchDatabase {
    async fn create(server_url: &str) -> Result<BenchDatabase> {
        let name = format!("relay_bench_{}", Uuid::new_v4().simple());
        let admin = connect(server_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("create database {name}"))?;
        eprintln!("created database {name}");
        Ok(BenchDatabase {
            url: with_database(server_url, &name),
            name,
            server_url: server_url.to_owned(),
        })
    }

    /// Drops the database, with any sessions still on it.
    async fn drop(self) -> Result<()> {
        let admin = connect(&self.server_url).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("drop database {}", self.name))?;
        eprintln!("dropped database {}", self.name);
        Ok(())
    }
}

/// An application session: plain tokio-postgres, not the relay's connector.
async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connect to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("a PostgreSQL session ended: {error}");
        }
    });
    Ok(client)
}

/// The three measurements, each drain round and each later section on a
/// fresh broker (see [`fresh_broker`]).
fn run(settings: &Settings, runtime: &Runtime, database: &BenchDatabase) -> Result<()> {
    let mut client = runtime.block_on(prepare(database))?;
    drain_rates(settings, runtime, database, &mut client)?;
    if settings.wants("latency") {
        let broker = fresh_broker(runtime)?;
        runtime.block_on(commit_to_delivery(
            settings,
            database,
            broker.url(),
            &client,
        ))?;
    }
    if settings.wants("inserts") {
        let broker = fresh_broker(runtime)?;
        runtime.block_on(insert_rates(settings, database, broker.url(), &mut client))?;
    }
    Ok(())
}

/// Creates the outbox schema and prints the report's header; returns a
/// session on the bench database.
async fn prepare(database: &BenchDatabase) -> Result<Client> {
    let mut client = connect(&database.url).await?;
    Schema::new(TableName::default())
        .apply(&mut client)
        .await
        .context("create the outbox schema")?;
    let version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .context("read the server version")?
        .get(0);
    println!("# Postbox outbox relay benchmark (benches/benches/relay.rs)");
    println!(
        "# PostgreSQL {version}; broker in process, a fresh one per drain round and per \
         section; topic {TOPIC} with default settings (1 partition, sync durability); \
         {} CPUs shared by all",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "# rows of {PAYLOAD_BYTES} B payload, {PARTITION_KEYS} partition keys, \
         one topic; times are wall clock"
    );
    Ok(client)
}

/// A broker of its own, with the benchmark's topics, for one measurement: a
/// broker's publish rate falls as its log grows (in this benchmark's runs,
/// several times over past a few hundred MB), which would make later
/// measurements pay for earlier ones. Called outside the client runtime,
/// since a broker's runtime can neither start nor be dropped inside another;
/// drop it there too.
fn fresh_broker(runtime: &Runtime) -> Result<Broker> {
    let broker = Broker::start();
    runtime.block_on(async {
        let admin = Admin::connect(broker.url())
            .await
            .context("connect to the broker")?;
        for topic in [TOPIC, PUBLISH_ONLY_TOPIC] {
            admin
                .create_topic(topic, TopicSettings::default())
                .await
                .with_context(|| format!("create topic {topic}"))?;
        }
        anyhow::Ok(())
    })?;
    Ok(broker)
}

fn drain_rates(
    settings: &Settings,
    runtime: &Runtime,
    database: &BenchDatabase,
    client: &mut Client,
) -> Result<()> {
    let rows = settings.drain_rows;
    let rounds = settings.drain_rounds;
    println!();
    println!(
        "## 1. Drain rate: {rows} rows pre-filled, time until none is unpublished; median of \
         {rounds} rounds (target: relay >= {DRAIN_TARGET_PERCENT:.0}% of baseline)"
    );
    println!(
        "#    baseline = the relay's own claim + delete/mark SQL in a loop, without publishing; \
         publish_only = the relay's publisher alone, the same rows from memory, no SQL; \
         ratio_range = lowest and highest relay/baseline of single rounds; \
         appended/expected = records the relay's runs appended to the topic, all rounds"
    );
    println!(
        "{:<7} {:>10} {:>20} {:>24} {:>17} {:>15} {:>12} {:>17} {:>7}",
        "mode",
        "batch_rows",
        "baseline_rows_per_s",
        "publish_only_rows_per_s",
        "relay_rows_per_s",
        "relay/baseline",
        "ratio_range",
        "appended/expected",
        "target"
    );
    // Autovacuum would wake at random moments in some runs and not others;
    // every run is vacuumed before it instead.
    runtime.block_on(set_autovacuum(client, false))?;
    for mode in [Mode::Delete, Mode::Mark] {
        for batch_rows in DRAIN_BATCH_ROWS {
            if !settings.wants(&format!("{mode}/{batch_rows}")) {
                continue;
            }
            let mut baseline_rows_per_s = Vec::new();
            let mut publish_rows_per_s = Vec::new();
            let mut relay_rows_per_s = Vec::new();
            let mut ratios_percent = Vec::new();
            let mut appended = 0;
            // Rounds interleave the three, so that a slow spell of the
            // machine touches all of them alike.
            for round in 1..=rounds {
                let run = format!("{mode} mode, {batch_rows} rows per claim, round {round}");
                let broker = fresh_broker(runtime)?;
                let sample = runtime.block_on(drain_round(
                    client,
                    database,
                    broker.url(),
                    &run,
                    mode,
                    batch_rows,
                    rows,
                ))?;
                drop(broker);
                let DrainRound {
                    baseline_ms,
                    publish_ms,
                    relay_ms,
                    appended: round_appended,
                } = sample;
                appended += round_appended;
                let baseline = per_second(rows, baseline_ms);
                let relay = per_second(rows, relay_ms);
                baseline_rows_per_s.push(baseline);
                publish_rows_per_s.push(per_second(rows, publish_ms));
                relay_rows_per_s.push(relay);
                ratios_percent.push(100.0 * relay / baseline);
            }
            let baseline = median(&mut baseline_rows_per_s);
            let relay = median(&mut relay_rows_per_s);
            let percent = 100.0 * relay / baseline;
            let (lowest, highest) = ratios_percent
                .iter()
                .fold((f64::INFINITY, 0.0f64), |(lo, hi), &r| {
                    (lo.min(r), hi.max(r))
                });
            println!(
                "{:<7} {:>10} {:>20.0} {:>24.0} {:>17.0} {:>14.1}% {:>12} {:>17} {:>7}",
                mode.to_string(),
                batch_rows,
                baseline,
                median(&mut publish_rows_per_s),
                relay,
                percent,
                format!("{lowest:.0}-{highest:.0}%"),
                format!("{appended}/{}", rows * u64::from(rounds)),
                verdict(percent >= DRAIN_TARGET_PERCENT)
            );
        }
    }
    runtime.block_on(set_autovacuum(client, true))
}

/// The times of one drain round, in ms, and the records the relay appended.
#[derive(Debug)]
struct DrainRound {
    baseline_ms: f64,
    publish_ms: f64,
    relay_ms: f64,
    appended: u64,
}

/// One round: the baseline, the publisher alone, then the relay, each on
/// `rows` rows.
async fn drain_round(
    client: &mut Client,
    database: &BenchDatabase,
    broker_url: &str,
    run: &str,
    mode: Mode,
    batch_rows: u32,
    rows: u64,
) -> Result<DrainRound> {
    eprintln!("drain, {run}: baseline");
    refill(client, rows).await?;
    let (drained_rows, baseline_ms) = drain_with_sql(client, mode, batch_rows).await?;
    if drained_rows != rows {
        bail!("the baseline drained {drained_rows} rows of {rows}");
    }
    eprintln!("drain, {run}: publish only");
    let publish_ms = publish_only(broker_url, rows, batch_rows).await?;
    eprintln!("drain, {run}: relay");
    refill(client, rows).await?;
    let admin = Admin::connect(broker_url)
        .await
        .context("connect to the broker")?;
    let before = end_offset(&admin).await?;
    let relay_ms = drain_with_relay(
        client,
        database,
        broker_url,
        &admin,
        before + rows,
        mode,
        batch_rows,
    )
    .await?;
    let appended = end_offset(&admin).await? - before;
    if appended != rows {
        eprintln!(
            "warning: the broker appended {appended} records for {rows} rows \
             (duplicates are acknowledged without an append; missing ones are a bug)"
        );
    }
    Ok(DrainRound {
        baseline_ms,
        publish_ms,
        relay_ms,
        appended,
    })
}

/// Turns autovacuum of the outbox table off or back on.
async fn set_autovacuum(client: &Client, enabled: bool) -> Result<()> {
    client
        .batch_execute(&format!(
            "ALTER TABLE postbox_outbox SET (autovacuum_enabled = {enabled})"
        ))
        .await
        .context("set autovacuum of the outbox")
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[middle],
        _ => (values[middle - 1] + values[middle]) / 2.0,
    }
}

/// Empties the table and fills it with `rows` rows in one statement, then
/// vacuums, analyzes and checkpoints so that every drain starts alike: fresh
/// statistics, no dead rows, and no checkpoint owed from the fill.
async fn refill(client: &Client, rows: u64) -> Result<()> {
    client
        .batch_execute("TRUNCATE postbox_outbox")
        .await
        .context("truncate the outbox")?;
    let rows = i64::try_from(rows).context("POSTBOX_BENCH_ROWS is too large")?;
    // Payloads differ per row (32 repeats of a 16-byte md5): nothing in the
    // path can shortcut identical values.
    client
        .execute(
            "INSERT INTO postbox_outbox (topic, partition_key, payload) \
             SELECT 'events', 'key-' || (n % $2::int8), decode(repeat(md5(n::text), 32), 'hex') \
             FROM generate_series(1, $1::int8) n",
            &[&rows, &(PARTITION_KEYS as i64)],
        )
        .await
        .context("fill the outbox")?;
    // Separate statements: VACUUM cannot run inside the implicit transaction
    // of a multi-statement query.
    for statement in ["VACUUM ANALYZE postbox_outbox", "CHECKPOINT"] {
        client
            .batch_execute(statement)
            .await
            .with_context(|| statement.to_owned())?;
    }
    Ok(())
}

/// `connections` sessions, each with the load's INSERT prepared.
async fn insert_sessions(url: &str, connections: usize) -> Result<Vec<(Client, Statement)>> {
    let mut sessions = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = connect(url).await?;
        let statement = client.prepare(INSERT_SQL).await.context("prepare")?;
        sessions.push((client, statement));
    }
    Ok(sessions)
}

/// The baseline: the relay's claim and finish statements, prepared as the
/// relay prepares them, in the relay's transaction shape, without publishing.
/// Returns the rows drained and the time taken in ms (preparing included, as
/// the relay's start is in its time).
async fn drain_with_sql(client: &Client, mode: Mode, batch_rows: u32) -> Result<(u64, f64)> {
    let started = Instant::now();
    let outbox = Outbox::prepare(
        client,
        STATEMENT_TIMEOUT_MS,
        &TableName::default(),
        &Layout::postbox(),
        mode,
        batch_rows,
    )
    .await
    .context("prepare the relay's statements")?;
    // The claim takes rows only for the table's current leader.
    let lease = Leadership::new(TableName::default(), "relay-bench-baseline")?
        .acquire(client)
        .await
        .context("take the lead for the baseline")?
        .context("another relay leads the bench's table")?;
    let mut drained_rows = 0;
    loop {
        let claim = outbox
            .claim(
                client,
                STATEMENT_TIMEOUT_MS,
                MAX_BATCH_BYTES_DEFAULT,
                lease.epoch(),
                Locked::Wait,
            )
            .await
            .context("claim")?;
        if claim.rows.is_empty() {
            client
                .batch_execute("ROLLBACK")
                .await
                .context("end the last claim")?;
            break;
        }
        let ids: Vec<String> = claim.rows.iter().map(|row| row.row_id.clone()).collect();
        drained_rows += outbox
            .finish(client, STATEMENT_TIMEOUT_MS, &ids)
            .await
            .context("finish")?;
    }
    lease.release(client).await.context("release the lead")?;
    Ok((drained_rows, elapsed_ms(started)))
}

/// The relay's publishing alone: `rows` rows shaped as the claim returns
/// them (same payload size, keys, idempotency keys and `{}` headers) go
/// through the relay's [`Publisher`], `batch_rows` per publish, to a topic of
/// their own. With the baseline, it shows where the relay's time goes: the
/// relay overlaps the two, so it can be no faster than the slower.
/// Returns the time in ms (building the rows excluded).
async fn publish_only(broker_url: &str, rows: u64, batch_rows: u32) -> Result<f64> {
    let publisher = Publisher::connect(
        broker_url,
        "relay-bench-publish-only",
        1,
        postbox_relay::relay::REQUEST_TIMEOUT_MS_DEFAULT,
    )
    .await
    .context("connect the publisher")?;
    publisher
        .announce()
        .await
        .map_err(|failure| anyhow::anyhow!("announce the publisher's epoch: {failure:?}"))?;
    let outbox_rows: Vec<OutboxRow> = (1..=rows)
        .map(|n| OutboxRow {
            row_id: n.to_string(),
            topic: PUBLISH_ONLY_TOPIC.to_owned(),
            partition_key: Some(format!("key-{}", n % PARTITION_KEYS)),
            idempotency_key: Uuid::new_v4().hyphenated().to_string(),
            headers: Some("{}".to_owned()),
            event_type: None,
            payload: n.to_le_bytes().repeat(PAYLOAD_BYTES / 8),
        })
        .collect();
    let started = Instant::now();
    for batch in outbox_rows.chunks(batch_rows as usize) {
        let outcome = publisher
            .publish(batch, &Default::default())
            .await
            .map_err(|failure| anyhow::anyhow!("publish: {failure:?}"))?;
        if outcome.acked.len() != batch.len() {
            bail!(
                "the broker acknowledged {} of {} rows: {outcome:?}",
                outcome.acked.len(),
                batch.len()
            );
        }
    }
    Ok(elapsed_ms(started))
}

/// Runs the relay until the table has no unpublished row; returns the time
/// from its start in ms.
async fn drain_with_relay(
    client: &Client,
    database: &BenchDatabase,
    broker_url: &str,
    admin: &Admin,
    end_offset_expected: u64,
    mode: Mode,
    batch_rows: u32,
) -> Result<f64> {
    let started = Instant::now();
    let mut relay = RunningRelay::start(&database.url, broker_url, mode, batch_rows)?;
    // The broker first: while its end offset moves, the table is not
    // drained, and asking PostgreSQL would cost the relay (an `EXISTS` walks
    // the index past every row deleted so far). The table is looked at once
    // every row is appended, or when appends stall.
    let mut appended_before = 0;
    loop {
        let appended = end_offset(admin).await?;
        if (appended >= end_offset_expected || appended == appended_before)
            && !unpublished(client).await?
        {
            if appended < end_offset_expected {
                bail!(
                    "the relay drained the table, but the broker's end offset is {appended}, \
                     not {end_offset_expected}: rows were lost"
                );
            }
            break;
        }
        appended_before = appended;
        relay.check().await?;
        if started.elapsed() > Duration::from_millis(DRAIN_LIMIT_MS) {
            bail!("the relay did not drain the table in {DRAIN_LIMIT_MS} ms");
        }
        tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
    let relay_ms = elapsed_ms(started);
    relay.stop().await?;
    Ok(relay_ms)
}

/// Whether any row is unpublished. An `EXISTS` on the relay's partial index
/// rather than a `count(*)`: the poll must cost the relay next to nothing.
async fn unpublished(client: &Client) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT FROM postbox_outbox WHERE published_at IS NULL)",
            &[],
        )
        .await
        .context("look for unpublished rows")?
        .get(0))
}

/// The topic's end offset (its one partition's).
async fn end_offset(admin: &Admin) -> Result<u64> {
    let info = admin
        .describe_topic(TOPIC)
        .await
        .context("describe the topic")?;
    Ok(info.partition_info.iter().map(|p| p.end_offset).sum())
}

/// A relay running on the client runtime until stopped.
struct RunningRelay {
    stop: watch::Sender<bool>,
    task: JoinHandle<postbox_relay::Result<()>>,
}

impl RunningRelay {
    fn start(
        database_url: &str,
        broker_url: &str,
        mode: Mode,
        batch_rows: u32,
    ) -> Result<RunningRelay> {
        let database =
            DatabaseConfig::from_url(database_url).context("the bench database's URL")?;
        let mut config = RelayConfig::new(database, broker_url);
        config.mode = mode;
        config.max_batch_rows = batch_rows;
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(postbox_relay::run(config, shutdown));
        Ok(RunningRelay { stop, task })
    }

    /// Fails when the relay stopped by itself (a fatal error, or a panic).
    async fn check(&mut self) -> Result<()> {
        if !self.task.is_finished() {
            return Ok(());
        }
        match (&mut self.task).await {
            Ok(Ok(())) => bail!("the relay stopped without being asked"),
            Ok(Err(error)) => Err(error).context("the relay stopped"),
            Err(error) => Err(error).context("the relay's task failed"),
        }
    }

    /// Asks the relay to stop and waits until it has: the batch in flight is
    /// finished and the lead released, so the next run takes it at once.
    async fn stop(self) -> Result<()> {
        // An error means the relay is gone already; the task says why.
        let _ = self.stop.send(true);
        self.task
            .await
            .context("the relay's task failed")?
            .context("the relay failed")
    }
}

// ----------------------------------------------------- commit-to-delivery

async fn commit_to_delivery(
    settings: &Settings,
    database: &BenchDatabase,
    broker_url: &str,
    client: &Client,
) -> Result<()> {
    let rate = settings.latency_rate_rows_per_s;
    let run_ms = settings.latency_run_ms;
    eprintln!("latency: {rate} rows/s for {run_ms} ms");
    client
        .batch_execute("TRUNCATE postbox_outbox")
        .await
        .context("truncate the outbox")?;

    let mut consumer = Consumer::subscribe(
        broker_url,
        ConsumerConfig {
            start: StartFrom::Latest,
            follow: true,
            ..ConsumerConfig::new(TOPIC)
        },
    )
    .await
    .context("subscribe")?;
    // The subscriber only notes arrivals; matching with commits happens after
    // the load, so that neither side waits on the other.
    let (arrived, mut arrivals) = mpsc::unbounded_channel::<(Uuid, Instant)>();
    let subscriber: JoinHandle<Result<()>> = tokio::spawn(async move {
        while let Some(record) = consumer.next().await {
            let record = record.context("receive a record")?;
            let at = Instant::now();
            let key = record
                .idempotency_key
                .as_deref()
                .and_then(|key| Uuid::try_parse_ascii(key).ok())
                .context("a record without the row's idempotency key")?;
            if arrived.send((key, at)).is_err() {
                break;
            }
        }
        Ok(())
    });

    let mut relay = RunningRelay::start(
        &database.url,
        broker_url,
        Mode::Delete,
        postbox_relay::relay::MAX_BATCH_ROWS_DEFAULT,
    )?;
    // One row through the whole path first: the relay leads, its publisher
    // is connected and the subscription is live before the clock matters.
    let warm_up = Uuid::new_v4();
    insert_row(client, &warm_up, 0).await?;
    let deadline = Instant::now() + Duration::from_millis(RELAY_START_LIMIT_MS);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), arrivals.recv()).await;
        match next {
            Ok(Some((key, _))) if key == warm_up => break,
            Ok(Some(_)) => {}
            Ok(None) => {
                subscriber.await.context("the subscriber's task failed")??;
                bail!("the subscription ended");
            }
            Err(_) => {
                relay.check().await?;
                bail!("no row reached the subscriber within {RELAY_START_LIMIT_MS} ms");
            }
        }
    }

    let connections = settings.latency_connections;
    let (commits, load_started, load_ms) =
        paced_inserts(&database.url, connections, rate, run_ms).await?;
    let warm_up_ms = (run_ms / 10).min(LATENCY_WARM_UP_MS_MAX);
    let measured_from = load_started + Duration::from_millis(warm_up_ms);
    let inserted_rows = commits.len();

    let mut receipts: HashMap<Uuid, Instant> = HashMap::with_capacity(inserted_rows);
    let deadline = Instant::now() + Duration::from_millis(DELIVERY_GRACE_MS);
    while receipts.len() < inserted_rows {
        match tokio::time::timeout_at(deadline.into(), arrivals.recv()).await {
            Ok(Some((key, at))) => {
                if commits.contains_key(&key) {
                    receipts.insert(key, at);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    relay.stop().await?;
    subscriber.abort();

    // Explicit bounds: an auto-resizing histogram does not resize on
    // `saturating_record`, it clamps to its initial 2 ms.
    let mut latency_us =
        Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3).context("latency histogram")?;
    let mut missing_rows = 0;
    for (key, committed) in commits.iter().filter(|(_, at)| **at >= measured_from) {
        let Some(received) = receipts.get(key) else {
            missing_rows += 1;
            continue;
        };
        // A row can arrive before its inserting task read the clock; that
        // counts as 0.
        let us = received.saturating_duration_since(*committed).as_micros();
        latency_us.saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
    }
    let unreceived_rows = inserted_rows - receipts.len();
    if unreceived_rows > 0 {
        eprintln!(
            "warning: {unreceived_rows} of {inserted_rows} rows did not reach the subscriber \
             within {DELIVERY_GRACE_MS} ms of the load's end"
        );
    }
    let ms = |quantile: f64| latency_us.value_at_quantile(quantile) as f64 / 1000.0;
    let p99_ms = ms(0.99);
    println!();
    println!(
        "## 2. Commit-to-delivery latency: {connections} connections, one row per \
         transaction, paced at {rate} rows/s for {:.1} s, relay at its defaults \
         (delete mode, 1000 rows per claim) (target: p99 < {P99_TARGET_MS:.0} ms)",
        run_ms as f64 / 1000.0
    );
    println!(
        "#    INSERT returned -> subscriber received the record: an upper bound of \
         commit-to-acknowledgment; rows committed in the first {warm_up_ms} ms are left out \
         (the relay comes from idle)"
    );
    println!(
        "{:>16} {:>18} {:>13} {:>12} {:>8} {:>8} {:>8} {:>7}",
        "target_rows_per_s",
        "achieved_rows_per_s",
        "rows_measured",
        "rows_missing",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "target"
    );
    println!(
        "{:>16} {:>18.0} {:>13} {:>12} {:>8.2} {:>8.2} {:>8.2} {:>7}",
        rate,
        per_second(inserted_rows as u64, load_ms),
        latency_us.len(),
        missing_rows,
        ms(0.5),
        p99_ms,
        latency_us.max() as f64 / 1000.0,
        verdict(p99_ms < P99_TARGET_MS && missing_rows == 0)
    );
    Ok(())
}

/// Inserts one row with `key` as its idempotency key, in its own
/// transaction, on a partition key chosen by `n`.
async fn insert_row(client: &Client, key: &Uuid, n: u64) -> Result<()> {
    client
        .execute(
            INSERT_SQL,
            &[
                &format!("key-{}", n % PARTITION_KEYS),
                &key.hyphenated().to_string(),
                &vec![0xA5u8; PAYLOAD_BYTES],
            ],
        )
        .await
        .context("insert a row")?;
    Ok(())
}

/// Rows' idempotency keys with the instants their INSERTs returned.
type Commits = Vec<(Uuid, Instant)>;

/// `connections` sessions insert rows on one shared schedule of
/// `rate_rows_per_s` in total for `run_ms`; a session that falls behind
/// catches up at once, so the total holds. Returns each row's commit instant
/// by idempotency key, the schedule's start, and the time from it to the
/// last commit in ms (sessions are opened before it).
async fn paced_inserts(
    url: &str,
    connections: usize,
    rate_rows_per_s: u64,
    run_ms: u64,
) -> Result<(HashMap<Uuid, Instant>, Instant, f64)> {
    let sessions = insert_sessions(url, connections).await?;
    // A little ahead, so that every session is waiting when the schedule starts.
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_millis(run_ms);
    let tasks: Vec<JoinHandle<Result<Commits>>> = sessions
        .into_iter()
        .enumerate()
        .map(|(session, (client, statement))| {
            tokio::spawn(async move {
                let payload = vec![0xA5u8; PAYLOAD_BYTES];
                let mut commits = Vec::new();
                for row in 0u64.. {
                    // Row `row` of this session is number
                    // `row * connections + session` of the whole schedule.
                    let slot = u128::from(row) * connections as u128 + session as u128;
                    let due_ns = slot * 1_000_000_000 / u128::from(rate_rows_per_s);
                    let due = start + Duration::from_nanos(u64::try_from(due_ns)?);
                    if due >= end {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                    let key = Uuid::new_v4();
                    client
                        .execute(
                            &statement,
                            &[
                                &format!("key-{}", slot as u64 % PARTITION_KEYS),
                                &key.hyphenated().to_string(),
                                &payload,
                            ],
                        )
                        .await
                        .context("insert a row")?;
                    commits.push((key, Instant::now()));
                }
                Ok(commits)
            })
        })
        .collect();
    let mut commits = HashMap::new();
    for task in tasks {
        commits.extend(task.await.context("an inserting task failed")??);
    }
    let last_commit = commits.values().max().copied().unwrap_or_else(Instant::now);
    let load_ms = last_commit
        .saturating_duration_since(start.into_std())
        .as_secs_f64()
        * 1000.0;
    Ok((commits, start.into_std(), load_ms))
}

// ------------------------------------------------------------ insert rate

async fn insert_rates(
    settings: &Settings,
    database: &BenchDatabase,
    broker_url: &str,
    client: &mut Client,
) -> Result<()> {
    let run_ms = settings.insert_run_ms;
    let mut results = Vec::new();
    for (case, relay_running, notify_trigger) in [
        ("no relay", false, false),
        ("relay running", true, false),
        ("relay running + NOTIFY trigger", true, true),
        ("NOTIFY trigger, no relay", false, true),
    ] {
        eprintln!("insert rate: {case}");
        if notify_trigger {
            Schema::new(TableName::default())
                .with_notify_trigger(true)
                .apply(client)
                .await
                .context("install the NOTIFY trigger")?;
        }
        client
            .batch_execute("TRUNCATE postbox_outbox")
            .await
            .context("truncate the outbox")?;
        client
            .batch_execute("VACUUM ANALYZE postbox_outbox")
            .await
            .context("vacuum the outbox")?;
        let relay = if relay_running {
            let mut relay = RunningRelay::start(
                &database.url,
                broker_url,
                Mode::Delete,
                postbox_relay::relay::MAX_BATCH_ROWS_DEFAULT,
            )?;
            wait_until_relaying(client, &mut relay).await?;
            Some(relay)
        } else {
            None
        };
        let (transactions, elapsed_ms) =
            unpaced_inserts(&database.url, INSERT_CONNECTIONS, run_ms).await?;
        if let Some(relay) = relay {
            relay.stop().await?;
        }
        results.push((case, per_second(transactions, elapsed_ms)));
    }
    println!();
    println!(
        "## 3. Application insert rate: {INSERT_CONNECTIONS} connections, one row per \
         transaction (autocommit INSERT), as fast as they go, {:.1} s per case",
        run_ms as f64 / 1000.0
    );
    println!("{:<31} {:>9} {:>12}", "case", "tx_per_s", "vs_no_relay");
    let no_relay = results.first().map_or(f64::NAN, |(_, rate)| *rate);
    for (case, rate) in results {
        println!(
            "{:<31} {:>9.0} {:>11.1}%",
            case,
            rate,
            100.0 * rate / no_relay
        );
    }
    Ok(())
}

/// Waits until the relay has published a first row: it leads and its
/// publisher is connected.
async fn wait_until_relaying(client: &Client, relay: &mut RunningRelay) -> Result<()> {
    insert_row(client, &Uuid::new_v4(), 0).await?;
    let started = Instant::now();
    while unpublished(client).await? {
        relay.check().await?;
        if started.elapsed() > Duration::from_millis(RELAY_START_LIMIT_MS) {
            bail!("the relay published nothing within {RELAY_START_LIMIT_MS} ms");
        }
        tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
    Ok(())
}

/// `connections` sessions insert one row per transaction as fast as they can
/// for `run_ms`; returns the transactions and the time they took in ms.
async fn unpaced_inserts(url: &str, connections: usize, run_ms: u64) -> Result<(u64, f64)> {
    let sessions = insert_sessions(url, connections).await?;
    let started = Instant::now();
    let end = started + Duration::from_millis(run_ms);
    let tasks: Vec<JoinHandle<Result<u64>>> = sessions
        .into_iter()
        .enumerate()
        .map(|(session, (client, statement))| {
            tokio::spawn(async move {
                let payload = vec![0xA5u8; PAYLOAD_BYTES];
                let mut transactions = 0u64;
                while Instant::now() < end {
                    let slot = transactions * INSERT_CONNECTIONS as u64 + session as u64;
                    client
                        .execute(
                            &statement,
                            &[
                                &format!("key-{}", slot % PARTITION_KEYS),
                                &Uuid::new_v4().hyphenated().to_string(),
                                &payload,
                            ],
                        )
                        .await
                        .context("insert a row")?;
                    transactions += 1;
                }
                Ok(transactions)
            })
        })
        .collect();
    let mut transactions = 0;
    for task in tasks {
        transactions += task.await.context("an inserting task failed")??;
    }
    Ok((transactions, elapsed_ms(started)))
}

// ------------------------------------------------------------------ helpers

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn per_second(count: u64, elapsed_ms: f64) -> f64 {
    count as f64 * 1000.0 / elapsed_ms
}

fn verdict(met: bool) -> &'static str {
    if met {
        "ok"
    } else {
        "MISSED"
    }
}
