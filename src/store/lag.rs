//! Consumer lag: per partition, how many records of the broker's log the
//! group has not stored yet. Shown by `serve` (stats, metrics) and `doctor`.
//! The one place that holds a group's stored positions against the broker.
//!
//! A stored position only counts in the log it was read from. When the
//! broker's log is new (its end is below the stored offset, or it holds
//! another record just before it), the difference of the two offsets means
//! nothing: the partition is reported as [`PartitionLag::NewLog`], with the
//! records waiting in the new log, never as 0 and never clamped.

use std::collections::{BTreeMap, HashMap};

use rskafka::client::Client;
use rskafka::client::partition::{OffsetAt, PartitionClient};

use super::StoreError;
use super::positions::{self, Position};
use crate::kafka::{self, KafkaError, LogCheck};

/// Why a lag could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Log ends of a topic's partitions, keeping one client per partition
/// between calls.
#[derive(Default)]
pub struct LogEnds {
    clients: HashMap<i32, PartitionClient>,
}

impl LogEnds {
    async fn client(
        &mut self,
        kafka: &Client,
        topic: &str,
        partition: i32,
    ) -> Result<&PartitionClient, KafkaError> {
        Ok(match self.clients.entry(partition) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(kafka::partition_client(kafka, topic, partition).await?)
            }
        })
    }

    /// One partition's lag for `stored` (the group's position, if any).
    async fn of(
        &mut self,
        kafka: &Client,
        topic: &str,
        partition: i32,
        stored: Option<&Position>,
    ) -> Result<PartitionLag, KafkaError> {
        let client = self.client(kafka, topic, partition).await?;
        let log_end = kafka::end_offset(client).await?;
        let Some(stored) = stored else {
            let earliest = client.get_offset(OffsetAt::Earliest).await?;
            return Ok(PartitionLag::Behind(log_end - earliest));
        };
        match kafka::check_log(client, stored.next_offset, stored.last).await? {
            LogCheck::Same => Ok(PartitionLag::Behind(log_end - stored.next_offset)),
            LogCheck::New { log_end, why } => {
                let earliest = client.get_offset(OffsetAt::Earliest).await?;
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
    kafka: &Client,
    ends: &mut LogEnds,
    db: &tokio_postgres::Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<Lag, StoreError> {
    let stored = positions::positions(db, group, topic).await?;
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
    })
}
