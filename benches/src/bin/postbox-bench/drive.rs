//! Runs one scenario against one system: producers and consumers as tasks on
//! their own connections, throughput and HDR latency histograms, and the
//! exactly-once check of every run.
//!
//! Every workload ends with consumers reading the topic back, so a run is
//! checked whatever it measures: `publish` reads back after the producers
//! finish (not timed), `consume` times that read (a replay of the pre-filled
//! topic), and `both` runs consumers alongside the producers and times
//! publish-to-delivery per record.
//!
//! Latency is open loop in fixed-rate mode: each publish is due at a time set
//! by the rate alone, and its latency runs from when it was due, so a system
//! that stalls is charged for the records that queued behind the stall
//! (no coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::payload::{self, Published, Tally};
use crate::scenario::{Scenario, Workload};
use crate::systems::{Consumer, Producer, System, Topic};

/// Highest latency the histograms hold (longer ones are clamped to it).
const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant figures of the latency histograms.
const LATENCY_SIGFIGS: u8 = 3;
/// How long consumers may go without a new record, once every producer is
/// done, before the missing records are reported as lost.
const CONSUME_STALL: Duration = Duration::from_secs(20);
/// Most records of fixed-rate publishes in flight per producer. A publish
/// past it waits, and since its latency counts from when it was due, the
/// wait is still measured.
const FIXED_RATE_IN_FLIGHT_RECORDS_MAX: usize = 100_000;
/// The resolution of tokio's timers: a sleep shorter than this still takes it.
const TIMER_TICK_NS: u64 = 1_000_000;

/// Throughput and latency of one side of a run.
#[derive(Debug)]
pub struct Phase {
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Microseconds, per record: publish to acknowledgment for producers,
    /// publish to delivery for consumers of a `both` run.
    pub latency_us: Option<Histogram<u64>>,
}

/// What one run measured.
#[derive(Debug)]
pub struct Measured {
    pub publish: Phase,
    /// The consumers' read: timed for `consume` and `both`, the check only
    /// for `publish`.
    pub consume: Phase,
    pub verdict: payload::Verdict,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIGS)
        .expect("constant histogram bounds are valid")
}

/// Records `count` records' latency, `latency_ns`, in microseconds.
fn record_latency(histogram: &mut Histogram<u64>, latency_ns: u64, count: u64) {
    let micros = (latency_ns / 1_000).clamp(1, LATENCY_US_MAX);
    histogram.saturating_record_n(micros, count);
}

/// Runs `scenario` on `topic` (already created), counting records on `progress`.
pub async fn run<S: System>(
    system: &S,
    scenario: &Scenario,
    topic: &Topic,
    progress: &ProgressBar,
) -> anyhow::Result<Measured> {
    let consumers = Consumers::new(scenario, topic);
    let mut concurrent = None;
    if scenario.workload == Workload::Both {
        concurrent = Some(consumers.start(system, topic, progress).await?);
    }
    let (publish, published) = publish(system, scenario, topic, progress).await?;
    consumers.expect(scenario, &published);
    let reading = match concurrent {
        Some(reading) => reading,
        None => consumers.start(system, topic, progress).await?,
    };
    let (consume, tally) = reading.finish().await?;
    let verdict = tally.verdict(&published);
    Ok(Measured {
        publish,
        consume,
        verdict,
    })
}

/// The partition producer `index` writes to.
fn partition_of(producer: u32, topic: &Topic) -> u32 {
    producer % topic.partitions
}

