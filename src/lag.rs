//! Consumer lag: per partition, how many records of the broker's log the
//! group has not stored yet, and how long since it last stored any. Needs
//! the broker and the database, so it lives beside both: measured on a
//! schedule of its own by `consume` (its metrics) and `serve` (stats,
//! metrics, the page) through [`watch`], and once by `doctor`.
//!
//! Records waiting and no commit for `CONSUMER_STALLED_AFTER` is a *stalled*
//! partition: a consumer that is frozen, cut off, or blocked. It is said
//! everywhere: a metric, one warning per streak, `doctor`, the stats.
//!
//! A stored position only counts in the log it was read from. When the
//! broker's log is new (its end is below the stored offset, or it holds
//! another record just before it), the difference of the two offsets means
//! nothing: the partition is reported as [`PartitionLag::NewLog`], with the
//! records waiting in the new log, never as 0 and never clamped.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rskafka::client::partition::OffsetAt;
use tokio_util::sync::CancellationToken;

use crate::kafka::{Broker, KafkaError, LogCheck, Partition};
use crate::metrics::names;
use crate::store::StoreError;
use crate::store::positions::{self, Position};

/// How often [`watch`] measures.
pub const MEASURE_EVERY: Duration = Duration::from_secs(5);

/// Why a lag could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no answer within {}s from the broker or PostgreSQL", .0.as_secs())]
    TimedOut(Duration),
}

/// Log ends of a topic's partitions, keeping one client per partition
/// between calls (a client whose request went unanswered is dropped, so
/// the next call opens a new one).
#[derive(Default)]
pub struct LogEnds {
    clients: HashMap<i32, Partition>,
}

impl LogEnds {
    /// One partition's lag for `stored` (the group's position, if any).
    async fn of(
        &mut self,
        kafka: &Broker,
        topic: &str,
        partition: i32,
        stored: Option<&Position>,
    ) -> Result<PartitionLag, KafkaError> {
        let client = match self.clients.entry(partition) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(kafka.partition(topic, partition).await?)
            }
        };
        let lag = Self::measure(client, stored).await;
        if lag.as_ref().is_err_and(KafkaError::is_silent) {
            self.clients.remove(&partition);
        }
        lag
    }

    async fn measure(client: &Partition, stored: Option<&Position>) -> Result<PartitionLag, KafkaError> {
        let log_end = client.end_offset().await?;
        let Some(stored) = stored else {
            let earliest = client.offset(OffsetAt::Earliest).await?;
            return Ok(PartitionLag::Behind(log_end - earliest));
        };
        match client.check_log(stored.next_offset, stored.last).await? {
            LogCheck::Same => Ok(PartitionLag::Behind(log_end - stored.next_offset)),
            LogCheck::New { log_end, why } => {
                let earliest = client.offset(OffsetAt::Earliest).await?;
                Ok(PartitionLag::NewLog {
                    stored: stored.next_offset,
                    log_end,
                    waiting: log_end - earliest,
                    why,
                })
            }
        }
    }
}

/// One partition's lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionLag {
    /// Records of the log the group has not stored (0 when caught up; for a
    /// group with no stored position, every record the broker holds).
    Behind(i64),
    /// The stored position belongs to an older log: the broker's log is new.
    NewLog {
        /// The stored next offset (of the old log).
        stored: i64,
        /// The new log's end.
        log_end: i64,
        /// Records in the new log, all waiting.
        waiting: i64,
        /// Why the log counts as new.
        why: String,
    },
    /// The broker did not answer for this partition.
    Unknown(String),
}

impl PartitionLag {
    /// Records waiting, when known.
    pub fn waiting(&self) -> Option<i64> {
        match self {
            Self::Behind(n) => Some(*n),
            Self::NewLog { waiting, .. } => Some(*waiting),
            Self::Unknown(_) => None,
        }
    }
}

