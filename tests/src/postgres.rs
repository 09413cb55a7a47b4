//! PostgreSQL for tests: the shared server (127.0.0.1:5432, or
//! `POSTBOX_TEST_DATABASE_URL`) with a database of the test's own, and a
//! throwaway cluster of the test's own for tests that must stop, kill or
//! restart PostgreSQL, which must never touch the shared one.
//!
//! The throwaway cluster runs the system's binaries (`initdb`, `pg_ctl`) as
//! the `postgres` user when the tests run as root (`initdb` refuses root), in
//! a temporary directory, on a free port, with trust authentication for
//! 127.0.0.1 only. It is stopped (immediately) and removed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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
