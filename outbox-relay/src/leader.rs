//! Fenced leadership: at most one relay publishes from an outbox table.
//!
//! Role: a relay becomes the leader of a table by taking a session-level
//! advisory lock in PostgreSQL, and then raises the table's epoch in the
//! leadership table (`postbox_relay_leader`, created by `init`). The epoch
//! goes with every publish as the broker's fence, so that a relay which lost
//! its lock without noticing is refused by the broker.
//!
//! Why both: the advisory lock alone is not enough. The server can end the
//! leader's session (an administrator's `pg_terminate_backend`, a failover, a
//! network cut the leader has not yet seen) while the leader still believes
//! it leads; a standby then takes the lock and both publish. The epoch, kept
//! in PostgreSQL and raised by every new leader, lets the broker tell them
//! apart. [`Lease::still_held`] lets the relay notice such a loss itself.
//!
//! The lock key: the two-integer form `pg_try_advisory_lock(classid, objid)`
//! with `classid` = [`ADVISORY_LOCK_NAMESPACE`] ("PBOX" in ASCII) and `objid` =
//! the outbox table's OID, as PostgreSQL resolves the table's name (with the
//! session's `search_path` when the name is unqualified). Every table has
//! its own OID in a database, so two tables never share a lock; the
//! two-integer form never collides with an application's single-`bigint`
//! advisory locks (PostgreSQL keeps the two forms apart, `objsubid` 2 and 1);
//! and an operator can see who leads which table:
//!
//! ```sql
//! SELECT objid::regclass AS outbox_table, pid FROM pg_locks
//! WHERE locktype = 'advisory' AND classid = 1346522968 AND objsubid = 2;
//! ```
//!
//! A table dropped and created again gets a new OID, and so a new lock: a
//! relay still leading the old one is then fenced by the epoch, which is
//! keyed by the table's name.
//!
//! Invariants:
//! - Epochs of a table only increase, and every acquisition gets a new one,
//!   because it is raised in one statement while holding the lock, and kept
//!   in PostgreSQL (no relay remembers it).
//! - A failed acquisition holds no lock: if raising the epoch fails, the lock
//!   is released before the error is returned.
//! - PgBouncer in transaction (or statement) mode breaks all of this: the
//!   session that holds the lock is not the one the relay's next transaction
//!   runs on. The relay must connect directly to PostgreSQL or through a
//!   session-mode pooler ([`crate::POOLER_NOTE`]). Nothing here detects a
//!   transaction-mode pooler.

use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, Row};

use crate::error::{session_lost, Error, Result};
use crate::table::TableName;

/// The first key of every advisory lock the relay takes: "PBOX" in ASCII.
pub const ADVISORY_LOCK_NAMESPACE: i32 = i32::from_be_bytes(*b"PBOX");
/// The longest holder name: it is only shown to operators, in the
/// leadership table.
pub const HOLDER_BYTES_MAX: usize = 200;

const _: () = assert!(ADVISORY_LOCK_NAMESPACE == 1_346_522_968);

/// Resolves the table to its OID and takes its lock if free, without
/// waiting; `objid` is NULL when no such table exists.
const TRY_LOCK_SQL: &str = "SELECT to_regclass($1)::oid::int4 AS objid, \
            pg_try_advisory_lock($2::int4, to_regclass($1)::oid::int4) AS locked, \
            pg_backend_pid() AS pid";

/// Leadership of one outbox table by one holder.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// The outbox table led.
    table: TableName,
    /// Who leads: shown to operators in the leadership table, for example
    /// `host:pid`.
    holder: String,
}

/// A leadership acquired: the epoch to publish with, while it lasts.
#[derive(Debug)]
pub struct Lease {
    /// The outbox table led.
    table: TableName,
    /// This leader's epoch, higher than every earlier leader's of the table.
    epoch: u64,
    /// The table's relay identity at the broker (the fence's producer): made
    /// once per table, kept in the leadership table, shared by its leaders.
    producer: String,
    /// Who leads, as written to the leadership table.
    holder: String,
    /// The lock's second key: the table's OID as PostgreSQL's `int4`.
    lock_objid: i32,
    /// The server process of the session that holds the lock: the lease is
    /// only good on that session.
    backend_pid: i32,
}

