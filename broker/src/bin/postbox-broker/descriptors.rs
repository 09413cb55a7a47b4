//! File descriptors, checked before the data directory is opened: a limit
//! that runs out later fails a segment roll (which stops the partition until
//! it is reopened) or leaves clients unaccepted, far from the cause.
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard limit: the soft
//! default of 1024 is kept for programs that use select(2), which the broker
//! does not. Then the descriptors it needs are counted (the data
//! directory's files, every connection it may serve or refuse, a spare for
//! the process itself) and logged; when the limit is below them it refuses to
//! start, saying how many it needs, how many it may open, and how to raise
//! the limit.

use std::path::Path;

use anyhow::Context;
use postbox_broker::server::ServerConfig;
use postbox_engine::DataDirFiles;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors the process holds beside the data directory's files and the
/// server's sockets: stdio, the async runtime's epoll and wakers, the signal
/// pipe (11 in all, measured), and files opened for a moment (a topic's
/// settings, a directory sync, a dedup checkpoint).
const PROCESS_DESCRIPTORS_SPARE: u64 = 64;

/// Raises the soft descriptor limit to the hard one, then checks it covers
/// what the broker needs for `data_dir` and `server`.
pub fn check(data_dir: &Path, server: &ServerConfig) -> anyhow::Result<()> {
    let (soft_before, limit) = raise_soft_limit();
    let allowed = limit.current.unwrap_or(u64::MAX);
    let files = DataDirFiles::count(data_dir)
        .with_context(|| format!("counting the files of {}", data_dir.display()))?;
    let connections = server.descriptors_max();
    let needed = files.descriptors_at_open() + connections + PROCESS_DESCRIPTORS_SPARE;
    let in_use = files.descriptors_in_use() + connections + PROCESS_DESCRIPTORS_SPARE;
    if allowed < needed {
        anyhow::bail!(
            "too few file descriptors: the broker needs {needed} ({} for the data directory, {} segments \
             of {} partitions; {connections} for connections; {PROCESS_DESCRIPTORS_SPARE} spare) but may open {allowed} \
             (hard limit {}); raise the limit to at least {needed} (`ulimit -n {needed}` in the shell \
             that starts it, `LimitNOFILE={needed}` in its systemd unit) or lower --max-connections",
            files.descriptors_at_open(),
            files.segments,
            files.partitions,
            shown(limit.maximum),
        );
    }
    tracing::info!(
        needed,
        needed_in_use = in_use,
        allowed,
        soft_limit_before = %shown(soft_before),
        topics = files.topics,
        partitions = files.partitions,
        segments = files.segments,
        "file descriptors"
    );
    if allowed < in_use {
        tracing::warn!(
            needed_in_use = in_use,
            allowed,
            "the descriptor limit covers the data directory as it is, not once its topics' dedup runs \
             and segments grow: raise it to at least {in_use} (ulimit -n, LimitNOFILE=)"
        );
    }
    Ok(())
}

/// The soft limit before, and the limit after raising the soft limit to
/// the hard one (unchanged when that fails: the broker may still fit).
fn raise_soft_limit() -> (Option<u64>, Rlimit) {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    if limit.current == limit.maximum {
        return (before, limit);
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => (before, raised),
        Err(e) => {
            tracing::warn!(error = %e, soft = %shown(before), hard = %shown(limit.maximum),
                "cannot raise the soft descriptor limit to the hard one");
            (before, limit)
        }
    }
}

/// A limit as a person reads it.
fn shown(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}
