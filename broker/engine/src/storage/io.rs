//! File I/O behind a small trait, so that tests can replace the disk.
//!
//! The storage engine touches files only through [`Vfs`] and [`VFile`]. The real
//! implementation, [`RealFs`], is a thin layer over `std::fs` with positional
//! reads and writes; the test-only `sim` module simulates power loss with it.
//!
//! Invariant: nothing here retries. A failed write or `sync_data` is reported to
//! the caller, which must treat the file's contents past the last successful sync
//! as unknown (an fsync that failed once may "succeed" the second time after the
//! kernel dropped the dirty pages).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

/// An open file with positional I/O. Shared between one writer and many readers.
pub trait VFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `position`; fewer only at end of file.
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize>;
    /// Writes all of `bufs`, one after the other, starting at `position`.
    fn write_all_at(&self, bufs: &[&[u8]], position: u64) -> io::Result<()>;
    /// Makes the file's data (and its size) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current size in bytes.
    fn size_bytes(&self) -> io::Result<u64>;
    /// Tells the kernel that `len` bytes at `position` need not stay in the
    /// page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`). Clean pages are
    /// dropped, dirty ones only start their writeback: a hint that cannot
    /// lose data. Does nothing where there is no page cache.
    fn release_cache(&self, _position: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Asks the kernel to start reading `len` bytes at `position` into the
    /// page cache (`posix_fadvise(POSIX_FADV_WILLNEED)`) without waiting for
    /// them. Does nothing where there is no page cache.
    fn read_ahead(&self, _position: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// The whole file mapped into memory, for files that never change again
    /// (sealed segments); `None` where mapping is not supported.
    fn map(&self) -> io::Result<Option<Bytes>> {
        Ok(None)
    }
}

/// A file system: opens files and manages directory entries.
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Opens a file for reading and writing, creating it when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VFile>>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries durable (new, removed and renamed names).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Bytes an unprivileged writer could still allocate on the file system
    /// holding `path` (`statvfs`'s available blocks).
    fn free_bytes(&self, path: &Path) -> io::Result<u64>;
}

/// Reads exactly `buf.len()` bytes at `position`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn VFile, mut buf: &mut [u8], mut position: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, position)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                position += n as u64;
            }
        }
    }
    Ok(())
}

/// Writes a small file durably: to a temporary name, fsynced, renamed over the
/// target, and the directory fsynced. Readers see the old or the new content.
pub fn write_file_atomic(vfs: &dyn Vfs, path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = path.parent().ok_or(io::ErrorKind::InvalidInput)?;
    let mut tmp_name = path
        .file_name()
        .ok_or(io::ErrorKind::InvalidInput)?
        .to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let file = vfs.open(&tmp, true)?;
    file.set_len(0)?;
    file.write_all_at(&[content], 0)?;
    file.sync_data()?;
    drop(file);
    vfs.rename(&tmp, path)?;
    vfs.sync_dir(dir)
}

/// Creates `dir` (and missing parents) unless it exists, and makes its name
/// durable: its parent directory is fsynced.
pub fn create_dir_durable(vfs: &dyn Vfs, dir: &Path) -> io::Result<()> {
    if vfs.exists(dir) {
        return Ok(());
    }
    vfs.create_dir_all(dir)?;
    match dir.parent() {
        Some(parent) => vfs.sync_dir(parent),
        None => Ok(()),
    }
}

/// Reads a whole small file, refusing one larger than `max_bytes`.
pub fn read_small_file(vfs: &dyn Vfs, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let file = vfs.open(path, false)?;
    let len = file.size_bytes()?;
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {len} bytes, over the limit of {max_bytes}"),
        ));
    }
    let mut buf = vec![0; len as usize];
    read_exact_at(file.as_ref(), &mut buf, 0)?;
    Ok(buf)
}

/// Most buffers one `pwritev` takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

impl RealFile {
    fn advise(&self, position: u64, len: u64, advice: rustix::fs::Advice) -> io::Result<()> {
        // A length of zero would mean "to the end of the file".
        let Some(len) = std::num::NonZeroU64::new(len) else {
            return Ok(());
        };
        rustix::fs::fadvise(&self.0, position, Some(len), advice)?;
        Ok(())
    }
}

impl VFile for RealFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.0.read_at(buf, position)
    }

    /// One `pwritev` for the whole group (a few when it holds more than
    /// `IOV_MAX` frames or the kernel writes less than asked).
    fn write_all_at(&self, bufs: &[&[u8]], mut position: u64) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| IoSlice::new(b))
            .collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            let count = slices.len().min(IOV_MAX);
            let written = rustix::io::pwritev(&self.0, &slices[..count], position)?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            position += written as u64;
            IoSlice::advance_slices(&mut slices, written);
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn release_cache(&self, position: u64, len: u64) -> io::Result<()> {
        self.advise(position, len, rustix::fs::Advice::DontNeed)
    }

    fn read_ahead(&self, position: u64, len: u64) -> io::Result<()> {
        self.advise(position, len, rustix::fs::Advice::WillNeed)
    }

    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    // The one unsafe block of the broker. A mapping is only taken of a sealed
    // segment, which the broker never writes or truncates again (recovery cuts
    // only the active segment, before any reader exists; retention unlinks, which
    // leaves a mapping valid). A file shrunk behind the broker's back, or a media
    // error on a mapped page, stops the process (SIGBUS) rather than return wrong
    // bytes; `EngineConfig::map_sealed_segments` turns mapping off for disks
    // that report read errors, so that those become data-loss errors instead.
    #[allow(unsafe_code)]
    fn map(&self) -> io::Result<Option<Bytes>> {
        if self.size_bytes()? == 0 {
            return Ok(None);
        }
        // SAFETY: see above: the mapped file is immutable for the mapping's life.
        let map = unsafe { memmap2::Mmap::map(&self.0)? };
        Ok(Some(Bytes::from_owner(map)))
    }
}

impl Vfs for RealFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn VFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(RealFile(file)))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        let fs = rustix::fs::statvfs(path)?;
        Ok(fs.f_bavail.saturating_mul(fs.f_frsize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_writes_land_in_order_and_empty_buffers_are_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = RealFs.open(&dir.path().join("f"), true).expect("open");
        let many: Vec<Vec<u8>> = (0..(IOV_MAX + 10))
            .map(|i| vec![(i % 251) as u8; 3])
            .collect();
        let mut bufs: Vec<&[u8]> = many.iter().map(|b| b.as_slice()).collect();
        bufs.insert(5, &[]);
        file.write_all_at(&bufs, 7).expect("write");
        file.write_all_at(&[&[]], 0).expect("nothing to write");
        let mut back = vec![0u8; 3 * many.len()];
        read_exact_at(file.as_ref(), &mut back, 7).expect("read");
        assert_eq!(back, many.concat());
    }
}
