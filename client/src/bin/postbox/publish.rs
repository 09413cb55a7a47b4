//! `postbox publish`: one record from the command line, or one record per
//! line of stdin, published in batches through `Producer::send_batch`.
//!
//! Invariants: acknowledgments print in input order, each batch's as soon as
//! it is acknowledged; a batch that fails prints nothing and stops the
//! command (later lines are not published, so per-key order holds); a line
//! is bounded by `LINE_BYTES_MAX` before it is buffered whole. Lines are
//! batched by count and bytes with the producer's limits, and a partial batch
//! waits at most the producer's linger for more lines, so `tail -f | postbox
//! publish` publishes promptly.

use std::io::{self, BufRead};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use postbox_client::{BatchBuilder, OutgoingRecord, Producer, ProducerConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::args::PublishArgs;
use crate::output::Output;

/// Longest stdin line accepted: the broker's RECORD_BYTES_MAX (1 MiB), so a
/// line that could never be published is refused before it fills memory.
const LINE_BYTES_MAX: usize = 1024 * 1024;

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
    let mut batcher = LineBatcher {
        lines: receiver,
        builder: BatchBuilder::new(config.max_batch_records, config.max_batch_bytes),
        linger: Duration::from_millis(config.linger_ms),
        template,
    };
    while let Some(batch) = batcher.next_batch().await.context("cannot read stdin")? {
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

/// Reads lines (without their `\n`) and hands each to `deliver` until the
/// input ends, a read fails, or `deliver` returns false. A line over
/// `LINE_BYTES_MAX` is an error.
fn read_lines(mut reader: impl BufRead, mut deliver: impl FnMut(io::Result<Bytes>) -> bool) {
    let mut line_number = 0u64;
    loop {
        line_number += 1;
        let line = match read_line(&mut reader, line_number) {
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
fn read_line(reader: &mut impl BufRead, line_number: u64) -> io::Result<Option<Bytes>> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((!line.is_empty()).then(|| Bytes::from(line)));
        }
        let (chunk, newline) = match available.iter().position(|&byte| byte == b'\n') {
            Some(end) => (&available[..end], true),
            None => (available, false),
        };
        if line.len() + chunk.len() > LINE_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "line {line_number} is longer than {LINE_BYTES_MAX} bytes (LINE_BYTES_MAX)"
                ),
            ));
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
    lines: mpsc::Receiver<io::Result<Bytes>>,
    builder: BatchBuilder<OutgoingRecord>,
    linger: Duration,
    template: RecordTemplate,
}

impl LineBatcher {
    /// The next batch; `None` at the end of input.
    async fn next_batch(&mut self) -> io::Result<Option<Vec<OutgoingRecord>>> {
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
            let record = self.template.record(line?);
            let size_bytes = record.size_bytes();
            if let Some(complete) = self.builder.push(record, size_bytes) {
                return Ok(Some(complete));
            }
            if self.builder.is_full() {
                return Ok(Some(self.builder.take()));
            }
            deadline.get_or_insert_with(|| Instant::now() + self.linger);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<io::Result<Bytes>> {
        let mut lines = Vec::new();
        read_lines(input, |line| {
            lines.push(line);
            true
        });
        lines
    }

    fn texts(lines: Vec<io::Result<Bytes>>) -> Vec<String> {
        lines
            .into_iter()
            .map(|line| match line {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(error) => format!("error: {error}"),
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
        assert_eq!(read.len(), 1);
        assert!(read[0].is_err());
        // Exactly at the limit is fine.
        let at_limit = vec![b'a'; LINE_BYTES_MAX];
        assert!(matches!(lines(&at_limit).as_slice(), [Ok(line)] if line.len() == LINE_BYTES_MAX));
    }

    fn template() -> RecordTemplate {
        RecordTemplate {
            key: Some(Bytes::from("k")),
            headers: vec![("h".into(), Bytes::from("v"))],
            partition: Some(3),
        }
    }

    fn batcher(input: &[&str], max_records: usize, max_bytes: usize) -> LineBatcher {
        let (sender, receiver) = mpsc::channel(input.len().max(1));
        for line in input {
            assert!(sender.try_send(Ok(Bytes::from(line.to_string()))).is_ok());
        }
        LineBatcher {
            lines: receiver,
            builder: BatchBuilder::new(max_records, max_bytes),
            linger: Duration::from_millis(5),
            template: template(),
        }
    }

    async fn payload_batches(mut batcher: LineBatcher) -> Vec<Vec<String>> {
        let mut batches = Vec::new();
        while let Ok(Some(batch)) = batcher.next_batch().await {
            batches.push(
                batch
                    .iter()
                    .map(|record| String::from_utf8_lossy(record.payload()).into_owned())
                    .collect(),
            );
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
        // Each record is its payload plus key "k" and header "h"="v": 3 bytes + payload.
        let batches = payload_batches(batcher(&["aaaa", "bbbb", "cc", "dddddddd"], 100, 14)).await;
        assert_eq!(
            batches,
            vec![vec!["aaaa", "bbbb"], vec!["cc"], vec!["dddddddd"]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn partial_batch_is_sent_after_the_linger() {
        let (sender, receiver) = mpsc::channel(4);
        let mut batcher = LineBatcher {
            lines: receiver,
            builder: BatchBuilder::new(100, 1_000),
            linger: Duration::from_millis(5),
            template: template(),
        };
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
