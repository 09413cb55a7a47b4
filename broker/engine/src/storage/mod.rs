//! The storage core: a segmented, checksummed, append-only log per partition.
//!
//! It knows nothing about gRPC, topics' names or dedup: `topic` and `engine`
//! build those on top. Files are reached only through [`io::Vfs`].
//!
//! Modules, bottom up: `io` (file I/O trait), `batch` (the frame format),
//! `index` (sparse offset/timestamp index), `segment` (files and frame reader),
//! `recovery` (torn tail versus damage), `write_behind` (page cache released
//! behind the head), `zero_fill` (the engine-wide budget of zeros written
//! ahead of data), `log_state` (what readers see of a partition's log),
//! `writer` (a partition's appends, with group commit), `partition` (open,
//! recover, read, retention; appends go to its writer).

pub mod batch;
pub mod index;
pub mod io;
pub mod log_state;
pub mod partition;
pub mod recovery;
pub mod segment;
pub mod write_behind;
pub mod writer;
pub mod zero_fill;
