//! The command line: subcommands, flags, help texts with examples, and the
//! parsing of values clap cannot parse alone (`--header NAME=VALUE`).
//!
//! Invariant: the names here are the interface in docs/DESIGN.md (`topics`,
//! `publish`, `subscribe`, `replay`, `offsets` and their flags); new flags
//! may be added, none renamed.

use clap::{Args, Parser, Subcommand, ValueEnum};
use postbox_client::{
    Durability, StartFrom, DEFAULT_BROKER, LINGER_MS_DEFAULT, RETRY_ELAPSED_MAX_MS,
};

const EXAMPLES: &str = "\
Examples:
  postbox topics create orders.created --partitions 3
  postbox publish orders.created --key customer-7 '{\"order\":42}'
  cat events.jsonl | postbox publish orders.created
  postbox subscribe orders.created --group billing --follow
  postbox replay orders.created --from-offset 100 --to-offset 200 --partition 0
  postbox offsets get billing orders.created";

/// Postbox command-line client: topics, publish, subscribe, replay, offsets.
///
/// Data goes to stdout (JSON lines unless `--output raw`); errors go to
/// stderr as one line, with exit status 1.
#[derive(Debug, Parser)]
#[command(name = "postbox", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Broker address: host:port or http://host:port.
    #[arg(
        long,
        global = true,
        env = "POSTBOX_BROKER",
        default_value = DEFAULT_BROKER,
        value_name = "URL"
    )]
    pub broker: String,

    /// How records print: json (one object per line) or raw (each payload's
    /// bytes followed by a newline).
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Json)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How records are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One JSON object per record and line.
    Json,
    /// The payload bytes only, each followed by a newline.
    Raw,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Publish VALUE, or each line of stdin (without its newline) as one record.
    ///
    /// Prints one JSON line per acknowledged record, in input order:
    /// {"partition":..,"offset":..,"duplicate":..,"idempotency_key":".."}.
    /// A record that could not be acknowledged prints no line; the exit status
    /// is then 1 and stderr says why. Records without --idempotency-key get a
    /// UUID v7, so retries after a lost answer never append twice.
    ///
    /// When a publish of stdin lines fails, publishing stops: the ack lines
    /// are those of lines 1 to K of stdin, exactly, and the error reads
    /// "N record(s) not acknowledged, lines K+1 to END of stdin (...)",
    /// counted after reading stdin to its end without publishing it. To
    /// publish only those: `tail -n +FIRST FILE | postbox publish TOPIC`,
    /// FIRST being the first line the error names (K+1).
    Publish(PublishArgs),
    /// Print records as they are stored, then exit at the end, or keep
    /// following with --follow.
    ///
    /// With --group, the group's positions are committed after the records are
    /// printed: every second and at exit, including on Ctrl-C or SIGTERM.
    ///
    /// Each record prints as one JSON line: {"partition","offset","timestamp"
    /// (ms since the epoch),"key","idempotency_key","headers","payload"}. Keys
    /// and payloads that are not UTF-8 print as key_base64,
    /// idempotency_key_base64 and payload_base64 instead. "headers" maps each
    /// header name to its value; a name that repeats maps to an array of its
    /// values in order ({"trace":["a","b"]}), so no name appears twice. A
    /// header name with any value that is not UTF-8 moves, with all its
    /// values, to a headers_base64 object of the same shape. --output raw
    /// prints only each payload and a newline.
    Subscribe(SubscribeArgs),
    /// Print the records from --from-offset (inclusive) to --to-offset
    /// (EXCLUSIVE) of one partition, or of every partition (the same offsets in
    /// each), then exit.
    ///
    /// With --partition, a range that starts past the partition's end fails
    /// with the broker's OUT_OF_RANGE error and exit status 1; without it,
    /// partitions that have not reached --from-offset print nothing. A start
    /// before a partition's earliest retained record always fails
    /// (OUT_OF_RANGE: those records are gone). A --to-offset past the end
    /// stops at the end. A progress bar
    /// shows on stderr when it is a terminal. Records print as with
    /// `postbox subscribe`: one JSON line each, "headers" mapping each header
    /// name to its value, or to an array of its values in order when the
    /// name repeats.
    Replay(ReplayArgs),
    /// Read or set a consumer group's committed offsets.
    #[command(subcommand)]
    Offsets(OffsetsCommand),
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic and print its description as one JSON line.
    #[command(
        after_help = "Example:\n  postbox topics create orders.created --partitions 3 --retention-ms 604800000"
    )]
    Create(CreateTopicArgs),
    /// Print every topic, one JSON line each.
    List,
    /// Print one topic's settings and partitions as one JSON line.
    Describe {
        /// The topic.
        name: String,
    },
    /// Delete a topic, its records and its groups' offsets.
    Delete {
        /// The topic.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateTopicArgs {
    /// 1 to 249 characters of [A-Za-z0-9._-], neither "." nor "..".
    pub name: String,
    /// Number of partitions, fixed for the topic's life.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// sync: acknowledge after fdatasync; async: after the write, flushed
    /// every --fsync-interval-ms.
    #[arg(long, default_value_t = Durability::Sync, value_name = "sync|async")]
    pub durability: Durability,
    /// Flush interval of an async topic (broker default 1000).
    #[arg(long)]
    pub fsync_interval_ms: Option<u64>,
    /// Delete sealed segments older than this (default: keep forever).
    #[arg(long)]
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while a partition is larger than this.
    #[arg(long)]
    pub retention_bytes: Option<u64>,
    /// Segment file size at which a new segment starts (broker default 128 MiB).
    #[arg(long)]
    pub segment_bytes: Option<u64>,
    /// How long an idempotency key is remembered (broker default 7 days).
    #[arg(long)]
    pub dedup_window_ms: Option<u64>,
    /// Most idempotency keys remembered (broker default 10,000,000).
    #[arg(long)]
    pub dedup_keys_max: Option<u64>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  postbox publish orders.created --key customer-7 --header type=created '{\"order\":42}'
  postbox publish orders.created --idempotency-key order-42-created '{\"order\":42}'
  cat events.jsonl | postbox publish orders.created --key batch-7")]
pub struct PublishArgs {
    /// The topic.
    pub topic: String,
    /// Partitioning key: records with the same key go to the same partition, in order.
    #[arg(long)]
    pub key: Option<String>,
    /// Idempotency key of VALUE (only with VALUE: stdin records get one each).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// A header on every record; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Publish to this partition, whatever the key.
    #[arg(long)]
    pub partition: Option<u32>,
    /// How long a partial batch of stdin lines waits for more lines before
    /// it is published, 0 to 60000 (LINGER_MS_MAX).
    #[arg(long, value_name = "MS", default_value_t = LINGER_MS_DEFAULT)]
    pub linger_ms: u64,
    /// How long a failed publish is retried (transient errors only) before
    /// the command gives up; 0: never retried.
    #[arg(long, value_name = "MS", default_value_t = RETRY_ELAPSED_MAX_MS)]
    pub retry_elapsed_max_ms: u64,
    /// The payload; without it, each line of stdin is one record.
    pub value: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  postbox subscribe orders.created --from earliest
  postbox subscribe orders.created --group billing --follow
  postbox subscribe orders.created --partition 2 --from 1000 --output raw")]
pub struct SubscribeArgs {
    /// The topic.
    pub topic: String,
    /// Consumer group: start from its committed offsets and commit positions.
    #[arg(long)]
    pub group: Option<String>,
    /// Where to start in each partition: earliest, latest, committed (needs
    /// --group), or an offset. Default: committed with --group, else earliest.
    #[arg(
        long,
        value_name = "earliest|latest|committed|OFFSET",
        conflicts_with = "from_timestamp_ms"
    )]
    pub from: Option<StartFrom>,
    /// Start at the first record appended at or after this time (ms since the epoch).
    #[arg(long, value_name = "MS")]
    pub from_timestamp_ms: Option<i64>,
    /// Only this partition (default: every partition).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Keep running and print new records as they arrive.
    #[arg(long)]
    pub follow: bool,
    /// Commit the group's positions (the default with --group).
    #[arg(long, requires = "group", overrides_with = "no_commit")]
    pub commit: bool,
    /// Read with the group's offsets without committing.
    #[arg(long, overrides_with = "commit")]
    pub no_commit: bool,
}

