//! `postbox subscribe` and `postbox replay`: print records from a consumer,
//! commit a group's positions, stop cleanly on Ctrl-C or SIGTERM.
//!
//! Invariants: a position is committed only after the records before it were
//! flushed to stdout, so a crash or a closed pipe re-delivers rather than
//! loses (at least once); stdout is flushed whenever the consumer has nothing
//! buffered, so a following subscription prints records as they arrive; a
//! signal is heard at once, even while a commit is retrying against a broker
//! that is down. The commit tick drops the pending `Consumer::next` every
//! second: that is safe only because `next` is cancel safe, resubscription
//! backoff and subscribe calls included (see `postbox_client::Consumer`).

use std::io::{self, IsTerminal};
use std::pin::pin;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use postbox_client::{Admin, Consumer, ConsumerConfig, StartFrom, TopicInfo};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::{ReplayArgs, SubscribeArgs};
use crate::output::Output;

/// How often a group's positions are committed while records flow.
const COMMIT_INTERVAL_MS: u64 = 1_000;

/// Longest the commit at exit may take: a user who pressed Ctrl-C should not
/// wait out a whole retry sequence against a broker that is down.
const EXIT_COMMIT_TIMEOUT_MS: u64 = 10_000;

pub async fn subscribe<W: io::Write>(
    broker: &str,
    args: SubscribeArgs,
    output: &mut Output<W>,
) -> Result<()> {
    let config = ConsumerConfig {
        group: args.group.clone(),
        partition: args.partition,
        start: args.start(),
        follow: args.follow,
        ..ConsumerConfig::new(args.topic.clone())
    };
    let consumer = Consumer::subscribe(broker, config).await?;
    print_records(consumer, output, args.commits(), ProgressBar::hidden()).await
}

pub async fn replay<W: io::Write>(
    broker: &str,
    args: ReplayArgs,
    output: &mut Output<W>,
) -> Result<()> {
    if let Some(to_offset) = args.to_offset.filter(|&to| to <= args.from_offset) {
        bail!(
            "--to-offset ({to_offset}) must be greater than --from-offset ({}): the range excludes --to-offset",
            args.from_offset
        );
    }
    let admin = Admin::connect(broker).await?;
    let info = admin.describe_topic(&args.topic).await?;
    let config = ConsumerConfig {
        partition: args.partition,
        start: StartFrom::Offset(args.from_offset),
        follow: false,
        stop_offset: args.to_offset,
        ..ConsumerConfig::new(args.topic.clone())
    };
    let consumer = Consumer::subscribe(broker, config).await.with_context(|| {
        format!(
            "cannot replay {} from offset {}",
            args.topic, args.from_offset
        )
    })?;
    let progress = progress_bar(expected_records(&info, &args));
    print_records(consumer, output, false, progress).await
}

/// Records the replay should print: per partition, `min(to, end) - from`.
fn expected_records(info: &TopicInfo, args: &ReplayArgs) -> u64 {
    info.partition_info
        .iter()
        .filter(|partition| {
            args.partition
                .is_none_or(|wanted| wanted == partition.partition)
        })
        .map(|partition| {
            let stop = args
                .to_offset
                .map_or(partition.end_offset, |to| to.min(partition.end_offset));
            stop.saturating_sub(args.from_offset)
        })
        .sum()
}

/// A progress bar on stderr when it is a terminal; hidden otherwise, so
/// that logs and pipes never see its escape codes.
fn progress_bar(total_records: u64) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_records);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} records, {per_sec}, eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Prints records until the consumer ends or a signal arrives, committing
/// on an interval and at exit when `commit` is set.
async fn print_records<W: io::Write>(
    mut consumer: Consumer,
    output: &mut Output<W>,
    commit: bool,
    progress: ProgressBar,
) -> Result<()> {
    let mut shutdown = pin!(shutdown_signal());
    let mut commit_timer = tokio::time::interval(Duration::from_millis(COMMIT_INTERVAL_MS));
    commit_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            signal = &mut shutdown => {
                signal.context("cannot listen for signals")?;
                break;
            }
            _ = commit_timer.tick(), if commit => {
                output.flush()?;
                tokio::select! {
                    biased;
                    signal = &mut shutdown => {
                        signal.context("cannot listen for signals")?;
                        break;
                    }
                    committed = consumer.commit() => {
                        committed.context("cannot commit offsets")?;
                    }
                }
            }
            next = consumer.next() => {
                let Some(record) = next else { break };
                output.record(&record?)?;
                progress.inc(1);
                if consumer.buffered_records() == 0 {
                    output.flush()?;
                }
            }
        }
    }
    output.flush()?;
    progress.finish_and_clear();
    if commit {
        commit_at_exit(&mut consumer).await?;
    }
    Ok(())
}

async fn commit_at_exit(consumer: &mut Consumer) -> Result<()> {
    let timeout = Duration::from_millis(EXIT_COMMIT_TIMEOUT_MS);
    match tokio::time::timeout(timeout, consumer.commit()).await {
        Ok(committed) => committed.context("cannot commit offsets"),
        Err(_elapsed) => {
            bail!("cannot commit offsets: no answer within {EXIT_COMMIT_TIMEOUT_MS} ms")
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() -> io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postbox_client::{Durability, PartitionInfo};

    fn topic(ends: &[u64]) -> TopicInfo {
        TopicInfo {
            name: "t".into(),
            partitions: ends.len() as u32,
            durability: Durability::Sync,
            fsync_interval_ms: 1_000,
            segment_bytes: 1 << 27,
            retention_ms: None,
            retention_bytes: None,
            dedup_window_ms: 1,
            dedup_keys_max: 1,
            partition_info: ends
                .iter()
                .enumerate()
                .map(|(partition, &end_offset)| PartitionInfo {
                    partition: partition as u32,
                    earliest_offset: 0,
                    end_offset,
                    size_bytes: 0,
                    segments: 1,
                })
                .collect(),
        }
    }

    fn range(from_offset: u64, to_offset: Option<u64>, partition: Option<u32>) -> ReplayArgs {
        ReplayArgs {
            topic: "t".into(),
            from_offset,
            to_offset,
            partition,
        }
    }

    #[test]
    fn expected_records_clamps_to_each_partition_end() {
        let info = topic(&[100, 30, 5]);
        assert_eq!(expected_records(&info, &range(10, Some(50), None)), 40 + 20);
        assert_eq!(expected_records(&info, &range(10, None, None)), 90 + 20);
        assert_eq!(expected_records(&info, &range(10, None, Some(1))), 20);
        assert_eq!(expected_records(&info, &range(0, Some(3), Some(2))), 3);
    }
}
