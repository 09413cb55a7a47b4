//! The `postbox` CLI as a user meets it, against the real broker: the quick
//! start (create, publish from stdin, replay), following, groups, duplicates,
//! every command's `--help`, a wrong broker address, a range past the end,
//! and stdin batches that are one publish each.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use postbox_client::{OutgoingRecord, ProducerConfig, MAX_BATCH_BYTES_DEFAULT};
use postbox_engine::storage::batch::{parse_header, HEADER_BYTES};
use postbox_tests::broker::BrokerProcess;
use postbox_tests::cli::{postbox, postbox_json};
use serde_json::{json, Value};

fn broker() -> (tempfile::TempDir, BrokerProcess) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    (dir, broker)
}

/// Checks a failure as a user sees it: non-zero status, one line on stderr
/// holding every needle, no panic or debug output.
fn fails_cleanly(out: &std::process::Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it fails: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    for forbidden in ["panicked", "RUST_BACKTRACE", "Error {", "Status {"] {
        assert!(!stderr.contains(forbidden), "no {forbidden:?}: {stderr}");
    }
    for needle in needles {
        assert!(stderr.contains(needle), "names {needle:?}: {stderr}");
    }
}

#[test]
fn quick_start_publish_from_stdin_then_replay_from_an_offset() {
    let (_dir, broker) = broker();
    let url = broker.url();
    let created = postbox_json(
        &url,
        &["topics", "create", "orders.created", "--partitions", "1"],
        b"",
    );
    assert_eq!(created[0]["name"], "orders.created");

    let input = "first\nsecond\nthird\nfourth\n";
    let acks = postbox_json(
        &url,
        &[
            "publish",
            "orders.created",
            "--key",
            "customer-7",
            "--header",
            "type=created",
        ],
        input.as_bytes(),
    );
    assert_eq!(acks.len(), 4, "one line per acknowledged record");
    for (ack, offset) in acks.iter().zip(0..) {
        assert_eq!(ack["partition"], 0);
        assert_eq!(ack["offset"], offset);
        assert_eq!(ack["duplicate"], false);
        let key = ack["idempotency_key"].as_str().expect("the key as text");
        assert!(uuid::Uuid::parse_str(key).is_ok(), "a UUID: {key}");
    }

    let replayed = postbox_json(
        &url,
        &["replay", "orders.created", "--from-offset", "1"],
        b"",
    );
    let payloads: Vec<&str> = replayed
        .iter()
        .filter_map(|r| r["payload"].as_str())
        .collect();
    assert_eq!(
        payloads,
        ["second", "third", "fourth"],
        "exactly from offset 1 on"
    );
    let r = &replayed[0];
    assert_eq!(r["partition"], 0);
    assert_eq!(r["offset"], 1);
    assert_eq!(r["key"], "customer-7");
    assert_eq!(r["headers"], json!({"type": "created"}));
    assert_eq!(r["idempotency_key"], acks[1]["idempotency_key"]);
    assert!(
        r["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "ms since the epoch: {r}"
    );

    let bounded = postbox_json(
        &url,
        &[
            "replay",
            "orders.created",
            "--from-offset",
            "1",
            "--to-offset",
            "3",
            "--partition",
            "0",
        ],
        b"",
    );
    let offsets: Vec<&Value> = bounded.iter().map(|r| &r["offset"]).collect();
    assert_eq!(offsets, [1, 2], "--to-offset is exclusive");

    let raw = postbox(
        &url,
        &[
            "replay",
            "orders.created",
            "--from-offset",
            "2",
            "--output",
            "raw",
        ],
        b"",
    );
    assert!(raw.status.success());
    assert_eq!(String::from_utf8_lossy(&raw.stdout), "third\nfourth\n");
}

#[test]
fn binary_payloads_print_as_base64() {
    let (_dir, broker) = broker();
    let url = broker.url();
    postbox_json(&url, &["topics", "create", "bin"], b"");
    postbox_json(&url, &["publish", "bin"], b"\xff\xfe\x00\n");
    let records = postbox_json(&url, &["replay", "bin", "--from-offset", "0"], b"");
    assert_eq!(records[0]["payload_base64"], "//4A");
    assert!(records[0].get("payload").is_none());
}

/// The record count of every batch frame stored in a partition's directory,
/// in log order: one frame per partition per Publish call
/// (`docs/format.md`), so the frames count the publishes. Zeros after the
/// last frame (space the writer preallocated) end a log.
fn stored_batches(partition_dir: &Path) -> Vec<u32> {
    let mut logs: Vec<_> = std::fs::read_dir(partition_dir)
        .expect("the partition directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let mut batches = Vec::new();
    for log in logs {
        let bytes = std::fs::read(&log).expect("a log file");
        let mut position = 0;
        while let Some(header) = bytes.get(position..position + HEADER_BYTES) {
            let header: &[u8; HEADER_BYTES] = header.try_into().expect("a header's bytes");
            let Ok(header) = parse_header(header) else {
                assert!(
                    bytes[position..].iter().all(|&b| b == 0),
                    "only zeros after the last frame of {}",
                    log.display()
                );
                break;
            };
            batches.push(header.record_count);
            position += header.frame_bytes as usize;
        }
    }
    batches
}

#[test]
fn n_full_batches_of_stdin_lines_are_n_publishes() {
    // Each batch once cost two publishes (and two fsyncs): the CLI filled
    // 1 MiB without the idempotency keys send_batch then generated, and
    // send_batch cut every batch in two.
    const BATCHES: usize = 5;
    const LINE_BYTES: usize = 2_000;
    let (dir, broker) = broker();
    let url = broker.url();
    postbox_json(&url, &["topics", "create", "batches"], b"");
    let line = |i: usize| format!("{i:06}-{}", "x".repeat(LINE_BYTES - 7));
    // How many such lines one publish holds, as the client sizes it.
    let config = ProducerConfig::default();
    let mut builder = config.batch_builder("batches");
    let per_batch = (0..)
        .position(|i| {
            let record = OutgoingRecord::new(line(i));
            let cost = config.record_cost(&record);
            builder.push(record, cost).is_some()
        })
        .expect("a batch fills");
    assert!(
        per_batch * LINE_BYTES <= MAX_BATCH_BYTES_DEFAULT
            && (per_batch + 1) * LINE_BYTES > MAX_BATCH_BYTES_DEFAULT * 9 / 10,
        "bytes, not the record count, fill a batch: {per_batch} lines"
    );
    let input: String = (0..BATCHES * per_batch).map(|i| line(i) + "\n").collect();
    // A linger longer than any pause of a loaded machine: only a full
    // batch, or the end of stdin, sends one.
    let args = ["publish", "batches", "--linger-ms", "60000"];
    let acks = postbox_json(&url, &args, input.as_bytes());
    assert_eq!(acks.len(), BATCHES * per_batch, "every line acknowledged");
    let partition = dir.path().join("data/topics/batches/0");
    assert_eq!(
        stored_batches(&partition),
        vec![per_batch as u32; BATCHES],
        "one stored batch, one publish, per batch of lines"
    );
}

#[test]
fn a_duplicate_idempotency_key_is_reported_and_appends_nothing() {
    let (_dir, broker) = broker();
    let url = broker.url();
    postbox_json(
        &url,
        &["topics", "create", "payments", "--partitions", "3"],
        b"",
    );
    let args = [
        "publish",
        "payments",
        "--idempotency-key",
        "pay-42",
        "charged",
    ];
    let first = postbox_json(&url, &args, b"");
    let second = postbox_json(&url, &args, b"");
    assert_eq!(first[0]["duplicate"], false);
    assert_eq!(second[0]["duplicate"], true);
    assert_eq!(second[0]["offset"], first[0]["offset"]);
    assert_eq!(second[0]["partition"], first[0]["partition"]);
    assert_eq!(second[0]["idempotency_key"], "pay-42");
    let described = postbox_json(&url, &["topics", "describe", "payments"], b"");
    let total: u64 = described[0]["partition_info"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["end_offset"].as_u64().expect("an end offset"))
        .sum();
    assert_eq!(total, 1, "one record stored: {}", described[0]);
}

#[test]
fn subscribe_follow_prints_records_published_after_it_started() {
    let (_dir, broker) = broker();
    let url = broker.url();
    postbox_json(
        &url,
        &["topics", "create", "live", "--partitions", "2"],
        b"",
    );
    let mut follower = Command::new(postbox_tests::bin("postbox"))
        .args(["subscribe", "live", "--from", "earliest", "--follow"])
        .env("POSTBOX_BROKER", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting postbox subscribe");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Once a first record printed, the follower is caught up and waiting.
    let next_payload = || -> String {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the follower prints new records");
        let record: Value = serde_json::from_str(&line).expect("a JSON line");
        record["payload"].as_str().expect("text").to_string()
    };
    postbox_json(&url, &["publish", "live", "marker"], b"");
    assert_eq!(next_payload(), "marker");
    postbox_json(&url, &["publish", "live"], b"one\ntwo\nthree\n");
    let mut payloads: Vec<String> = (0..3).map(|_| next_payload()).collect();
    payloads.sort();
    assert_eq!(payloads, ["one", "three", "two"]);
    let _ = follower.kill();
    let _ = follower.wait();
}

#[test]
fn a_group_resumes_where_it_committed_and_offsets_can_be_set() {
    let (_dir, broker) = broker();
    let url = broker.url();
    postbox_json(&url, &["topics", "create", "jobs"], b"");
    postbox_json(&url, &["publish", "jobs"], b"a\nb\nc\nd\ne\n");
    let first = postbox_json(&url, &["subscribe", "jobs", "--group", "workers"], b"");
    assert_eq!(first.len(), 5);
    let offsets = postbox_json(&url, &["offsets", "get", "workers", "jobs"], b"");
    assert_eq!(offsets, [json!({"partition": 0, "offset": 5})]);
    postbox_json(&url, &["publish", "jobs", "f"], b"");
    let second = postbox_json(&url, &["subscribe", "jobs", "--group", "workers"], b"");
    let payloads: Vec<&Value> = second.iter().map(|r| &r["payload"]).collect();
    assert_eq!(payloads, ["f"], "only what came after the commit");

    let set = postbox(
        &url,
        &[
            "offsets",
            "set",
            "workers",
            "jobs",
            "--partition",
            "0",
            "--offset",
            "2",
        ],
        b"",
    );
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let third = postbox_json(&url, &["subscribe", "jobs", "--group", "workers"], b"");
    let payloads: Vec<&Value> = third.iter().map(|r| &r["payload"]).collect();
    assert_eq!(payloads, ["c", "d", "e", "f"]);
}

#[test]
fn every_command_has_help() {
    let commands: [&[&str]; 13] = [
        &[],
        &["topics"],
        &["topics", "create"],
        &["topics", "list"],
        &["topics", "describe"],
        &["topics", "delete"],
        &["publish"],
        &["subscribe"],
        &["replay"],
        &["offsets"],
        &["offsets", "get"],
        &["offsets", "set"],
        &["help"],
    ];
    for command in commands {
        let mut args: Vec<&str> = command.to_vec();
        if command != ["help"] {
            args.push("--help");
        }
        let out = postbox("http://127.0.0.1:1", &args, b"");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "postbox {args:?}");
        assert!(
            stdout.contains("Usage: postbox"),
            "postbox {args:?}: {stdout}"
        );
    }
    let replay = postbox("http://127.0.0.1:1", &["replay", "--help"], b"");
    let help = String::from_utf8_lossy(&replay.stdout);
    assert!(
        help.contains("EXCLUSIVE") && help.contains("OUT_OF_RANGE"),
        "{help}"
    );
}

#[test]
fn a_wrong_broker_address_is_one_clear_line() {
    let out = postbox("http://127.0.0.1:1", &["topics", "list"], b"");
    fails_cleanly(&out, &["127.0.0.1:1"]);
    let out = postbox("127.0.0.1:1", &["publish", "t", "v"], b"");
    fails_cleanly(&out, &["127.0.0.1:1"]);
    assert!(
        out.stdout.is_empty(),
        "nothing acknowledged, nothing printed"
    );
}

#[test]
fn a_linger_over_its_limit_is_refused_before_anything_is_published() {
    let (_dir, broker) = broker();
    let url = broker.url();
    postbox_json(&url, &["topics", "create", "lingering"], b"");
    let over = postbox(
        &url,
        &["publish", "lingering", "--linger-ms", "60001"],
        b"a\nb\n",
    );
    fails_cleanly(&over, &["linger_ms is 60001", "between 0 and 60000"]);
    assert!(over.stdout.is_empty(), "nothing acknowledged");
    let described = postbox_json(&url, &["topics", "describe", "lingering"], b"");
    assert_eq!(described[0]["partition_info"][0]["end_offset"], 0);
    // At the limit: the end of stdin, not the linger, sends the batch.
    let at_limit = ["publish", "lingering", "--linger-ms", "60000"];
    assert_eq!(postbox_json(&url, &at_limit, b"a\nb\n").len(), 2);
}

#[test]
fn a_replay_past_the_end_is_a_clear_error_and_a_range_beyond_it_stops_at_the_end() {
    let (_dir, broker) = broker();
    let url = broker.url();
    postbox_json(&url, &["topics", "create", "short"], b"");
    postbox_json(&url, &["publish", "short"], b"x\ny\n");
    let out = postbox(
        &url,
        &["replay", "short", "--from-offset", "5", "--partition", "0"],
        b"",
    );
    fails_cleanly(&out, &["offset 5", "out of range"]);
    let every_partition = postbox_json(&url, &["replay", "short", "--from-offset", "5"], b"");
    assert!(
        every_partition.is_empty(),
        "partitions not that long give nothing"
    );
    let at_end = postbox_json(&url, &["replay", "short", "--from-offset", "2"], b"");
    assert!(at_end.is_empty(), "from the end: nothing");
    let beyond = postbox_json(
        &url,
        &[
            "replay",
            "short",
            "--from-offset",
            "1",
            "--to-offset",
            "100",
        ],
        b"",
    );
    assert_eq!(beyond.len(), 1);
    let unknown = postbox(&url, &["replay", "missing", "--from-offset", "0"], b"");
    fails_cleanly(&unknown, &["missing"]);
}