/// A group's lag on a topic.
#[derive(Debug, Clone, Default)]
pub struct Lag {
    pub per_partition: BTreeMap<i32, PartitionLag>,
    /// How many times each partition's log started again (its log epoch).
    pub log_resets: BTreeMap<i32, i32>,
    /// Whether the group has stored any position yet.
    pub committed: bool,
    /// Per partition with a stored position: how long since it last moved.
    pub since_commit: BTreeMap<i32, Duration>,
    /// When it was measured.
    pub measured_at: Option<DateTime<Utc>>,
    /// Stalled partitions, confirmed by two measurements in a row (see [`confirm`]).
    pub stalls: Vec<Stall>,
}

/// A partition with records waiting and no commit for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub partition: i32,
    pub waiting: i64,
    pub no_commit_for: Duration,
}

impl Lag {
    /// The largest known number of records waiting.
    pub fn worst(&self) -> i64 {
        self.per_partition
            .values()
            .filter_map(PartitionLag::waiting)
            .max()
            .unwrap_or(0)
    }

    /// Partitions with records waiting and no commit for longer than
    /// `after`, in this measurement alone (a record that just arrived on a
    /// partition idle for an hour looks the same for a few milliseconds).
    pub fn stall_candidates(&self, after: Duration) -> Vec<Stall> {
        self.per_partition
            .iter()
            .filter_map(|(p, lag)| {
                let waiting = lag.waiting().filter(|n| *n > 0)?;
                let no_commit_for = *self.since_commit.get(p).filter(|d| **d > after)?;
                Some(Stall {
                    partition: *p,
                    waiting,
                    no_commit_for,
                })
            })
            .collect()
    }

    /// Records waiting on every partition whose count is known.
    pub fn total(&self) -> i64 {
        self.per_partition
            .values()
            .filter_map(PartitionLag::waiting)
            .sum()
    }

    /// Partitions whose stored position belongs to an older log.
    pub fn new_logs(&self) -> impl Iterator<Item = (i32, &PartitionLag)> {
        self.per_partition
            .iter()
            .filter(|(_, lag)| matches!(lag, PartitionLag::NewLog { .. }))
            .map(|(p, lag)| (*p, lag))
    }
}

