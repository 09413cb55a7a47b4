//! The real `postbox-relay` process for a test, and a PostgreSQL database of
//! the test's own to run it on.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

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

/// A database of one test's own on a PostgreSQL server, dropped (with any
/// sessions still on it) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    server_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `relay_test_<random>` on the server at `server_url` (a URL of
    /// its maintenance database).
    pub async fn create(server_url: &str) -> TestDatabase {
        let name = format!("relay_test_{}", uuid::Uuid::new_v4().simple());
        connect(server_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|error| panic!("cannot create database {name}: {error:?}"));
        let url = with_database(server_url, &name);
        TestDatabase {
            server_url: server_url.to_owned(),
            name,
            url,
        }
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new session on this database.
    pub async fn connect(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on a
        // future: drop the database from a thread with a runtime of its own.
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&server_url, NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            })
        })
        .join();
    }
}

/// A session on `url`; the connection is driven by a task of its own.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to PostgreSQL: {error}"));
    tokio::spawn(connection);
    client
}

/// `url` (a `postgres://` URL) with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}
