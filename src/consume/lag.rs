//! Consumer lag: per partition, the broker's log end minus the group's
//! stored next offset. Shown by `serve` (stats, metrics) and `doctor`.

use std::collections::{BTreeMap, HashMap};

use rskafka::client::Client;
use rskafka::client::partition::PartitionClient;

use crate::kafka::{self, KafkaError};

const STORED_OFFSETS: &str =
    "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2";

/// The group's stored next offset per partition.
pub async fn stored_offsets(
    db: &tokio_postgres::Client,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, tokio_postgres::Error> {
    let rows = db.query(STORED_OFFSETS, &[&group, &topic]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Log ends of a topic's partitions, keeping one client per partition
/// between calls.
#[derive(Default)]
pub struct LogEnds {
    clients: HashMap<i32, PartitionClient>,
}

impl LogEnds {
    /// The log end of one partition.
    pub async fn of(&mut self, kafka: &Client, topic: &str, partition: i32) -> Result<i64, KafkaError> {
        let client = match self.clients.entry(partition) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(kafka::partition_client(kafka, topic, partition).await?)
            }
        };
        kafka::end_offset(client).await
    }
}

/// A group's lag on a topic.
#[derive(Debug, Clone, Default)]
pub struct Lag {
    /// Per partition; `None` where the broker did not tell its log end.
    pub per_partition: BTreeMap<i32, Option<i64>>,
    /// Whether the group has stored any offset yet.
    pub committed: bool,
}

impl Lag {
    /// The largest known lag.
    pub fn worst(&self) -> i64 {
        self.per_partition.values().flatten().copied().max().unwrap_or(0)
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
) -> Result<Lag, tokio_postgres::Error> {
    let stored = stored_offsets(db, group, topic).await?;
    let mut per_partition = BTreeMap::new();
    for &p in partitions {
        let end = ends.of(kafka, topic, p).await.ok();
        let done = stored.get(&p).copied().unwrap_or(0);
        per_partition.insert(p, end.map(|end| (end - done).max(0)));
    }
    Ok(Lag {
        per_partition,
        committed: !stored.is_empty(),
    })
}
