//! The relay's commands other than `init`: running the relay, `status`, and
//! `dead-letters`.

use std::io::{self, Write};

use clap::{Args, Subcommand};
use postbox_relay::dead_letters::{self, Selection};
use postbox_relay::{Status, CONNECT_TIMEOUT_MS};
use tokio::sync::watch;

use crate::settings::{RunSettings, TableSettings};

/// The bound on each call of the one-shot commands.
const COMMAND_TIMEOUT_MS: u64 = 30_000;
const _: () = assert!(COMMAND_TIMEOUT_MS >= CONNECT_TIMEOUT_MS);

/// Runs the relay until SIGINT or SIGTERM.
pub async fn relay(settings: RunSettings) -> anyhow::Result<()> {
    let config = settings.relay()?;
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing the batch in flight");
        let _ = stop.send(true);
    });
    postbox_relay::run(config, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the relay");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    source: TableSettings,
    /// Print one JSON object instead of aligned lines.
    #[arg(long)]
    json: bool,
}

/// Prints the status.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.source.database()?.connect().await?;
    let status = Status::read(
        &client,
        COMMAND_TIMEOUT_MS,
        &args.source.table()?,
        &args.source.layout()?,
    )
    .await?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &status)?;
        writeln!(out)?;
    } else {
        write_status(&mut out, &status)?;
    }
    out.flush()?;
    Ok(())
}

fn write_status(out: &mut impl Write, status: &Status) -> io::Result<()> {
    let line = |out: &mut dyn Write, key: &str, value: String| writeln!(out, "{key:<28}{value}");
    line(out, "table", status.table.clone())?;
    match &status.leader {
        None => line(out, "leader", "none yet".to_owned())?,
        Some(leader) => {
            let holder = leader.holder.as_deref().unwrap_or("?");
            let since = leader.acquired_at.as_deref().unwrap_or("?");
            let state = match &leader.session {
                Some(session) => format!("leading on backend pid {}", session.pid),
                None => "not leading now (no session holds the lock)".to_owned(),
            };
            line(
                out,
                "leader",
                format!("{holder}, epoch {}, since {since}, {state}", leader.epoch),
            )?;
            line(out, "producer", leader.producer.clone())?;
            if let Some(waiting) = leader.session.as_ref().and_then(|s| s.waiting_for.clone()) {
                line(out, "leader_waiting_for", waiting)?;
            }
            for blocker in &leader.blocked_by {
                line(out, "leader_blocked_by", blocker.describe())?;
            }
        }
    }
    match (&status.lag, &status.lag_error) {
        (Some(lag), _) => {
            line(out, "unpublished_rows", lag.unpublished_rows.to_string())?;
            line(
                out,
                "oldest_unpublished_age_ms",
                lag.oldest_unpublished_age_ms
                    .map_or_else(|| "-".to_owned(), |age| age.to_string()),
            )?;
            line(out, "held_rows", lag.held_rows.to_string())?;
            line(out, "dead_letters", lag.dead_letters.to_string())?;
        }
        (None, error) => line(
            out,
            "lag",
            format!("unknown: {}", error.as_deref().unwrap_or("?")),
        )?,
    }
    if let Some(oldest) = &status.oldest_transaction {
        line(out, "oldest_transaction", oldest.describe())?;
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Print dead letters as JSON lines, oldest first (all of them unless a
    /// selection is given).
    List(DeadLettersArgs),
    /// Move the selected dead letters back into the outbox table, as they
    /// were (their ids and places in the order kept); the rows of their keys
    /// that waited behind them flow again.
    Retry(DeadLettersArgs),
    /// Delete the selected dead letters for good; the rows of their keys that
    /// waited behind them flow again.
    Drop(DeadLettersArgs),
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(flatten)]
    source: TableSettings,
    /// The dead letters with this row id (repeatable).
    #[arg(long = "id", value_name = "ROW_ID")]
    row_ids: Vec<String>,
    /// The dead letters of this topic.
    #[arg(long)]
    topic: Option<String>,
    /// The dead letters of this partition key.
    #[arg(long)]
    partition_key: Option<String>,
    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["row_ids", "topic", "partition_key"])]
    all: bool,
}

impl DeadLettersArgs {
    fn selection(&self) -> Selection {
        Selection {
            all: self.all,
            row_ids: self.row_ids.clone(),
            topic: self.topic.clone(),
            partition_key: self.partition_key.clone(),
        }
    }
}

/// Runs a `dead-letters` command.
pub async fn dead_letters(command: DeadLettersCommand) -> anyhow::Result<()> {
    let (args, verb) = match &command {
        DeadLettersCommand::List(args) => (args, None),
        DeadLettersCommand::Retry(args) => (args, Some("moved back into")),
        DeadLettersCommand::Drop(args) => (args, Some("dropped from the dead letters of")),
    };
    let table = args.source.table()?;
    let client = args.source.database()?.connect().await?;
    let selection = args.selection();
    let mut out = io::stdout().lock();
    let count = match command {
        DeadLettersCommand::List(_) => {
            for letter in
                dead_letters::list(&client, COMMAND_TIMEOUT_MS, &table, &selection).await?
            {
                serde_json::to_writer(&mut out, &letter)?;
                writeln!(out)?;
            }
            out.flush()?;
            return Ok(());
        }
        DeadLettersCommand::Retry(_) => {
            dead_letters::retry(&client, COMMAND_TIMEOUT_MS, &table, &selection).await?
        }
        DeadLettersCommand::Drop(_) => {
            dead_letters::drop(&client, COMMAND_TIMEOUT_MS, &table, &selection).await?
        }
    };
    let verb = verb.unwrap_or_default();
    writeln!(out, "{count} rows {verb} {table}")?;
    out.flush()?;
    Ok(())
}
