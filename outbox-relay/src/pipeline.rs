//! The leader's batches in flight: one claimed, one being published and one
//! being committed, all at once.
//!
//! Role: [`Pipeline`] owns the leader's sessions (lanes; the first is the
//! session that holds the lead) and moves batches through three stages:
//! claim (in a transaction on a free lane), publish, finish (delete or mark
//! the acknowledged rows, dead-letter the refused ones, commit). Each
//! [`Pipeline::round`] runs at most one batch of each stage, concurrently,
//! so that while batch N is published, batch N+1 is claimed and batch N-1
//! committed. `max_batches_in_flight` (1 to [`BATCHES_IN_FLIGHT_MAX`], one
//! lane each) bounds the rows and bytes in flight; 1 runs one batch at a
//! time.
//!
//! Invariants:
//! - Batches are published one after the other in claim order, each once
//!   the one before it was acknowledged: records reach the broker in claim
//!   order, as with one batch at a time.
//! - Claims lock their rows (see `outbox`). A claim with nothing in flight
//!   waits for rows locked by others; a claim made while batches are in
//!   flight skips locked rows, which must then be the leader's own. So before
//!   it claims ahead, the pipeline waits until no other relay session holds
//!   a claim on the table (a deposed leader's sessions that have not noticed
//!   yet); claims those start later take nothing, since they check the epoch.
//!   No cursor: a claim ahead takes the first unlocked unpublished rows, late
//!   commits included. It passes over the longest gap-free run of ids among
//!   the batches in flight (the one committing in the same round included):
//!   a late commit can only have an id in a gap, and the only rows of the
//!   run that the commit beside it can leave claimable are held behind a
//!   dead letter, where a later claim finds them.
//! - A batch cut short by the byte bound keeps its last rows locked, unsent:
//!   no claim runs ahead of it (it would skip them) until it has committed.
//! - Keys held behind a dead letter by a batch not yet committed are held in
//!   every batch claimed before that commit (those claims could not see the
//!   dead letter). Each held key remembers the newest such batch, and is
//!   forgotten once that batch is published.
//! - A failed publish rolls its batch and every later one back; the batches
//!   before it, acknowledged, are finished.
//! - On a PostgreSQL error the round fails, and the caller drops the
//!   pipeline: its sessions close, which rolls back every open transaction.
//!   A hung relay's open transactions end with
//!   `idle_in_transaction_session_timeout`, set on every lane.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::config::{DatabaseConfig, APPLICATION_NAME};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::outbox::{Claim, Locked, Mode, Outbox, OutboxRow};
use crate::publish::{Failure, HeldKeys, Outcome, Publisher};
use crate::session::{timed, Session};
use crate::status::watch_stall;
use crate::table::TableName;

/// Most batches in flight: one per stage (claim, publish, finish).
pub const BATCHES_IN_FLIGHT_MAX: u32 = 3;
/// Default batches in flight: every stage busy.
pub const MAX_BATCHES_IN_FLIGHT_DEFAULT: u32 = BATCHES_IN_FLIGHT_MAX;

/// What the pipeline needs to know of the relay's settings.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Where to open the extra lanes, and to look at a stalled claim from.
    pub database: DatabaseConfig,
    /// The outbox table.
    pub table: TableName,
    /// Its columns.
    pub layout: Layout,
    /// What becomes of published rows.
    pub mode: Mode,
    /// `statement_timeout` of each lane.
    pub statement_timeout_ms: u64,
    /// `idle_in_transaction_session_timeout` of each lane.
    pub idle_in_transaction_timeout_ms: u64,
    /// Most batches in flight, 1 to [`BATCHES_IN_FLIGHT_MAX`].
    pub max_batches_in_flight: u32,
    /// Most rows per claim.
    pub max_batch_rows: u32,
    /// Most payload bytes per claim.
    pub max_batch_bytes: u64,
}

/// One session of the leader's, with the outbox statements prepared on it.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) session: Session,
    pub(crate) outbox: Outbox,
    pub(crate) backend_pid: i32,
}

