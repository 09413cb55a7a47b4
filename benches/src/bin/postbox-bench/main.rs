//! `postbox-bench`: Postbox side by side with NATS JetStream, Redis Streams
//! and RabbitMQ Streams, in one invocation on one machine.
//!
//! Each system runs every scenario (a preset, or one given by flags) on a
//! fresh topic: producers and consumers on connections of their own, HDR
//! latency histograms, and a check that consumers got every acknowledged
//! record exactly once. A system that cannot be reached is reported as not
//! measured, with the reason. Output: a table on stdout, `results.json` and
//! `throughput.svg` in the report directory, progress on stderr. The exit
//! status is 1 if any measured run failed its check.
//!
//! Modules: `scenario` (settings and presets), `systems` (one per broker,
//! behind shared traits), `drive` (the workloads), `payload` (record layout
//! and the exactly-once check), `report` (table, JSON, chart).

mod drive;
mod payload;
mod report;
mod scenario;
mod systems;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use report::{Machine, Outcome, Report, Row};
use scenario::{Scenario, Workload};
use systems::nats::Nats;
use systems::postbox::{BrokerProcess, Postbox};
use systems::rabbitmq::RabbitMq;
use systems::redis::Redis;
use systems::{Durability, System, Topic};

/// Bytes the raw disk baseline writes (with an fdatasync every MiB).
const RAW_BASELINE_BYTES: u64 = 256 * 1024 * 1024;
/// Longest a single run may take before it is reported as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Which systems to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SystemName {
    /// Postbox, a generated idempotency key on every record (the client's default).
    Postbox,
    /// Postbox, records without idempotency keys (no dedup work).
    PostboxKeyless,
    Nats,
    Redis,
    Rabbitmq,
}

#[derive(Debug, Parser)]
#[command(
    name = "postbox-bench",
    about = "Measure Postbox side by side with NATS JetStream, Redis Streams and RabbitMQ Streams"
)]
struct Args {
    /// Systems to measure, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "postbox,postbox-keyless,nats,redis,rabbitmq"
    )]
    systems: Vec<SystemName>,
    /// The small preset: the targets' scenarios in under a minute.
    #[arg(long, conflicts_with = "matrix")]
    quick: bool,
    /// The README's matrix: 100 B and 1 KiB; 1, 8 and 32 producers; sync and
    /// async; replay of 1 M records; a fixed 10,000 records/s.
    #[arg(long)]
    matrix: bool,
    /// What to measure (without a preset).
    #[arg(long, value_enum, default_value = "publish")]
    workload: Workload,
    /// Bytes per record (at least the 20-byte bench header).
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records per publish call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value_t = 8)]
    producers: u32,
    /// 1 (reading every partition) or one per partition.
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Records to publish in all.
    #[arg(long)]
    records: Option<u64>,
    /// How long producers publish, in seconds (with --records: whichever ends first).
    #[arg(long)]
    duration_s: Option<u64>,
    #[arg(long, value_enum, default_value = "sync")]
    durability: Durability,
    /// Records per second over all producers, open loop; without it, as fast
    /// as acknowledgments come.
    #[arg(long)]
    rate: Option<u64>,
    /// A running Postbox broker to measure; without it, the bench starts
    /// `--broker-bin` on a temporary directory under $POSTBOX_BENCH_DIR
    /// (default target/bench-data).
    #[arg(long)]
    postbox: Option<String>,
    /// The broker binary to start (default: postbox-broker beside this binary).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:4222")]
    nats: String,
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// RabbitMQ's stream protocol port (scripts/peers.sh enables the plugin).
    #[arg(long, default_value = "127.0.0.1:5552")]
    rabbitmq: String,
    /// Where results.json and throughput.svg go.
    #[arg(long, default_value = "target/bench-report")]
    out: PathBuf,
}

