//! `postbox-relay`: the outbox relay's command line.
//!
//! With no command it runs the relay (flags, `POSTBOX_*` environment, or a
//! TOML config file); `init` creates the outbox schema (or prints it);
//! `status` shows the leader, the lag and what stalls it; `dead-letters`
//! lists, retries or drops rows the broker refused for good.
//!
//! Invariants: stdout carries only the command's output (the SQL of
//! `--print`, status, dead letters as JSON lines, one confirmation line);
//! logs go to stderr (`RUST_LOG`, default `info` for the relay and `warn` for
//! the other commands); every failure ends as one line on stderr,
//! `postbox-relay: error: ` and its cause, with exit status 1, never a panic;
//! a closed stdout pipe ends the command quietly with 0. Flag errors are
//! clap's (usage and exit status 2). Values from the environment are never
//! shown in `--help`, since the database URL may carry a password. SIGINT or
//! SIGTERM stops the relay gracefully: the batch in flight is finished or
//! rolled back, the lead released, exit 0.

mod commands;
mod settings;

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use postbox_relay::{
    DatabaseConfig, LayoutKind, Schema, TableName, DATABASE_URL_ENV, DEFAULT_TABLE,
    INIT_LOCK_TIMEOUT_MS, NOTIFY_CHANNEL, POOLER_NOTE, TABLE_ENV, TABLE_NAME_RULE,
};
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, RunSettings};

/// Postbox outbox relay: publishes the rows of a PostgreSQL outbox table to
/// the Postbox broker, at least once, in order per partition key, deleting
/// (or marking) each row only after the broker acknowledged it durably.
///
/// Run it as `postbox-relay --database-url URL --broker URL`; every setting
/// can also come from the environment (shown) or a TOML file (--config).
/// Several relays may run on one table: one leads, the others stand by and
/// take over within seconds.
#[derive(Debug, Parser)]
#[command(
    name = "postbox-relay",
    version,
    after_help = POOLER_NOTE,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunSettings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the outbox table, the index its claim needs and the relay's own
    /// tables, or print the SQL.
    ///
    /// Creates, in one transaction: the outbox table (default postbox_outbox),
    /// a partial index over its unpublished rows in id order (and one over
    /// published rows, for cleanup in mark mode), the dead-letter table
    /// <table>_dead_letters and the leadership table postbox_relay_leader,
    /// the last two beside the outbox table, in its schema. With --layout
    /// debezium the outbox table is left as it is and only the relay's own
    /// tables are created. Idempotent: it creates only what is missing, never
    /// touches existing rows and never drops anything. Gives up after waiting
    /// 5 seconds for a lock rather than hold up the application's inserts.
    /// Needs PostgreSQL 13 or later.
    #[command(after_help = POOLER_NOTE)]
    Init(InitArgs),
    /// Show the leader, the lag (unpublished rows, the age of the first in
    /// claim order, rows held behind dead letters) and what, if anything,
    /// stalls the claim.
    Status(commands::StatusArgs),
    /// List, retry or drop rows the broker refused for good.
    #[command(subcommand)]
    DeadLetters(commands::DeadLettersCommand),
}

#[derive(Debug, Args)]
struct InitArgs {
    /// PostgreSQL URL, as postgres://user:password@host:5432/database (not
    /// needed with --print).
    #[arg(
        long,
        env = DATABASE_URL_ENV,
        value_name = "URL",
        required_unless_present = "print",
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// The outbox table, optionally schema-qualified (schema.table).
    #[arg(
        long,
        env = TABLE_ENV,
        value_name = "NAME",
        default_value = DEFAULT_TABLE,
        long_help = format!(
            "The outbox table, optionally schema-qualified (schema.table): {TABLE_NAME_RULE}."
        ),
        hide_env_values = true
    )]
    table: String,

    /// Also install a trigger that notifies the relay once per INSERT
    /// statement.
    ///
    /// The trigger runs pg_notify('postbox_outbox', '') once per INSERT
    /// statement, so that the relay wakes at once instead of at its next poll.
    /// A notifying transaction takes a lock global to the server at commit, which can
    /// cap the application's insert rate: measure before you keep it. Running
    /// init again without --notify leaves an installed trigger in place
    /// (remove it with DROP TRIGGER <table>_notify ON <table>).
    #[arg(long)]
    notify: bool,

    /// Print the SQL instead of running it; connects to nothing.
    #[arg(long)]
    print: bool,

    /// The table's layout: postbox creates the outbox table; debezium leaves
    /// an existing Debezium outbox table as it is and creates only the
    /// relay's own tables beside it.
    #[arg(long, default_value = "postbox", value_name = "LAYOUT")]
    layout: String,
}

// The help texts state these values; keep them in step.
const _: () = assert!(matches!(NOTIFY_CHANNEL.as_bytes(), b"postbox_outbox"));
const _: () = assert!(INIT_LOCK_TIMEOUT_MS == 5_000);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let running = cli.command.is_none();
    init_logs(running, cli.run.log_format.unwrap_or_default());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return report(&anyhow::Error::new(error).context("cannot start the runtime"))
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => commands::relay(cli.run.with_file()?).await,
        Some(Command::Init(args)) => init(args).await,
        Some(Command::Status(args)) => commands::status(args).await,
        Some(Command::DeadLetters(command)) => commands::dead_letters(command).await,
    }
}

async fn init(args: InitArgs) -> anyhow::Result<()> {
    let table = TableName::parse(&args.table)?;
    let mut schema = Schema::new(table).with_notify_trigger(args.notify);
    if args.layout.parse::<LayoutKind>()? != LayoutKind::Postbox {
        schema = schema.existing_outbox_table();
    }
    if args.print {
        let mut stdout = io::stdout().lock();
        stdout.write_all(schema.script().as_bytes())?;
        stdout.flush()?;
        return Ok(());
    }
    // clap requires the URL unless --print is given.
    let url = args
        .database_url
        .context("--database-url (or POSTBOX_DATABASE_URL) is required without --print")?;
    let mut client = DatabaseConfig::from_url(&url)?.connect().await?;
    schema.apply(&mut client).await?;
    let trigger = if args.notify {
        ", with its NOTIFY trigger"
    } else {
        ""
    };
    let mut stdout = io::stdout().lock();
    writeln!(
        stdout,
        "outbox schema for table {} is in place{trigger}",
        schema.table()
    )?;
    stdout.flush()?;
    Ok(())
}

/// Logs on stderr: `info` by default while the relay runs, `warn` for the
/// one-shot commands, unless `RUST_LOG` says otherwise.
fn init_logs(running: bool, format: LogFormat) {
    let default = if running { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false);
    // Fails only if a logger is already installed, which nothing here does.
    let _ = match format {
        LogFormat::Text => logs.try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
}

fn report(error: &anyhow::Error) -> ExitCode {
    eprintln!("postbox-relay: error: {error:#}");
    ExitCode::FAILURE
}

/// Whether the error comes from writing to a pipe whose reader is gone.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|io_error| io_error.kind() == io::ErrorKind::BrokenPipe)
}
