//! The running relay's settings: flags, then `POSTBOX_*` environment
//! variables, then an optional TOML config file, then built-in defaults, in
//! that order of precedence. One struct serves the command line and the
//! file, so the two cannot drift apart.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use postbox_relay::pipeline::{BATCHES_IN_FLIGHT_MAX, MAX_BATCHES_IN_FLIGHT_DEFAULT};
use postbox_relay::relay::{
    BACKOFF_BASE_MS_DEFAULT, BACKOFF_CAP_MS_DEFAULT, BATCH_BYTES_MAX, BATCH_ROWS_MAX,
    CLEANUP_BATCH_ROWS_DEFAULT, CLEANUP_INTERVAL_MS_DEFAULT, LAG_LOG_INTERVAL_MS_DEFAULT,
    LEASE_CHECK_INTERVAL_MS_DEFAULT, MAX_BATCH_BYTES_DEFAULT, MAX_BATCH_ROWS_DEFAULT,
    REQUEST_TIMEOUT_MS_DEFAULT, RETENTION_MS_DEFAULT, STANDBY_POLL_MS_DEFAULT,
    STATEMENT_TIMEOUT_MS_DEFAULT,
};
use postbox_relay::{
    DatabaseConfig, Layout, LayoutKind, Mode, RelayConfig, TableName, DATABASE_URL_ENV, TABLE_ENV,
};
use serde::Deserialize;

/// The environment variable that gives the broker's address (shared with
/// the `postbox` CLI).
pub const BROKER_ENV: &str = "POSTBOX_BROKER";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the outbox table is and how to read it: shared by every command
/// that reads the table.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSettings {
    /// PostgreSQL URL, as postgres://user:password@host:5432/database.
    #[arg(long, env = DATABASE_URL_ENV, value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The outbox table, optionally schema-qualified [default: postbox_outbox].
    #[arg(long, env = TABLE_ENV, value_name = "NAME")]
    pub table: Option<String>,
    /// The table's layout: postbox (the table `init` creates) or debezium
    /// (id, aggregatetype, aggregateid, type, payload) [default: postbox].
    #[arg(long, env = "POSTBOX_RELAY_LAYOUT", value_name = "LAYOUT")]
    pub layout: Option<String>,
    /// Map a role to another column, as ROLE=COLUMN (repeatable; an empty
    /// COLUMN leaves an optional role out). Roles: id, topic, partition_key,
    /// idempotency_key, headers, type, payload, published_at, created_at,
    /// order_by.
    #[arg(long = "column", value_name = "ROLE=COLUMN")]
    #[serde(default, rename = "column")]
    pub columns: Vec<String>,
    /// Put in front of every topic name read from the table.
    #[arg(long, env = "POSTBOX_RELAY_TOPIC_PREFIX", value_name = "PREFIX")]
    pub topic_prefix: Option<String>,
}

