//! Publishing claimed rows to the broker as the fenced leader.
//!
//! Role: turns claimed rows into records (idempotency key, partition key as
//! the record key, headers), publishes them topic by topic under the lease's
//! fence, and sorts the result into rows acknowledged, rows the broker
//! refuses for good (to dead-letter), and rows held back behind those.
//!
//! Invariants:
//! - A row counts as acknowledged only when the broker acknowledged it
//!   (appended, or a duplicate of an earlier append).
//! - A row is dead-lettered only for a refusal that would repeat (invalid
//!   record, unknown or invalid topic), never for a transient failure and
//!   never for a fencing refusal: those fail the whole batch, and nothing of
//!   it is finished.
//! - Per key order: once a row of a (topic, key) is dead-lettered, the later
//!   rows of that key in the batch are neither published nor finished; nor
//!   are rows of keys an earlier batch, not yet committed, held back
//!   ([`HeldKeys`]).
//! - Within a topic, records go in claim order, one publish after the other;
//!   different topics are published concurrently (no order between topics).

use std::collections::{BTreeMap, HashSet};

use futures_util::future::join_all;
use postbox_client::{
    Code, Error as ClientError, Fence, OutgoingRecord, Producer, ProducerConfig, RetryPolicy,
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX,
};

use crate::layout::EVENT_TYPE_HEADER;
use crate::outbox::OutboxRow;

/// Why a batch could not be published; nothing of it may be finished.
#[derive(Debug)]
pub enum Failure {
    /// The broker was unreachable, busy or too slow: try again later.
    Transient(ClientError),
    /// The broker refused this leader's epoch: another relay leads now.
    Fenced(ClientError),
}

/// (topic, partition key) pairs whose rows wait behind a dead letter.
pub type HeldKeys = HashSet<(String, String)>;

/// What became of a claimed batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Rows the broker acknowledged, to delete or mark.
    pub acked: Vec<String>,
    /// How many of those were duplicates of earlier appends.
    pub duplicates: usize,
    /// Rows refused for good, by their index in the batch, with the reason.
    pub dead: Vec<(usize, String)>,
    /// Rows left unpublished because an earlier row of their key was refused.
    pub held: usize,
    /// The keys of the rows dead-lettered: later batches claimed before this
    /// one commits must hold them too.
    pub dead_keys: HeldKeys,
}

/// Publishes as one leader: the table's producer identity at one epoch.
#[derive(Debug)]
pub struct Publisher {
    producer: Producer,
}

impl Publisher {
    /// Connects to `broker` as `producer` at `epoch`; each publish attempt
    /// waits at most `request_timeout_ms`. No retries here: the relay's own
    /// backoff and circuit breaker decide when to try again.
    pub async fn connect(
        broker: &str,
        producer: &str,
        epoch: u64,
        request_timeout_ms: u64,
    ) -> Result<Publisher, ClientError> {
        let config = ProducerConfig {
            max_batch_records: BATCH_RECORDS_MAX,
            max_batch_bytes: BATCH_BYTES_MAX,
            request_timeout_ms,
            retry: RetryPolicy::none(),
            fence: Some(Fence {
                producer: producer.to_owned(),
                epoch,
            }),
            ..ProducerConfig::default()
        };
        Ok(Publisher {
            producer: Producer::connect(broker, config).await?,
        })
    }

    /// Tells the broker this epoch leads now, so that an older leader is
    /// refused even before this one publishes.
    pub async fn announce(&self) -> Result<(), Failure> {
        self.producer.advance_fence().await.map_err(classify)
    }

