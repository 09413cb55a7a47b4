//! The `postbox-relay` binary: `init` against a real PostgreSQL, `--print`,
//! and one-line errors with exit status 1.

mod common;

use std::process::{Command, Output};

use common::{with_database, TestDatabase};
use postbox_relay::{Schema, TableName, DATABASE_URL_ENV, TABLE_ENV, TABLE_NAME_RULE};
use tokio_postgres::Client;

/// Runs the binary with `args` and none of the relay's variables from the
/// environment of whoever runs the tests.
fn relay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postbox-relay"))
        .args(args)
        .env_remove(DATABASE_URL_ENV)
        .env_remove(TABLE_ENV)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Tables in the public schema.
async fn tables(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Asserts a failure as the binary promises it: exit status 1 and one line
/// on stderr, starting with `postbox-relay: error: `; returns that line.
fn one_line_error(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let text = stderr(output);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("postbox-relay: error: "), "{text}");
    text
}

#[tokio::test]
async fn init_creates_the_schema_and_says_so() {
    let db = TestDatabase::create().await;

    let output = relay(&["init", "--database-url", db.url(), "--notify"]);

    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output),
        "outbox schema for table postbox_outbox is in place, with its NOTIFY trigger\n"
    );
    let client = db.connect().await;
    assert_eq!(
        tables(&client).await,
        [
            "postbox_outbox",
            "postbox_outbox_dead_letters",
            "postbox_relay_leader"
        ]
    );
    // And again: idempotent.
    let again = relay(&["init", "--database-url", db.url(), "--notify"]);
    assert!(again.status.success(), "{again:?}");
}

#[tokio::test]
async fn database_url_and_table_come_from_the_environment_too() {
    let db = TestDatabase::create().await;

    let output = Command::new(env!("CARGO_BIN_EXE_postbox-relay"))
        .arg("init")
        .env(DATABASE_URL_ENV, db.url())
        .env(TABLE_ENV, "events")
        .output()
        .expect("the binary runs");

    assert!(output.status.success(), "{output:?}");
    let client = db.connect().await;
    assert_eq!(
        tables(&client).await,
        ["events", "events_dead_letters", "postbox_relay_leader"]
    );
}

#[tokio::test]
async fn print_shows_the_script_and_changes_nothing() {
    let db = TestDatabase::create().await;

    let without_url = relay(&["init", "--print", "--table", "app.events"]);
    let with_url = relay(&["init", "--print", "--database-url", db.url()]);

    assert!(without_url.status.success(), "{without_url:?}");
    let table = TableName::parse("app.events").expect("valid");
    assert_eq!(stdout(&without_url), Schema::new(table).script());
    assert!(with_url.status.success(), "{with_url:?}");
    assert_eq!(
        stdout(&with_url),
        Schema::new(TableName::default()).script()
    );
    let client = db.connect().await;
    assert!(tables(&client).await.is_empty());
}

#[tokio::test]
async fn bad_table_name_is_a_one_line_error_naming_the_rule_and_changes_nothing() {
    let db = TestDatabase::create().await;

    let output = relay(&[
        "init",
        "--database-url",
        db.url(),
        "--table",
        "Order-Events",
    ]);

    let line = one_line_error(&output);
    assert_eq!(
        line,
        format!(
            "postbox-relay: error: invalid table name \"Order-Events\": \
             has the upper-case letter 'O'; {TABLE_NAME_RULE}\n"
        )
    );
    let client = db.connect().await;
    assert!(tables(&client).await.is_empty());
}

#[test]
fn unreachable_database_is_a_one_line_error_without_the_password() {
    // Nothing listens on port 1 of the loopback address: refused at once.
    let output = relay(&[
        "init",
        "--database-url",
        "postgres://app:s3cret@127.0.0.1:1/orders",
    ]);

    let line = one_line_error(&output);
    assert!(
        line.starts_with(
            "postbox-relay: error: cannot connect to PostgreSQL at 127.0.0.1:1/orders: "
        ),
        "{line}"
    );
    assert!(!line.contains("s3cret"), "{line}");
}

#[test]
fn server_errors_are_one_line_with_their_sqlstate() {
    // A database that does not exist: the server's FATAL, with its detail, on one line.
    let url = with_database(&common::shared_url(), "relay_test_no_such_database");

    let output = relay(&["init", "--database-url", &url]);

    let line = one_line_error(&output);
    assert!(line.contains("(SQLSTATE 3D000)"), "{line}");
}

#[test]
fn init_without_a_url_or_print_is_refused_by_clap() {
    let output = relay(&["init"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("--database-url"), "{output:?}");
}

#[test]
fn help_warns_about_transaction_pooling_and_hides_environment_values() {
    let top = relay(&["--help"]);
    let init = Command::new(env!("CARGO_BIN_EXE_postbox-relay"))
        .args(["init", "--help"])
        .env(DATABASE_URL_ENV, "postgres://app:s3cret@db.internal/orders")
        .output()
        .expect("the binary runs");

    for output in [&top, &init] {
        assert!(output.status.success(), "{output:?}");
        assert!(
            stdout(output).contains("PgBouncer in transaction"),
            "{output:?}"
        );
    }
    assert!(!stdout(&init).contains("s3cret"));
    assert!(stdout(&init).contains(TABLE_NAME_RULE));
}

#[test]
fn run_is_not_a_subcommand_the_relay_runs_without_one() {
    let output = relay(&["run", "--database-url", "postgres://127.0.0.1/x"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        stderr(&output).contains("unrecognized subcommand 'run'"),
        "{output:?}"
    );
}

#[test]
fn with_database_replaces_only_the_database() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?connect_timeout=3", "t1"),
        "postgres://u:p@h/t1?connect_timeout=3"
    );
    assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
    assert_eq!(
        with_database("host=h user=u", "t1"),
        "host=h user=u dbname=t1"
    );
}

#[test]
fn bad_relay_settings_are_one_line_errors_naming_the_limit() {
    for (args, expected) in [
        (
            &["--mode", "archive"][..],
            "invalid setting mode: \"archive\" is not a mode; use delete or mark",
        ),
        (
            &["--max-batch-rows", "10001"][..],
            "invalid setting max_batch_rows: 10001 is outside 1 to 10000",
        ),
        (&["--column", "colour=red"][..], "unknown role \"colour\""),
    ] {
        let mut all = vec!["--database-url", "postgres://postgres@127.0.0.1:1/none"];
        all.extend_from_slice(args);
        let output = relay(&all);
        let text = one_line_error(&output);
        assert!(text.contains(expected), "{args:?}: {text}");
    }
}

#[tokio::test]
async fn running_on_a_table_that_does_not_exist_stops_with_what_to_do() {
    let db = TestDatabase::create().await;
    let output = relay(&["--database-url", db.url(), "--broker", "127.0.0.1:1"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    // The running relay logs on stderr too; the error is the last line.
    let stderr = stderr(&output);
    let text = stderr.lines().last().unwrap_or_default();
    assert!(
        text.contains(
            "outbox table postbox_outbox does not exist (create it with `postbox-relay init`)"
        ),
        "{text}"
    );
}
