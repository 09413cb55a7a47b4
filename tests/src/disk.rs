//! A small disk of a test's own: an ext4 file system in a sparse image file,
//! loop-mounted on a temporary directory (the tests run as root), so that a
//! real broker process meets a real ENOSPC. Filling it and freeing it again
//! is one call each.
//!
//! Invariants:
//! - The image lives in the test's temporary directory and is unmounted (and
//!   its loop device released) when the disk is dropped, also after a panic.
//! - `fill_leaving` only ever adds one filler file, so `free` gives back
//!   exactly what the fill took.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Name of the file that takes up the space a fill asks for.
const FILLER_FILE: &str = "filler";
/// The block size the image is formatted with: a fill is exact to a block.
const BLOCK_BYTES: u64 = 4096;

/// A mounted small ext4 file system.
#[derive(Debug)]
pub struct SmallDisk {
    _dir: tempfile::TempDir,
    mount_point: PathBuf,
}

impl SmallDisk {
    /// Formats and mounts an ext4 image of `size_bytes` (at least a few MiB).
    pub fn mount(size_bytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().expect("a temporary directory for the disk image");
        let image = dir.path().join("disk.img");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).expect("creating the mount point");
        File::create(&image)
            .and_then(|f| f.set_len(size_bytes))
            .expect("creating the disk image");
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", &BLOCK_BYTES.to_string(), "-m", "0"])
            .arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount_point));
        SmallDisk {
            _dir: dir,
            mount_point,
        }
    }

    /// The mounted file system's root: put the broker's data directory here.
    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Bytes a non-root writer could still allocate (none are reserved).
    pub fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.mount_point)
            .output()
            .expect("running df");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .unwrap_or_else(|| panic!("df printed no free bytes: {text:?}"))
    }

    /// Writes a filler file until no more than `free_bytes` are left.
    pub fn fill_leaving(&self, free_bytes: u64) {
        let mut filler = File::options()
            .create(true)
            .append(true)
            .open(self.mount_point.join(FILLER_FILE))
            .expect("opening the filler file");
        let chunk = vec![0xA5u8; 1 << 20];
        loop {
            let free = self.free_bytes();
            if free <= free_bytes {
                break;
            }
            let step = (free - free_bytes).min(chunk.len() as u64) as usize;
            match filler.write_all(&chunk[..step]) {
                Ok(()) => filler.sync_all().expect("syncing the filler file"),
                // Full before the target: as full as it gets.
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }

    /// Removes the filler file: the space a fill took is free again.
    pub fn free(&self) {
        std::fs::remove_file(self.mount_point.join(FILLER_FILE)).expect("removing the filler file");
        File::open(&self.mount_point)
            .and_then(|dir| dir.sync_all())
            .expect("syncing the disk's root");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy, so that a process still holding a file does not keep the
        // image (and its loop device) alive past the test.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

fn run(command: &mut Command) {
    let out = command.output().expect("starting a disk tool");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