/// Runs the producers to completion.
async fn publish<S: System>(
    system: &S,
    scenario: &Scenario,
    topic: &Topic,
    progress: &ProgressBar,
) -> anyhow::Result<(Phase, Published)> {
    let mut producers = Vec::new();
    for index in 0..scenario.producers {
        producers.push(Arc::new(
            system
                .producer(topic, partition_of(index, topic))
                .await
                .context("connecting a producer")?,
        ));
    }
    let started_ns = payload::now_ns();
    let mut tasks = JoinSet::new();
    for (index, producer) in producers.into_iter().enumerate() {
        let plan = ProducerPlan::new(scenario, index as u32, started_ns);
        let progress = progress.clone();
        tasks.spawn(async move { plan.run(producer, progress).await });
    }
    let mut published = Published {
        per_producer: vec![0; scenario.producers as usize],
        checksum: 0,
    };
    let mut latency = histogram();
    let mut bytes = 0;
    while let Some(joined) = tasks.join_next().await {
        let done = joined.context("a producer task panicked")??;
        published.per_producer[done.producer as usize] = done.records;
        published.checksum = published.checksum.wrapping_add(done.checksum);
        bytes += done.bytes;
        latency
            .add(&done.latency_us)
            .context("merging histograms")?;
    }
    let elapsed = Duration::from_nanos(payload::now_ns() - started_ns);
    let phase = Phase {
        records: published.records(),
        bytes,
        elapsed,
        latency_us: Some(latency),
    };
    Ok((phase, published))
}

/// What one producer does: how many records, how big, how fast.
struct ProducerPlan {
    index: u32,
    record_bytes: usize,
    batch_records: u64,
    /// Records to send; `u64::MAX` when bounded by `deadline_ns` instead.
    records: u64,
    deadline_ns: u64,
    /// Nanoseconds between publishes in fixed-rate mode.
    interval_ns: Option<u64>,
    started_ns: u64,
}

/// What one producer got acknowledged.
struct ProducerDone {
    producer: u32,
    records: u64,
    bytes: u64,
    checksum: u64,
    latency_us: Histogram<u64>,
}

impl ProducerPlan {
    fn new(scenario: &Scenario, index: u32, started_ns: u64) -> ProducerPlan {
        let producers = u64::from(scenario.producers);
        let records = match scenario.records {
            Some(total) => total / producers + u64::from(u64::from(index) < total % producers),
            None => u64::MAX,
        };
        let deadline_ns = match scenario.duration {
            Some(duration) => started_ns + duration.as_nanos() as u64,
            None => u64::MAX,
        };
        let batch_records = scenario.batch_records as u64;
        let interval_ns = scenario
            .rate
            .map(|rate| batch_records * producers * 1_000_000_000 / rate.max(1));
        ProducerPlan {
            index,
            record_bytes: scenario.record_bytes,
            batch_records,
            records,
            deadline_ns,
            interval_ns,
            started_ns,
        }
    }

    /// The next batch's size after `sent` records, or `None` when done.
    fn next_batch(&self, sent: u64) -> Option<u64> {
        let left = self.records - sent;
        (left > 0 && payload::now_ns() < self.deadline_ns).then(|| left.min(self.batch_records))
    }

    fn batch(&self, first_seq: u64, count: u64, sent_ns: u64) -> (Vec<Bytes>, u64) {
        let records: Vec<Bytes> = (first_seq..first_seq + count)
            .map(|seq| payload::encode(self.index, seq, sent_ns, self.record_bytes))
            .collect();
        let checksum = records
            .iter()
            .fold(0u64, |sum, r| sum.wrapping_add(payload::checksum(r)));
        (records, checksum)
    }

    async fn run<P: Producer>(
        self,
        producer: Arc<P>,
        progress: ProgressBar,
    ) -> anyhow::Result<ProducerDone> {
        match self.interval_ns {
            None => self.run_max_rate(&*producer, &progress).await,
            Some(interval_ns) => self.run_fixed_rate(producer, interval_ns, progress).await,
        }
    }

    /// One publish at a time, each as soon as the last is acknowledged.
    async fn run_max_rate<P: Producer>(
        self,
        producer: &P,
        progress: &ProgressBar,
    ) -> anyhow::Result<ProducerDone> {
        let mut done = self.done();
        while let Some(count) = self.next_batch(done.records) {
            let sent_ns = payload::now_ns();
            let (records, checksum) = self.batch(done.records, count, sent_ns);
            producer.publish(records).await?;
            let latency_ns = payload::now_ns().saturating_sub(sent_ns);
            record_latency(&mut done.latency_us, latency_ns, count);
            done.add(count, self.record_bytes, checksum);
            progress.inc(count);
        }
        Ok(done)
    }