impl TableSettings {
    /// The names these settings have in a config file.
    const FILE_KEYS: [&'static str; 5] =
        ["database_url", "table", "layout", "column", "topic_prefix"];

    /// Each setting from `self`, else from `other`.
    fn or(self, other: TableSettings) -> TableSettings {
        TableSettings {
            database_url: self.database_url.or(other.database_url),
            table: self.table.or(other.table),
            layout: self.layout.or(other.layout),
            columns: if self.columns.is_empty() {
                other.columns
            } else {
                self.columns
            },
            topic_prefix: self.topic_prefix.or(other.topic_prefix),
        }
    }

    pub fn database(&self) -> anyhow::Result<DatabaseConfig> {
        let url = self
            .database_url
            .as_deref()
            .with_context(|| format!("--database-url (or {DATABASE_URL_ENV}) is required"))?;
        Ok(DatabaseConfig::from_url(url)?)
    }

    pub fn table(&self) -> anyhow::Result<TableName> {
        Ok(match &self.table {
            Some(name) => TableName::parse(name)?,
            None => TableName::default(),
        })
    }

    pub fn layout(&self) -> anyhow::Result<Layout> {
        let kind: LayoutKind = match &self.layout {
            Some(text) => text.parse()?,
            None => LayoutKind::default(),
        };
        let mut layout = Layout::of(kind);
        for assignment in &self.columns {
            layout.set_column(assignment)?;
        }
        if let Some(prefix) = &self.topic_prefix {
            layout.topic_prefix = prefix.clone();
        }
        Ok(layout)
    }
}

/// The running relay's settings. Each can also be set in the environment
/// (shown) or in the TOML file named by --config, with the same name in
/// snake_case (`max_batch_rows = 500`).
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// TOML config file.
    #[arg(long, env = "POSTBOX_RELAY_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(skip)]
    pub source: TableSettings,
    /// The broker's address [default: http://127.0.0.1:7411].
    #[arg(long, env = BROKER_ENV, value_name = "URL")]
    pub broker: Option<String>,
    /// What to do with published rows: delete, or mark (set published_at;
    /// cleanup deletes them after --retention-ms) [default: delete].
    #[arg(long, env = "POSTBOX_RELAY_MODE", value_name = "MODE")]
    pub mode: Option<String>,
    /// This relay's name in the leadership table [default: hostname:pid].
    #[arg(long, env = "POSTBOX_RELAY_HOLDER", value_name = "NAME")]
    pub holder: Option<String>,
    /// Most rows per claim [default: 1000].
    #[arg(long, env = "POSTBOX_RELAY_MAX_BATCH_ROWS")]
    pub max_batch_rows: Option<u32>,
    /// Most payload bytes per claim [default: 4194304].
    #[arg(long, env = "POSTBOX_RELAY_MAX_BATCH_BYTES")]
    pub max_batch_bytes: Option<u64>,
    /// Batches claimed, published and committed at once, 1 to 3; each
    /// takes a PostgreSQL session [default: 3].
    #[arg(long, env = "POSTBOX_RELAY_MAX_BATCHES_IN_FLIGHT")]
    pub max_batches_in_flight: Option<u32>,
    /// First wait after a claim finds nothing; doubles while idle
    /// [default: 5].
    #[arg(long, env = "POSTBOX_RELAY_POLL_MIN_MS")]
    pub poll_min_ms: Option<u64>,
    /// Longest wait between claims when idle [default: 500].
    #[arg(long, env = "POSTBOX_RELAY_POLL_MAX_MS")]
    pub poll_max_ms: Option<u64>,
    /// Wait between attempts to take the lead while standing by
    /// [default: 1000].
    #[arg(long, env = "POSTBOX_RELAY_STANDBY_POLL_MS")]
    pub standby_poll_ms: Option<u64>,
    /// Interval between checks that this relay still leads [default: 1000].
    #[arg(long, env = "POSTBOX_RELAY_LEASE_CHECK_INTERVAL_MS")]
    pub lease_check_interval_ms: Option<u64>,
    /// Limit on one call to the broker [default: 10000].
    #[arg(long, env = "POSTBOX_RELAY_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// statement_timeout of the relay's PostgreSQL session [default: 30000].
    #[arg(long, env = "POSTBOX_RELAY_STATEMENT_TIMEOUT_MS")]
    pub statement_timeout_ms: Option<u64>,
    /// First backoff ceiling after a failure; doubles per failure, full
    /// jitter [default: 100].
    #[arg(long, env = "POSTBOX_RELAY_BACKOFF_BASE_MS")]
    pub backoff_base_ms: Option<u64>,
    /// Largest backoff ceiling [default: 10000].
    #[arg(long, env = "POSTBOX_RELAY_BACKOFF_CAP_MS")]
    pub backoff_cap_ms: Option<u64>,
    /// Consecutive failed publishes that open the circuit breaker
    /// [default: 5].
    #[arg(long, env = "POSTBOX_RELAY_CIRCUIT_FAILURE_THRESHOLD")]
    pub circuit_failure_threshold: Option<u32>,
    /// How long the open circuit waits before one probe [default: 5000].
    #[arg(long, env = "POSTBOX_RELAY_CIRCUIT_OPEN_MS")]
    pub circuit_open_ms: Option<u64>,
    /// Mark mode: how long published rows stay before cleanup
    /// [default: 604800000, 7 days].
    #[arg(long, env = "POSTBOX_RELAY_RETENTION_MS")]
    pub retention_ms: Option<u64>,
    /// Mark mode: interval between cleanups [default: 60000].
    #[arg(long, env = "POSTBOX_RELAY_CLEANUP_INTERVAL_MS")]
    pub cleanup_interval_ms: Option<u64>,
    /// Mark mode: rows per cleanup statement [default: 1000].
    #[arg(long, env = "POSTBOX_RELAY_CLEANUP_BATCH_ROWS")]
    pub cleanup_batch_rows: Option<u32>,
    /// Interval between lag log lines [default: 10000].
    #[arg(long, env = "POSTBOX_RELAY_LAG_LOG_INTERVAL_MS")]
    pub lag_log_interval_ms: Option<u64>,
    /// Log line format [default: text].
    #[arg(long, env = "POSTBOX_RELAY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

// The help texts state these defaults; keep them in step.
const _: () = assert!(
    MAX_BATCH_ROWS_DEFAULT == 1_000
        && MAX_BATCH_BYTES_DEFAULT == 4_194_304
        && MAX_BATCHES_IN_FLIGHT_DEFAULT == 3
        && BATCHES_IN_FLIGHT_MAX == 3
        && STANDBY_POLL_MS_DEFAULT == 1_000
        && LEASE_CHECK_INTERVAL_MS_DEFAULT == 1_000
        && REQUEST_TIMEOUT_MS_DEFAULT == 10_000
        && STATEMENT_TIMEOUT_MS_DEFAULT == 30_000
        && BACKOFF_BASE_MS_DEFAULT == 100
        && BACKOFF_CAP_MS_DEFAULT == 10_000
        && RETENTION_MS_DEFAULT == 604_800_000
        && CLEANUP_INTERVAL_MS_DEFAULT == 60_000
        && CLEANUP_BATCH_ROWS_DEFAULT == 1_000
        && LAG_LOG_INTERVAL_MS_DEFAULT == 10_000
        && BATCH_ROWS_MAX == 10_000
        && BATCH_BYTES_MAX == 268_435_456
);

/// `settings.field = settings.field.or(other.field)` for each field named.
macro_rules! or_fields {
    ($left:ident, $right:ident, $($field:ident),* $(,)?) => {
        $( $left.$field = $left.$field.or($right.$field); )*
    };
}

/// `config.field = value` for each field set.
macro_rules! set_fields {
    ($config:ident, $settings:ident, $($field:ident),* $(,)?) => {
        $( if let Some(value) = $settings.$field { $config.$field = value; } )*
    };
}

/// Calls `$apply!($args, field, ...)` with the settings that go as they are
/// into the `RelayConfig` field of the same name: the one list of them, for
/// both the merge (`or`) and the copy into the configuration (`relay`).
macro_rules! with_copied_fields {
    ($apply:ident!($($args:tt)*)) => {
        $apply!(
            $($args)*,
            max_batch_rows,
            max_batch_bytes,
            max_batches_in_flight,
            poll_min_ms,
            poll_max_ms,
            standby_poll_ms,
            lease_check_interval_ms,
            request_timeout_ms,
            statement_timeout_ms,
            backoff_base_ms,
            backoff_cap_ms,
            circuit_failure_threshold,
            circuit_open_ms,
            retention_ms,
            cleanup_interval_ms,
            cleanup_batch_rows,
            lag_log_interval_ms,
        )
    };
}

impl RunSettings {
    /// These settings, then the config file they (or the environment) name.
    pub fn with_file(self) -> anyhow::Result<RunSettings> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => RunSettings::default(),
        };
        Ok(self.or(file))
    }

    /// Each setting from `self`, else from `other`.
    fn or(mut self, other: RunSettings) -> RunSettings {
        self.source = self.source.or(other.source);
        or_fields!(self, other, config, broker, mode, holder, log_format);
        with_copied_fields!(or_fields!(self, other));
        self
    }

    /// The relay's configuration, checked.
    pub fn relay(&self) -> anyhow::Result<RelayConfig> {
        let broker = self
            .broker
            .clone()
            .unwrap_or_else(|| postbox_client::DEFAULT_BROKER.to_owned());
        let mut config = RelayConfig::new(self.source.database()?, broker);
        config.table = self.source.table()?;
        config.layout = self.source.layout()?;
        if let Some(mode) = &self.mode {
            config.mode = mode.parse::<Mode>()?;
        }
        if let Some(holder) = &self.holder {
            config.holder = holder.clone();
        }
        with_copied_fields!(set_fields!(config, self));
        config.validate()?;
        Ok(config)
    }
}

