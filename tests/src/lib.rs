//! The harness of Postbox's integration tests: the real `postbox-broker`
//! process on an ephemeral port with a temporary data directory, the real
//! `postbox` CLI as a subprocess, a raw gRPC client, and a TCP proxy that can
//! cut a connection at a chosen moment, peers that hold a connection without
//! using it, the real `postbox-relay` process, PostgreSQL databases of a
//! test's own, a small loop-mounted disk that fills up, system calls failed
//! on purpose by strace, and waiting for an
//! event with a deadline.
//!
//! The binaries are found next to the test executable (`target/<profile>/`),
//! where `cargo test --workspace` and `cargo nextest run --workspace` build
//! them; `POSTBOX_BIN_DIR` overrides the directory.

pub mod broker;
pub mod cli;
pub mod disk;
pub mod peer;
pub mod postgres;
pub mod proxy;
pub mod records;
pub mod relay;
pub mod strace;
pub mod wait;

use std::path::PathBuf;

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("POSTBOX_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> -> target/<profile>
    let deps = exe.parent().expect("the test executable's directory");
    deps.parent().expect("the profile directory").to_path_buf()
}

/// The path of a workspace binary, checked to exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace) or set POSTBOX_BIN_DIR",
        path.display()
    );
    path
}
