//! `postbox-relay status`: who leads, how far behind, and what stalls it.
//!
//! Role: reads, on a session of its own, the leadership row, the lag
//! ([`Lag`]), the leader's session as PostgreSQL sees it (what it waits for,
//! and which sessions block it) and the oldest open transaction in the
//! database (a transaction still open may yet commit outbox rows, and holds
//! back vacuum of the rows the relay deleted). The running leader uses the
//! same reading for its stall reports ([`watch_stall`]).
//!
//! Invariants: read-only; it takes no lock the relay or the application
//! could wait on (catalog views and counts only).

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::DatabaseConfig;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::leader::ADVISORY_LOCK_NAMESPACE;
use crate::outbox::{Lag, Mode, Outbox};
use crate::session::timed;
use crate::table::TableName;

/// How long `status` waits for a lock on the outbox table before it reports
/// the lag as unknown: a table locked by something else is exactly when the
/// rest of the status matters.
pub const LAG_LOCK_TIMEOUT_MS: u64 = 1_000;

/// Longest query text shown for a session.
pub const QUERY_TEXT_CHARS_MAX: i32 = 200;

/// The relay's state as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The outbox table.
    pub table: String,
    /// The latest leader, if any relay ever led.
    pub leader: Option<LeaderInfo>,
    /// How far behind; `None` when the table is locked (see `lag_error`).
    #[serde(flatten)]
    pub lag: Option<Lag>,
    /// Why the lag could not be read: the table was locked longer than
    /// [`LAG_LOCK_TIMEOUT_MS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_error: Option<String>,
    /// The oldest open transaction in the database other than the leader's.
    pub oldest_transaction: Option<SessionInfo>,
}

/// The leadership row, and the leader's session when it holds the lock.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderInfo {
    /// Who leads (or led last).
    pub holder: Option<String>,
    /// The latest epoch.
    pub epoch: i64,
    /// The relay identity at the broker.
    pub producer: String,
    /// When the latest leader took over.
    pub acquired_at: Option<String>,
    /// The leader's session, when one holds the lock now.
    pub session: Option<SessionInfo>,
    /// Sessions the leader's session waits for.
    pub blocked_by: Vec<SessionInfo>,
}

/// One server session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// Its server process.
    pub pid: i32,
    /// `active`, `idle in transaction`, ...
    pub state: Option<String>,
    /// What it waits for (`Lock: transactionid`), if anything.
    pub waiting_for: Option<String>,
    /// How long its transaction has been open, in ms.
    pub transaction_age_ms: Option<i64>,
    /// The start of its current or last query.
    pub query: Option<String>,
}

const SESSION_COLUMNS: &str = "pid, state, wait_event_type || ': ' || wait_event, \
     (extract(epoch FROM now() - xact_start) * 1000)::int8, left(query, $1)";

impl Status {
    /// Reads the status of `table` in `layout`.
    pub async fn read(
        client: &Client,
        timeout_ms: u64,
        table: &TableName,
        layout: &Layout,
    ) -> Result<Status> {
        let (lag, lag_error) = match lag(client, timeout_ms, table, layout).await {
            Ok(lag) => (Some(lag), None),
            Err(error) if is_lock_timeout(&error) => (None, Some(error.to_string())),
            Err(error) => return Err(error),
        };
        let leader = leader(client, timeout_ms, table).await?;
        let leader_pid = leader
            .as_ref()
            .and_then(|leader| leader.session.as_ref())
            .map(|session| session.pid);
        let oldest = sessions(
            client,
            timeout_ms,
            &format!(
                "SELECT {SESSION_COLUMNS} FROM pg_stat_activity \
                 WHERE datname = current_database() AND xact_start IS NOT NULL \
                   AND backend_type = 'client backend' \
                   AND pid <> pg_backend_pid() AND pid IS DISTINCT FROM $2 \
                 ORDER BY xact_start LIMIT 1"
            ),
            &leader_pid,
        )
        .await?;
        Ok(Status {
            table: table.to_string(),
            leader,
            lag,
            lag_error,
            oldest_transaction: oldest.into_iter().next(),
        })
    }
}

/// The row bound of the claims prepared beside the lag statement: the status
/// runs none, but the statements are prepared together.
const STATUS_CLAIM_ROWS: u32 = 1;

/// The lag, waiting at most [`LAG_LOCK_TIMEOUT_MS`] for the table's lock.
async fn lag(client: &Client, timeout_ms: u64, table: &TableName, layout: &Layout) -> Result<Lag> {
    timed(
        timeout_ms,
        "limit the status's lock waits",
        client.batch_execute(&format!("SET lock_timeout = {LAG_LOCK_TIMEOUT_MS}")),
    )
    .await?;
    let outbox = Outbox::prepare(
        client,
        timeout_ms,
        table,
        layout,
        Mode::Delete,
        STATUS_CLAIM_ROWS,
    )
    .await?;
    outbox.lag(client, timeout_ms).await
}

