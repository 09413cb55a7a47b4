//! Faults injected into a running broker by `strace`: one system call of a
//! kind fails with a chosen errno (`-e inject=SYSCALLS:error=ERRNO:when=N`),
//! as a failing disk or a process out of descriptors would make it fail,
//! without touching the broker's code.
//!
//! Invariants:
//! - [`Injector::attach`] returns only once every thread of the broker is
//!   traced, so the next request meets the fault.
//! - Dropping the injector detaches it (SIGTERM; strace lets the tracees go).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long attaching to every thread may take.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `strace` injecting one failure into a process.
#[derive(Debug)]
pub struct Injector {
    child: Child,
    _dir: tempfile::TempDir,
    trace: PathBuf,
}

impl Injector {
    /// Makes the `nth` call of `syscalls` (comma-separated) in process `pid`
    /// fail with `errno`. strace counts the calls of each kind, in each
    /// thread, apart: the `nth` fdatasync and the `nth` fsync both fail.
    pub fn attach(pid: u32, syscalls: &str, errno: &str, nth: u32) -> Injector {
        let dir = tempfile::tempdir().expect("a directory for strace's output");
        let trace = dir.path().join("trace");
        let status = dir.path().join("status");
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("the broker's threads")
            .count();
        let child = Command::new("strace")
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .args(["-e", &format!("trace={syscalls}")])
            .args(["-e", &format!("inject={syscalls}:error={errno}:when={nth}")])
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&status).expect("strace's status file"))
            .spawn()
            .expect("starting strace (apt-get install strace)");
        let mut injector = Injector {
            child,
            _dir: dir,
            trace,
        };
        injector.wait_attached(pid, threads);
        injector
    }

    /// Waits until strace has seized `threads` threads of `pid`: each one
    /// it traces shows in /proc as traced by it.
    fn wait_attached(&mut self, pid: u32, threads: usize) {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let tracer = self.child.id().to_string();
        loop {
            let traced = traced_threads(pid, &tracer);
            if traced >= threads {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("strace exited ({status}) before it attached");
            }
            assert!(
                Instant::now() < deadline,
                "strace attached {traced} of {threads} threads within {ATTACH_TIMEOUT:?}"
            );
            std::thread::sleep(crate::wait::POLL_INTERVAL);
        }
    }

    /// Whether the failure has been injected yet.
    pub fn injected(&self) -> bool {
        std::fs::read_to_string(&self.trace).is_ok_and(|trace| trace.contains("(INJECTED)"))
    }
}

/// Threads of `pid` whose tracer is `tracer` (a pid).
fn traced_threads(pid: u32, tracer: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("status")).is_ok_and(|status| {
                status
                    .lines()
                    .any(|l| l.strip_prefix("TracerPid:").map(str::trim) == Some(tracer))
            })
        })
        .count()
}

impl Drop for Injector {
    fn drop(&mut self) {
        // SIGTERM: strace detaches from its tracees before it exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
