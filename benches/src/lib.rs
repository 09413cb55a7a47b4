//! Shared helpers of the Postbox benchmarks: the raw baselines that every
//! engine figure is quoted against, measured in the same run on the same disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes per write and fdatasync in the raw write baseline: the chunk size at
/// which plain sequential writes reach their best durable bandwidth.
pub const RAW_SYNC_CHUNK_BYTES: usize = 1024 * 1024;

/// Bytes per read in the raw read baseline.
pub const RAW_READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Where benchmarks put their files: `POSTBOX_BENCH_DIR`, or the system temp
/// directory. Baselines and the engine use the same directory, so they measure
/// the same disk.
pub fn bench_dir() -> io::Result<tempfile::TempDir> {
    match std::env::var_os("POSTBOX_BENCH_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            tempfile::tempdir_in(dir)
        }
        None => tempfile::tempdir(),
    }
}

/// Writes `total_bytes` sequentially to a new file in `dir`, fdatasyncing every
/// `RAW_SYNC_CHUNK_BYTES`: the durable-write ceiling of this disk. Returns the
/// time the writes and syncs took (creating and deleting the file excluded).
pub fn raw_write_fdatasync(dir: &Path, total_bytes: u64) -> io::Result<Duration> {
    let path = dir.join("raw-baseline.bin");
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let started = Instant::now();
    let chunk = vec![0xA5u8; RAW_SYNC_CHUNK_BYTES];
    let mut written = 0u64;
    while written < total_bytes {
        let n = (total_bytes - written).min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        file.sync_data()?;
        written += n as u64;
    }
    let elapsed = started.elapsed();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(elapsed)
}

/// Reads files sequentially with `RAW_READ_CHUNK_BYTES` positional reads and
/// returns the bytes read: the read ceiling for the same files.
pub fn raw_read(files: &[PathBuf]) -> io::Result<u64> {
    let mut buf = vec![0u8; RAW_READ_CHUNK_BYTES];
    let mut total = 0u64;
    for path in files {
        let file = File::open(path)?;
        let mut position = 0u64;
        loop {
            let n = file.read_at(&mut buf, position)?;
            if n == 0 {
                break;
            }
            position += n as u64;
            total += n as u64;
        }
    }
    Ok(total)
}
