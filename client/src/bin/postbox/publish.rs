//! `postbox publish`: one record from the command line, or one record per
//! line of stdin, published in batches through `Producer::send_batch`.
//!
//! Invariants:
//! - Acknowledgments print in input order, each batch's as soon as it is
//!   acknowledged, one line per acknowledged record, so the ack lines are
//!   always those of lines 1 to K of stdin.
//! - Lines are batched by the producer's own `batch_builder` and
//!   `record_cost`, which count everything the publish carries (generated
//!   idempotency keys included): one batch is one publish, never split.
//! - A batch that fails stops the command (later lines are not published,
//!   so per-key order holds). Its acknowledged records, if the failure came
//!   after some of them (`Error::PartlyPublished`), print first; then stdin
//!   is read to its end, unpublished, so that the error counts exactly the
//!   lines without an ack line and names the first of them.
//! - A line is bounded by `LINE_BYTES_MAX` before it is buffered whole. A
//!   line that cannot be a record (too long, or over a broker limit once the
//!   key and headers are added) stops the command too, but only after the
//!   lines before it are published and acknowledged, and the error names its
//!   line number and the limit.
//! - A partial batch waits at most the linger (`--linger-ms`) for more lines,
//!   so `tail -f | postbox publish` publishes promptly.

use std::io::{self, BufRead};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use postbox_client::{
    Ack, BatchBuilder, Error as ClientError, OutgoingRecord, Producer, ProducerConfig, RetryPolicy,
    RECORD_BYTES_MAX,
};
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
    let config = ProducerConfig {
        linger_ms: args.linger_ms,
        retry: RetryPolicy {
            elapsed_max_ms: args.retry_elapsed_max_ms,
            ..RetryPolicy::default()
        },
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(broker, config).await?;
    match args.value {
        Some(value) => {
            let mut record = template.record(Bytes::from(value));
            if let Some(idempotency_key) = args.idempotency_key {
                record = record.idempotency_key(idempotency_key);
            }
            let acks = producer
                .send_batch(&args.topic, vec![record])
                .await
                .context("1 record(s) not acknowledged")?;
            print_acks(output, &acks)
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
    let mut batcher = LineBatcher::new(receiver, producer.config().clone(), topic, template);
    // A line that cannot be published comes back as an error only after
    // the batch before it, so those lines are published and acknowledged.
    while let Some(batch) = batcher.next_batch().await? {
        let acks = match producer.send_batch(topic, batch.records).await {
            Ok(acks) => acks,
            Err(error) => {
                let (acks, cause) = acknowledged_part(error);
                print_acks(output, &acks)?;
                let first_line = batch.first_line + acks.len() as u64;
                return Err(batcher.not_acknowledged(first_line, cause).await.into());
            }
        };
        print_acks(output, &acks)?;
    }
    Ok(())
}

/// What a failed `send_batch` still acknowledged, and why the rest failed.
fn acknowledged_part(error: ClientError) -> (Vec<Ack>, ClientError) {
    match error {
        ClientError::PartlyPublished { acks, cause, .. } => (acks, *cause),
        error => (Vec::new(), error),
    }
}

/// Prints one line per acknowledgment, at once.
fn print_acks<W: io::Write>(output: &mut Output<W>, acks: &[Ack]) -> Result<()> {
    for ack in acks {
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

/// Why the reader could not deliver a line.
#[derive(Debug)]
enum ReadError {
    /// The line is longer than `LINE_BYTES_MAX` (it was skipped; reading
    /// goes on at the next line).
    LineTooLong,
    /// Reading failed; nothing more is read.
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
        reason: ClientError,
    },
    #[error("cannot read line {line_number} of stdin; {}", published_before(*line_number))]
    Read {
        line_number: u64,
        #[source]
        source: io::Error,
    },
    /// A publish failed: lines `first_line` to `last_line`, the end of
    /// stdin, have no ack line; the ones before it do.
    #[error(
        "{} record(s) not acknowledged, {} of stdin ({}{}): {cause}",
        last_line + 1 - first_line,
        line_range(*first_line, *last_line),
        published_before(*first_line),
        unread.as_ref().map(|e| format!("; stdin could not be read past line {last_line}: {e}"))
            .unwrap_or_default()
    )]
    NotAcknowledged {
        first_line: u64,
        last_line: u64,
        /// Why stdin could not be counted to its end, if it could not.
        unread: Option<io::Error>,
        /// The publish's error; its text is repeated here, so it is no `source`.
        cause: ClientError,
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

/// "line 5" or "lines 5 to 9".
fn line_range(first_line: u64, last_line: u64) -> String {
    if first_line == last_line {
        format!("line {first_line}")
    } else {
        format!("lines {first_line} to {last_line}")
    }
}

/// Reads lines (without their `\n`) and hands each to `deliver` until the
/// input ends, a read fails, or `deliver` returns false. A line over
/// `LINE_BYTES_MAX` is skipped and delivered as an error; reading goes on
/// after it, so that the lines of stdin can still be counted.
fn read_lines(mut reader: impl BufRead, mut deliver: impl FnMut(Result<Bytes, ReadError>) -> bool) {
    loop {
        let line = match read_line(&mut reader) {
            Ok(Some(line)) => Ok(line),
            Ok(None) => return,
            Err(error) => Err(error),
        };
        let failed = matches!(line, Err(ReadError::Io(_)));
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
            skip_line(reader)?;
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

/// Consumes input up to and including the next `\n`, keeping nothing.
fn skip_line(reader: &mut impl BufRead) -> Result<(), ReadError> {
    loop {
        let available = reader.fill_buf().map_err(ReadError::Io)?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|&byte| byte == b'\n') {
            Some(end) => {
                reader.consume(end + 1);
                return Ok(());
            }
            None => {
                let all = available.len();
                reader.consume(all);
            }
        }
    }
}

/// The records of consecutive stdin lines, for one publish.
#[derive(Debug)]
struct LineBatch {
    /// The line number (1-based) of the first record.
    first_line: u64,
    records: Vec<OutgoingRecord>,
}

/// Groups incoming lines into batches by the producer's limits, sending a
/// partial batch once no line arrived within the linger.
struct LineBatcher {
    lines: mpsc::Receiver<Result<Bytes, ReadError>>,
    /// The producer's: what a record costs, and the batches it publishes whole.
    config: ProducerConfig,
    builder: BatchBuilder<OutgoingRecord>,
    linger: Duration,
    template: RecordTemplate,
    /// Lines received so far, to name a line that fails.
    lines_received: u64,
    /// Lines handed out in batches so far, to number a batch's first line.
    lines_batched: u64,
    /// A line that failed after others were batched: reported by the next
    /// call, once the batch before it is out.
    failure: Option<StdinError>,
}

impl LineBatcher {
    fn new(
        lines: mpsc::Receiver<Result<Bytes, ReadError>>,
        config: ProducerConfig,
        topic: &str,
        template: RecordTemplate,
    ) -> Self {
        LineBatcher {
            lines,
            builder: config.batch_builder(topic),
            linger: Duration::from_millis(config.linger_ms),
            config,
            template,
            lines_received: 0,
            lines_batched: 0,
            failure: None,
        }
    }

    /// The next batch; `None` at the end of input. A line that fails ends
    /// the batches: the lines before it come first, then its error.
    async fn next_batch(&mut self) -> Result<Option<LineBatch>, StdinError> {
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
                        Err(_lingered) => return Ok(Some(self.take())),
                    }
                }
            };
            let Some(line) = line else {
                return Ok((!self.builder.is_empty()).then(|| self.take()));
            };
            let record = match self.record(line) {
                Ok(record) => record,
                Err(failure) if self.builder.is_empty() => return Err(failure),
                Err(failure) => {
                    self.failure = Some(failure);
                    return Ok(Some(self.take()));
                }
            };
            let cost = self.config.record_cost(&record);
            if let Some(complete) = self.builder.push(record, cost) {
                return Ok(Some(self.numbered(complete)));
            }
            if self.builder.is_full() {
                return Ok(Some(self.take()));
            }
            deadline.get_or_insert_with(|| Instant::now() + self.linger);
        }
    }

    /// The batch being built, numbered.
    fn take(&mut self) -> LineBatch {
        let records = self.builder.take();
        self.numbered(records)
    }

    /// `records`, the lines after those already batched, numbered.
    fn numbered(&mut self, records: Vec<OutgoingRecord>) -> LineBatch {
        let first_line = self.lines_batched + 1;
        self.lines_batched += records.len() as u64;
        LineBatch {
            first_line,
            records,
        }
    }

    /// The error for a publish that failed with `cause` at line
    /// `first_line`: stdin is read to its end (and not published) so that
    /// the error counts every line without an ack line.
    async fn not_acknowledged(&mut self, first_line: u64, cause: ClientError) -> StdinError {
        tracing::warn!(
            "line {first_line} of stdin was not acknowledged ({cause}): publishing stopped; \
             reading the rest of stdin, without publishing it, to count the lines not published"
        );
        let (last_line, unread) = self.count_to_the_end().await;
        StdinError::NotAcknowledged {
            first_line,
            last_line,
            unread,
            cause,
        }
    }

    /// Receives every line left, publishing none, and returns the number of
    /// the last line of stdin, and the read error that ended it early, if
    /// one did.
    async fn count_to_the_end(&mut self) -> (u64, Option<io::Error>) {
        // A line already refused is a line; a failed read is no line.
        if let Some(StdinError::Read {
            line_number,
            source,
        }) = self.failure.take()
        {
            return (line_number - 1, Some(source));
        }
        while let Some(line) = self.lines.recv().await {
            match line {
                Ok(_) | Err(ReadError::LineTooLong) => self.lines_received += 1,
                Err(ReadError::Io(error)) => return (self.lines_received, Some(error)),
            }
        }
        (self.lines_received, None)
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
    fn an_over_long_line_is_an_error_and_reading_goes_on_at_the_next_line() {
        let mut input = vec![b'a'; LINE_BYTES_MAX + 1];
        input.extend_from_slice(b"\nnext\n");
        input.extend_from_slice(&vec![b'b'; LINE_BYTES_MAX + 1]);
        assert_eq!(
            texts(lines(&input)),
            vec!["error: LineTooLong", "next", "error: LineTooLong"]
        );
        // Exactly at the limit is fine.
        let at_limit = vec![b'a'; LINE_BYTES_MAX];
        assert!(matches!(lines(&at_limit).as_slice(), [Ok(line)] if line.len() == LINE_BYTES_MAX));
    }

    #[test]
    fn line_limit_is_the_broker_record_limit() {
        assert_eq!(LINE_BYTES_MAX, postbox_client::RECORD_BYTES_MAX);
    }

    const TOPIC: &str = "t";

    fn template() -> RecordTemplate {
        RecordTemplate {
            key: Some(Bytes::from("k")),
            headers: vec![("h".into(), Bytes::from("v"))],
            partition: Some(3),
        }
    }

    fn config(max_records: usize, max_bytes: usize) -> ProducerConfig {
        ProducerConfig {
            max_batch_records: max_records,
            max_batch_bytes: max_bytes,
            linger_ms: 5,
            ..ProducerConfig::default()
        }
    }

    fn batcher_of(input: Vec<Result<Bytes, ReadError>>, config: ProducerConfig) -> LineBatcher {
        let (sender, receiver) = mpsc::channel(input.len().max(1));
        for line in input {
            assert!(sender.try_send(line).is_ok());
        }
        LineBatcher::new(receiver, config, TOPIC, template())
    }

    fn batcher(input: &[&str], max_records: usize, max_bytes: usize) -> LineBatcher {
        let input = input
            .iter()
            .map(|line| Ok(Bytes::from(line.to_string())))
            .collect();
        batcher_of(input, config(max_records, max_bytes))
    }

    fn payloads(batch: &[OutgoingRecord]) -> Vec<String> {
        batch
            .iter()
            .map(|record| String::from_utf8_lossy(record.payload()).into_owned())
            .collect()
    }

    async fn batches(mut batcher: LineBatcher) -> Vec<LineBatch> {
        let mut batches = Vec::new();
        while let Ok(Some(batch)) = batcher.next_batch().await {
            batches.push(batch);
        }
        batches
    }

    async fn payload_batches(batcher: LineBatcher) -> Vec<Vec<String>> {
        let batches = batches(batcher).await;
        batches
            .iter()
            .map(|batch| payloads(&batch.records))
            .collect()
    }

    async fn next_records(batcher: &mut LineBatcher) -> Vec<OutgoingRecord> {
        let batch = batcher.next_batch().await.ok().flatten();
        batch.map(|batch| batch.records).unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn stdin_lines_batch_by_count() {
        let batches = payload_batches(batcher(&["1", "2", "3", "4", "5"], 2, 1_000)).await;
        assert_eq!(batches, vec![vec!["1", "2"], vec!["3", "4"], vec!["5"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn stdin_lines_batch_by_the_bytes_of_the_request_sent() {
        // What each record adds to the request, in protobuf: key "k" 3,
        // generated idempotency key 1 + 1 + 36, header "h"="v" 2 + 3 + 3,
        // partition 3 as 2, payload 2 + its bytes, and the record's own tag
        // and length 2: 55 bytes + payload. Topic "t": 3 bytes.
        let max_bytes = 3 + (55 + 4) + (55 + 4);
        let batches =
            payload_batches(batcher(&["aaaa", "bbbb", "cc", "dddddddd"], 100, max_bytes)).await;
        assert_eq!(
            batches,
            vec![vec!["aaaa", "bbbb"], vec!["cc"], vec!["dddddddd"]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_stdin_batch_is_one_publish_of_send_batch() {
        // The CLI once sized 1 MiB batches without the generated idempotency
        // keys, and send_batch cut each in two publishes (two fsyncs, and a
        // lost acknowledgment when the second failed). Lines of 1,000 to
        // 1,600 bytes (so that bytes, not max_batch_records, fill a batch),
        // some 3 MiB of them, with the default producer settings.
        let input: Vec<Result<Bytes, ReadError>> = (0..2_500)
            .map(|i| Ok(Bytes::from(vec![b'x'; 1_000 + (i * 37) % 600])))
            .collect();
        let config = ProducerConfig {
            linger_ms: 5,
            ..ProducerConfig::default()
        };
        let batches = batches(batcher_of(input, config.clone())).await;
        assert!(batches.len() >= 3, "{} batches", batches.len());
        let mut next_line = 1;
        for batch in &batches {
            assert_eq!(batch.first_line, next_line, "numbered in order");
            next_line += batch.records.len() as u64;
            let publishes = config.split_batch(TOPIC, batch.records.clone());
            assert_eq!(publishes.len(), 1, "batch of line {}", batch.first_line);
        }
        assert_eq!(next_line, 2_501, "every line batched");
        for batch in &batches[..batches.len() - 1] {
            let line_bytes: usize = batch.records.iter().map(|r| r.payload().len()).sum();
            assert!(
                line_bytes > config.max_batch_bytes * 3 / 4,
                "full: {line_bytes} bytes of lines"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn partial_batch_is_sent_after_the_linger() {
        let (sender, receiver) = mpsc::channel(4);
        let mut batcher = LineBatcher::new(receiver, config(100, 1_000), TOPIC, template());
        assert!(sender.try_send(Ok(Bytes::from("only"))).is_ok());
        // The sender stays open (an idle pipe): the linger, not the end, sends it.
        assert_eq!(next_records(&mut batcher).await.len(), 1);
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
        let mut batcher = batcher_of(input, config(100, 1_000));
        let batch = next_records(&mut batcher).await;
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
        let mut batcher = batcher_of(input, config(100, 1_000));
        let batch = next_records(&mut batcher).await;
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
        let mut batcher = batcher_of(vec![Err(ReadError::LineTooLong)], config(100, 1_000));
        let error = batcher.next_batch().await.err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(
                |e| e.starts_with("line 1 of stdin") && e.ends_with("no line was published")
            ),
            "{error:?}"
        );
    }

    fn disk_full() -> ClientError {
        ClientError::from(tonic::Status::unavailable("partition 0 failed a write"))
    }

    #[tokio::test(start_paused = true)]
    async fn an_unacknowledged_publish_counts_every_line_to_the_end_of_stdin() {
        // Batches of two; the second batch's publish fails after its first
        // record was acknowledged (line 3), so line 4 is the first without
        // an ack line. The lines after, an over-long one and a refused one
        // among them, are counted too.
        let input = vec![
            Ok(Bytes::from("1")),
            Ok(Bytes::from("2")),
            Ok(Bytes::from("3")),
            Ok(Bytes::from("4")),
            Ok(Bytes::from("5")),
            Ok(Bytes::from(vec![b'a'; LINE_BYTES_MAX])),
            Err(ReadError::LineTooLong),
            Ok(Bytes::from("8")),
        ];
        let mut batcher = batcher_of(input, config(2, 1_000));
        assert_eq!(payloads(&next_records(&mut batcher).await), ["1", "2"]);
        let second = batcher.next_batch().await.ok().flatten();
        assert_eq!(second.as_ref().map(|batch| batch.first_line), Some(3));
        let error = batcher.not_acknowledged(4, disk_full()).await;
        assert_eq!(
            error.to_string(),
            "5 record(s) not acknowledged, lines 4 to 8 of stdin (lines 1 to 3 were \
             published): partition 0 failed a write (UNAVAILABLE)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stdin_that_fails_while_counting_says_where() {
        let input = vec![
            Ok(Bytes::from("1")),
            Ok(Bytes::from("2")),
            Err(ReadError::Io(io::Error::other("device gone"))),
        ];
        let mut batcher = batcher_of(input, config(1, 1_000));
        assert_eq!(payloads(&next_records(&mut batcher).await), ["1"]);
        let error = batcher.not_acknowledged(1, disk_full()).await;
        assert_eq!(
            error.to_string(),
            "2 record(s) not acknowledged, lines 1 to 2 of stdin (no line was published; \
             stdin could not be read past line 2: device gone): partition 0 failed a write \
             (UNAVAILABLE)"
        );
    }

    #[test]
    fn acknowledged_part_keeps_the_acks_of_a_partly_published_batch() {
        let ack = Ack {
            partition: 0,
            offset: 9,
            duplicate: false,
            idempotency_key: Bytes::from("k"),
        };
        let partly = ClientError::PartlyPublished {
            acks: vec![ack.clone()],
            unacknowledged: 2,
            cause: Box::new(disk_full()),
        };
        assert_eq!(acknowledged_part(partly), (vec![ack], disk_full()));
        assert_eq!(acknowledged_part(disk_full()), (Vec::new(), disk_full()));
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