impl Lane {
    /// A new session with the outbox statements prepared on it, without
    /// NOTIFY wake-ups (those come on the leader's session).
    pub(crate) async fn open(config: &PipelineConfig) -> Result<Lane> {
        let session = Session::open(
            &config.database,
            config.statement_timeout_ms,
            config.idle_in_transaction_timeout_ms,
            false,
        )
        .await?;
        let prepare = Outbox::prepare(
            &session.client,
            session.call_timeout_ms,
            &config.table,
            &config.layout,
            config.mode,
            config.max_batch_rows,
        );
        let backend_pid = read_backend_pid(&session).await?;
        let outbox = watch_stall(&config.database, backend_pid, "preparation", prepare).await?;
        Ok(Lane {
            session,
            outbox,
            backend_pid,
        })
    }
}

/// A claimed batch and, once published, what the broker said.
#[derive(Debug)]
struct Batch {
    /// Claim order among the leader's batches.
    seq: u64,
    lane: usize,
    rows: Vec<OutboxRow>,
    /// Cut short by the byte bound, with rows locked beyond `rows`.
    cut_short: bool,
    outcome: Option<Outcome>,
}

/// Rows committed by the batches finished in a round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Rows deleted or marked.
    pub published: u64,
    /// Of those, how many the broker reported as duplicates.
    pub duplicates: u64,
    /// Rows moved to the dead letters.
    pub dead_letters: u64,
}

impl std::ops::AddAssign for Finished {
    fn add_assign(&mut self, other: Finished) {
        self.published += other.published;
        self.duplicates += other.duplicates;
        self.dead_letters += other.dead_letters;
    }
}

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Rows claimed, when a claim ran.
    pub claimed: Option<usize>,
    /// How the publish went, when one ran. After a failure every batch in
    /// flight has been finished or rolled back.
    pub published: Option<std::result::Result<(), Failure>>,
    /// What the batches committed in the round held.
    pub finished: Finished,
}

/// The batches in flight (see the module documentation).
#[derive(Debug)]
pub struct Pipeline {
    config: PipelineConfig,
    lanes: Vec<Lane>,
    /// The leader's epoch: claims take rows only while it is the table's.
    epoch: u64,
    /// Claimed, not yet published; oldest first.
    claimed: VecDeque<Batch>,
    /// Published, not yet committed; oldest first.
    published: VecDeque<Batch>,
    /// Keys behind a dead letter, with the newest batch that must hold them
    /// (`u64::MAX` until the dead letter commits).
    held_keys: HashMap<(String, String), u64>,
    next_seq: u64,
    /// No other relay session holds a claim on the table (checked before
    /// the first claim ahead).
    others_gone: bool,
    /// A claim ahead found nothing: no more until the pipeline empties.
    caught_up: bool,
}

impl Pipeline {
    /// Builds the pipeline on the relay's `session` (with `outbox` prepared
    /// on it), opening one more session per extra batch in flight. They are
    /// opened before the relay leads, so that a claim with nothing in flight
    /// always runs on the session that holds the lead, which `status` shows.
    pub async fn open(
        config: PipelineConfig,
        session: Session,
        outbox: Outbox,
    ) -> Result<Pipeline> {
        let backend_pid = read_backend_pid(&session).await?;
        let mut lanes = vec![Lane {
            session,
            outbox,
            backend_pid,
        }];
        for _ in 1..config.max_batches_in_flight.clamp(1, BATCHES_IN_FLIGHT_MAX) {
            lanes.push(Lane::open(&config).await?);
        }
        Ok(Pipeline {
            config,
            lanes,
            epoch: 0,
            claimed: VecDeque::new(),
            published: VecDeque::new(),
            held_keys: HashMap::new(),
            next_seq: 0,
            others_gone: false,
            caught_up: false,
        })
    }

    /// Starts leading at `epoch`: claims take rows only while it is the
    /// table's.
    pub fn lead(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.others_gone = false;
    }

    /// The session that holds (or takes) the lead.
    pub fn leader_session(&self) -> &Session {
        &self.lanes[0].session
    }

    /// The NOTIFY wake-ups, which come on the leader's session.
    pub fn notifications(&mut self) -> &mut tokio::sync::mpsc::Receiver<()> {
        &mut self.lanes[0].session.notifications
    }

    /// The outbox statements on the leader's session.
    pub fn leader_outbox(&self) -> &Outbox {
        &self.lanes[0].outbox
    }

