//! Test-only code: the simulated disk and metadata store, and the engine's
//! whole-engine tests that need its internals (power loss, failed writes
//! and full disks, recovery, the page cache). Compiled only for
//! `cargo test`; nothing outside `testing` depends on it.

mod faults;
mod page_cache;
mod power_loss;
mod recovery;
pub mod sim;
