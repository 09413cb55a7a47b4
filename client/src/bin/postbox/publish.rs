//! `postbox publish`: one record from the command line, or one record per
//! line of stdin, published in batches through `Producer::send_batch`.
//!
//! Invariants: acknowledgments print in input order, each batch's as soon as
//! it is acknowledged; a batch that fails prints nothing and stops the
//! command (later lines are not published, so per-key order holds); a line
//! is bounded by `LINE_BYTES_MAX` before it is buffered whole. A line that
//! cannot be a record (too long, or over a broker limit once the key and
//! headers are added) stops the command too, but only after the lines before
//! it are published and acknowledged, and the error names its line number
//! and the limit. Lines are batched by count and bytes with the producer's
//! limits, and a partial batch waits at most the producer's linger for more
//! lines, so `tail -f | postbox publish` publishes promptly.

use std::io::{self, BufRead};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use postbox_client::{BatchBuilder, OutgoingRecord, Producer, ProducerConfig, RECORD_BYTES_MAX};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::args::PublishArgs;
use crate::output::Output;

/// Longest stdin line accepted: the broker's `RECORD_BYTES_MAX`, so a line
/// that could never be published is refused before it fills memory. (A line
/// this long still cannot be published: the record's framing and generated
/// idempotency key push it over; `OutgoingRecord::validate` says so exactly.)
const LINE_BYTES_MAX: usize = RECORD_BYTES_MAX;

/// Lines read ahead of the publisher: one default batch, so reading stdin
/// overlaps with publishing the previous batch.
const LINES_QUEUED_MAX: usize = 1_000;

pub async fn run<W: io::Write>(
    broker: &str,
    args: PublishArgs,
    output: &mut Output<W>,
) -> Result<()> {
    if args.value.is_none() && args.idempotency_key.is_some() {
        bail!(
            "--idempotency-key needs a VALUE: records read from stdin each get their own generated key"
        );
    }
    let template = RecordTemplate::new(&args);
    let producer = Producer::connect(broker, ProducerConfig::default()).await?;
    match args.value {
        Some(value) => {
            let mut record = template.record(Bytes::from(value));
            if let Some(idempotency_key) = args.idempotency_key {
                record = record.idempotency_key(idempotency_key);
            }
            publish(&producer, &args.topic, vec![record], output).await
        }
        None => publish_stdin(&producer, &args.topic, template, output).await,
    }
}

async fn publish_stdin<W: io::Write>(
    producer: &Producer,
    topic: &str,
    template: RecordTemplate,
    output: &mut Output<W>,
) -> Result<()> {
    let (lines, receiver) = mpsc::channel(LINES_QUEUED_MAX);
    // A thread, not a task: a blocking read of an idle stdin must not keep
    // the runtime from shutting down when publishing fails.
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_lines(io::stdin().lock(), |line| lines.blocking_send(line).is_ok()))
        .context("cannot start the stdin reader")?;
    let config = producer.config();
    let mut batcher = LineBatcher::new(
        receiver,
        BatchBuilder::new(config.max_batch_records, config.max_batch_bytes),
        Duration::from_millis(config.linger_ms),
        template,
    );
    // A line that cannot be published comes back as an error only after
    // the batch before it, so those lines are published and acknowledged.
    while let Some(batch) = batcher.next_batch().await? {
        publish(producer, topic, batch, output).await?;
    }
    Ok(())
}

/// Publishes one batch and prints its acknowledgments.
async fn publish<W: io::Write>(
    producer: &Producer,
    topic: &str,
    records: Vec<OutgoingRecord>,
    output: &mut Output<W>,
) -> Result<()> {
    let count = records.len();
    let acks = producer
        .send_batch(topic, records)
        .await
        .with_context(|| format!("{count} record(s) not acknowledged"))?;
    for ack in &acks {
        output.ack(ack)?;
    }
    output.flush()
}

/// What every record of one command shares: key, headers, partition.
#[derive(Debug)]
struct RecordTemplate {
    key: Option<Bytes>,
    headers: Vec<(String, Bytes)>,
    partition: Option<u32>,
}

