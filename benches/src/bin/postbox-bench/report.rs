//! The results of a bench invocation: a table on stdout, the same as JSON,
//! and a bar chart (SVG) of throughput, written under the report directory.
//!
//! Every row names what the system had done with a record when it
//! acknowledged it, so that unlike is never compared with unlike unawares.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::drive::{Measured, Phase};
use crate::payload::Verdict;
use crate::scenario::{Scenario, Workload};

/// A run's throughput and latency, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub records: u64,
    pub bytes: u64,
    pub elapsed_ms: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub latency_us: Option<Percentiles>,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl PhaseReport {
    fn new(phase: &Phase) -> PhaseReport {
        let seconds = phase.elapsed.as_secs_f64().max(1e-9);
        PhaseReport {
            records: phase.records,
            bytes: phase.bytes,
            elapsed_ms: seconds * 1e3,
            records_per_s: phase.records as f64 / seconds,
            mb_per_s: phase.bytes as f64 / seconds / 1e6,
            latency_us: phase.latency_us.as_ref().map(percentiles),
        }
    }
}

fn percentiles(histogram: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: histogram.value_at_quantile(0.50),
        p99: histogram.value_at_quantile(0.99),
        p999: histogram.value_at_quantile(0.999),
        max: histogram.max(),
    }
}

/// How a row ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Measured, and every record arrived exactly once.
    Passed,
    /// Measured, but the check failed, or the run failed part way.
    Failed,
    /// Not measured (the system could not be reached, say).
    NotMeasured,
}

/// One system in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: String,
    pub scenario: Scenario,
    pub label: String,
    pub durability_at_ack: String,
    pub outcome: Outcome,
    /// Why it failed or was not measured.
    pub reason: Option<String>,
    pub publish: Option<PhaseReport>,
    pub consume: Option<PhaseReport>,
    pub check: Option<Verdict>,
    /// Peak resident set of the broker process during the run, where the
    /// bench started it (Postbox): VmHWM, which counts the pages of the log
    /// files it maps to serve reads.
    pub broker_peak_rss_bytes: Option<u64>,
    /// Highest sample (every 50 ms) of its anonymous resident memory: what it
    /// allocated itself.
    pub broker_peak_anon_rss_bytes: Option<u64>,
}

impl Row {
    pub fn measured(
        system: &str,
        scenario: &Scenario,
        durability_at_ack: &str,
        measured: &Measured,
    ) -> Row {
        let reason = measured.verdict.failure();
        Row {
            outcome: if reason.is_none() {
                Outcome::Passed
            } else {
                Outcome::Failed
            },
            reason,
            publish: Some(PhaseReport::new(&measured.publish)),
            consume: Some(PhaseReport::new(&measured.consume)),
            check: Some(measured.verdict.clone()),
            ..Row::unmeasured(
                system,
                scenario,
                durability_at_ack,
                Outcome::NotMeasured,
                "",
            )
        }
    }

    pub fn unmeasured(
        system: &str,
        scenario: &Scenario,
        durability_at_ack: &str,
        outcome: Outcome,
        reason: &str,
    ) -> Row {
        Row {
            system: system.to_owned(),
            scenario: scenario.clone(),
            label: scenario.label(),
            durability_at_ack: durability_at_ack.to_owned(),
            outcome,
            reason: (!reason.is_empty()).then(|| reason.to_owned()),
            publish: None,
            consume: None,
            check: None,
            broker_peak_rss_bytes: None,
            broker_peak_anon_rss_bytes: None,
        }
    }

    /// The figures the table and chart show: the replay's for `consume`, the
    /// producers' otherwise, with publish-to-delivery latency for `both`.
    pub fn headline(&self) -> Option<(f64, f64, Option<&Percentiles>)> {
        let (publish, consume) = (self.publish.as_ref()?, self.consume.as_ref()?);
        Some(match self.scenario.workload {
            Workload::Publish => (
                publish.records_per_s,
                publish.mb_per_s,
                publish.latency_us.as_ref(),
            ),
            Workload::Consume => (consume.records_per_s, consume.mb_per_s, None),
            Workload::Both => (
                publish.records_per_s,
                publish.mb_per_s,
                consume.latency_us.as_ref(),
            ),
        })
    }
}

/// The machine a report was made on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_bytes: Option<u64>,
    pub kernel: String,
}

impl Machine {
    pub fn this() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_bytes = read("/proc/meminfo")
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        }
    }
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// Unix seconds when the invocation started.
    pub started_at_unix_s: u64,
    /// The disk's durable write ceiling, measured in the same invocation on
    /// the directory Postbox writes to: sequential writes with an fdatasync
    /// every MiB, MB/s.
    pub raw_fdatasync_mb_per_s: Option<f64>,
    pub rows: Vec<Row>,
}

impl Report {
    /// Whether any measured row failed its check.
    pub fn failed(&self) -> bool {
        self.rows.iter().any(|row| row.outcome == Outcome::Failed)
    }