impl Leadership {
    /// Leadership of `table` for `holder` (1 to [`HOLDER_BYTES_MAX`] bytes, no
    /// control characters).
    pub fn new(table: TableName, holder: impl Into<String>) -> Result<Leadership> {
        let holder = holder.into();
        let invalid = |reason: String| Error::InvalidHolder {
            holder: holder.clone(),
            reason,
        };
        if holder.is_empty() {
            return Err(invalid("is empty".to_owned()));
        }
        if holder.len() > HOLDER_BYTES_MAX {
            return Err(invalid(format!(
                "is {} bytes, over the limit of {HOLDER_BYTES_MAX}",
                holder.len()
            )));
        }
        if let Some(c) = holder.chars().find(|c| c.is_control()) {
            return Err(invalid(format!("has the control character {c:?}")));
        }
        Ok(Leadership { table, holder })
    }

    /// The outbox table led.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Who leads.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Becomes the leader on `client`'s session if no other session is:
    /// `Ok(None)` when another session holds the table's lock (stand by and
    /// try again later), else the new lease with an epoch higher than any
    /// before it.
    ///
    /// The session keeps the lock until it ends or [`Lease::release`]; call
    /// this once per session, since the lock counts acquisitions.
    pub async fn acquire(&self, client: &Client) -> Result<Option<Lease>> {
        let action = || format!("take the leader lock of {}", self.table);
        let row = client
            .query_one(
                TRY_LOCK_SQL,
                &[&self.table.quoted(), &ADVISORY_LOCK_NAMESPACE],
            )
            .await
            .map_err(|error| Error::postgres(action(), error))?;
        let lock_objid: Option<i32> = column(&row, "objid", action)?;
        let locked: Option<bool> = column(&row, "locked", action)?;
        let backend_pid: i32 = column(&row, "pid", action)?;
        let Some(lock_objid) = lock_objid else {
            return Err(Error::TableMissing {
                table: self.table.to_string(),
            });
        };
        if locked != Some(true) {
            return Ok(None);
        }
        match self.raise_epoch(client).await {
            Ok((epoch, producer)) => Ok(Some(Lease {
                table: self.table.clone(),
                epoch,
                producer,
                holder: self.holder.clone(),
                lock_objid,
                backend_pid,
            })),
            Err(error) => {
                unlock(client, lock_objid).await;
                Err(error)
            }
        }
    }

    /// Raises the table's epoch by one (or starts it at 1, with a new random
    /// producer identity) and records this holder. One statement, so atomic
    /// on its own. Returns the epoch and the producer identity.
    async fn raise_epoch(&self, client: &Client) -> Result<(u64, String)> {
        let leader = self.table.leader_table_quoted();
        let sql = format!(
            "INSERT INTO {leader} AS leader (outbox_table, epoch, producer, holder, acquired_at) \
             VALUES ($1, 1, 'postbox-relay.' || $1 || '.' || \
                            replace(gen_random_uuid()::text, '-', ''), $2, now()) \
             ON CONFLICT (outbox_table) DO UPDATE \
             SET epoch = leader.epoch + 1, holder = EXCLUDED.holder, acquired_at = now() \
             RETURNING epoch, producer"
        );
        let action = || format!("raise the leader epoch of {} in {leader}", self.table);
        let row = client
            .query_one(&sql, &[&self.table.name(), &self.holder])
            .await
            .map_err(|error| Error::postgres(action(), error))?;
        let epoch: i64 = column(&row, "epoch", action)?;
        let producer: String = column(&row, "producer", action)?;
        let epoch = u64::try_from(epoch).map_err(|_| Error::Unexpected {
            action: action(),
            detail: format!("epoch {epoch} is negative"),
        })?;
        Ok((epoch, producer))
    }
}

