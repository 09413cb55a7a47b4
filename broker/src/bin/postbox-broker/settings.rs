//! The broker's settings: flags, then `POSTBOX_*` environment variables, then
//! an optional TOML config file, then built-in defaults, in that order of
//! precedence. One struct serves the command line and the file, so the two
//! cannot drift apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use postbox_broker::server::{ServerConfig, LISTEN_DEFAULT};
use postbox_engine::EngineConfig;
use serde::Deserialize;

/// Default data directory, relative to the working directory.
pub const DATA_DIR_DEFAULT: &str = "postbox-data";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Postbox broker: a durable log of topics and partitions, served over gRPC.
///
/// Every setting can also be given as an environment variable (shown below)
/// or in the TOML file named by --config, with the same name in snake_case
/// (for example `max_connections = 512`). Flags win over the environment,
/// which wins over the file. Log verbosity: POSTBOX_LOG or RUST_LOG (default
/// "info").
#[derive(Debug, Default, Parser, Deserialize)]
#[command(name = "postbox-broker", version)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML config file.
    #[arg(long, env = "POSTBOX_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on for gRPC; port 0 picks a free port (the address
    /// is printed on stdout) [default: 127.0.0.1:7411].
    #[arg(long, env = "POSTBOX_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the broker keeps everything [default: ./postbox-data].
    #[arg(long, env = "POSTBOX_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Most open client connections; more are refused with
    /// RESOURCE_EXHAUSTED, naming the limit [default: 1024].
    #[arg(long, env = "POSTBOX_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most concurrent calls per connection [default: 256].
    #[arg(long, env = "POSTBOX_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: Option<u32>,
    /// Most open subscriptions; more are refused with RESOURCE_EXHAUSTED
    /// [default: 4096].
    #[arg(long, env = "POSTBOX_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Time in-flight calls get to answer at shutdown [default: 10000].
    #[arg(long, env = "POSTBOX_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// HTTP/2 keepalive ping interval (and timeout) [default: 30000].
    #[arg(long, env = "POSTBOX_KEEPALIVE_INTERVAL_MS")]
    pub keepalive_interval_ms: Option<u64>,
    /// Time a new connection has to start its first call before it is
    /// closed [default: 10000].
    #[arg(long, env = "POSTBOX_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Time a connection may have no call in flight before it is closed
    /// (GOAWAY); an open subscription is a call [default: 300000].
    #[arg(long, env = "POSTBOX_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Connections the kernel queues before the broker accepts them (at
    /// most net.core.somaxconn) [default: 1024].
    #[arg(long, env = "POSTBOX_ACCEPT_BACKLOG")]
    pub accept_backlog: Option<u32>,
    /// Bytes per partition written but not yet acknowledged before publishes
    /// wait [default: 67108864].
    #[arg(long, env = "POSTBOX_IN_FLIGHT_BYTES_PER_PARTITION")]
    pub in_flight_bytes_per_partition: Option<u64>,
    /// Bytes between sparse index entries [default: 65536].
    #[arg(long, env = "POSTBOX_INDEX_INTERVAL_BYTES")]
    pub index_interval_bytes: Option<u32>,
    /// Page cache of the metadata store (sled) [default: 67108864].
    #[arg(long, env = "POSTBOX_META_CACHE_BYTES")]
    pub meta_cache_bytes: Option<u64>,
    /// Read sealed segments through a memory map [default: true].
    #[arg(long, env = "POSTBOX_MAP_SEALED_SEGMENTS")]
    pub map_sealed_segments: Option<bool>,
    /// Newest bytes of each partition's log kept in the page cache; older
    /// synced bytes are handed back to the kernel; 0 leaves it all to the
    /// kernel [default: 268435456].
    #[arg(long, env = "POSTBOX_PAGE_CACHE_WINDOW_BYTES")]
    pub page_cache_window_bytes: Option<u64>,
    /// How often retention runs [default: 60000].
    #[arg(long, env = "POSTBOX_RETENTION_CHECK_INTERVAL_MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// Longest idempotency keys wait in memory before a checkpoint
    /// [default: 2000].
    #[arg(long, env = "POSTBOX_DEDUP_CHECKPOINT_INTERVAL_MS")]
    pub dedup_checkpoint_interval_ms: Option<u64>,
    /// First pause before a failed partition (failed write or fsync, full
    /// disk) is probed and reopened; doubles after each failed attempt
    /// [default: 1000].
    #[arg(long, env = "POSTBOX_REOPEN_BACKOFF_MIN_MS")]
    pub reopen_backoff_min_ms: Option<u64>,
    /// Longest pause between two attempts to reopen a failed partition
    /// [default: 30000].
    #[arg(long, env = "POSTBOX_REOPEN_BACKOFF_MAX_MS")]
    pub reopen_backoff_max_ms: Option<u64>,
    /// Log line format [default: text].
    #[arg(long, env = "POSTBOX_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