fn is_lock_timeout(error: &Error) -> bool {
    error
        .postgres_error()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|code| *code == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

async fn leader(client: &Client, timeout_ms: u64, table: &TableName) -> Result<Option<LeaderInfo>> {
    let action = format!("read the leader of {table}");
    let sql = format!(
        "SELECT holder, epoch, producer, acquired_at::text, \
                (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                   AND classid = $2::int4::oid AND objid = to_regclass($3)::oid \
                   AND objsubid = 2 LIMIT 1) \
         FROM {} WHERE outbox_table = $1",
        table.leader_table_quoted()
    );
    let row = timed(
        timeout_ms,
        &action,
        client.query_opt(
            &sql,
            &[&table.name(), &ADVISORY_LOCK_NAMESPACE, &table.quoted()],
        ),
    )
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let read = |error| Error::postgres(action.clone(), error);
    let pid: Option<i32> = row.try_get(4).map_err(read)?;
    let (session, blocked_by) = match pid {
        Some(pid) => session_and_blockers(client, timeout_ms, pid).await?,
        None => (None, Vec::new()),
    };
    Ok(Some(LeaderInfo {
        holder: row.try_get(0).map_err(read)?,
        epoch: row.try_get(1).map_err(read)?,
        producer: row.try_get(2).map_err(read)?,
        acquired_at: row.try_get(3).map_err(read)?,
        session,
        blocked_by,
    }))
}

/// How long a claim (or lag query) may wait before the leader looks, from a
/// second session, at what it waits for and logs it.
pub const STALL_REPORT_MS: u64 = 2_000;

/// Awaits `call` on server process `pid`'s session; if it takes longer than
/// [`STALL_REPORT_MS`], logs what that session waits for and who blocks it,
/// read from a session of its own, and goes on waiting.
pub async fn watch_stall<T>(
    database: &DatabaseConfig,
    pid: i32,
    what: &str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(call);
    tokio::select! {
        result = &mut call => return result,
        _ = tokio::time::sleep(std::time::Duration::from_millis(STALL_REPORT_MS)) => {}
    }
    report_stall(database, pid, what).await;
    call.await
}

async fn report_stall(database: &DatabaseConfig, pid: i32, what: &str) {
    let report = async {
        let client = database.connect().await?;
        session_and_blockers(&client, STALL_REPORT_MS, pid).await
    };
    match report.await {
        Ok((session, blockers)) => tracing::warn!(
            stalled_ms = STALL_REPORT_MS,
            backend_pid = pid,
            waiting_for = session.and_then(|s| s.waiting_for).unwrap_or_default(),
            blocked_by = %blockers
                .iter()
                .map(SessionInfo::describe)
                .collect::<Vec<_>>()
                .join("; "),
            "the {what} is stalled in the database"
        ),
        Err(error) => tracing::warn!(
            stalled_ms = STALL_REPORT_MS,
            error = %error,
            "the {what} is stalled, and what it waits for cannot be read"
        ),
    }
}

/// Server process `pid`'s session and the sessions it waits for: what
/// stalls a claim, for `status` and for the leader's own stall report.
pub async fn session_and_blockers(
    client: &Client,
    timeout_ms: u64,
    pid: i32,
) -> Result<(Option<SessionInfo>, Vec<SessionInfo>)> {
    let session = sessions(
        client,
        timeout_ms,
        &format!("SELECT {SESSION_COLUMNS} FROM pg_stat_activity WHERE pid = $2"),
        &Some(pid),
    )
    .await?;
    let blockers = sessions(
        client,
        timeout_ms,
        &format!(
            "SELECT {SESSION_COLUMNS} FROM pg_stat_activity \
             WHERE pid = ANY(pg_blocking_pids($2)) ORDER BY pid"
        ),
        &Some(pid),
    )
    .await?;
    Ok((session.into_iter().next(), blockers))
}

impl SessionInfo {
    /// One line for logs and `status`: pid, state, transaction age, query.
    pub fn describe(&self) -> String {
        format!(
            "pid {}, {}, transaction open {} ms: {}",
            self.pid,
            self.state.as_deref().unwrap_or("?"),
            self.transaction_age_ms
                .map_or_else(|| "-".to_owned(), |age| age.to_string()),
            self.query
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

/// Sessions from `sql`, which selects [`SESSION_COLUMNS`] with `pid` as $2.
async fn sessions(
    client: &Client,
    timeout_ms: u64,
    sql: &str,
    pid: &Option<i32>,
) -> Result<Vec<SessionInfo>> {
    let action = "read the server's sessions";
    let rows = timed(
        timeout_ms,
        action,
        client.query(sql, &[&QUERY_TEXT_CHARS_MAX, pid]),
    )
    .await?;
    rows.iter()
        .map(|row| {
            let read = |error| Error::postgres(action, error);
            Ok(SessionInfo {
                pid: row.try_get(0).map_err(read)?,
                state: row.try_get(1).map_err(read)?,
                waiting_for: row.try_get(2).map_err(read)?,
                transaction_age_ms: row.try_get(3).map_err(read)?,
                query: row.try_get(4).map_err(read)?,
            })
        })
        .collect()
}