impl Args {
    fn scenarios(&self) -> Vec<Scenario> {
        if self.quick {
            return scenario::quick();
        }
        if self.matrix {
            return scenario::matrix();
        }
        vec![Scenario {
            workload: self.workload,
            record_bytes: self.record_bytes,
            batch_records: self.batch,
            producers: self.producers,
            consumers: self.consumers,
            partitions: self.partitions,
            records: match (self.records, self.duration_s) {
                (None, None) => Some(100_000),
                (records, _) => records,
            },
            duration: self.duration_s.map(Duration::from_secs),
            durability: self.durability,
            rate: self.rate,
        }]
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error.into()),
    };
    match runtime.block_on(run(args)) {
        Ok(report) if report.failed() => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("postbox-bench: {error:#}");
    ExitCode::from(2)
}

async fn run(args: Args) -> anyhow::Result<Report> {
    let scenarios = args.scenarios();
    for scenario in &scenarios {
        scenario
            .validate()
            .map_err(|reason| anyhow::anyhow!("{}: {reason}", scenario.label()))?;
    }
    let started_at_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut report = Report {
        machine: Machine::this(),
        started_at_unix_s,
        raw_fdatasync_mb_per_s: raw_baseline().await,
        rows: Vec::new(),
    };
    let mut bench = Bench {
        scenarios,
        rows: Vec::new(),
        run_id: started_at_unix_s,
    };
    for system in &args.systems {
        bench.system(*system, &args).await;
    }
    report.rows = bench.rows;
    println!("{}", report.table());
    report.write(&args.out)?;
    eprintln!(
        "postbox-bench: wrote {} and {}",
        args.out.join("results.json").display(),
        args.out.join("throughput.svg").display()
    );
    Ok(report)
}

/// Measures write + fdatasync on the directory a started broker writes to.
async fn raw_baseline() -> Option<f64> {
    let parent = systems::postbox::data_parent();
    let measured = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        std::fs::create_dir_all(&parent)?;
        let dir = tempfile::tempdir_in(&parent)?;
        let elapsed = postbox_benches::raw_write_fdatasync(dir.path(), RAW_BASELINE_BYTES)?;
        Ok(RAW_BASELINE_BYTES as f64 / elapsed.as_secs_f64() / 1e6)
    })
    .await;
    match measured {
        Ok(Ok(mb_per_s)) => Some(mb_per_s),
        Ok(Err(error)) => {
            eprintln!("postbox-bench: the raw disk baseline failed: {error:#}");
            None
        }
        Err(error) => {
            eprintln!("postbox-bench: the raw disk baseline failed: {error}");
            None
        }
    }
}

/// The invocation's scenarios and the rows measured so far.
struct Bench {
    scenarios: Vec<Scenario>,
    rows: Vec<Row>,
    run_id: u64,
}

impl Bench {
    async fn system(&mut self, name: SystemName, args: &Args) {
        match name {
            SystemName::Postbox | SystemName::PostboxKeyless => self.postbox(name, args).await,
            SystemName::Nats => self.connected(name, Nats::connect(&args.nats).await).await,
            SystemName::Redis => {
                self.connected(name, Redis::connect(&args.redis).await)
                    .await
            }
            SystemName::Rabbitmq => {
                self.connected(name, RabbitMq::connect(&args.rabbitmq).await)
                    .await
            }
        }
    }

    async fn connected<S: System>(&mut self, name: SystemName, system: anyhow::Result<S>) {
        match system {
            Ok(system) => self.scenarios_on(name, &system, None).await,
            Err(error) => self.unreachable(name, &format!("{error:#}")),
        }
    }

    async fn postbox(&mut self, name: SystemName, args: &Args) {
        let mut started = None;
        let address = match &args.postbox {
            Some(address) => address.clone(),
            None => {
                let binary = args
                    .broker_bin
                    .clone()
                    .unwrap_or_else(systems::postbox::default_broker_binary);
                match BrokerProcess::start(&binary, &systems::postbox::data_parent()).await {
                    Ok((broker, address)) => {
                        started = Some(broker);
                        address
                    }
                    Err(error) => return self.unreachable(name, &format!("{error:#}")),
                }
            }
        };
        let keyless = name == SystemName::PostboxKeyless;
        match Postbox::connect(&address, keyless).await {
            Ok(postbox) => self.scenarios_on(name, &postbox, started.as_mut()).await,
            Err(error) => self.unreachable(name, &format!("{error:#}")),
        }
    }

