//! PostgreSQL for tests: the shared server (127.0.0.1:5432, or
//! `POSTBOX_TEST_DATABASE_URL`) with a database of the test's own
//! ([`TestDatabase`]), and a throwaway cluster of the test's own for tests
//! that must stop, kill or restart PostgreSQL, which must never touch the
//! shared one.
//!
//! This module is the one home of the per-test database and of
//! [`with_database`], for every crate's tests: this crate's, the
//! `postbox-relay` crate's own (`outbox-relay/tests/common`), and the relay
//! benchmark (`benches/benches/relay.rs`). Those two reach it as a
//! dev-dependency on `postbox-tests`. That is no dependency cycle: this
//! library depends on nothing of the relay's (`postbox-relay` is only a
//! dev-dependency of this crate's own tests), so the relay's tests link the
//! one `postbox-relay` library they test, not a second copy through here.
//! For the same reason sessions here are plain `tokio-postgres` ones; the
//! relay's tests wrap [`TestDatabase`] to open theirs through the relay's own
//! connector.
//!
//! The throwaway cluster runs the system's binaries (`initdb`, `pg_ctl`) as
//! the `postgres` user when the tests run as root (`initdb` refuses root), in
//! a temporary directory, on a free port, with trust authentication for
//! 127.0.0.1 only. It is stopped (immediately) and removed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// The shared server when `POSTBOX_TEST_DATABASE_URL` does not say otherwise.
pub const SHARED_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Free ports tried before a throwaway cluster gives up starting.
const PORT_ATTEMPTS: usize = 3;
/// How long a throwaway cluster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The URL of the shared server's maintenance database.
pub fn shared_url() -> String {
    std::env::var("POSTBOX_TEST_DATABASE_URL").unwrap_or_else(|_| SHARED_URL_DEFAULT.into())
}

/// Where the system's PostgreSQL binaries are: `POSTBOX_PG_BIN`, or the
/// newest under `/usr/lib/postgresql/*/bin` (Debian's layout).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("POSTBOX_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries in /usr/lib/postgresql (or set POSTBOX_PG_BIN)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("a PostgreSQL installation with pg_ctl")
}

/// A database of one test's own on a PostgreSQL server, created empty and
/// dropped (with any sessions still on it) when this value is dropped, pass
/// or fail, so that tests run in parallel without seeing each other's
/// tables, locks or notifications.
#[derive(Debug)]
pub struct TestDatabase {
    server_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `relay_test_<random>` on the server at `server_url` (a URL of
    /// its maintenance database, such as [`shared_url`]).
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

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new plain `tokio-postgres` session on this database.
    pub async fn connect(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on a
        // future: drop the database from a thread with a runtime of its own.
        let (server_url, name) = (self.server_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&server_url, NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("cannot drop test database {}: {error:?}", self.name),
            Err(_) => eprintln!(
                "cannot drop test database {}: the thread panicked",
                self.name
            ),
        }
    }
}

/// A plain `tokio-postgres` session on `url`; the connection is driven by a
/// task of its own.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to PostgreSQL: {error}"));
    tokio::spawn(connection);
    client
}

/// `url` with its database replaced by `database`: the path of a
/// `postgres://` URL, or a `dbname=` appended to a key=value string.
pub fn with_database(url: &str, database: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={database}");
    };
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = scheme_end + 3;
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// A PostgreSQL cluster of one test's own.
#[derive(Debug)]
pub struct ThrowawayPostgres {
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
}

impl ThrowawayPostgres {
    /// Creates and starts a cluster on a free port.
    pub fn start() -> ThrowawayPostgres {
        let dir = tempfile::Builder::new()
            .prefix("postbox-pg-")
            .tempdir()
            .expect("a temporary directory");
        give_to_postgres(dir.path());
        let data = dir.path().join("data");
        let out = as_postgres(
            Command::new(bin_dir().join("initdb"))
                .args([
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "-D",
                ])
                .arg(&data),
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = ThrowawayPostgres {
            dir,
            port: free_port(),
            running: false,
        };
        // The free port may be taken between finding it and binding it.
        for _ in 1..PORT_ATTEMPTS {
            if pg.try_start_server().is_ok() {
                return pg;
            }
            pg.port = free_port();
        }
        pg.start_server();
        pg
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn kill(&mut self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        self.running = false;
    }

    /// Starts the server again after `kill`, on the same port.
    pub fn start_server(&mut self) {
        if let Err(failure) = self.try_start_server() {
            panic!("{failure}");
        }
    }

    fn try_start_server(&mut self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let out = self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-o",
            &options,
            "-l",
            &path_str(&log),
        ]);
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        self.running = true;
        self.wait_ready();
        Ok(())
    }

    /// Restarts the server (a clean stop and start), on the same port.
    pub fn restart(&mut self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w"]);
        self.start_server();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the throwaway PostgreSQL did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        as_postgres(
            Command::new(bin_dir().join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(args),
        )
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        if self.running {
            self.kill();
        }
    }
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL command, as the `postgres` user when we are root.
fn as_postgres(command: &mut Command) -> Output {
    let output = if running_as_root() {
        let mut runuser = Command::new("runuser");
        runuser
            .args(["-u", "postgres", "--"])
            .arg(command.get_program())
            .args(command.get_args());
        runuser.output()
    } else {
        command.output()
    };
    output.expect("running a PostgreSQL command")
}

/// Lets the `postgres` user own the cluster's directory when we are root.
fn give_to_postgres(dir: &Path) {
    if !running_as_root() {
        return;
    }
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .expect("running chown");
    assert!(status.success(), "chown of {} failed", dir.display());
}