/// Measures `group`'s lag on `partitions` of `topic`.
pub async fn measure(
    kafka: &Broker,
    ends: &mut LogEnds,
    db: &tokio_postgres::Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<Lag, StoreError> {
    let stored = positions::positions(db, group, topic).await?;
    let since_commit = positions::since_moved(db, group, topic).await?;
    let mut per_partition = BTreeMap::new();
    for &p in partitions {
        let lag = match ends.of(kafka, topic, p, stored.get(&p)).await {
            Ok(lag) => lag,
            Err(error) => PartitionLag::Unknown(error.to_string()),
        };
        per_partition.insert(p, lag);
    }
    Ok(Lag {
        per_partition,
        log_resets: stored.iter().map(|(p, pos)| (*p, pos.log_epoch)).collect(),
        committed: !stored.is_empty(),
        since_commit,
        measured_at: Some(Utc::now()),
        stalls: Vec::new(),
    })
}

/// Sets `lag.stalls` to the partitions stalled both in `lag` and in the
/// measurement before it.
pub fn confirm(lag: &mut Lag, before: Option<&Lag>, after: Duration) {
    let earlier: Vec<i32> = before
        .map(|b| b.stall_candidates(after).iter().map(|s| s.partition).collect())
        .unwrap_or_default();
    lag.stalls = lag
        .stall_candidates(after)
        .into_iter()
        .filter(|s| earlier.contains(&s.partition))
        .collect();
}

/// Where [`watch`] measures: the broker, the database, the group.
#[derive(Clone)]
pub struct Source {
    pub kafka: Broker,
    pub pool: Pool,
    pub group: String,
    pub topic: String,
    /// `CONSUMER_STALLED_AFTER`.
    pub stalled_after: Duration,
}

/// Measures the lag every [`MEASURE_EVERY`] until `shutdown`, whatever the
/// consumers are doing (a hung fetch does not hold it back): publishes it
/// on `latest`, sets the lag metrics, and warns once per stalled streak.
/// Each measurement is bounded; one that does not answer publishes lag
/// unknown, never the last figures as if they were current.
pub async fn watch(
    source: Source,
    latest: tokio::sync::watch::Sender<Option<Lag>>,
    shutdown: CancellationToken,
) {
    let limit = source.pool.timeouts().wait.unwrap_or(crate::db::DEFAULT_TIMEOUT);
    let mut ends = LogEnds::default();
    let mut tick = tokio::time::interval(MEASURE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled_streak = false;
    let mut before: Option<Lag> = None;
    let mut unknown = crate::retry::Streak::new("consumer lag unknown");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let measured = tokio::time::timeout(limit, measure_on(&source, &mut ends)).await;
        let mut lag = match measured {
            Ok(Ok(lag)) => {
                unknown.ended("consumer lag measured again");
                lag
            }
            Ok(Err(error)) => {
                unknown.failed(&error.to_string());
                latest.send_replace(None);
                continue;
            }
            Err(_) => {
                // The partition clients may wait on a frozen connection.
                ends = LogEnds::default();
                unknown.failed(&LagError::TimedOut(limit).to_string());
                latest.send_replace(None);
                continue;
            }
        };
        confirm(&mut lag, before.as_ref(), source.stalled_after);
        publish_metrics(&lag);
        let stalls = &lag.stalls;
        if stalls.is_empty() {
            if stalled_streak {
                tracing::info!(group = source.group, "no partition is stalled any more");
            }
            stalled_streak = false;
        } else if !stalled_streak {
            stalled_streak = true;
            tracing::warn!(group = source.group, "{}", describe_stalls(stalls));
        }
        before = Some(lag.clone());
        latest.send_replace(Some(lag));
    }
}

async fn measure_on(source: &Source, ends: &mut LogEnds) -> Result<Lag, LagError> {
    let partitions = source.kafka.partitions(&source.topic).await?.unwrap_or_default();
    let db = source.pool.get().await.map_err(StoreError::from)?;
    Ok(measure(
        &source.kafka,
        ends,
        &db,
        &source.group,
        &source.topic,
        &partitions,
    )
    .await?)
}

/// What stalled partitions mean, and what to check.
pub fn describe_stalls(stalls: &[Stall]) -> String {
    let waiting: i64 = stalls.iter().map(|s| s.waiting).sum();
    let longest = stalls.iter().map(|s| s.no_commit_for).max().unwrap_or_default();
    let partitions: Vec<String> = stalls.iter().map(|s| s.partition.to_string()).collect();
    format!(
        "stalled: {waiting} records waiting and no commit for {} s (partitions {}): is a `consume` \
         process running, and can it reach the broker and PostgreSQL? A frozen one loses its partitions \
         after CONSUMER_SESSION_TIMEOUT",
        longest.as_secs(),
        partitions.join(", ")
    )
}

/// The lag gauges, per partition.
fn publish_metrics(lag: &Lag) {
    let stalled: Vec<i32> = lag.stalls.iter().map(|s| s.partition).collect();
    for (partition, value) in &lag.per_partition {
        let label = partition.to_string();
        let Some(n) = value.waiting() else { continue };
        metrics::gauge!(names::CONSUMER_LAG, "partition" => label.clone()).set(n as f64);
        let new_log = f64::from(u8::from(matches!(value, PartitionLag::NewLog { .. })));
        metrics::gauge!(names::CONSUMER_NEW_LOG, "partition" => label.clone()).set(new_log);
        let is_stalled = f64::from(u8::from(stalled.contains(partition)));
        metrics::gauge!(names::CONSUMER_STALLED, "partition" => label.clone()).set(is_stalled);
        if let Some(since) = lag.since_commit.get(partition) {
            metrics::gauge!(names::CONSUMER_SECONDS_SINCE_COMMIT, "partition" => label)
                .set(since.as_secs_f64());
        }
    }
    for (partition, epoch) in &lag.log_resets {
        metrics::gauge!(names::CONSUMER_LOG_EPOCH, "partition" => partition.to_string())
            .set(f64::from(*epoch));
    }
}