impl RecordTemplate {
    fn new(args: &PublishArgs) -> Self {
        RecordTemplate {
            key: args.key.clone().map(Bytes::from),
            headers: args
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), Bytes::from(value.clone())))
                .collect(),
            partition: args.partition,
        }
    }

    fn record(&self, payload: Bytes) -> OutgoingRecord {
        let mut record = OutgoingRecord::new(payload);
        if let Some(key) = &self.key {
            record = record.key(key.clone());
        }
        for (name, value) in &self.headers {
            record = record.header(name.clone(), value.clone());
        }
        if let Some(partition) = self.partition {
            record = record.partition(partition);
        }
        record
    }
}

/// Why the reader stopped before the end of stdin.
#[derive(Debug)]
enum ReadError {
    /// The next line is longer than `LINE_BYTES_MAX`.
    LineTooLong,
    /// Reading failed.
    Io(io::Error),
}

/// Why the lines of stdin stopped before their end. Each names the line, so
/// that a user knows which lines were published (every line before it).
#[derive(Debug, thiserror::Error)]
enum StdinError {
    #[error(
        "line {line_number} of stdin is longer than {LINE_BYTES_MAX} bytes, the largest \
         record the broker accepts (RECORD_BYTES_MAX); {}",
        published_before(*line_number)
    )]
    LineTooLong { line_number: u64 },
    #[error(
        "line {line_number} of stdin cannot be published: {reason}; {}",
        published_before(*line_number)
    )]
    RecordRefused {
        line_number: u64,
        /// Names the limit; its text is repeated here, so it is no `source`.
        reason: postbox_client::Error,
    },
    #[error("cannot read line {line_number} of stdin; {}", published_before(*line_number))]
    Read {
        line_number: u64,
        #[source]
        source: io::Error,
    },
}

/// What became of the lines before line `line_number` (1-based) when it failed.
fn published_before(line_number: u64) -> String {
    match line_number {
        0 | 1 => "no line was published".to_owned(),
        2 => "line 1 was published".to_owned(),
        n => format!("lines 1 to {} were published", n - 1),
    }
}

/// Reads lines (without their `\n`) and hands each to `deliver` until the
/// input ends, a read fails, or `deliver` returns false. A line over
/// `LINE_BYTES_MAX` is an error.
fn read_lines(mut reader: impl BufRead, mut deliver: impl FnMut(Result<Bytes, ReadError>) -> bool) {
    loop {
        let line = match read_line(&mut reader) {
            Ok(Some(line)) => Ok(line),
            Ok(None) => return,
            Err(error) => Err(error),
        };
        let failed = line.is_err();
        if !deliver(line) || failed {
            return;
        }
    }
}

/// One line, `None` at the end of input.
fn read_line(reader: &mut impl BufRead) -> Result<Option<Bytes>, ReadError> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().map_err(ReadError::Io)?;
        if available.is_empty() {
            return Ok((!line.is_empty()).then(|| Bytes::from(line)));
        }
        let (chunk, newline) = match available.iter().position(|&byte| byte == b'\n') {
            Some(end) => (&available[..end], true),
            None => (available, false),
        };
        if line.len() + chunk.len() > LINE_BYTES_MAX {
            return Err(ReadError::LineTooLong);
        }
        line.extend_from_slice(chunk);
        let consumed = chunk.len() + usize::from(newline);
        reader.consume(consumed);
        if newline {
            return Ok(Some(Bytes::from(line)));
        }
    }
}

/// Groups incoming lines into batches by the producer's limits, sending a
/// partial batch once no line arrived within the linger.
struct LineBatcher {
    lines: mpsc::Receiver<Result<Bytes, ReadError>>,
    builder: BatchBuilder<OutgoingRecord>,
    linger: Duration,
    template: RecordTemplate,
    /// Lines received so far, to name a line that fails.
    lines_received: u64,
    /// A line that failed after others were batched: reported by the next
    /// call, once the batch before it is out.
    failure: Option<StdinError>,
}

impl LineBatcher {
    fn new(
        lines: mpsc::Receiver<Result<Bytes, ReadError>>,
        builder: BatchBuilder<OutgoingRecord>,
        linger: Duration,
        template: RecordTemplate,
    ) -> Self {
        LineBatcher {
            lines,
            builder,
            linger,
            template,
            lines_received: 0,
            failure: None,
        }
    }