    fn unreachable(&mut self, name: SystemName, reason: &str) {
        let system = system_label(name);
        eprintln!("postbox-bench: {system} not measured: {reason}");
        for scenario in &self.scenarios {
            self.rows.push(Row::unmeasured(
                system,
                scenario,
                "-",
                Outcome::NotMeasured,
                &format!("not reachable: {reason}"),
            ));
        }
    }

    /// Runs every scenario on `system`. A system whose acknowledgment means
    /// the same at either durability runs a scenario once, not once per
    /// durability.
    async fn scenarios_on<S: System>(
        &mut self,
        name: SystemName,
        system: &S,
        mut broker: Option<&mut BrokerProcess>,
    ) {
        let name = system_label(name);
        let same_either_way =
            system.durability(Durability::Sync) == system.durability(Durability::Async);
        let mut done = HashSet::new();
        for (index, scenario) in self.scenarios.clone().iter().enumerate() {
            let mut key = scenario.clone();
            if same_either_way {
                key.durability = Durability::Sync;
            }
            if !done.insert(format!("{key:?}")) {
                continue;
            }
            let topic = Topic {
                name: format!("pbbench-{}-{index}", self.run_id),
                partitions: scenario.partitions,
                durability: scenario.durability,
            };
            if let Some(broker) = broker.as_deref_mut() {
                broker.reset_peak_rss();
            }
            let sampler = broker.as_deref().map(BrokerProcess::sample_anon_rss);
            let row = measure(name, system, scenario, &topic).await;
            let row = Row {
                broker_peak_rss_bytes: broker.as_deref_mut().and_then(|b| b.peak_rss_bytes()),
                broker_peak_anon_rss_bytes: sampler.and_then(|s| s.peak_bytes()),
                ..row
            };
            if let Some(broker) = broker.as_deref_mut() {
                if !broker.is_running() {
                    self.rows.push(row);
                    eprintln!("postbox-bench: the Postbox broker exited; see its broker.log");
                    return;
                }
            }
            self.rows.push(row);
        }
    }
}

/// Runs one scenario on a fresh topic, and deletes it afterwards.
async fn measure<S: System>(name: &str, system: &S, scenario: &Scenario, topic: &Topic) -> Row {
    let durability = system.durability(scenario.durability);
    let failed = |error: anyhow::Error| {
        let reason = format!("{error:#}");
        eprintln!("postbox-bench: {name} {}: {reason}", scenario.label());
        Row::unmeasured(name, scenario, durability, Outcome::Failed, &reason)
    };
    let progress = progress_bar(name, scenario);
    if let Err(error) = system.create(topic).await.context("creating the topic") {
        progress.finish_and_clear();
        return failed(error);
    }
    let outcome =
        tokio::time::timeout(RUN_TIMEOUT, drive::run(system, scenario, topic, &progress)).await;
    progress.finish_and_clear();
    if let Err(error) = system.delete(topic).await {
        eprintln!("postbox-bench: {name}: deleting {}: {error:#}", topic.name);
    }
    let row = match outcome {
        Ok(Ok(measured)) => Row::measured(name, scenario, durability, &measured),
        Ok(Err(error)) => failed(error),
        Err(_) => failed(anyhow::anyhow!("the run took longer than {RUN_TIMEOUT:?}")),
    };
    if let Some((rate, mb, _)) = row.headline() {
        eprintln!(
            "postbox-bench: {name:<9} {:<28} {rate:>10.0} records/s {mb:>8.1} MB/s  check {}",
            scenario.label(),
            if row.outcome == Outcome::Passed {
                "ok"
            } else {
                "FAILED"
            }
        );
    }
    row
}

fn progress_bar(name: &str, scenario: &Scenario) -> ProgressBar {
    // Published and consumed records both count.
    let bar = match scenario.planned_records() {
        Some(records) => ProgressBar::new(records * 2),
        None => ProgressBar::no_length(),
    };
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} records {per_sec}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("{name} {}", scenario.label()));
    bar
}

fn system_label(name: SystemName) -> &'static str {
    match name {
        SystemName::Postbox => "postbox",
        SystemName::PostboxKeyless => "postbox-keyless",
        SystemName::Nats => "nats",
        SystemName::Redis => "redis",
        SystemName::Rabbitmq => "rabbitmq",
    }
}