    /// Publishes `rows`, holding back those of `held_before` keys (see the
    /// module's invariants).
    pub async fn publish(
        &self,
        rows: &[OutboxRow],
        held_before: &HeldKeys,
    ) -> Result<Outcome, Failure> {
        let mut outcome = Outcome::default();
        let mut dead_keys: HashSet<(&str, &str)> = HashSet::new();
        // Rows refused before publishing (unreadable headers, over a limit)
        // are decided here, in order, so that they hold their keys back.
        let mut by_topic: BTreeMap<&str, Vec<(usize, OutgoingRecord)>> = BTreeMap::new();
        for (index, row) in rows.iter().enumerate() {
            if is_held(&dead_keys, row) || held_before_in(held_before, row) {
                outcome.held += 1;
                continue;
            }
            match record(row) {
                Ok(record) => by_topic
                    .entry(&row.topic)
                    .or_default()
                    .push((index, record)),
                Err(reason) => {
                    hold_key(&mut dead_keys, row);
                    outcome.dead.push((index, reason));
                }
            }
        }
        let results = join_all(
            by_topic
                .into_iter()
                .map(|(topic, records)| self.publish_topic(topic, rows, records)),
        )
        .await;
        for result in results {
            let topic_outcome = result?;
            outcome.acked.extend(topic_outcome.acked);
            outcome.duplicates += topic_outcome.duplicates;
            outcome.dead.extend(topic_outcome.dead);
            outcome.held += topic_outcome.held;
        }
        outcome.dead.sort_by_key(|(index, _)| *index);
        for (index, _) in &outcome.dead {
            let row = &rows[*index];
            if let Some(key) = &row.partition_key {
                outcome.dead_keys.insert((row.topic.clone(), key.clone()));
            }
        }
        Ok(outcome)
    }

    /// Publishes one topic's records in order: as one batch, or, when the
    /// broker refuses the batch for good, one by one to find the rows it
    /// refuses.
    async fn publish_topic(
        &self,
        topic: &str,
        rows: &[OutboxRow],
        records: Vec<(usize, OutgoingRecord)>,
    ) -> Result<Outcome, Failure> {
        let (indexes, batch): (Vec<usize>, Vec<OutgoingRecord>) = records.into_iter().unzip();
        let mut outcome = Outcome::default();
        match self.producer.send_batch(topic, batch.clone()).await {
            Ok(acks) => {
                outcome.duplicates = acks.iter().filter(|ack| ack.duplicate).count();
                outcome.acked = indexes.iter().map(|&i| rows[i].row_id.clone()).collect();
                return Ok(outcome);
            }
            Err(error) => {
                // An unknown topic refuses every row alike: no need to try
                // them one by one.
                let whole_topic = error.code() == Some(Code::NotFound);
                let reason = refused_for_good(error)?;
                if whole_topic {
                    return Ok(refuse_all(rows, indexes, &reason));
                }
            }
        };
        let mut dead_keys = HashSet::new();
        for (index, record) in indexes.into_iter().zip(batch) {
            let row = &rows[index];
            if is_held(&dead_keys, row) {
                outcome.held += 1;
                continue;
            }
            match self.producer.send_batch(topic, vec![record]).await {
                Ok(acks) => {
                    outcome.duplicates += acks.iter().filter(|ack| ack.duplicate).count();
                    outcome.acked.push(row.row_id.clone());
                }
                Err(error) => {
                    let reason = refused_for_good(error)?;
                    hold_key(&mut dead_keys, row);
                    outcome.dead.push((index, reason));
                }
            }
        }
        Ok(outcome)
    }
}

/// Every row of `indexes` refused for `reason`: the first of each key is
/// dead-lettered, the later ones wait behind it.
fn refuse_all(rows: &[OutboxRow], indexes: Vec<usize>, reason: &str) -> Outcome {
    let mut outcome = Outcome::default();
    let mut dead_keys = HashSet::new();
    for index in indexes {
        let row = &rows[index];
        if is_held(&dead_keys, row) {
            outcome.held += 1;
        } else {
            hold_key(&mut dead_keys, row);
            outcome.dead.push((index, reason.to_owned()));
        }
    }
    outcome
}

/// The reason of a refusal that would repeat, or the batch's [`Failure`].
/// A broker that refuses until its operator acts (a full disk) refuses no
/// row for good: the batch waits and is claimed again.
fn refused_for_good(error: ClientError) -> Result<String, Failure> {
    match classify(error) {
        Failure::Transient(error) if !error.is_retryable() && !error.waits_for_operator() => {
            Ok(error.to_string())
        }
        failure => Err(failure),
    }
}

