//! Process crashes: a child process appends under load and is killed with
//! SIGKILL at random moments (some before or during its recovery at open), at
//! least 100 cycles per run (`POSTBOX_CRASH_CYCLES` raises it for soak runs).
//! After each kill the engine is reopened and checked against a journal of
//! acknowledgments that the child kept outside the data directory: every
//! acknowledged record is read back byte for byte at its offset, offsets are
//! dense, nothing unacknowledged appears as garbage, and every acknowledged
//! idempotency key is still a duplicate of its original offset.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use postbox_engine::{Engine, EngineConfig, Error, RecordInput, TopicConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CYCLES_DEFAULT: u64 = 100;
const TOPIC: &str = "crash";
const PARTITIONS: u32 = 3;
const APPENDERS: u32 = 4;
/// A child that was never killed stops by itself after this long.
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(20);

fn topic_config() -> TopicConfig {
    TopicConfig {
        segment_bytes: 64 * 1024,
        ..TopicConfig::with_partitions(PARTITIONS)
    }
}

/// The payload is a function of the idempotency key, so any record read back can
/// be checked for garbage even if its acknowledgment never reached the journal.
fn payload_for(idem: &str) -> Bytes {
    let len = 10 + (crc32fast::hash(idem.as_bytes()) % 300) as usize;
    Bytes::from(idem.bytes().cycle().take(len).collect::<Vec<u8>>())
}

fn record_for(idem: &str) -> RecordInput {
    RecordInput {
        key: Some(Bytes::from(format!("key-{}", &idem[..idem.len().min(6)]))),
        idempotency_key: Some(Bytes::from(idem.to_string())),
        payload: payload_for(idem),
        ..RecordInput::default()
    }
}

/// The child's side: append until killed, journaling every acknowledgment.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(journal), Ok(cycle)) = (
        std::env::var("POSTBOX_CRASH_DIR"),
        std::env::var("POSTBOX_CRASH_JOURNAL"),
        std::env::var("POSTBOX_CRASH_CYCLE"),
    ) else {
        return; // Run directly by the harness: nothing to do.
    };
    let mut config = EngineConfig::new(&dir);
    config.dedup_checkpoint_interval_ms = 50;
    let engine = Arc::new(Engine::open(config).expect("child opens"));
    fs::write(
        Path::new(&journal).with_extension("ready"),
        cycle.as_bytes(),
    )
    .expect("ready marker");
    match engine.create_topic(TOPIC, topic_config()) {
        Ok(_) | Err(Error::TopicExists(_)) => {}
        Err(e) => panic!("create: {e}"),
    }
    let journal = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .expect("journal"),
    ));
    let started = Instant::now();
    let threads: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let (engine, journal, cycle) = (engine.clone(), journal.clone(), cycle.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t as u64);
                let mut seq = 0u64;
                while started.elapsed() < CHILD_LIFETIME_MAX {
                    let n = rng.gen_range(1..10);
                    let idems: Vec<String> = (0..n)
                        .map(|i| format!("c{cycle}-t{t}-s{seq}-r{i}"))
                        .collect();
                    seq += 1;
                    let records: Vec<RecordInput> = idems.iter().map(|i| record_for(i)).collect();
                    let results = engine.publish(TOPIC, &records).expect("child publish");
                    let mut lines = String::new();
                    for (idem, r) in idems.iter().zip(results) {
                        lines.push_str(&format!("{} {} {idem}\n", r.partition, r.offset));
                    }
                    // One write per batch: a kill leaves at most a partial last line.
                    let mut file = journal.lock().unwrap_or_else(|e| e.into_inner());
                    file.write_all(lines.as_bytes()).expect("journal write");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("appender");
    }
}

fn read_journal(path: &Path) -> Vec<(u32, u64, String)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let p = parts
                .next()
                .and_then(|s| s.parse().ok())
                .expect("partition");
            let o = parts.next().and_then(|s| s.parse().ok()).expect("offset");
            (p, o, parts.next().expect("idem").to_string())
        })
        .collect()
}

