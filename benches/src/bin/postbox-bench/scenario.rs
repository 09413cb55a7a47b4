//! What a run does (workload, sizes, counts, rate), its limits, and the
//! presets: `--quick` (under a minute) and `--matrix` (the README's table).

use std::time::Duration;

use serde::Serialize;

use crate::payload::PAYLOAD_HEADER_BYTES;
use crate::systems::Durability;

/// Largest record: the smallest of the systems' own limits (Postbox's
/// `RECORD_BYTES_MAX`, NATS's default `max_payload`, both 1 MiB).
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;
/// Most records per publish call (Postbox's `BATCH_RECORDS_MAX`).
pub const BATCH_RECORDS_MAX: usize = 10_000;
/// Most producers, and most partitions, of one run.
pub const PRODUCERS_MAX: u32 = 1_024;

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Publish only (the topic is read back afterwards for the check, untimed).
    Publish,
    /// Replay: fill the topic, then time consumers reading it from the start.
    Consume,
    /// Publish and consume at once; latency is publish to delivery.
    Both,
}

/// One run's settings.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub workload: Workload,
    pub record_bytes: usize,
    /// Records per publish call.
    pub batch_records: usize,
    pub producers: u32,
    /// 1 (reading every partition) or one per partition.
    pub consumers: u32,
    pub partitions: u32,
    /// Records to publish in all; with `duration`, whichever ends first.
    pub records: Option<u64>,
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Option<Duration>,
    pub durability: Durability,
    /// Records per second over all producers (fixed rate, open loop);
    /// `None`: as fast as acknowledgments allow.
    pub rate: Option<u64>,
}

fn millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(|d| d.as_millis() as u64).serialize(s)
}

impl Scenario {
    /// Checks every setting against its limit, naming the value and the limit.
    pub fn validate(&self) -> Result<(), String> {
        let within = |name: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("{name} is {value}; it must be {min} to {max}"))
            }
        };
        within(
            "record size",
            self.record_bytes as u64,
            PAYLOAD_HEADER_BYTES as u64,
            RECORD_BYTES_MAX as u64,
        )?;
        within(
            "batch",
            self.batch_records as u64,
            1,
            BATCH_RECORDS_MAX as u64,
        )?;
        within("producers", self.producers.into(), 1, PRODUCERS_MAX.into())?;
        within(
            "partitions",
            self.partitions.into(),
            1,
            PRODUCERS_MAX.into(),
        )?;
        if self.consumers != 1 && self.consumers != self.partitions {
            return Err(format!(
                "consumers is {}; it must be 1 (reading every partition) or the number of partitions ({})",
                self.consumers, self.partitions
            ));
        }
        if self.records.is_none() && self.duration.is_none() {
            return Err("give a number of records or a duration".into());
        }
        if self.records == Some(0) {
            return Err("records must be at least 1".into());
        }
        if self.rate == Some(0) {
            return Err("rate must be at least 1 record/s".into());
        }
        Ok(())
    }

    /// A short name for tables and charts: `publish 1KiB x8 sync`.
    pub fn label(&self) -> String {
        let size = match self.record_bytes {
            b if b >= 1024 && b % 1024 == 0 => format!("{}KiB", b / 1024),
            b => format!("{b}B"),
        };
        let durability = match self.durability {
            Durability::Sync => "sync",
            Durability::Async => "async",
        };
        let mut label = format!(
            "{} {size} x{} {durability}",
            match self.workload {
                Workload::Publish => "publish",
                Workload::Consume => "replay",
                Workload::Both => "pub+sub",
            },
            self.producers
        );
        if self.partitions > 1 {
            label.push_str(&format!(" p{}", self.partitions));
        }
        if let Some(rate) = self.rate {
            label.push_str(&format!(" @{rate}/s"));
        }
        label
    }

    /// The records a run will publish, when known in advance.
    pub fn planned_records(&self) -> Option<u64> {
        match (self.records, self.duration, self.rate) {
            (Some(records), _, _) => Some(records),
            (None, Some(duration), Some(rate)) => {
                Some((duration.as_secs_f64() * rate as f64) as u64)
            }
            _ => None,
        }
    }
}

fn publish(record_bytes: usize, producers: u32, durability: Durability, records: u64) -> Scenario {
    Scenario {
        workload: Workload::Publish,
        record_bytes,
        batch_records: 1_000,
        producers,
        consumers: 1,
        partitions: 1,
        records: Some(records),
        duration: None,
        durability,
        rate: None,
    }
}

/// Replay of `records` 1 KiB records, filled by 8 producers.
fn replay(records: u64) -> Scenario {
    Scenario {
        workload: Workload::Consume,
        ..publish(1024, 8, Durability::Sync, records)
    }
}

/// One producer publishing single 1 KiB records at `rate` for `duration`.
fn fixed_rate(rate: u64, duration: Duration) -> Scenario {
    Scenario {
        batch_records: 1,
        records: None,
        duration: Some(duration),
        rate: Some(rate),
        ..publish(1024, 1, Durability::Sync, 0)
    }
}

/// The `--quick` preset: the three targets' scenarios, small (under a minute
/// for four systems).
pub fn quick() -> Vec<Scenario> {
    vec![
        publish(1024, 8, Durability::Sync, 40_000),
        publish(1024, 8, Durability::Async, 40_000),
        replay(100_000),
        fixed_rate(10_000, Duration::from_secs(3)),
    ]
}

/// The `--matrix` preset: the README's table. Publish 100 B and 1 KiB
/// records with 1, 8 and 32 producers, sync and async; replay of 1 M 1 KiB
/// records; 1 KiB records at a fixed 10,000 records/s.
pub fn matrix() -> Vec<Scenario> {
    let mut scenarios = Vec::new();
    for (record_bytes, records) in [(100, 1_000_000), (1024, 1_000_000)] {
        for producers in [1, 8, 32] {
            for durability in [Durability::Sync, Durability::Async] {
                scenarios.push(publish(record_bytes, producers, durability, records));
            }
        }
    }
    scenarios.push(replay(1_000_000));
    scenarios.push(fixed_rate(10_000, Duration::from_secs(10)));
    scenarios.push(Scenario {
        workload: Workload::Both,
        ..fixed_rate(10_000, Duration::from_secs(10))
    });
    scenarios
}
