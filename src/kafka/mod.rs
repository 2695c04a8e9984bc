//! The broker: connecting, creating the topic, choosing a partition.
//!
//! Records travel through rskafka. The consumer-group APIs, which rskafka
//! lacks, are in [`group`] (the offset mirror's client), over connections of
//! its own (`wire`) with the same SASL and TLS settings.

mod broker;
pub mod group;
mod group_error;
mod wire;

pub use broker::{Broker, Partition};

use std::sync::Arc;
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};

use chrono::{DateTime, Utc};
use rskafka::record::Record;
use uuid::Uuid;

use crate::config::{KafkaArgs, SaslMechanism};
use crate::event::{EVENT_ID_HEADER, Event};

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
    #[error(
        "the Kafka broker did not answer a {what} request within {}s (KAFKA_REQUEST_TIMEOUT): the broker or the network to it hangs; retrying over new connections",
        after.as_secs_f64()
    )]
    Silent { what: &'static str, after: Duration },
    #[error(
        "the Kafka broker at {broker} refused the SASL {mechanism} login: {reason}; check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (and KAFKA_SASL_MECHANISM)"
    )]
    Login {
        broker: String,
        mechanism: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("Kafka: {0}")]
    Client(#[from] ClientError),
}

impl KafkaError {
    /// Whether a request went unanswered (rather than failed).
    pub fn is_silent(&self) -> bool {
        matches!(self, Self::Silent { .. })
    }
}

/// Result with [`KafkaError`].
pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

/// Connects to the brokers `args` name, with their SASL and TLS settings;
/// gives up with a clear error after a few seconds. A request that meets a
/// lost connection is retried inside the client for a few seconds.
pub async fn connect(args: &KafkaArgs) -> Result<Arc<Client>> {
    connect_with(args, backoff()).await
}

/// The same, for reading partitions: a lost connection is reported to the
/// caller at once instead of retried inside. The broker on the other side
/// may come back as a new one with new logs, and the consumer must look at
/// the log again before it reads on (see `consume`).
pub async fn connect_reader(args: &KafkaArgs) -> Result<Arc<Client>> {
    connect_with(
        args,
        BackoffConfig {
            deadline: Some(Duration::ZERO),
            ..backoff()
        },
    )
    .await
}

async fn connect_with(args: &KafkaArgs, backoff: BackoffConfig) -> Result<Arc<Client>> {
    let brokers = args.broker_list();
    if brokers.is_empty() {
        return Err(KafkaError::NoBrokers);
    }
    let unreachable = |reason: String| KafkaError::Unreachable {
        brokers: brokers.join(","),
        reason,
    };
    let mut builder = ClientBuilder::new(brokers.clone())
        .client_id(args.client_id.clone())
        .backoff_config(backoff);
    if let Some(sasl) = sasl_config(args)? {
        builder = builder.sasl_config(sasl);
    }
    if args.tls {
        builder = builder.tls_config(tls_config(args)?);
    }
    if args.tls || args.sasl_mechanism.is_some() {
        check_login(args, &brokers).await?;
    }
    let build = builder.build();
    let client = tokio::time::timeout(CONNECT_TIMEOUT, build)
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(Arc::new(client))
}