impl Settings {
    /// Flags and environment, then the config file they name.
    pub fn load() -> anyhow::Result<Settings> {
        let cli = Settings::parse();
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => Settings::default(),
        };
        Ok(cli.or(file))
    }

    /// Each setting from `self`, else from `other`.
    fn or(self, other: Settings) -> Settings {
        Settings {
            config: self.config.or(other.config),
            listen: self.listen.or(other.listen),
            data_dir: self.data_dir.or(other.data_dir),
            max_connections: self.max_connections.or(other.max_connections),
            max_streams_per_connection: self
                .max_streams_per_connection
                .or(other.max_streams_per_connection),
            max_subscriptions: self.max_subscriptions.or(other.max_subscriptions),
            shutdown_grace_ms: self.shutdown_grace_ms.or(other.shutdown_grace_ms),
            keepalive_interval_ms: self.keepalive_interval_ms.or(other.keepalive_interval_ms),
            handshake_timeout_ms: self.handshake_timeout_ms.or(other.handshake_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.or(other.idle_timeout_ms),
            accept_backlog: self.accept_backlog.or(other.accept_backlog),
            in_flight_bytes_per_partition: self
                .in_flight_bytes_per_partition
                .or(other.in_flight_bytes_per_partition),
            index_interval_bytes: self.index_interval_bytes.or(other.index_interval_bytes),
            meta_cache_bytes: self.meta_cache_bytes.or(other.meta_cache_bytes),
            map_sealed_segments: self.map_sealed_segments.or(other.map_sealed_segments),
            page_cache_window_bytes: self
                .page_cache_window_bytes
                .or(other.page_cache_window_bytes),
            retention_check_interval_ms: self
                .retention_check_interval_ms
                .or(other.retention_check_interval_ms),
            dedup_checkpoint_interval_ms: self
                .dedup_checkpoint_interval_ms
                .or(other.dedup_checkpoint_interval_ms),
            reopen_backoff_min_ms: self.reopen_backoff_min_ms.or(other.reopen_backoff_min_ms),
            reopen_backoff_max_ms: self.reopen_backoff_max_ms.or(other.reopen_backoff_max_ms),
            log_format: self.log_format.or(other.log_format),
        }
    }

    pub fn listen(&self) -> anyhow::Result<SocketAddr> {
        match self.listen {
            Some(addr) => Ok(addr),
            None => LISTEN_DEFAULT.parse().context("the default listen address"),
        }
    }

    pub fn engine(&self) -> EngineConfig {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
        let mut c = EngineConfig::new(data_dir);
        set(
            &mut c.in_flight_bytes_per_partition,
            self.in_flight_bytes_per_partition,
        );
        set(&mut c.index_interval_bytes, self.index_interval_bytes);
        set(&mut c.meta_cache_bytes, self.meta_cache_bytes);
        set(&mut c.map_sealed_segments, self.map_sealed_segments);
        set(&mut c.page_cache_window_bytes, self.page_cache_window_bytes);
        set(
            &mut c.retention_check_interval_ms,
            self.retention_check_interval_ms,
        );
        set(
            &mut c.dedup_checkpoint_interval_ms,
            self.dedup_checkpoint_interval_ms,
        );
        set(&mut c.reopen_backoff_min_ms, self.reopen_backoff_min_ms);
        set(&mut c.reopen_backoff_max_ms, self.reopen_backoff_max_ms);
        c
    }

    pub fn server(&self) -> ServerConfig {
        let mut c = ServerConfig::default();
        set(&mut c.max_connections, self.max_connections);
        set(
            &mut c.max_streams_per_connection,
            self.max_streams_per_connection,
        );
        set(&mut c.max_subscriptions, self.max_subscriptions);
        set(&mut c.shutdown_grace_ms, self.shutdown_grace_ms);
        set(&mut c.keepalive_interval_ms, self.keepalive_interval_ms);
        set(&mut c.handshake_timeout_ms, self.handshake_timeout_ms);
        set(&mut c.idle_timeout_ms, self.idle_timeout_ms);
        set(&mut c.accept_backlog, self.accept_backlog);
        c
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

fn read_file(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in the config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() -> anyhow::Result<()> {
        let file: Settings = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nmax_connections = 7\nlog_format = \"json\"",
        )?;
        let cli = Settings::try_parse_from(["postbox-broker", "--listen", "127.0.0.1:9001"])?;
        let merged = cli.or(file);
        assert_eq!(merged.listen()?.port(), 9001);
        assert_eq!(merged.server().max_connections, 7);
        assert_eq!(merged.log_format, Some(LogFormat::Json));
        assert_eq!(
            merged.server().max_subscriptions,
            ServerConfig::default().max_subscriptions
        );
        Ok(())
    }

    #[test]
    fn unknown_settings_in_the_file_are_refused() {
        let err = toml::from_str::<Settings>("max_conections = 7").expect_err("a typo");
        assert!(err.to_string().contains("max_conections"), "{err}");
    }
}
