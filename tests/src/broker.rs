//! A real broker process for a test.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use postbox_proto::v1::broker_client::BrokerClient;
use tonic::transport::Channel;

/// How long a broker may take to open its data directory and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a broker may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `postbox-broker`; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl BrokerProcess {
    /// Starts a broker on an ephemeral port over `data_dir`, with extra flags.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> BrokerProcess {
        BrokerProcess::start_at(data_dir, "127.0.0.1:0", extra_args)
    }

    /// Starts a broker listening on `listen` (a restart on the address a
    /// killed broker had, so that its clients find it again).
    pub fn start_at(data_dir: &Path, listen: &str, extra_args: &[&str]) -> BrokerProcess {
        BrokerProcess::start_under(&[], data_dir, listen, extra_args)
    }

    /// Starts a broker run by `wrapper`, a command that execs the rest of
    /// its arguments (`prlimit --nofile=N:M`), so that the process is the
    /// broker's.
    pub fn start_under(
        wrapper: &[&str],
        data_dir: &Path,
        listen: &str,
        extra_args: &[&str],
    ) -> BrokerProcess {
        let log = data_dir.with_extension("broker.log");
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("opening the broker's log file");
        let mut child = command(wrapper, data_dir, listen, extra_args)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("starting postbox-broker");
        let stdout = child.stdout.take().expect("the broker's stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let addr = line
            .trim()
            .strip_prefix("postbox-broker listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "the broker did not announce its address (got {line:?}); its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        BrokerProcess {
            child: Some(child),
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    /// Runs a broker that must fail to start, under `wrapper` as in
    /// [`BrokerProcess::start_under`]: its exit status and what it wrote on
    /// stderr. Panics if it is still running after `START_TIMEOUT`.
    pub fn start_failing(
        wrapper: &[&str],
        data_dir: &Path,
        extra_args: &[&str],
    ) -> (ExitStatus, String) {
        let mut child = command(wrapper, data_dir, "127.0.0.1:0", extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting postbox-broker");
        let deadline = Instant::now() + START_TIMEOUT;
        while child.try_wait().expect("waiting for the broker").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the broker started, or hung, instead of failing");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("the broker's output");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as a URL, for clients and the CLI.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A raw gRPC client of the broker.
    pub async fn client(&self) -> BrokerClient<Channel> {
        BrokerClient::connect(self.url())
            .await
            .expect("connecting to the broker")
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit (after `sigterm`), at most `STOP_TIMEOUT`.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the broker is running");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the broker") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the broker did not exit within {STOP_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident anonymous memory (heap and stacks, not mapped files) in bytes.
    pub fn rss_anon_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading the broker's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("RssAnon in /proc status")
    }
}

/// `postbox-broker` on `data_dir`, listening on `listen`, run by `wrapper`.
fn command(wrapper: &[&str], data_dir: &Path, listen: &str, extra_args: &[&str]) -> Command {
    let broker = crate::bin("postbox-broker");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(broker);
            command
        }
        None => Command::new(broker),
    };
    command
        .args(["--listen", listen, "--data-dir"])
        .arg(data_dir)
        .args(extra_args)
        .env("POSTBOX_LOG", "info");
    command
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
