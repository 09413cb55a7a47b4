//! The page cache behind the head of a log, on the real file system: synced
//! bytes a window behind the head leave the cache, the newest stay, and every
//! record still reads back, from the disk (see `storage::write_behind`).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::limits::RELEASE_STEP_BYTES;
use crate::storage::io::RealFs;
use crate::testing::sim::SimMeta;
use crate::{Durability, Engine, EngineConfig, RecordInput, TopicConfig};

const MIB: u64 = 1024 * 1024;
const WINDOW_BYTES: u64 = 4 * MIB;
const SEGMENT_BYTES: u64 = 16 * MIB;
/// 1 MiB per publish: 16 records of 64 KiB.
const RECORDS_PER_PUBLISH: u64 = 16;
const PUBLISHES: u64 = 24;

/// Which pages of the file at `path` the page cache holds (`mincore`).
#[allow(unsafe_code)]
fn resident_pages(path: &Path) -> Vec<bool> {
    let file = File::open(path).expect("open");
    // SAFETY: the mapping is only passed to mincore, never read: a file
    // changed meanwhile cannot make it read anything.
    let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
    let page_bytes = rustix::param::page_size();
    let mut pages = vec![0u8; map.len().div_ceil(page_bytes)];
    // SAFETY: the vector has one byte per page of the mapping, as mincore needs.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), pages.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    pages.iter().map(|page| page & 1 == 1).collect()
}

/// A temporary directory beside the build's files: on a tmpfs, a common
/// place for the system's temporary directory, there is no page cache to
/// release.
fn disk_tempdir() -> tempfile::TempDir {
    let parent = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/page-cache-tests");
    fs::create_dir_all(&parent).expect("create the tests' directory");
    tempfile::tempdir_in(parent).expect("tempdir")
}

fn payload(i: u64) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; 64 * 1024])
}

/// Publishes `PUBLISHES` MiB to a topic with `window_bytes` of cache, then
/// flushes it (the sync of an `async` topic); returns the engine and the
/// partition's log files in offset order.
fn fill(data_dir: &Path, window_bytes: u64, durability: Durability) -> (Engine, Vec<PathBuf>) {
    let mut config = EngineConfig::new(data_dir);
    config.page_cache_window_bytes = window_bytes;
    config.maintenance_interval_ms = 60_000;
    let engine =
        Engine::open_with(config, Arc::new(RealFs), Arc::new(SimMeta::default())).expect("opens");
    let topic = TopicConfig {
        durability,
        segment_bytes: SEGMENT_BYTES,
        ..TopicConfig::with_partitions(1)
    };
    engine.create_topic("t", topic).expect("create");
    for publish in 0..PUBLISHES {
        let records: Vec<RecordInput> = (0..RECORDS_PER_PUBLISH)
            .map(|i| RecordInput::new(payload(publish * RECORDS_PER_PUBLISH + i)))
            .collect();
        engine.publish("t", &records).expect("publish");
    }
    engine.flush().expect("flush");
    let dir = data_dir.join("topics/t/0");
    let mut logs: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("partition dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    (engine, logs)
}

/// Every record reads back, from the cache or from the disk.
fn read_back(engine: &Engine) {
    let mut offset = 0;
    while offset < PUBLISHES * RECORDS_PER_PUBLISH {
        for record in engine.read("t", 0, offset, 4 * MIB as u32).expect("read") {
            assert_eq!(record.offset, offset);
            assert_eq!(record.payload, payload(offset), "record {offset}");
            offset += 1;
        }
    }
}

/// Checks what the page cache holds of a partition filled by `fill` with a
/// window of `WINDOW_BYTES`, then that every record reads back.
fn expect_released_behind_the_window(engine: &Engine, logs: &[PathBuf]) {
    let [sealed, active] = logs else {
        panic!("expected two segments, got {logs:?}");
    };
    let sealed = resident_pages(sealed);
    assert!(
        sealed.iter().all(|resident| !resident),
        "{} of the sealed segment's {} pages are still cached",
        sealed.iter().filter(|r| **r).count(),
        sealed.len()
    );
    let active = resident_pages(active);
    let page_bytes = rustix::param::page_size() as u64;
    let behind = (active.len() as u64 * page_bytes)
        .saturating_sub(WINDOW_BYTES + RELEASE_STEP_BYTES)
        / page_bytes;
    assert!(
        behind > 0,
        "the active segment is longer than window and step"
    );
    assert!(
        active[..behind as usize].iter().all(|resident| !resident),
        "pages of the active segment behind the window are still cached"
    );
    let newest = (MIB / page_bytes) as usize;
    assert!(
        active[active.len() - newest..]
            .iter()
            .all(|resident| *resident),
        "the newest MiB, within the window, is cached"
    );
    read_back(engine);
}

#[test]
fn synced_bytes_a_window_behind_the_head_leave_the_page_cache() {
    let dir = disk_tempdir();
    let (engine, logs) = fill(dir.path(), WINDOW_BYTES, Durability::Sync);
    expect_released_behind_the_window(&engine, &logs);
}

#[test]
fn an_async_flush_releases_what_it_synced() {
    let dir = disk_tempdir();
    let (engine, logs) = fill(dir.path(), WINDOW_BYTES, Durability::Async);
    expect_released_behind_the_window(&engine, &logs);
}

#[test]
fn a_window_of_zero_leaves_the_cache_to_the_kernel() {
    let dir = disk_tempdir();
    let (engine, logs) = fill(dir.path(), 0, Durability::Sync);
    let first = resident_pages(&logs[0]);
    assert!(
        first.iter().all(|resident| *resident),
        "the oldest segment was written a moment ago and memory is plentiful: \
         the kernel keeps it"
    );
    read_back(&engine);
}
