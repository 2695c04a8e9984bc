//! `produce`: the simulator's events, published to the topic.
//!
//! Each event is keyed by its malId and sent to the partition Kafka's default
//! partitioner would choose, so all events of one anime stay in order. At a
//! high rate, the events due in one tick are sent as one batch per partition,
//! all partitions at once.

pub mod simulator;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rskafka::client::Client;
use rskafka::client::partition::{Compression, PartitionClient};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogError};
use crate::config::{Pace, ProducerOptions};
use crate::event::Event;
use crate::kafka::{self, KafkaError};
use crate::retry::Backoff;
pub use simulator::Simulator;

/// Most events sent in one tick at a high rate.
const MAX_EVENTS_PER_TICK: u64 = 5_000;
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Errors that stop the producer.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// Loads the catalog the options name (or the built-in one).
pub fn catalog(options: &ProducerOptions) -> Result<Catalog, CatalogError> {
    match &options.catalog {
        Some(path) => Catalog::load(path),
        None => Catalog::builtin(),
    }
}

/// Publishes simulated events to `topic` at `pace` until `max_events` are
/// acknowledged or `shutdown` fires; returns how many were acknowledged.
pub async fn run(
    topic: &str,
    options: &ProducerOptions,
    pace: Pace,
    client: Arc<Client>,
    shutdown: CancellationToken,
) -> Result<u64, ProduceError> {
    let catalog = catalog(options)?;
    let count = kafka::ensure_topic(&client, topic, options.partitions).await?;
    let mut partitions = Vec::with_capacity(count as usize);
    for p in 0..count {
        partitions.push(kafka::partition_client(&client, topic, p).await?);
    }
    tracing::info!(
        topic,
        partitions = count,
        anime = catalog.anime().len(),
        ?pace,
        "producing"
    );

    let mut simulator = Simulator::new(&catalog, options.seed);
    let max = options.max_events.unwrap_or(u64::MAX);
    let started = Instant::now();
    let mut progress = Progress::new();
    let mut sent = 0u64;

    while sent < max && !shutdown.is_cancelled() {
        let due = match pace {
            Pace::Interval(_) => 1,
            Pace::Rate(rate) => {
                let owed = (started.elapsed().as_secs_f64() * rate) as u64;
                owed.saturating_sub(sent).min(MAX_EVENTS_PER_TICK)
            }
        }
        .min(max - sent);

        if due > 0 {
            let events: Vec<Event> = (0..due).map(|_| simulator.next_event(Utc::now())).collect();
            if !publish(&partitions, &events, &shutdown).await {
                break;
            }
            sent += due;
            progress.report(sent);
        }

        let pause = match pace {
            Pace::Interval(interval) => interval,
            Pace::Rate(_) if due > 0 => Duration::ZERO,
            Pace::Rate(rate) => Duration::from_secs_f64((1.0 / rate).min(0.05)),
        };
        if !pause.is_zero() && sent < max {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        sent,
        seconds = format!("{secs:.1}"),
        rate = format!("{:.0}/s", sent as f64 / secs.max(1e-9)),
        "producer finished"
    );
    Ok(sent)
}

/// Sends `events`, one batch per partition, all partitions at once; retries
/// with backoff until acknowledged. `false` if shutdown came first.
async fn publish(partitions: &[PartitionClient], events: &[Event], shutdown: &CancellationToken) -> bool {
    let mut groups: BTreeMap<i32, Vec<&Event>> = BTreeMap::new();
    for event in events {
        let p = kafka::partition_for(&event.key(), partitions.len() as i32);
        groups.entry(p).or_default().push(event);
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let sends = groups.iter().map(|(&p, batch)| {
            let records = batch.iter().map(|e| kafka::record(e)).collect();
            async move {
                (
                    p,
                    partitions[p as usize]
                        .produce(records, Compression::NoCompression)
                        .await,
                )
            }
        });
        let results = futures::future::join_all(sends).await;
        for (p, result) in results {
            match result {
                Ok(_) => {
                    groups.remove(&p);
                }
                Err(error) => tracing::warn!(partition = p, %error, "publish failed; retrying"),
            }
        }
        if groups.is_empty() {
            return true;
        }
        if !backoff.wait(shutdown).await {
            return false;
        }
    }
}

/// Logs events sent and the rate every few seconds.
struct Progress {
    since: Instant,
    sent_then: u64,
}

impl Progress {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            sent_then: 0,
        }
    }

    fn report(&mut self, sent: u64) {
        let elapsed = self.since.elapsed();
        if elapsed >= PROGRESS_EVERY {
            let rate = (sent - self.sent_then) as f64 / elapsed.as_secs_f64();
            tracing::info!(sent, rate = format!("{rate:.0}/s"), "progress");
            self.since = Instant::now();
            self.sent_then = sent;
        }
    }
}