/// Sorts a client error into fenced or transient; a refusal for good comes
/// out as `Transient` with a non-retryable error, for [`refused_for_good`].
fn classify(error: ClientError) -> Failure {
    match error.code() {
        Some(Code::FailedPrecondition) => Failure::Fenced(error),
        _ => Failure::Transient(error),
    }
}

/// Whether `held` holds `row`'s key.
fn held_before_in(held: &HeldKeys, row: &OutboxRow) -> bool {
    match &row.partition_key {
        Some(key) if !held.is_empty() => held.contains(&(row.topic.clone(), key.clone())),
        _ => false,
    }
}

fn is_held(dead_keys: &HashSet<(&str, &str)>, row: &OutboxRow) -> bool {
    row.partition_key
        .as_deref()
        .is_some_and(|key| dead_keys.contains(&(row.topic.as_str(), key)))
}

fn hold_key<'a>(dead_keys: &mut HashSet<(&'a str, &'a str)>, row: &'a OutboxRow) {
    if let Some(key) = row.partition_key.as_deref() {
        dead_keys.insert((row.topic.as_str(), key));
    }
}

/// The record for `row`, or why the broker would refuse it.
pub fn record(row: &OutboxRow) -> Result<OutgoingRecord, String> {
    let mut record = OutgoingRecord::new(row.payload.clone())
        .idempotency_key(row.idempotency_key.clone().into_bytes());
    if let Some(key) = &row.partition_key {
        record = record.key(key.clone().into_bytes());
    }
    if let Some(headers) = &row.headers {
        for (name, value) in headers_of(headers)? {
            record = record.header(name, value);
        }
    }
    if let Some(event_type) = &row.event_type {
        record = record.header(EVENT_TYPE_HEADER, event_type.clone().into_bytes());
    }
    record.validate().map_err(|error| error.to_string())?;
    Ok(record)
}

/// A headers column's JSON object as (name, value) pairs: string members as
/// their text, any other member as its JSON text.
fn headers_of(json: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|error| format!("headers are not JSON: {error}"))?;
    let serde_json::Value::Object(members) = value else {
        return Err(format!("headers must be a JSON object, not {json}"));
    };
    Ok(members
        .into_iter()
        .map(|(name, value)| {
            let bytes = match value {
                serde_json::Value::String(text) => text.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (name, bytes)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use postbox_client::RECORD_BYTES_MAX;

    fn row(headers: Option<&str>, payload_bytes: usize) -> OutboxRow {
        OutboxRow {
            row_id: "1".into(),
            topic: "orders".into(),
            partition_key: Some("customer-1".into()),
            idempotency_key: "0193e7a2-0000-7000-8000-000000000001".into(),
            headers: headers.map(str::to_owned),
            event_type: Some("OrderCreated".into()),
            payload: vec![7; payload_bytes],
        }
    }

    #[test]
    fn rows_become_records_with_key_headers_and_type() {
        let record = record(&row(Some(r#"{"trace": "abc", "n": 3}"#), 10)).expect("valid");
        let proto_size = record.size_bytes();
        assert!(proto_size > 10);
        assert_eq!(
            record.idempotency_key_bytes().map(|k| k.len()),
            Some("0193e7a2-0000-7000-8000-000000000001".len())
        );
    }

    #[test]
    fn a_full_disk_dead_letters_nothing() {
        let full = ClientError::Refused {
            code: Code::ResourceExhausted,
            message: "partition orders/0 is out of disk space".into(),
        };
        assert!(matches!(refused_for_good(full), Err(Failure::Transient(_))));
        let invalid = ClientError::Status {
            code: Code::InvalidArgument,
            message: "record too large".into(),
        };
        assert!(
            refused_for_good(invalid).is_ok(),
            "a bad record is refused for good"
        );
    }

    #[test]
    fn refusals_name_the_reason() {
        assert!(record(&row(Some("[1, 2]"), 1))
            .expect_err("array")
            .contains("headers must be a JSON object"));
        let too_large = record(&row(None, RECORD_BYTES_MAX + 1)).expect_err("too large");
        assert!(
            too_large.contains(&RECORD_BYTES_MAX.to_string()),
            "{too_large}"
        );
    }
}