/// Reopens the engine and checks everything against the journals.
fn verify(dir: &Path, journals: &[PathBuf], cycle: u64) -> usize {
    let engine = Engine::open(EngineConfig::new(dir))
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
    let Ok(topic) = engine.topic(TOPIC) else {
        assert!(
            journals.iter().all(|j| read_journal(j).is_empty()),
            "cycle {cycle}: the topic vanished after acknowledgments"
        );
        return 0;
    };
    let mut stored: HashMap<String, (u32, u64)> = HashMap::new();
    for partition in topic.partitions() {
        let mut offset = partition.earliest_offset();
        while offset < partition.end_offset() {
            let records = partition
                .read(offset, 1 << 20)
                .unwrap_or_else(|e| panic!("cycle {cycle}: read: {e}"));
            for record in records {
                assert_eq!(record.offset, offset, "cycle {cycle}: offsets are dense");
                offset += 1;
                let idem = String::from_utf8(
                    record
                        .idempotency_key
                        .clone()
                        .expect("every record has a key")
                        .to_vec(),
                )
                .expect("utf8");
                assert_eq!(
                    record.payload,
                    payload_for(&idem),
                    "cycle {cycle}: garbage at {}/{}",
                    partition.id(),
                    record.offset
                );
                let first = stored.insert(idem.clone(), (partition.id(), record.offset));
                assert!(first.is_none(), "cycle {cycle}: key {idem} stored twice");
            }
        }
    }
    let acked: Vec<_> = journals.iter().flat_map(|j| read_journal(j)).collect();
    for (p, o, idem) in &acked {
        assert_eq!(
            stored.get(idem),
            Some(&(*p, *o)),
            "cycle {cycle}: acknowledged {idem} at {p}/{o} lost or moved"
        );
    }
    let ends: Vec<u64> = topic.partitions().iter().map(|p| p.end_offset()).collect();
    for (p, o, idem) in acked.iter().rev().take(40) {
        let r = engine.publish(TOPIC, &[record_for(idem)]).expect("retry")[0];
        assert!(
            r.duplicate && (r.partition, r.offset) == (*p, *o),
            "cycle {cycle}: {idem} not a duplicate after the crash"
        );
    }
    assert_eq!(
        topic
            .partitions()
            .iter()
            .map(|p| p.end_offset())
            .collect::<Vec<_>>(),
        ends,
        "retries appended nothing"
    );
    acked.len()
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_record() {
    let cycles = std::env::var("POSTBOX_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CYCLES_DEFAULT);
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("data");
    // One journal per child: a SIGKILL can cut a write short, and the
    // partial line it leaves is only ever the last line of its own file,
    // never merged with the next child's first line.
    let mut journals: Vec<PathBuf> = Vec::new();
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = SmallRng::seed_from_u64(0x5EED);
    let (mut before_ready, mut acked) = (0, 0);
    for cycle in 0..cycles {
        let journal = work.path().join(format!("journal-{cycle}.txt"));
        let ready = journal.with_extension("ready");
        let stderr_path = journal.with_extension("stderr");
        let stderr = fs::File::create(&stderr_path).expect("child's stderr file");
        journals.push(journal.clone());
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("POSTBOX_CRASH_DIR", &dir)
            .env("POSTBOX_CRASH_JOURNAL", &journal)
            .env("POSTBOX_CRASH_CYCLE", cycle.to_string())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn child");
        // Some kills land before or during recovery at open, most under load.
        let delay_ms = match cycle % 10 {
            0 => 0,
            1 | 2 => rng.gen_range(1..40),
            _ => rng.gen_range(40..300),
        };
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(
            status.code().is_none(),
            "cycle {cycle}: the child died by itself ({status}), not by the kill; its stderr:\n{}",
            fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        if !ready.exists() {
            before_ready += 1;
        }
        acked = verify(&dir, &journals, cycle);
    }
    eprintln!("{cycles} SIGKILL cycles: {before_ready} killed before recovery finished, {acked} acknowledged records verified");
    assert!(
        acked > 1000,
        "the children acknowledged enough records to mean something: {acked}"
    );
}
