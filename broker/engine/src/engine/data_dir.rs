//! The data directory's lock: one process per data directory. Two processes
//! recovering and appending to the same files would overwrite each other's
//! acknowledged records, so the engine takes an exclusive lock on
//! `<data-dir>/LOCK` before it touches any other file, and holds it for its
//! life.

use crate::error::{Error, IoContext, Result};

/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Takes the data directory's lock, or says who holds it.
pub(super) fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::InvalidArgument(format!(
            "the data directory {} is in use by another process (it holds the lock on {})",
            data_dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io(format!("locking {}", path.display()), e))
        }
    }
}
