//! The real `postbox-relay` process for a test. The PostgreSQL database of
//! the test's own to run it on is [`crate::postgres::TestDatabase`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a relay may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `postbox-relay`; killed (SIGKILL) when dropped. Its logs (at
/// `info`) go to a file, read with [`RelayProcess::log`].
#[derive(Debug)]
pub struct RelayProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl RelayProcess {
    /// Starts `postbox-relay --database-url DB --broker BROKER` with extra
    /// flags, logging to `log` (appended to across restarts).
    pub fn start(
        log: &Path,
        database_url: &str,
        broker: &str,
        extra_args: &[&str],
    ) -> RelayProcess {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening the relay's log file");
        let child = Command::new(crate::bin("postbox-relay"))
            .args(["--database-url", database_url, "--broker", broker])
            // Fast standby and backoff, so that tests take seconds.
            .args(["--standby-poll-ms", "200", "--backoff-cap-ms", "500"])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting postbox-relay");
        RelayProcess {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything logged so far (by every process that shared the file).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit, at most `STOP_TIMEOUT`.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the relay is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the relay") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the relay did not exit within {STOP_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log contains `needle` `count` times, at most `timeout`.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "the relay did not log {needle:?} {count} times within {timeout:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a one-shot `postbox-relay` command (`init`, `status`, `dead-letters`).
pub fn relay_command(args: &[&str]) -> Output {
    Command::new(crate::bin("postbox-relay"))
        .args(args)
        .output()
        .expect("running postbox-relay")
}
