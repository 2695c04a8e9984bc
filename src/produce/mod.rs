//! `produce`: the simulator's events, published to the topic.
//!
//! Each event is keyed by its malId and sent to the partition Kafka's default
//! partitioner would choose, so all events of one anime stay in order. At a
//! high rate, the events due in one tick are sent as one batch per partition,
//! all partitions at once.
//!
//! Every event gets its unique id once, before the first attempt to publish
//! it: rskafka has no idempotent producer, so a publish retried after a lost
//! acknowledgement may land twice, and the id (a record header) is how the
//! consumer counts it once. A failed publish also looks at the topic again
//! before retrying: a broker that lost its storage has no topic (or one with
//! another partition count) until it is created again.

pub mod simulator;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::catalog::{Catalog, CatalogError};
use crate::config::{Pace, ProducerOptions};
use crate::event::{self, Event};
use crate::kafka::{self, Broker, KafkaError, Partition};
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
    catalog: &Catalog,
    options: &ProducerOptions,
    pace: Pace,
    broker: Broker,
    shutdown: CancellationToken,
) -> Result<u64, ProduceError> {
    let mut topic = Topic::open(&broker, topic, options.partitions).await?;
    tracing::info!(
        topic = topic.name,
        partitions = topic.clients.len(),
        anime = catalog.anime().len(),
        ?pace,
        "producing"
    );

    let mut simulator = Simulator::new(catalog, options.seed);
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
            let events: Vec<(Event, Uuid)> = (0..due)
                .map(|_| (simulator.next_event(Utc::now()), event::new_event_id()))
                .collect();
            if !topic.publish(&broker, events, &shutdown).await {
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

/// The topic and a client per partition.
struct Topic {
    name: String,
    /// Partitions when the topic is created.
    create_with: i32,
    clients: Vec<Partition>,
}

impl Topic {
    /// Creates the topic unless it exists, and opens its partitions.
    async fn open(broker: &Broker, name: &str, create_with: i32) -> Result<Self, KafkaError> {
        let mut topic = Self {
            name: name.to_owned(),
            create_with,
            clients: Vec::new(),
        };
        topic.reopen(broker).await?;
        Ok(topic)
    }

    /// Looks at the topic again (creating it if it is gone) and reopens its partitions.
    async fn reopen(&mut self, broker: &Broker) -> Result<(), KafkaError> {
        let count = broker.ensure_topic(&self.name, self.create_with).await?;
        let mut clients = Vec::with_capacity(count as usize);
        for p in 0..count {
            clients.push(broker.partition(&self.name, p).await?);
        }
        if !self.clients.is_empty() && clients.len() != self.clients.len() {
            tracing::warn!(
                topic = self.name,
                before = self.clients.len(),
                now = clients.len(),
                "the topic's partition count changed"
            );
        }
        self.clients = clients;
        Ok(())
    }

    /// Sends `events`, one batch per partition, all partitions at once;
    /// retries with backoff until acknowledged, with the same event ids.
    /// `false` if shutdown came first.
    async fn publish(
        &mut self,
        broker: &Broker,
        mut events: Vec<(Event, Uuid)>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut streak = crate::retry::Streak::new("publish failed; retrying with the same event ids");
        loop {
            let partitions = self.clients.len() as i32;
            let mut groups: BTreeMap<i32, Vec<(Event, Uuid)>> = BTreeMap::new();
            for (event, id) in events.drain(..) {
                let p = kafka::partition_for(&event.key(), partitions);
                groups.entry(p).or_default().push((event, id));
            }
            let sends = groups.iter().filter_map(|(&p, batch)| {
                let partition = self.clients.get(p as usize)?;
                let records = batch.iter().map(|(e, id)| kafka::record(e, *id)).collect();
                Some(async move { (p, partition.produce(records).await) })
            });
            let mut failed = None;
            for (p, result) in futures::future::join_all(sends).await {
                match result {
                    Ok(_) => {
                        groups.remove(&p);
                    }
                    Err(error) => failed = Some(format!("partition {p}: {error}")),
                }
            }
            events = groups.into_values().flatten().collect();
            match failed {
                None => {
                    streak.ended("publishing again");
                    return true;
                }
                Some(reason) => streak.failed(&reason),
            }
            if !backoff.wait(shutdown).await {
                return false;
            }
            if let Err(error) = self.reopen(broker).await {
                streak.failed(&format!("cannot open the topic {}: {error}", self.name));
            }
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
