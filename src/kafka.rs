//! The broker: connecting, creating the topic, choosing a partition.

use std::sync::Arc;
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};

/// How long the first connection to the broker may take before we give up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("KAFKA_BROKER is empty: give at least one host:port")]
    NoBrokers,
    #[error(
        "cannot reach the Kafka broker at {brokers} (KAFKA_BROKER): {reason}; start a broker or fix KAFKA_BROKER"
    )]
    Unreachable { brokers: String, reason: String },
    #[error("topic {topic:?} could not be created with {partitions} partitions: {source}")]
    CreateTopic {
        topic: String,
        partitions: i32,
        source: ClientError,
    },
    #[error("topic {0:?} does not exist (KAFKA_TOPIC); start `produce` first, which creates it")]
    NoTopic(String),
    #[error("Kafka: {0}")]
    Client(#[from] ClientError),
}

/// Result with [`KafkaError`].
pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

/// Connects to the bootstrap brokers; gives up with a clear error after a few seconds.
pub async fn connect(brokers: &[String]) -> Result<Arc<Client>> {
    if brokers.is_empty() {
        return Err(KafkaError::NoBrokers);
    }
    let unreachable = |reason: String| KafkaError::Unreachable {
        brokers: brokers.join(","),
        reason,
    };
    let build = ClientBuilder::new(brokers.to_vec())
        .client_id("catlog-live")
        .backoff_config(backoff())
        .build();
    let client = tokio::time::timeout(CONNECT_TIMEOUT, build)
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(Arc::new(client))
}

/// Retries inside rskafka: short, bounded, so our own loops decide what to do next.
fn backoff() -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
        deadline: Some(Duration::from_secs(10)),
    }
}

/// The partitions of `topic`, or `None` when the topic does not exist.
pub async fn partitions(client: &Client, topic: &str) -> Result<Option<Vec<i32>>> {
    let topics = client.list_topics().await?;
    Ok(topics
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions.into_iter().collect()))
}

/// Creates `topic` with `partitions` partitions unless it exists; returns its
/// partition count.
pub async fn ensure_topic(client: &Client, topic: &str, partitions: i32) -> Result<i32> {
    if let Some(existing) = self::partitions(client, topic).await? {
        return Ok(existing.len() as i32);
    }
    let controller = client.controller_client()?;
    match controller.create_topic(topic, partitions, 1, 5_000).await {
        Ok(()) => tracing::info!(topic, partitions, "created topic"),
        Err(ClientError::ServerError {
            protocol_error: ProtocolError::TopicAlreadyExists,
            ..
        }) => {}
        Err(source) => {
            return Err(KafkaError::CreateTopic {
                topic: topic.to_owned(),
                partitions,
                source,
            });
        }
    }
    // Metadata can lag a moment behind creation.
    for _ in 0..50 {
        if let Some(found) = self::partitions(client, topic).await?
            && !found.is_empty()
        {
            return Ok(found.len() as i32);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(KafkaError::NoTopic(topic.to_owned()))
}

/// A client for one partition, retrying while a new topic's metadata settles.
pub async fn partition_client(client: &Client, topic: &str, partition: i32) -> Result<PartitionClient> {
    Ok(client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await?)
}

/// The partition of a record key, as Kafka's default partitioner chooses it
/// (murmur2 of the key bytes), so other producers agree with ours.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff;
    (hash % partitions.max(1) as u32) as i32
}

/// The log end offset of a partition (the offset the next record will get).
///
/// Taken from a fetch's high watermark rather than from `ListOffsets`
/// alone: some Kafka-protocol brokers (tansu 0.6) answer `Latest` with the
/// start of the last batch instead of the end of the log.
pub async fn end_offset(partition: &PartitionClient) -> Result<i64> {
    let latest = partition.get_offset(OffsetAt::Latest).await?;
    if latest == 0 {
        return Ok(0);
    }
    // Fetch a record that exists (so the broker answers at once), for its
    // high watermark.
    let (_, high_watermark) = partition.fetch_records(latest - 1, 1..1_048_576, 100).await?;
    Ok(high_watermark.max(latest))
}

/// Whether an error says the requested offset is outside what the broker holds.
pub fn is_offset_out_of_range(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::ServerError {
            protocol_error: ProtocolError::OffsetOutOfRange,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Apache Kafka's own partitioner tests (`Utils.murmur2`).
    #[test]
    fn partitioner_matches_kafka_murmur2() {
        let java = |s: &str| murmur2::murmur2(s.as_bytes(), murmur2::KAFKA_SEED) as i32;
        assert_eq!(java("21"), -973_932_308);
        assert_eq!(java("foobar"), -790_332_482);
        assert_eq!(java("a-little-bit-long-string"), -985_981_536);
        assert_eq!(java("a-little-bit-longer-string"), -1_486_304_829);
    }

    #[test]
    fn same_key_same_partition() {
        assert_eq!(partition_for(b"5114", 3), partition_for(b"5114", 3));
        assert!((0..3).contains(&partition_for(b"1", 3)));
    }
}