    /// Whether no batch is in flight.
    pub fn is_empty(&self) -> bool {
        self.claimed.is_empty() && self.published.is_empty()
    }

    /// Finishes the oldest published batch, publishes the oldest claimed one
    /// and, when a lane is free and it is safe, claims another, all at once.
    pub async fn round(&mut self, publisher: &Publisher) -> Result<Round> {
        let claim = self.plan_claim().await?;
        let finishing = self.published.pop_front();
        let publishing = self.claimed.pop_front();
        let claim = claim.map(|(lane, skip)| {
            let plan = self.locking(skip, [finishing.as_ref(), publishing.as_ref()]);
            (lane, plan)
        });
        let finished_keys = finishing.as_ref().map(Batch::dead_keys).unwrap_or_default();
        let held = publishing.as_ref().map(|batch| self.held_for(batch.seq));
        let started = Instant::now();
        let ((finished, finish_us), (published, publish_us), (claimed, claim_us)) = tokio::join!(
            timed_us(started, self.finish(finishing)),
            timed_us(started, async {
                match (&publishing, &held) {
                    (Some(batch), Some(held)) => Some(publisher.publish(&batch.rows, held).await),
                    _ => None,
                }
            }),
            timed_us(started, self.claim(claim)),
        );
        tracing::trace!(
            publish_rows = publishing.as_ref().map_or(0, |batch| batch.rows.len()),
            claim_us,
            publish_us,
            finish_us,
            "pipeline round"
        );
        let mut round = Round {
            finished: finished?,
            ..Round::default()
        };
        if let Some((lane, claim)) = claimed? {
            round.claimed = Some(claim.rows.len());
            self.take_claim(lane, claim).await?;
        }
        // Claims from now on see the dead letters just committed; those
        // made until now, this round's included, may not.
        for key in finished_keys {
            self.held_keys.insert(key, self.next_seq.saturating_sub(1));
        }
        if let (Some(mut batch), Some(published)) = (publishing, published) {
            match published {
                Ok(outcome) => {
                    for key in &outcome.dead_keys {
                        self.held_keys.insert(key.clone(), u64::MAX);
                    }
                    batch.outcome = Some(outcome);
                    self.published.push_back(batch);
                    round.published = Some(Ok(()));
                }
                Err(failure) => {
                    self.claimed.push_front(batch);
                    round.finished += self.settle().await?;
                    round.published = Some(Err(failure));
                }
            }
        }
        let oldest_unpublished = self.claimed.front().map_or(self.next_seq, |b| b.seq);
        self.held_keys
            .retain(|_, newest| *newest >= oldest_unpublished);
        Ok(round)
    }

    /// Empties the pipeline without publishing more: the published batches
    /// are finished, the claimed ones rolled back.
    pub async fn settle(&mut self) -> Result<Finished> {
        while let Some(batch) = self.claimed.pop_back() {
            self.end_transaction(batch.lane, "ROLLBACK").await?;
        }
        let mut finished = Finished::default();
        while let Some(batch) = self.published.pop_front() {
            finished += self.finish(Some(batch)).await?;
        }
        self.held_keys.clear();
        Ok(finished)
    }

    /// The lane of the next claim and whether it skips locked rows, if one
    /// may run now.
    async fn plan_claim(&mut self) -> Result<Option<(usize, bool)>> {
        if self.is_empty() {
            self.caught_up = false;
            return Ok(Some((0, false)));
        }
        let cut_short_in_flight = self.batches().any(|batch| batch.cut_short);
        let busy: Vec<usize> = self.batches().map(|batch| batch.lane).collect();
        let Some(lane) = (0..self.lanes.len()).find(|lane| !busy.contains(lane)) else {
            return Ok(None);
        };
        if self.caught_up || cut_short_in_flight || !self.others_gone().await? {
            return Ok(None);
        }
        Ok(Some((lane, true)))
    }

    fn batches(&self) -> impl Iterator<Item = &Batch> {
        self.claimed.iter().chain(self.published.iter())
    }