impl SubscribeArgs {
    /// The start position, with the default that depends on --group.
    pub fn start(&self) -> StartFrom {
        if let Some(timestamp_ms) = self.from_timestamp_ms {
            return StartFrom::Timestamp(timestamp_ms);
        }
        match (self.from, &self.group) {
            (Some(start), _) => start,
            (None, Some(_)) => StartFrom::Committed,
            (None, None) => StartFrom::Earliest,
        }
    }

    /// Whether positions are committed.
    pub fn commits(&self) -> bool {
        self.group.is_some() && !self.no_commit
    }
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  postbox replay orders.created --from-offset 0 --to-offset 100 --partition 0
  postbox replay orders.created --from-offset 5000 --output raw > payloads.txt")]
pub struct ReplayArgs {
    /// The topic.
    pub topic: String,
    /// First offset printed (inclusive).
    #[arg(long, value_name = "N")]
    pub from_offset: u64,
    /// Offset to stop before (exclusive); default: each partition's end.
    #[arg(long, value_name = "M")]
    pub to_offset: Option<u64>,
    /// Only this partition (default: every partition).
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum OffsetsCommand {
    /// Print a group's committed offsets, one JSON line per partition:
    /// {"partition":..,"offset":..}. Partitions never committed are absent.
    Get {
        /// The consumer group.
        group: String,
        /// The topic.
        topic: String,
    },
    /// Set a group's committed offset (the next offset to read) in one partition.
    #[command(
        after_help = "Example:\n  postbox offsets set billing orders.created --partition 0 --offset 1200"
    )]
    Set {
        /// The consumer group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        #[arg(long)]
        partition: u32,
        /// The next offset the group reads; at most the partition's end.
        #[arg(long)]
        offset: u64,
    },
}

