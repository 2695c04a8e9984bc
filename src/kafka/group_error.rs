//! What can go wrong talking to a group coordinator, from the connection
//! up (shared by [`super::wire`] and [`super::group`]); each message names
//! the setting to look at.

use kafka_protocol::error::ResponseError;

use super::KafkaError;

/// Errors talking to the group coordinator.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A bad `KAFKA_*` setting, or a broker that cannot be reached (the
    /// message says which).
    #[error(transparent)]
    Kafka(Box<KafkaError>),
    #[error(
        "cannot reach the Kafka broker at {broker} (KAFKA_BROKER): {reason}; start a broker or fix KAFKA_BROKER"
    )]
    Unreachable { broker: String, reason: String },
    #[error(
        "TLS with the Kafka broker at {broker} failed (KAFKA_TLS): {reason}; check KAFKA_TLS_CA_FILE, or set KAFKA_TLS=false for a plaintext listener"
    )]
    Tls { broker: String, reason: String },
    #[error(
        "SASL {mechanism} with the Kafka broker at {broker} failed: {reason}; check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
    )]
    Sasl {
        broker: String,
        mechanism: &'static str,
        reason: String,
    },
    #[error(
        "the Kafka broker at {broker} supports {api} versions {theirs}, we need one of {ours}: use a broker with consumer groups (Kafka 2.1 or later)"
    )]
    Unsupported {
        broker: String,
        api: String,
        ours: String,
        theirs: String,
    },
    /// The connection failed or was closed (a broker that closes new
    /// connections at once often wants TLS or SASL).
    #[error(
        "{api} to the Kafka broker at {broker} failed: {source} (a broker that closes new connections may want TLS or SASL: see KAFKA_TLS and KAFKA_SASL_MECHANISM)"
    )]
    Io {
        broker: String,
        api: String,
        source: std::io::Error,
    },
    /// The connection stayed open and nothing came back: a hung broker or
    /// network, not a question of TLS or SASL.
    #[error(
        "the Kafka broker at {broker} did not answer {api} within {}s (KAFKA_REQUEST_TIMEOUT): the broker or the network to it hangs",
        after.as_secs_f64()
    )]
    Silent {
        broker: String,
        api: String,
        after: std::time::Duration,
    },
    #[error("the Kafka broker at {broker} answered {api} with something unreadable: {reason}")]
    Protocol {
        broker: String,
        api: String,
        reason: String,
    },
    #[error(
        "the Kafka broker at {broker} found no coordinator for group {group:?} (CONSUMER_GROUP_ID): {error}"
    )]
    NoCoordinator {
        broker: String,
        group: String,
        error: ResponseError,
    },
    #[error(
        "the coordinator of group {group:?} (CONSUMER_GROUP_ID) at {broker} refused {api} for {what}: {error}"
    )]
    Refused {
        broker: String,
        group: String,
        api: String,
        what: String,
        error: ResponseError,
    },
}

impl From<KafkaError> for GroupError {
    fn from(error: KafkaError) -> Self {
        Self::Kafka(Box::new(error))
    }
}

/// Result with [`GroupError`].
pub type Result<T, E = GroupError> = std::result::Result<T, E>;
