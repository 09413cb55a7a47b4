//! Waiting for something to happen, not for time to pass: a test that needs
//! an event (a record stored, a row published, a log line written) polls for
//! the event itself until a deadline, and fails saying what did not happen.

use std::time::{Duration, Instant};

/// The pause between two looks at a condition: polling, not synchronisation.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `done` until it holds. After `timeout` it panics with `failure()`
/// (what did not happen, with whatever tells why: a log, the last value).
pub async fn wait_until(
    timeout: Duration,
    mut done: impl AsyncFnMut() -> bool,
    failure: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        if Instant::now() >= deadline {
            panic!("within {timeout:?}: {}", failure());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
