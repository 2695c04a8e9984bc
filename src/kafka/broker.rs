//! The broker as every part of a process reaches it: one client, every
//! request bounded by `KAFKA_REQUEST_TIMEOUT`, and a connection that does
//! not answer never used again.
//!
//! rskafka has no request timeout, and a connection that stays open while
//! carrying nothing (a frozen peer, a NAT or firewall that dropped the flow
//! without a reset) is never noticed by it or by TCP: its requests wait
//! forever, and so does every later request on the same connection. So
//! each request here runs under a deadline, and when one passes, the
//! client is replaced by a new one with new connections (a partition's
//! reader also opens a new partition client): the work is retried there,
//! and the old connections are dropped with the old client.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rskafka::client::Client;
use rskafka::client::partition::{OffsetAt, PartitionClient};

use super::{KafkaError, LogCheck, RecordMark, Result};
use crate::config::KafkaArgs;

/// A cheap-to-clone handle on the broker.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

struct Shared {
    args: KafkaArgs,
    /// Whether the client reports lost connections at once (a reader's).
    reader: bool,
    client: RwLock<Arc<Client>>,
    /// One replacement at a time; the others wait for it.
    renewing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("brokers", &self.shared.args.brokers)
            .finish()
    }
}

impl Broker {
    /// Connects (see [`super::connect`]).
    pub async fn connect(args: &KafkaArgs) -> Result<Self> {
        Self::with(args, false).await
    }

    /// Connects for reading partitions (see [`super::connect_reader`]).
    pub async fn connect_reader(args: &KafkaArgs) -> Result<Self> {
        Self::with(args, true).await
    }

