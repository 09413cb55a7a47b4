//! The `postbox` CLI as a subprocess.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `postbox ARGS` against `broker` (a URL, via `POSTBOX_BROKER`), with
/// `stdin` as its input, and returns what it printed and its status.
pub fn postbox(broker: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(crate::bin("postbox"))
        .args(args)
        .env("POSTBOX_BROKER", broker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting postbox");
    let input = child.stdin.take();
    // The input goes from a thread of its own while the output is read: a
    // command that prints as it reads (an ack line per batch) would fill its
    // stdout pipe while a large input was still being written, and both
    // sides would wait for ever.
    std::thread::scope(|scope| {
        if let Some(mut input) = input {
            // The command may exit before reading its input (a bad argument
            // or a failed publish): dropping `input` then closes the pipe.
            scope.spawn(move || {
                let _ = input.write_all(stdin);
            });
        }
        child.wait_with_output().expect("waiting for postbox")
    })
}

/// `postbox ARGS`, which must succeed; returns its stdout as JSON lines.
pub fn postbox_json(broker: &str, args: &[&str], stdin: &[u8]) -> Vec<serde_json::Value> {
    let out = postbox(broker, args, stdin);
    assert!(
        out.status.success(),
        "postbox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}