/// Connects and logs in to the first broker that answers, to say at once
/// when the broker refuses the credentials or the client certificate
/// (rskafka retries those like a lost connection, then reports an
/// unreachable broker). Anything else (no broker answers yet) is left for
/// the client to meet and report.
async fn check_login(args: &KafkaArgs, brokers: &[String]) -> Result<()> {
    let security = wire::Security::from_args(args).map_err(|e| KafkaError::Config(e.to_string()))?;
    for broker in brokers {
        let error = match wire::Connection::open(broker, &security).await {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        match error {
            group::GroupError::Sasl {
                reason, mechanism, ..
            } => {
                return Err(KafkaError::Login {
                    broker: broker.clone(),
                    mechanism,
                    reason,
                });
            }
            ref other => {
                let text = other.to_string();
                if text.contains("CertificateRequired") {
                    return Err(KafkaError::Config(format!(
                        "the Kafka broker at {broker} asks for a client certificate (mutual TLS): set \
                         KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE"
                    )));
                }
                if args.tls_cert_file.is_some() && text.contains("received fatal alert") {
                    return Err(KafkaError::Config(format!(
                        "the Kafka broker at {broker} refused this client's certificate \
                         (KAFKA_TLS_CERT_FILE): {text}"
                    )));
                }
                tracing::debug!(broker, error = text, "login check: no answer from this broker");
            }
        }
    }
    Ok(())
}

fn sasl_config(args: &KafkaArgs) -> Result<Option<SaslConfig>> {
    let Some((mechanism, username, password)) = sasl_credentials(args)? else {
        return Ok(None);
    };
    let credentials = Credentials::new(username.to_owned(), password.to_owned());
    Ok(Some(match mechanism {
        SaslMechanism::Plain => SaslConfig::Plain(credentials),
        SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
        SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
    }))
}

/// The SASL mechanism and credentials `args` set, checked: the mechanism
/// needs both a user name and a password.
fn sasl_credentials(args: &KafkaArgs) -> Result<Option<(SaslMechanism, &str, &str)>> {
    let Some(mechanism) = args.sasl_mechanism else {
        return Ok(None);
    };
    let (Some(username), Some(password)) = (&args.sasl_username, &args.sasl_password) else {
        return Err(KafkaError::Config(
            "KAFKA_SASL_MECHANISM needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD".into(),
        ));
    };
    Ok(Some((mechanism, username, password)))
}

/// TLS trusting the public web roots and, if given, the CAs of
/// `KAFKA_TLS_CA_FILE`; with `KAFKA_TLS_CERT_FILE` and `KAFKA_TLS_KEY_FILE`,
/// this client's own certificate for brokers that ask for one (mutual TLS).
pub fn tls_config(args: &KafkaArgs) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs_of = |setting: &str, path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>> {
        let bad = |reason: String| KafkaError::Config(format!("{setting} {}: {reason}", path.display()));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificates in it".into()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &args.tls_ca_file {
        for cert in certs_of("KAFKA_TLS_CA_FILE", path)? {
            roots
                .add(cert)
                .map_err(|e| KafkaError::Config(format!("KAFKA_TLS_CA_FILE {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KafkaError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let config = match (&args.tls_cert_file, &args.tls_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key_path)) => {
            let chain = certs_of("KAFKA_TLS_CERT_FILE", cert)?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| KafkaError::Config(format!("KAFKA_TLS_KEY_FILE {}: {e}", key_path.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                KafkaError::Config(format!(
                    "KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE do not make a client certificate: {e}"
                ))
            })?
        }
        _ => {
            return Err(KafkaError::Config(
                "KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE go together: give both for mutual TLS, or neither".into(),
            ));
        }
    };
    Ok(Arc::new(config))
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
/// partition count. `replication` is `KAFKA_REPLICATION_FACTOR`; without it
/// the broker's default is asked for (-1, CreateTopics v4 and later), and a
/// broker that cannot take that gets one replica.
pub async fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: i32,
    replication: Option<i16>,
) -> Result<i32> {
    if let Some(existing) = self::partitions(client, topic).await? {
        return Ok(existing.len() as i32);
    }
    let controller = client.controller_client()?;
    let mut created = controller
        .create_topic(topic, partitions, replication.unwrap_or(-1), 5_000)
        .await;
    if replication.is_none()
        && let Err(ClientError::ServerError {
            protocol_error: ProtocolError::InvalidReplicationFactor | ProtocolError::InvalidRequest,
            ..
        }) = &created
    {
        tracing::info!(
            topic,
            "the broker has no default replication factor to give; creating with 1"
        );
        created = controller.create_topic(topic, partitions, 1, 5_000).await;
    }
    match created {
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

/// The Kafka record of an event: its malId as key, the sample form as
/// value, and its unique id in the [`EVENT_ID_HEADER`] header.
pub fn record(event: &Event, id: Uuid) -> Record {
    Record {
        key: Some(event.key()),
        value: Some(event.to_bytes()),
        headers: [(EVENT_ID_HEADER.to_owned(), id.to_string().into_bytes())].into(),
        timestamp: event.timestamp,
    }
}

/// What is remembered of a record to recognise its log again: its
/// timestamp and, when it carries one, its event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMark {
    pub time: DateTime<Utc>,
    pub event_id: Option<Uuid>,
}

impl RecordMark {
    /// The mark of `record`.
    pub fn of(record: &Record) -> Self {
        Self {
            time: record.timestamp,
            event_id: crate::event::event_id(&record.headers).ok().flatten(),
        }
    }
}

/// Whether a stored position still belongs to the broker's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogCheck {
    /// The same log (or nothing contradicts it).
    Same,
    /// A new log: the position means nothing in it.
    New {
        /// The log's end offset now.
        log_end: i64,
        /// Why, in words for the log.
        why: String,
    },
}

/// Checks that `next_offset` (with `mark`, the record just before it, when
/// known) belongs to the partition's current log. A log whose end is below
/// the offset is new; so is one holding another record just before it.
/// When that record is gone (deleted by retention), nothing contradicts
/// the position and it counts as the same log.
pub async fn check_log(
    partition: &PartitionClient,
    next_offset: i64,
    mark: Option<RecordMark>,
) -> Result<LogCheck> {
    if next_offset <= 0 {
        return Ok(LogCheck::Same);
    }
    let before = next_offset - 1;
    let (records, high_watermark) = match partition.fetch_records(before, 1..1_048_576, 100).await {
        Ok(fetched) => fetched,
        Err(e) if is_offset_out_of_range(&e) => {
            let log_end = end_offset(partition).await?;
            return Ok(if log_end < next_offset {
                LogCheck::New {
                    log_end,
                    why: format!("the log ends at {log_end}, below the stored offset {next_offset}"),
                }
            } else {
                LogCheck::Same
            });
        }
        Err(e) => return Err(e.into()),
    };
    if high_watermark < next_offset {
        return Ok(LogCheck::New {
            log_end: high_watermark,
            why: format!("the log ends at {high_watermark}, below the stored offset {next_offset}"),
        });
    }
    let (Some(mark), Some(found)) = (mark, records.iter().find(|r| r.offset == before)) else {
        return Ok(LogCheck::Same);
    };
    let seen = RecordMark::of(&found.record);
    let differs = seen.time != mark.time || (mark.event_id.is_some() && seen.event_id != mark.event_id);
    Ok(if differs {
        LogCheck::New {
            log_end: high_watermark,
            why: format!("the record at offset {before} is not the one stored last"),
        }
    } else {
        LogCheck::Same
    })
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

/// What a broker says it supports: (API key, lowest version, highest version).
pub type ApiVersions = Vec<(i16, i16, i16)>;

/// Asks one broker (`host:port`, plaintext, before any authentication) for
/// its API versions with an `ApiVersions` v0 request, which every
/// Kafka-protocol broker answers.
pub async fn api_versions(broker: &str) -> std::result::Result<ApiVersions, group::GroupError> {
    let connection = wire::Connection::open(broker, &wire::Security::plaintext()).await?;
    Ok(connection.versions())
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

    /// Kafka's default partitioner (`toPositive(murmur2(key)) % n`), so a
    /// title lands where a Java producer would put it, for the hashes above.
    #[test]
    fn keys_land_where_kafkas_default_partitioner_puts_them() {
        assert_eq!(partition_for(b"21", 3), 0);
        assert_eq!(partition_for(b"foobar", 3), 0);
        assert_eq!(partition_for(b"a-little-bit-long-string", 12), 8);
        assert_eq!(partition_for(b"a-little-bit-longer-string", 7), 0);
        for n in [1, 2, 3, 7, 64] {
            for key in 0..500 {
                assert!((0..n).contains(&partition_for(key.to_string().as_bytes(), n)));
            }
        }
    }
}