    async fn with(args: &KafkaArgs, reader: bool) -> Result<Self> {
        let client = open(args, reader).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                args: args.clone(),
                reader,
                client: RwLock::new(client),
                renewing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The current client.
    pub fn client(&self) -> Arc<Client> {
        Arc::clone(&self.shared.client.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// `KAFKA_REQUEST_TIMEOUT`.
    pub fn timeout(&self) -> Duration {
        self.shared.args.request_timeout
    }

    /// Runs `request` on the current client within the request timeout.
    /// When it does not answer in time, the client is replaced in the
    /// background, so a retry goes over new connections.
    pub async fn request<T, F, Fut>(&self, what: &'static str, request: F) -> Result<T>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let client = self.client();
        match tokio::time::timeout(self.timeout(), request(Arc::clone(&client))).await {
            Ok(answer) => answer,
            Err(_) => {
                self.renew_later(client);
                Err(KafkaError::Silent {
                    what,
                    after: self.timeout(),
                })
            }
        }
    }

    /// [`Broker::renew`] in a task of its own: the caller's retry loop goes
    /// on (a lease round, say, must not wait for a connect that may hang).
    fn renew_later(&self, stale: Arc<Client>) {
        let broker = self.clone();
        tokio::spawn(async move { broker.renew(&stale).await });
    }

    /// Replaces `stale` (the client a request went unanswered on) with a
    /// new one, unless that happened already. A failure to connect is left
    /// for the next request to meet.
    async fn renew(&self, stale: &Arc<Client>) {
        let _one = self.shared.renewing.lock().await;
        if !Arc::ptr_eq(&self.client(), stale) {
            return;
        }
        match open(&self.shared.args, self.shared.reader).await {
            Ok(fresh) => {
                tracing::debug!("replaced the Kafka client after a request went unanswered");
                *self.shared.client.write().unwrap_or_else(|p| p.into_inner()) = fresh;
            }
            Err(error) => tracing::debug!(%error, "cannot open a new Kafka client yet"),
        }
    }

    /// The partitions of `topic`, or `None` when it does not exist.
    pub async fn partitions(&self, topic: &str) -> Result<Option<Vec<i32>>> {
        self.request("metadata", |client| async move {
            super::partitions(&client, topic).await
        })
        .await
    }

    /// Creates `topic` unless it exists; its partition count (see [`super::ensure_topic`]).
    pub async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<i32> {
        let replication = self.shared.args.replication_factor;
        self.request("create topic", |client| async move {
            super::ensure_topic(&client, topic, partitions, replication).await
        })
        .await
    }

    /// A bounded client for one partition, with a connection of its own to
    /// the partition's leader.
    pub async fn partition(&self, topic: &str, partition: i32) -> Result<Partition> {
        let from = self.client();
        let opened =
            tokio::time::timeout(self.timeout(), super::partition_client(&from, topic, partition)).await;
        match opened {
            Ok(client) => Ok(Partition {
                client: client?,
                from,
                broker: self.clone(),
            }),
            Err(_) => {
                self.renew_later(from);
                Err(KafkaError::Silent {
                    what: "metadata",
                    after: self.timeout(),
                })
            }
        }
    }
}

async fn open(args: &KafkaArgs, reader: bool) -> Result<Arc<Client>> {
    if reader {
        super::connect_reader(args).await
    } else {
        super::connect(args).await
    }
}

/// One partition's client, every request bounded. A request that goes
/// unanswered also replaces the broker's client (this partition client
/// learnt its leader through it); the caller opens a new [`Partition`].
pub struct Partition {
    client: PartitionClient,
    /// The broker client this one was opened through.
    from: Arc<Client>,
    broker: Broker,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("partition", &self.client.partition())
            .finish()
    }
}

impl Partition {
    /// Runs `request` within `limit` (the request timeout, and for a fetch
    /// the time the broker may hold it); on silence, the broker's client is
    /// replaced and the error says what did not answer.
    async fn bounded<T>(
        &self,
        what: &'static str,
        limit: Duration,
        request: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, request).await {
            Ok(answer) => answer,
            Err(_) => {
                self.broker.renew_later(Arc::clone(&self.from));
                Err(KafkaError::Silent {
                    what,
                    after: self.broker.timeout(),
                })
            }
        }
    }

    /// The rskafka client, for what needs no bound of ours.
    pub fn inner(&self) -> &PartitionClient {
        &self.client
    }

    /// Records from `offset`, waiting up to `max_wait_ms` for some: bounded
    /// by that wait plus the request timeout.
    pub async fn fetch(
        &self,
        offset: i64,
        bytes: std::ops::Range<i32>,
        max_wait_ms: i32,
    ) -> Result<(Vec<rskafka::record::RecordAndOffset>, i64), KafkaError> {
        let limit = self.broker.timeout() + Duration::from_millis(max_wait_ms.max(0) as u64);
        self.bounded("fetch", limit, async {
            Ok(self.client.fetch_records(offset, bytes, max_wait_ms).await?)
        })
        .await
    }

    /// Publishes `records`.
    pub async fn produce(&self, records: Vec<rskafka::record::Record>) -> Result<Vec<i64>> {
        let compression = rskafka::client::partition::Compression::NoCompression;
        self.bounded("produce", self.broker.timeout(), async {
            Ok(self.client.produce(records, compression).await?)
        })
        .await
    }

    /// The offset at `at`.
    pub async fn offset(&self, at: OffsetAt) -> Result<i64> {
        self.bounded("list offsets", self.broker.timeout(), async {
            Ok(self.client.get_offset(at).await?)
        })
        .await
    }

    /// The log end offset (see [`super::end_offset`]).
    pub async fn end_offset(&self) -> Result<i64> {
        self.bounded(
            "list offsets",
            self.broker.timeout(),
            super::end_offset(&self.client),
        )
        .await
    }

    /// Whether a stored position belongs to this log (see [`super::check_log`]).
    pub async fn check_log(&self, next_offset: i64, mark: Option<RecordMark>) -> Result<LogCheck> {
        self.bounded(
            "fetch",
            self.broker.timeout(),
            super::check_log(&self.client, next_offset, mark),
        )
        .await
    }
}