    /// A publish every `interval_ns`, whether or not earlier ones are
    /// acknowledged.
    async fn run_fixed_rate<P: Producer>(
        self,
        producer: Arc<P>,
        interval_ns: u64,
        progress: ProgressBar,
    ) -> anyhow::Result<ProducerDone> {
        let room = Arc::new(Semaphore::new(FIXED_RATE_IN_FLIGHT_RECORDS_MAX));
        let mut in_flight = JoinSet::new();
        let mut done = self.done();
        let mut sent = 0u64;
        let mut due_ns = self.started_ns;
        while let Some(count) = self.next_batch(sent) {
            // Timers tick in milliseconds: publishes due within the next tick
            // go now. Latency counts from the due time, or from when the
            // publish went if that was earlier: whichever came first.
            let wait_ns = due_ns.saturating_sub(payload::now_ns());
            if wait_ns >= TIMER_TICK_NS {
                tokio::time::sleep(Duration::from_nanos(wait_ns - TIMER_TICK_NS)).await;
            }
            let start_ns = due_ns.min(payload::now_ns());
            let (records, checksum) = self.batch(sent, count, start_ns);
            let permit = Arc::clone(&room).acquire_many_owned(count as u32).await?;
            let producer = Arc::clone(&producer);
            in_flight.spawn(async move {
                producer.publish(records).await?;
                let _permit = permit;
                anyhow::Ok((count, checksum, payload::now_ns().saturating_sub(start_ns)))
            });
            sent += count;
            due_ns += interval_ns;
            // Finished publishes are counted as they go, so that the set does
            // not grow with the run (a growing heap is work the peers' runs
            // would not share).
            while let Some(joined) = in_flight.try_join_next() {
                self.count_published(&mut done, joined, &progress)?;
            }
        }
        while let Some(joined) = in_flight.join_next().await {
            self.count_published(&mut done, joined, &progress)?;
        }
        Ok(done)
    }

    /// Adds a finished fixed-rate publish to `done`.
    fn count_published(
        &self,
        done: &mut ProducerDone,
        joined: Result<anyhow::Result<(u64, u64, u64)>, tokio::task::JoinError>,
        progress: &ProgressBar,
    ) -> anyhow::Result<()> {
        let (count, checksum, latency_ns) = joined.context("a publish task panicked")??;
        record_latency(&mut done.latency_us, latency_ns, count);
        done.add(count, self.record_bytes, checksum);
        progress.inc(count);
        Ok(())
    }

    fn done(&self) -> ProducerDone {
        ProducerDone {
            producer: self.index,
            records: 0,
            bytes: 0,
            checksum: 0,
            latency_us: histogram(),
        }
    }
}

impl ProducerDone {
    fn add(&mut self, count: u64, record_bytes: usize, checksum: u64) {
        self.records += count;
        self.bytes += count * record_bytes as u64;
        self.checksum = self.checksum.wrapping_add(checksum);
    }
}

/// The consumers of a run: which partitions each reads and how many records
/// each must get.
struct Consumers {
    /// Per consumer, its partitions.
    partitions: Vec<Vec<u32>>,
    /// Per consumer, the records it must receive; `u64::MAX` until the
    /// producers are done.
    expected: Arc<Vec<AtomicU64>>,
}

/// Consumers reading: their tasks and what each has received so far.
struct Reading {
    tasks: JoinSet<anyhow::Result<()>>,
    states: Vec<Arc<Mutex<ConsumerState>>>,
    started_ns: u64,
}

#[derive(Default)]
struct ConsumerState {
    tally: Tally,
    latency_us: Option<Histogram<u64>>,
    last_record_ns: u64,
}

impl Consumers {
    fn new(scenario: &Scenario, topic: &Topic) -> Consumers {
        let partitions = if scenario.consumers == 1 {
            vec![(0..topic.partitions).collect()]
        } else {
            (0..topic.partitions).map(|p| vec![p]).collect()
        };
        let expected = (0..partitions.len())
            .map(|_| AtomicU64::new(u64::MAX))
            .collect();
        Consumers {
            partitions,
            expected: Arc::new(expected),
        }
    }

    /// Tells each consumer how many records its partitions got.
    fn expect(&self, scenario: &Scenario, published: &Published) {
        for (consumer, partitions) in self.partitions.iter().enumerate() {
            let records: u64 = published
                .per_producer
                .iter()
                .enumerate()
                .filter(|(producer, _)| {
                    let partition = *producer as u32 % scenario.partitions;
                    partitions.contains(&partition)
                })
                .map(|(_, records)| records)
                .sum();
            self.expected[consumer].store(records, Ordering::Release);
        }
    }