    /// The keys batch `seq` must hold.
    fn held_for(&self, seq: u64) -> HeldKeys {
        self.held_keys
            .iter()
            .filter(|(_, newest)| **newest >= seq)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Whether no other relay session holds a claim on the table: a deposed
    /// leader's, whose locked rows a claim ahead would skip. Once true it
    /// stays true, since their later claims take nothing.
    async fn others_gone(&mut self) -> Result<bool> {
        if self.others_gone {
            return Ok(true);
        }
        let session = &self.lanes[0].session;
        let own: Vec<i32> = self.lanes.iter().map(|lane| lane.backend_pid).collect();
        let action = format!("look for other relays' claims on {}", self.config.table);
        let row = timed(
            session.call_timeout_ms,
            &action,
            session.client.query_one(
                "SELECT array_agg(l.pid ORDER BY l.pid) FROM pg_locks l \
                 JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'relation' AND l.relation = to_regclass($1) \
                   AND l.mode = 'RowShareLock' AND a.application_name = $2 \
                   AND l.pid <> ALL($3::int4[])",
                &[&self.config.table.quoted(), &APPLICATION_NAME, &own],
            ),
        )
        .await?;
        let others: Option<Vec<i32>> = row
            .try_get(0)
            .map_err(|error| Error::postgres(action, error))?;
        match others {
            None => self.others_gone = true,
            Some(pids) => tracing::info!(
                ?pids,
                "another relay's sessions still hold claims on the table (a deposed leader): \
                 one batch at a time until they end"
            ),
        }
        Ok(self.others_gone)
    }

    /// What a claim does with locked rows. A claim ahead skips them, and
    /// passes over the longest gap-free run of ids among the batches in
    /// flight (`popped`: the ones this round finishes and publishes, taken
    /// off their queues already; and those still queued). No other row can
    /// have an id inside the run. The batch this round finishes may commit
    /// while the claim runs; its commit deletes or marks every row it
    /// published or dead-lettered, and the claim runs only when no batch in
    /// flight was cut short (`plan_claim`), so the only rows of the run that
    /// can become claimable meanwhile are rows held behind a dead letter.
    /// Passing over those leaves them where a held row belongs: behind its
    /// dead letter, for a later claim. Without the finishing batch in the
    /// run, the claim would check each of its rows' locks one by one.
    fn locking(&self, skip_locked: bool, popped: [Option<&Batch>; 2]) -> Locked {
        if !skip_locked {
            return Locked::Wait;
        }
        if !self.lanes[0].outbox.skips_runs() {
            return Locked::Skip;
        }
        let ids: std::result::Result<Vec<i64>, _> = popped
            .into_iter()
            .flatten()
            .chain(self.batches())
            .flat_map(|batch| &batch.rows)
            .map(|row| row.row_id.parse::<i64>())
            .collect();
        match ids.ok().and_then(longest_run) {
            Some((first, last)) => Locked::SkipRun { first, last },
            None => Locked::Skip,
        }
    }

    /// Begins a transaction on the planned lane and claims in it.
    async fn claim(&self, plan: Option<(usize, Locked)>) -> Result<Option<(usize, Claim)>> {
        let Some((lane_index, locked)) = plan else {
            return Ok(None);
        };
        let lane = &self.lanes[lane_index];
        let claim = lane.outbox.claim(
            &lane.session.client,
            lane.session.call_timeout_ms,
            self.config.max_batch_bytes,
            self.epoch,
            locked,
        );
        let claim = watch_stall(&self.config.database, lane.backend_pid, "claim", claim).await?;
        Ok(Some((lane_index, claim)))
    }

    /// Queues a claimed batch, or ends the transaction of an empty claim.
    async fn take_claim(&mut self, lane: usize, claim: Claim) -> Result<()> {
        if claim.rows.is_empty() {
            self.caught_up = true;
            return self.end_transaction(lane, "ROLLBACK").await;
        }
        self.claimed.push_back(Batch {
            seq: self.next_seq,
            lane,
            cut_short: claim.locked_rows > claim.rows.len(),
            rows: claim.rows,
            outcome: None,
        });
        self.next_seq += 1;
        Ok(())
    }
    /// Commits a published batch: refused rows dead-lettered, then
    /// acknowledged rows finished and the claim's transaction committed.
    async fn finish(&self, batch: Option<Batch>) -> Result<Finished> {
        let Some(Batch {
            lane,
            rows,
            outcome: Some(outcome),
            ..
        }) = batch
        else {
            return Ok(Finished::default());
        };
        let Lane {
            session, outbox, ..
        } = &self.lanes[lane];
        let (client, timeout_ms) = (&session.client, session.call_timeout_ms);
        for (index, reason) in &outcome.dead {
            let row = &rows[*index];
            outbox.dead_letter(client, timeout_ms, row, reason).await?;
            tracing::error!(
                row_id = %row.row_id,
                topic = %row.topic,
                partition_key = row.partition_key.as_deref().unwrap_or(""),
                reason = %reason,
                "the broker refuses a row for good: moved to the dead letters; later rows \
                 of its key wait until `postbox-relay dead-letters retry` or `drop`"
            );
        }
        let finished = outbox.finish(client, timeout_ms, &outcome.acked).await?;
        if finished != outcome.acked.len() as u64 {
            tracing::warn!(
                acknowledged = outcome.acked.len(),
                finished,
                "some published rows were already gone: changed by something other than the relay"
            );
        }
        tracing::debug!(
            rows = rows.len(),
            acknowledged = outcome.acked.len(),
            duplicates = outcome.duplicates,
            dead = outcome.dead.len(),
            held = outcome.held,
            "published a batch"
        );
        Ok(Finished {
            published: outcome.acked.len() as u64,
            duplicates: outcome.duplicates as u64,
            dead_letters: outcome.dead.len() as u64,
        })
    }

    async fn end_transaction(&self, lane: usize, verb: &str) -> Result<()> {
        let session = &self.lanes[lane].session;
        timed(
            session.call_timeout_ms,
            &format!("{verb} a claim's transaction"),
            session.client.batch_execute(verb),
        )
        .await
    }
}

impl Batch {
    /// The keys this batch dead-lettered.
    fn dead_keys(&self) -> Vec<(String, String)> {
        self.outcome
            .as_ref()
            .map(|outcome| outcome.dead_keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The longest run of consecutive ids among `ids` (first and last), if any.
fn longest_run(mut ids: Vec<i64>) -> Option<(i64, i64)> {
    ids.sort_unstable();
    ids.dedup();
    let mut best: Option<(i64, i64)> = None;
    let mut start = 0;
    for end in 0..ids.len() {
        let run_ends = end + 1 == ids.len() || ids[end].checked_add(1) != Some(ids[end + 1]);
        if run_ends {
            let run = (ids[start], ids[end]);
            if best.is_none_or(|(first, last)| run.1 - run.0 > last - first) {
                best = Some(run);
            }
            start = end + 1;
        }
    }
    best
}

/// `call`'s output and the µs from `started` to its end (whole ms would
/// read a 1.9 ms step of a 100-row batch as 1).
async fn timed_us<T>(started: Instant, call: impl std::future::Future<Output = T>) -> (T, u64) {
    let output = call.await;
    (output, started.elapsed().as_micros() as u64)
}

/// The server process of `session`, to look at it from another session.
async fn read_backend_pid(session: &Session) -> Result<i32> {
    let action = "read the session's backend pid";
    timed(
        session.call_timeout_ms,
        action,
        session.client.query_one("SELECT pg_backend_pid()", &[]),
    )
    .await?
    .try_get(0)
    .map_err(|error| Error::postgres(action, error))
}

#[cfg(test)]
mod tests {
    use super::longest_run;

    #[test]
    fn the_longest_run_of_consecutive_ids_is_found_in_any_order() {
        assert_eq!(longest_run(vec![]), None);
        assert_eq!(longest_run(vec![7]), Some((7, 7)));
        assert_eq!(longest_run(vec![5, 1, 2, 3, 9, 10]), Some((1, 3)));
        // A gap (an id some transaction may still commit) ends a run.
        assert_eq!(longest_run(vec![1, 2, 4, 5, 6, 8]), Some((4, 6)));
        assert_eq!(longest_run(vec![3, 3, 4]), Some((3, 4)));
        assert_eq!(
            longest_run(vec![i64::MAX - 1, i64::MAX, 0]),
            Some((i64::MAX - 1, i64::MAX))
        );
    }
}
