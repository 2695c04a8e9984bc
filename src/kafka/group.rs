//! The consumer-group side of the broker, which rskafka does not speak:
//! committing a group's offsets as a *standalone* consumer (the tests fetch
//! them back, in `group/tests.rs`).
//!
//! `consume` keeps its offsets in PostgreSQL (see [`crate::store`]); this
//! client copies them to Kafka's group coordinator so that operators' tools
//! (Kafka UI, `kafka-consumer-groups.sh`, lag exporters) see the group. It
//! never joins the group: an `OffsetCommit` with generation -1 and no member
//! id, which brokers accept from a client that is not a member (the "simple
//! consumer" commit, as `kafka-consumer-groups.sh --reset-offsets` does).
//!
//! Versions: the highest of each the broker supports (asked with
//! `ApiVersions` on connecting) within `FindCoordinator` 0–6,
//! `OffsetCommit` 2–9 and `OffsetFetch` 1–7: back to Kafka 2.x brokers, and
//! up to where a request changes shape (`OffsetCommit` 10 names topics by
//! id, `OffsetFetch` 8 batches groups).

use std::collections::BTreeMap;

use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{FindCoordinatorRequest, GroupId, OffsetCommitRequest, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};

use super::KafkaError;
pub use super::group_error::{GroupError, Result};
use super::wire::{Connection, Security, api_name};
use crate::config::KafkaArgs;

/// `FindCoordinator` versions we send.
const FIND_COORDINATOR: std::ops::RangeInclusive<i16> = 0..=6;
/// `OffsetCommit` versions we send (10 names topics by id).
const OFFSET_COMMIT: std::ops::RangeInclusive<i16> = 2..=9;
/// Stored beside each committed offset, for whoever wonders where it came from.
const COMMIT_METADATA: &str = "catlog-live: mirrored from PostgreSQL";

/// Commits and fetches one group's offsets without joining the group.
/// Keeps its connection to the coordinator; after any error the next call
/// connects and looks the coordinator up again.
#[derive(Debug)]
pub struct GroupClient {
    brokers: Vec<String>,
    security: Security,
    group: String,
    /// The group's coordinator, once found.
    coordinator: Option<Connection>,
}

impl GroupClient {
    /// A client for `group` on the brokers `args` name, with their SASL and
    /// TLS settings. Nothing connects yet; a bad setting fails here.
    pub fn new(args: &KafkaArgs, group: impl Into<String>) -> Result<Self> {
        let brokers = args.broker_list();
        if brokers.is_empty() {
            return Err(KafkaError::NoBrokers.into());
        }
        Ok(Self {
            brokers,
            security: Security::from_args(args)?,
            group: group.into(),
            coordinator: None,
        })
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Commits `offsets` (partition → next offset to read) of `topic` for
    /// the group, as a standalone consumer. Every partition is committed or
    /// the call fails.
    pub async fn commit(&mut self, topic: &str, offsets: &BTreeMap<i32, i64>) -> Result<()> {
        let result = self.try_commit(topic, offsets).await;
        if result.is_err() {
            self.coordinator = None;
        }
        result
    }

    async fn try_commit(&mut self, topic: &str, offsets: &BTreeMap<i32, i64>) -> Result<()> {
        let group = self.group.clone();
        let coordinator = self.coordinator().await?;
        let version = coordinator.version::<OffsetCommitRequest>(OFFSET_COMMIT)?;
        let partitions = offsets
            .iter()
            .map(|(&partition, &offset)| {
                OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
                    .with_committed_metadata(Some(StrBytes::from_static_str(COMMIT_METADATA)))
            })
            .collect();
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.clone())))
            // Not a member: no generation, no member id.
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::new())
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(partitions),
            ]);
        let response = coordinator.send(&request, version).await?;
        let refused = response.topics.iter().find_map(|t| {
            t.partitions.iter().find_map(|p| {
                p.error_code.err().map(|error| {
                    (
                        format!("partition {} of {}", p.partition_index, t.name.0.as_str()),
                        error,
                    )
                })
            })
        });
        match refused {
            None => Ok(()),
            Some((what, error)) => Err(GroupError::Refused {
                broker: coordinator.broker().to_owned(),
                group,
                api: api_name(OffsetCommitRequest::KEY),
                what,
                error,
            }),
        }
    }

    /// The connection to the group's coordinator, found first if need be.
    async fn coordinator(&mut self) -> Result<&mut Connection> {
        let connection = match self.coordinator.take() {
            Some(connection) => connection,
            None => self.find_coordinator().await?,
        };
        Ok(self.coordinator.insert(connection))
    }

    /// Asks each bootstrap broker in turn for the group's coordinator.
    async fn find_coordinator(&self) -> Result<Connection> {
        let mut last = None;
        for broker in &self.brokers {
            match self.find_coordinator_via(broker).await {
                Ok(connection) => return Ok(connection),
                Err(error) => {
                    tracing::debug!(broker, %error, "no group coordinator through this broker");
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| KafkaError::NoBrokers.into()))
    }

    async fn find_coordinator_via(&self, broker: &str) -> Result<Connection> {
        let mut bootstrap = Connection::open(broker, &self.security).await?;
        let version = bootstrap.version::<FindCoordinatorRequest>(FIND_COORDINATOR)?;
        let group = StrBytes::from_string(self.group.clone());
        // Key type 0 (the default) is a consumer group.
        let request = if version >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![group])
        } else {
            FindCoordinatorRequest::default().with_key(group)
        };
        let response = bootstrap.send(&request, version).await?;
        let (error_code, host, port) = if version >= 4 {
            match response
                .coordinators
                .iter()
                .find(|c| c.key.as_str() == self.group)
            {
                Some(c) => (c.error_code, c.host.as_str().to_owned(), c.port),
                None => {
                    return Err(GroupError::Protocol {
                        broker: broker.to_owned(),
                        api: api_name(FindCoordinatorRequest::KEY),
                        reason: "no answer for the group".into(),
                    });
                }
            }
        } else {
            (
                response.error_code,
                response.host.as_str().to_owned(),
                response.port,
            )
        };
        if let Some(error) = error_code.err() {
            return Err(GroupError::NoCoordinator {
                broker: broker.to_owned(),
                group: self.group.clone(),
                error,
            });
        }
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if address == bootstrap.broker() {
            return Ok(bootstrap);
        }
        tracing::debug!(
            group = self.group,
            coordinator = address,
            "found the group coordinator"
        );
        Connection::open(&address, &self.security).await
    }
}

#[cfg(test)]
mod tests;