    async fn start<S: System>(
        &self,
        system: &S,
        topic: &Topic,
        progress: &ProgressBar,
    ) -> anyhow::Result<Reading> {
        let timed = self
            .expected
            .iter()
            .any(|e| e.load(Ordering::Acquire) == u64::MAX);
        let mut subscriptions = Vec::new();
        for partitions in &self.partitions {
            let consumer = system
                .consumer(topic, partitions.clone())
                .await
                .context("subscribing a consumer")?;
            subscriptions.push(consumer);
        }
        let started_ns = payload::now_ns();
        let mut reading = Reading {
            tasks: JoinSet::new(),
            states: Vec::new(),
            started_ns,
        };
        for (index, consumer) in subscriptions.into_iter().enumerate() {
            let state = Arc::new(Mutex::new(ConsumerState {
                // Only consumers running beside the producers time delivery.
                latency_us: timed.then(histogram),
                ..ConsumerState::default()
            }));
            reading.states.push(Arc::clone(&state));
            let expected = Arc::clone(&self.expected);
            let progress = progress.clone();
            reading
                .tasks
                .spawn(consume(consumer, state, expected, index, progress));
        }
        Ok(reading)
    }
}

/// Reads until the consumer has every record expected of it.
async fn consume<C: Consumer>(
    mut consumer: C,
    state: Arc<Mutex<ConsumerState>>,
    expected: Arc<Vec<AtomicU64>>,
    index: usize,
    progress: ProgressBar,
) -> anyhow::Result<()> {
    let done =
        |state: &ConsumerState| state.tally.records >= expected[index].load(Ordering::Acquire);
    loop {
        if done(&lock(&state)) {
            return Ok(());
        }
        let batch = consumer.next_batch().await?;
        let now = payload::now_ns();
        let mut state = lock(&state);
        for payload in &batch {
            let header = state.tally.add(payload);
            if let (Some((_, _, sent_ns)), Some(latency)) = (header, state.latency_us.as_mut()) {
                record_latency(latency, now.saturating_sub(sent_ns), 1);
            }
        }
        state.last_record_ns = now;
        progress.inc(batch.len() as u64);
    }
}

fn lock(state: &Mutex<ConsumerState>) -> std::sync::MutexGuard<'_, ConsumerState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Reading {
    /// Waits for every consumer to be done, or to stall for `CONSUME_STALL`
    /// (then what it lacks is reported missing), and merges what they got.
    async fn finish(mut self) -> anyhow::Result<(Phase, Tally)> {
        let mut last_progress_ns = payload::now_ns();
        let mut last_records = 0;
        loop {
            match tokio::time::timeout(Duration::from_millis(200), self.tasks.join_next()).await {
                Ok(None) => break,
                Ok(Some(joined)) => joined.context("a consumer task panicked")??,
                Err(_elapsed) => {
                    let records: u64 = self.states.iter().map(|s| lock(s).tally.records).sum();
                    let now = payload::now_ns();
                    if records != last_records {
                        (last_records, last_progress_ns) = (records, now);
                    } else if now - last_progress_ns > CONSUME_STALL.as_nanos() as u64 {
                        self.tasks.abort_all();
                        break;
                    }
                }
            }
        }
        let mut tally = Tally::default();
        let mut latency: Option<Histogram<u64>> = None;
        let mut last_record_ns = self.started_ns;
        for state in &self.states {
            let state = lock(state);
            tally.merge(&state.tally);
            last_record_ns = last_record_ns.max(state.last_record_ns);
            if let Some(theirs) = &state.latency_us {
                match latency.as_mut() {
                    Some(mine) => mine.add(theirs).context("merging histograms")?,
                    None => latency = Some(theirs.clone()),
                }
            }
        }
        let phase = Phase {
            records: tally.records,
            bytes: tally.bytes,
            elapsed: Duration::from_nanos(last_record_ns - self.started_ns),
            latency_us: latency,
        };
        Ok((phase, tally))
    }
}