    /// The table, one line per row, tab-free and aligned.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:<28} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}  {:<8} durability at ack",
            "system",
            "scenario",
            "records/s",
            "MB/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "RSS MiB",
            "anon MiB",
            "check"
        );
        for row in &self.rows {
            let ms = |us: u64| format!("{:.2}", us as f64 / 1e3);
            let (rate, mb, latency) = row
                .headline()
                .map(|(rate, mb, latency)| (format!("{rate:.0}"), format!("{mb:.1}"), latency))
                .unwrap_or_else(|| ("-".into(), "-".into(), None));
            let [p50, p99, p999, max] = latency
                .map(|l| [ms(l.p50), ms(l.p99), ms(l.p999), ms(l.max)])
                .unwrap_or_else(|| ["-".into(), "-".into(), "-".into(), "-".into()]);
            let mib = |bytes: Option<u64>| {
                bytes.map_or("-".into(), |b| {
                    format!("{:.0}", b as f64 / (1 << 20) as f64)
                })
            };
            let rss = mib(row.broker_peak_rss_bytes);
            let anon = mib(row.broker_peak_anon_rss_bytes);
            let check = match row.outcome {
                Outcome::Passed => "ok",
                Outcome::Failed => "FAILED",
                Outcome::NotMeasured => "skipped",
            };
            let _ = writeln!(
                out,
                "{:<16} {:<28} {rate:>12} {mb:>9} {p50:>9} {p99:>9} {p999:>9} {max:>9} {rss:>8} {anon:>8}  {check:<8} {}",
                row.system, row.label, row.durability_at_ack
            );
            if let Some(reason) = &row.reason {
                let _ = writeln!(out, "{:<16} ^ {reason}", "");
            }
        }
        if let Some(raw) = self.raw_fdatasync_mb_per_s {
            let _ = writeln!(
                out,
                "raw disk: write + fdatasync every 1 MiB, {raw:.1} MB/s"
            );
        }
        out
    }

    /// Writes `results.json` and `throughput.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        let path = dir.join("results.json");
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
        let path = dir.join("throughput.svg");
        std::fs::write(&path, self.chart())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// A horizontal bar chart: a group per scenario, a bar per system, MB/s,
    /// with the raw disk baseline as a dashed line.
    pub fn chart(&self) -> String {
        const LEFT: f64 = 230.0;
        const WIDTH: f64 = 960.0;
        const BAR: f64 = 14.0;
        const GAP: f64 = 12.0;
        const TOP: f64 = 50.0;
        let mut systems: Vec<&str> = Vec::new();
        let mut labels: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !systems.contains(&row.system.as_str()) {
                systems.push(&row.system);
            }
            if !labels.contains(&row.label.as_str()) {
                labels.push(&row.label);
            }
        }
        let bar_mb = |label: &str, system: &str| {
            self.rows
                .iter()
                .find(|r| r.label == label && r.system == system && r.outcome == Outcome::Passed)
                .and_then(|r| r.headline())
                .map(|(_, mb, _)| mb)
        };
        let most = self
            .rows
            .iter()
            .filter_map(|r| r.headline().map(|(_, mb, _)| mb))
            .chain(self.raw_fdatasync_mb_per_s)
            .fold(1.0, f64::max);
        let scale = (WIDTH - LEFT - 90.0) / most;
        let group = systems.len() as f64 * BAR + GAP;
        let height = TOP + labels.len() as f64 * group + 40.0;
        let colors = ["#1f6feb", "#8957e5", "#d1242f", "#bf8700", "#2da44e"];
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"18\" font-size=\"14\">postbox-bench: throughput, MB/s (higher is better)</text>\n"
        );
        for (i, system) in systems.iter().enumerate() {
            let x = LEFT + i as f64 * 150.0;
            let color = colors[i % colors.len()];
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"28\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
                 <text x=\"{}\" y=\"37\">{system}</text>",
                x + 14.0
            );
        }
        for (g, label) in labels.iter().enumerate() {
            let y0 = TOP + g as f64 * group;
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>",
                LEFT - 8.0,
                y0 + systems.len() as f64 * BAR / 2.0 + 4.0
            );
            for (i, system) in systems.iter().enumerate() {
                let y = y0 + i as f64 * BAR;
                let color = colors[i % colors.len()];
                let (width, text) = match bar_mb(label, system) {
                    Some(mb) => (mb * scale, format!("{mb:.1}")),
                    None => (0.0, "n/a".to_owned()),
                };
                let _ = writeln!(
                    svg,
                    "<rect x=\"{LEFT}\" y=\"{y}\" width=\"{width:.1}\" height=\"{}\" fill=\"{color}\"/>\
                     <text x=\"{:.1}\" y=\"{}\">{text}</text>",
                    BAR - 2.0,
                    LEFT + width + 4.0,
                    y + BAR - 4.0
                );
            }
        }
        if let Some(raw) = self.raw_fdatasync_mb_per_s {
            let x = LEFT + raw * scale;
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">raw write+fdatasync {raw:.0} MB/s</text>",
                height - 30.0,
                height - 16.0
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}