/// Parses `NAME=VALUE`, splitting at the first `=` (values may contain `=`).
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        Some(_) => Err(format!(
            "header {text:?} has an empty name; expected NAME=VALUE"
        )),
        None => Err(format!("header {text:?} has no '='; expected NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("postbox").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn header_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_header("type=created"),
            Ok(("type".into(), "created".into()))
        );
        assert_eq!(parse_header("q=a=b"), Ok(("q".into(), "a=b".into())));
        assert_eq!(parse_header("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=value").is_err());
    }

    fn publish_args(args: &[&str]) -> PublishArgs {
        match parse(args) {
            Ok(Cli {
                command: Command::Publish(args),
                ..
            }) => args,
            other => panic!("publish did not parse: {other:?}"),
        }
    }

    #[test]
    fn publish_pacing_defaults_to_the_producers() {
        let defaults = publish_args(&["publish", "t"]);
        assert_eq!(defaults.linger_ms, LINGER_MS_DEFAULT);
        assert_eq!(defaults.retry_elapsed_max_ms, RETRY_ELAPSED_MAX_MS);
        let set = publish_args(&[
            "publish",
            "t",
            "--linger-ms",
            "100",
            "--retry-elapsed-max-ms",
            "0",
        ]);
        assert_eq!((set.linger_ms, set.retry_elapsed_max_ms), (100, 0));
    }

    #[test]
    fn repeated_headers_are_kept_in_order() {
        let cli = parse(&["publish", "t", "--header", "a=1", "--header", "b=2", "v"]);
        let Ok(Cli {
            command: Command::Publish(args),
            ..
        }) = cli
        else {
            panic!("publish did not parse: {cli:?}");
        };
        assert_eq!(
            args.headers,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(args.value.as_deref(), Some("v"));
    }

    fn subscribe(args: &[&str]) -> SubscribeArgs {
        let full: Vec<&str> = ["subscribe", "t"].iter().chain(args).copied().collect();
        match parse(&full) {
            Ok(Cli {
                command: Command::Subscribe(args),
                ..
            }) => args,
            other => panic!("subscribe did not parse: {other:?}"),
        }
    }

    #[test]
    fn subscribe_start_defaults_depend_on_group() {
        assert_eq!(subscribe(&[]).start(), StartFrom::Earliest);
        assert_eq!(subscribe(&["--group", "g"]).start(), StartFrom::Committed);
        assert_eq!(
            subscribe(&["--group", "g", "--from", "latest"]).start(),
            StartFrom::Latest
        );
        assert_eq!(subscribe(&["--from", "42"]).start(), StartFrom::Offset(42));
        assert_eq!(
            subscribe(&["--from-timestamp-ms", "1700000000000"]).start(),
            StartFrom::Timestamp(1_700_000_000_000)
        );
    }

    #[test]
    fn group_commits_unless_told_not_to() {
        assert!(!subscribe(&[]).commits());
        assert!(subscribe(&["--group", "g"]).commits());
        assert!(subscribe(&["--group", "g", "--commit"]).commits());
        assert!(!subscribe(&["--group", "g", "--no-commit"]).commits());
        assert!(parse(&["subscribe", "t", "--commit"]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["subscribe", "t", "--from", "yesterday"]).is_err());
        assert!(parse(&["topics", "create", "t", "--durability", "fast"]).is_err());
        assert!(parse(&["publish", "t", "--header", "novalue", "v"]).is_err());
        assert!(parse(&["replay", "t"]).is_err());
    }

    #[test]
    fn broker_and_output_are_accepted_after_the_subcommand() {
        let cli = parse(&[
            "subscribe",
            "t",
            "--output",
            "raw",
            "--broker",
            "localhost:1",
        ]);
        let Ok(cli) = cli else {
            panic!("did not parse: {cli:?}");
        };
        assert_eq!(cli.output, OutputFormat::Raw);
        assert_eq!(cli.broker, "localhost:1");
    }
}