fn read_file(path: &Path) -> anyhow::Result<RunSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    from_toml(&text).with_context(|| format!("in the config file {}", path.display()))
}

/// Settings from a config file's text. The table's settings are split off
/// first: serde cannot refuse unknown keys across a flattened struct.
fn from_toml(text: &str) -> anyhow::Result<RunSettings> {
    let mut all: toml::Table = toml::from_str(text)?;
    let mut source = toml::Table::new();
    for key in TableSettings::FILE_KEYS {
        if let Some(value) = all.remove(key) {
            source.insert(key.to_owned(), value);
        }
    }
    let mut settings: RunSettings = all.try_into()?;
    settings.source = source.try_into()?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunSettings,
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() -> anyhow::Result<()> {
        let file = from_toml(
            "database_url = \"postgres://db/app\"\nmax_batch_rows = 500\npoll_max_ms = 900\n\
             layout = \"debezium\"\ncolumn = [\"order_by=seq\"]",
        )?;
        let cli = Cli::try_parse_from(["postbox-relay", "--max-batch-rows", "200"])?;
        let config = cli.run.or(file).relay()?;
        assert_eq!(config.max_batch_rows, 200);
        assert_eq!(config.poll_max_ms, 900);
        assert_eq!(config.layout.order_by.as_deref(), Some("seq"));
        assert_eq!(config.request_timeout_ms, REQUEST_TIMEOUT_MS_DEFAULT);
        Ok(())
    }

    #[test]
    fn unknown_settings_in_the_file_are_refused() {
        let error = from_toml("max_batch_row = 7").expect_err("a typo");
        assert!(error.to_string().contains("max_batch_row"), "{error}");
    }

    #[test]
    fn out_of_range_settings_name_the_limit() {
        let settings = RunSettings {
            source: TableSettings {
                database_url: Some("postgres://db/app".into()),
                ..TableSettings::default()
            },
            max_batch_rows: Some(BATCH_ROWS_MAX + 1),
            ..RunSettings::default()
        };
        let text = settings.relay().expect_err("too many").to_string();
        assert!(
            text.contains("max_batch_rows") && text.contains("10000"),
            "{text}"
        );
    }
}