impl Lease {
    /// This leader's epoch: the fence to publish with.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The outbox table led.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Who leads.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The relay identity to publish as, with [`Lease::epoch`] as its fence.
    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// The server process of the session that holds the lock.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether this lease still leads, asked on the session that acquired
    /// it: the session still holds the table's advisory lock, and the stored
    /// epoch is still this lease's (no newer leader raised it).
    ///
    /// `Ok(false)` also when the session is gone: the server released its
    /// lock. Any other error leaves the answer unknown, and a caller must
    /// then act as if the lease were lost (publish nothing) until a later
    /// check says otherwise.
    ///
    /// It reads `pg_locks`, which briefly takes the lock manager's locks: ask
    /// once per batch, not per row.
    pub async fn still_held(&self, client: &Client) -> Result<bool> {
        let leader = self.table.leader_table_quoted();
        let sql = format!(
            "SELECT pg_backend_pid() = $1 AND EXISTS ( \
                 SELECT FROM pg_locks \
                 WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted \
                   AND classid = $2::int4::oid AND objid = $3::int4::oid AND objsubid = 2 \
             ) AS locked, \
             (SELECT epoch FROM {leader} WHERE outbox_table = $4) AS epoch"
        );
        let action = || format!("check the leadership of {}", self.table);
        let row = match client
            .query_one(
                &sql,
                &[
                    &self.backend_pid,
                    &ADVISORY_LOCK_NAMESPACE,
                    &self.lock_objid,
                    &self.table.name(),
                ],
            )
            .await
        {
            Ok(row) => row,
            Err(error) if session_lost(&error) => return Ok(false),
            Err(error) => return Err(Error::postgres(action(), error)),
        };
        let locked: bool = column(&row, "locked", action)?;
        let epoch: Option<i64> = column(&row, "epoch", action)?;
        Ok(locked && epoch.and_then(|epoch| u64::try_from(epoch).ok()) == Some(self.epoch))
    }

    /// Gives up the lead: releases the lock, so that a standby can take it
    /// (with a higher epoch). `Ok(false)` when the session no longer held the
    /// lock (it was lost). The epoch row stays; only the next leader changes
    /// it.
    pub async fn release(self, client: &Client) -> Result<bool> {
        let action = || format!("release the leader lock of {}", self.table);
        match client
            .query_one(
                "SELECT pg_advisory_unlock($1::int4, $2::int4)",
                &[&ADVISORY_LOCK_NAMESPACE, &self.lock_objid],
            )
            .await
        {
            Ok(row) => column(&row, "pg_advisory_unlock", action),
            Err(error) if session_lost(&error) => Ok(false),
            Err(error) => Err(Error::postgres(action(), error)),
        }
    }
}

/// A column of a row the relay's own SQL produced; an error rather than a
/// panic if its type is not what that SQL promises (a leadership table made
/// by hand with other column types).
fn column<'a, T: FromSql<'a>>(row: &'a Row, name: &str, action: impl Fn() -> String) -> Result<T> {
    row.try_get(name)
        .map_err(|error| Error::postgres(action(), error))
}

/// Releases the lock after a failed acquisition. If that fails too, the
/// session is broken and the server releases the lock when it ends it; the
/// caller is told about the first failure, which is the one that matters.
async fn unlock(client: &Client, lock_objid: i32) {
    if let Err(error) = client
        .execute(
            "SELECT pg_advisory_unlock($1::int4, $2::int4)",
            &[&ADVISORY_LOCK_NAMESPACE, &lock_objid],
        )
        .await
    {
        tracing::warn!(
            error = %crate::error::describe(&error),
            "cannot release the leader lock after a failed acquisition"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder_reason(holder: &str) -> String {
        match Leadership::new(TableName::default(), holder) {
            Err(Error::InvalidHolder { reason, .. }) => reason,
            other => panic!("{holder:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn holder_at_the_limit_is_accepted_and_one_over_is_refused() {
        assert!(Leadership::new(TableName::default(), "h".repeat(HOLDER_BYTES_MAX)).is_ok());
        assert_eq!(
            holder_reason(&"h".repeat(HOLDER_BYTES_MAX + 1)),
            "is 201 bytes, over the limit of 200"
        );
    }

    #[test]
    fn empty_and_control_character_holders_are_refused() {
        assert_eq!(holder_reason(""), "is empty");
        assert_eq!(holder_reason("host\n1"), "has the control character '\\n'");
    }
}
