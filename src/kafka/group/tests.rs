//! The group client against a broker of the test's own ([`fake`]). It
//! pins what the real broker of the integration tests cannot show: older
//! protocol versions, and SASL PLAIN and SCRAM (that broker has no SASL).

mod fake;

use std::collections::BTreeMap;

use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{ApiKey, OffsetFetchRequest};

use super::*;
use crate::config::{KafkaArgs, SaslMechanism};
use fake::{ALL, Broker, OLD, PASSWORD, USER, start};

/// `OffsetFetch` versions the tests send (8 batches groups).
const OFFSET_FETCH: std::ops::RangeInclusive<i16> = 1..=7;

/// Reading back what the mirror committed: the product only commits.
impl GroupClient {
    /// The group's committed offsets on `partitions` of `topic`; a partition
    /// without one is left out. (The mirror only commits; this reads back
    /// what it committed, in the tests.)
    async fn fetch(&mut self, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, i64>> {
        let result = self.try_fetch(topic, partitions).await;
        if result.is_err() {
            self.coordinator = None;
        }
        result
    }

    async fn try_fetch(&mut self, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, i64>> {
        let group = self.group.clone();
        let coordinator = self.coordinator().await?;
        let version = coordinator.version::<OffsetFetchRequest>(OFFSET_FETCH)?;
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.clone())))
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partition_indexes(partitions.to_vec()),
            ]));
        let response = coordinator.send(&request, version).await?;
        let refused = |what: String, error| GroupError::Refused {
            broker: coordinator.broker().to_owned(),
            group: group.clone(),
            api: api_name(OffsetFetchRequest::KEY),
            what,
            error,
        };
        if let Some(error) = response.error_code.err() {
            return Err(refused("the group".into(), error));
        }
        let mut offsets = BTreeMap::new();
        for t in response.topics.iter().filter(|t| t.name.0.as_str() == topic) {
            for p in &t.partitions {
                if let Some(error) = p.error_code.err() {
                    return Err(refused(
                        format!("partition {} of {topic}", p.partition_index),
                        error,
                    ));
                }
                if p.committed_offset >= 0 {
                    offsets.insert(p.partition_index, p.committed_offset);
                }
            }
        }
        Ok(offsets)
    }
}

fn args(broker: &Broker, sasl: Option<(SaslMechanism, &str)>) -> KafkaArgs {
    let mut args = KafkaArgs::plain(format!("127.0.0.1:{}", broker.port), "anime-popularity");
    if let Some((mechanism, password)) = sasl {
        args.sasl_mechanism = Some(mechanism);
        args.sasl_username = Some(USER.into());
        args.sasl_password = Some(password.into());
    }
    args
}

fn offsets() -> BTreeMap<i32, i64> {
    [(0, 120), (1, 7), (2, 0)].into()
}

#[tokio::test]
async fn commits_as_a_standalone_consumer_and_fetches_back() {
    let (broker, _task) = start(ALL, None, "127.0.0.1").await;
    let mut client = GroupClient::new(&args(&broker, None), "catlog-live").unwrap();
    client.commit("anime-popularity", &offsets()).await.unwrap();
    let fetched = client.fetch("anime-popularity", &[0, 1, 2, 3]).await.unwrap();
    assert_eq!(fetched, offsets(), "partition 3 has no offset and is left out");

    broker.seen(|seen| {
        let commit = &seen.commits[&("catlog-live".into(), "anime-popularity".into(), 0)];
        assert_eq!(commit, &(120, -1, String::new()), "no generation, no member id");
        let versions: Vec<_> = seen
            .requests
            .iter()
            .filter(|(api, _)| *api != ApiKey::ApiVersions)
            .collect();
        assert_eq!(
            versions,
            [
                &(ApiKey::FindCoordinator, 6),
                &(ApiKey::OffsetCommit, 9),
                &(ApiKey::OffsetFetch, 7),
            ],
            "the newest versions both know, on one connection"
        );
    });
}

#[tokio::test]
async fn an_older_broker_gets_older_versions() {
    let (broker, _task) = start(OLD, None, "127.0.0.1").await;
    let mut client = GroupClient::new(&args(&broker, None), "catlog-live").unwrap();
    client.commit("anime-popularity", &offsets()).await.unwrap();
    assert_eq!(
        client.fetch("anime-popularity", &[0, 1, 2]).await.unwrap(),
        offsets()
    );
    broker.seen(|seen| {
        assert!(seen.requests.contains(&(ApiKey::FindCoordinator, 2)));
        assert!(seen.requests.contains(&(ApiKey::OffsetCommit, 6)));
        assert!(seen.requests.contains(&(ApiKey::OffsetFetch, 5)));
    });
}

#[tokio::test]
async fn a_broker_without_consumer_groups_is_named_as_such() {
    const NO_GROUPS: &[(ApiKey, i16, i16)] = &[(ApiKey::ApiVersions, 0, 3)];
    let (broker, _task) = start(NO_GROUPS, None, "127.0.0.1").await;
    let mut client = GroupClient::new(&args(&broker, None), "catlog-live").unwrap();
    let error = client.commit("anime-popularity", &offsets()).await.unwrap_err();
    assert!(matches!(error, GroupError::Unsupported { .. }), "{error:?}");
    assert!(error.to_string().contains("consumer groups"), "{error}");
}

#[tokio::test]
async fn sasl_plain_and_scram_authenticate_every_connection() {
    for mechanism in [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ] {
        // "localhost": the coordinator is another address, so a second
        // connection, which authenticates again.
        let (broker, _task) = start(ALL, Some(mechanism), "localhost").await;
        let mut client =
            GroupClient::new(&args(&broker, Some((mechanism, PASSWORD))), "catlog-live").unwrap();
        client
            .commit("anime-popularity", &offsets())
            .await
            .unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
        broker.seen(|seen| {
            let handshakes = seen
                .requests
                .iter()
                .filter(|(api, _)| *api == ApiKey::SaslHandshake)
                .count();
            assert_eq!(handshakes, 2, "{mechanism:?}: bootstrap and coordinator");
            assert_eq!(seen.commits.len(), 3, "{mechanism:?}");
        });
    }
}

#[tokio::test]
async fn a_wrong_password_names_the_settings() {
    for mechanism in [SaslMechanism::Plain, SaslMechanism::ScramSha256] {
        let (broker, _task) = start(ALL, Some(mechanism), "127.0.0.1").await;
        let mut client = GroupClient::new(&args(&broker, Some((mechanism, "wrong"))), "catlog-live").unwrap();
        let error = client.commit("anime-popularity", &offsets()).await.unwrap_err();
        assert!(
            matches!(error, GroupError::Sasl { .. }),
            "{mechanism:?}: {error:?}"
        );
        assert!(error.to_string().contains("KAFKA_SASL_PASSWORD"), "{error}");
        assert!(broker.seen(|seen| seen.commits.is_empty()));
    }
}

#[test]
fn sasl_without_credentials_fails_at_once() {
    let mut args = KafkaArgs::plain("127.0.0.1:9092", "anime-popularity");
    args.sasl_mechanism = Some(SaslMechanism::ScramSha512);
    let error = GroupClient::new(&args, "catlog-live").unwrap_err();
    assert!(error.to_string().contains("KAFKA_SASL_USERNAME"), "{error}");
}