    /// The next batch; `None` at the end of input. A line that fails ends
    /// the batches: the lines before it come first, then its error.
    async fn next_batch(&mut self) -> Result<Option<Vec<OutgoingRecord>>, StdinError> {
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        // A line left over from the previous batch starts this one.
        let mut deadline = (!self.builder.is_empty()).then(|| Instant::now() + self.linger);
        loop {
            let line = match deadline {
                None => self.lines.recv().await,
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                        Ok(line) => line,
                        Err(_lingered) => return Ok(Some(self.builder.take())),
                    }
                }
            };
            let Some(line) = line else {
                return Ok((!self.builder.is_empty()).then(|| self.builder.take()));
            };
            let record = match self.record(line) {
                Ok(record) => record,
                Err(failure) if self.builder.is_empty() => return Err(failure),
                Err(failure) => {
                    self.failure = Some(failure);
                    return Ok(Some(self.builder.take()));
                }
            };
            let encoded_bytes = record.encoded_bytes();
            if let Some(complete) = self.builder.push(record, encoded_bytes) {
                return Ok(Some(complete));
            }
            if self.builder.is_full() {
                return Ok(Some(self.builder.take()));
            }
            deadline.get_or_insert_with(|| Instant::now() + self.linger);
        }
    }

    /// The record of the next line, or why that line cannot be published.
    fn record(&mut self, line: Result<Bytes, ReadError>) -> Result<OutgoingRecord, StdinError> {
        self.lines_received += 1;
        let line_number = self.lines_received;
        let payload = line.map_err(|error| match error {
            ReadError::LineTooLong => StdinError::LineTooLong { line_number },
            ReadError::Io(source) => StdinError::Read {
                line_number,
                source,
            },
        })?;
        let record = self.template.record(payload);
        record
            .validate()
            .map_err(|reason| StdinError::RecordRefused {
                line_number,
                reason,
            })?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Result<Bytes, ReadError>> {
        let mut lines = Vec::new();
        read_lines(input, |line| {
            lines.push(line);
            true
        });
        lines
    }

    fn texts(lines: Vec<Result<Bytes, ReadError>>) -> Vec<String> {
        lines
            .into_iter()
            .map(|line| match line {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(error) => format!("error: {error:?}"),
            })
            .collect()
    }

    #[test]
    fn lines_lose_their_newline_only() {
        assert_eq!(texts(lines(b"a\nb c\n\nd")), vec!["a", "b c", "", "d"]);
        assert_eq!(texts(lines(b"x\r\n")), vec!["x\r"]);
        assert!(lines(b"").is_empty());
    }

    #[test]
    fn over_long_line_is_an_error_and_stops_reading() {
        let mut input = vec![b'a'; LINE_BYTES_MAX + 1];
        input.extend_from_slice(b"\nnext\n");
        let read = lines(&input);
        assert!(matches!(read.as_slice(), [Err(ReadError::LineTooLong)]));
        // Exactly at the limit is fine.
        let at_limit = vec![b'a'; LINE_BYTES_MAX];
        assert!(matches!(lines(&at_limit).as_slice(), [Ok(line)] if line.len() == LINE_BYTES_MAX));
    }

    #[test]
    fn line_limit_is_the_broker_record_limit() {
        assert_eq!(LINE_BYTES_MAX, postbox_client::RECORD_BYTES_MAX);
    }

    fn template() -> RecordTemplate {
        RecordTemplate {
            key: Some(Bytes::from("k")),
            headers: vec![("h".into(), Bytes::from("v"))],
            partition: Some(3),
        }
    }

    fn batcher_of(
        input: Vec<Result<Bytes, ReadError>>,
        max_records: usize,
        max_bytes: usize,
    ) -> LineBatcher {
        let (sender, receiver) = mpsc::channel(input.len().max(1));
        for line in input {
            assert!(sender.try_send(line).is_ok());
        }
        LineBatcher::new(
            receiver,
            BatchBuilder::new(max_records, max_bytes),
            Duration::from_millis(5),
            template(),
        )
    }

    fn batcher(input: &[&str], max_records: usize, max_bytes: usize) -> LineBatcher {
        let input = input
            .iter()
            .map(|line| Ok(Bytes::from(line.to_string())))
            .collect();
        batcher_of(input, max_records, max_bytes)
    }

    fn payloads(batch: &[OutgoingRecord]) -> Vec<String> {
        batch
            .iter()
            .map(|record| String::from_utf8_lossy(record.payload()).into_owned())
            .collect()
    }

    async fn payload_batches(mut batcher: LineBatcher) -> Vec<Vec<String>> {
        let mut batches = Vec::new();
        while let Ok(Some(batch)) = batcher.next_batch().await {
            batches.push(payloads(&batch));
        }
        batches
    }

    #[tokio::test(start_paused = true)]
    async fn stdin_lines_batch_by_count() {
        let batches = payload_batches(batcher(&["1", "2", "3", "4", "5"], 2, 1_000)).await;
        assert_eq!(batches, vec![vec!["1", "2"], vec!["3", "4"], vec!["5"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn stdin_lines_batch_by_bytes() {
        // Each record counts as the broker counts it: its payload, key "k",
        // header "h"="v" and their length fields, 23 bytes + payload.
        let batches = payload_batches(batcher(&["aaaa", "bbbb", "cc", "dddddddd"], 100, 54)).await;
        assert_eq!(
            batches,
            vec![vec!["aaaa", "bbbb"], vec!["cc"], vec!["dddddddd"]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn partial_batch_is_sent_after_the_linger() {
        let (sender, receiver) = mpsc::channel(4);
        let mut batcher = LineBatcher::new(
            receiver,
            BatchBuilder::new(100, 1_000),
            Duration::from_millis(5),
            template(),
        );
        assert!(sender.try_send(Ok(Bytes::from("only"))).is_ok());
        // The sender stays open (an idle pipe): the linger, not the end, sends it.
        let batch = batcher
            .next_batch()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(batch.len(), 1);
        drop(sender);
        assert!(matches!(batcher.next_batch().await, Ok(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn lines_batched_before_an_over_long_line_come_out_before_its_error() {
        let input = vec![
            Ok(Bytes::from("first")),
            Ok(Bytes::from("second")),
            Err(ReadError::LineTooLong),
        ];
        let mut batcher = batcher_of(input, 100, 1_000);
        let batch = batcher
            .next_batch()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(payloads(&batch), vec!["first", "second"]);
        let error = batcher.next_batch().await.err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "line 3 of stdin is longer than 1048576 bytes, the largest record the broker \
                 accepts (RECORD_BYTES_MAX); lines 1 to 2 were published"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_line_over_the_record_limit_with_its_key_and_headers_is_refused_by_number() {
        // As long as a line may be, but with the key, the header, the framing
        // and the generated idempotency key, over RECORD_BYTES_MAX.
        let input = vec![
            Ok(Bytes::from("first")),
            Ok(Bytes::from(vec![b'a'; LINE_BYTES_MAX])),
            Ok(Bytes::from("never")),
        ];
        let mut batcher = batcher_of(input, 100, 1_000);
        let batch = batcher
            .next_batch()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(payloads(&batch), vec!["first"]);
        let error = batcher.next_batch().await.err().map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(
            error.starts_with("line 2 of stdin cannot be published: record size")
                && error.contains("1048576 (RECORD_BYTES_MAX)")
                && error.ends_with("line 1 was published"),
            "{error}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_first_line_is_reported_at_once() {
        let mut batcher = batcher_of(vec![Err(ReadError::LineTooLong)], 100, 1_000);
        let error = batcher.next_batch().await.err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(
                |e| e.starts_with("line 1 of stdin") && e.ends_with("no line was published")
            ),
            "{error:?}"
        );
    }

    #[test]
    fn template_applies_key_headers_and_partition() {
        let record = template().record(Bytes::from("body"));
        let expected = OutgoingRecord::new("body")
            .key("k")
            .header("h", "v")
            .partition(3);
        assert_eq!(record, expected);
    }
}
