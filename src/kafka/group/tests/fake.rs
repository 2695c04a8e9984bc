//! A small broker of the test's own that speaks only what the group
//! client needs (ApiVersions, SASL, FindCoordinator, OffsetCommit,
//! OffsetFetch), decoded and encoded with `kafka-protocol`'s broker side,
//! SCRAM played by rsasl's server side.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, FindCoordinatorRequest, FindCoordinatorResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, StrBytes, decode_request_header_from_buffer,
};
use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::prelude::{Mechname, SASLConfig, SASLServer, SessionError, Validation};
use rsasl::property::AuthId;
use rsasl::validate::{Validate, ValidationError};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::AbortOnDropHandle;

use crate::config::SaslMechanism;

pub(super) const USER: &str = "catlog";
pub(super) const PASSWORD: &str = "s3cret";
const SALT: &[u8] = b"catlog-salt";
const ITERATIONS: u32 = 4096;

/// Every version the client may pick.
pub(super) const ALL: &[(ApiKey, i16, i16)] = &[
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::OffsetCommit, 0, 9),
    (ApiKey::OffsetFetch, 0, 9),
];

/// A Kafka 2.1-era broker: no flexible versions at all.
pub(super) const OLD: &[(ApiKey, i16, i16)] = &[
    (ApiKey::ApiVersions, 0, 2),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 0),
    (ApiKey::FindCoordinator, 0, 2),
    (ApiKey::OffsetCommit, 0, 6),
    (ApiKey::OffsetFetch, 0, 5),
];

/// What the broker was sent, and how it behaves.
#[derive(Default)]
pub(super) struct Seen {
    /// (API, version) of every request.
    pub(super) requests: Vec<(ApiKey, i16)>,
    /// Committed offsets per (group, topic, partition), with the generation and member id.
    pub(super) commits: BTreeMap<(String, String, i32), (i64, i32, String)>,
}

pub(super) struct Broker {
    versions: &'static [(ApiKey, i16, i16)],
    sasl: Option<SaslMechanism>,
    /// The host the coordinator is advertised as.
    coordinator_host: &'static str,
    pub(super) port: u16,
    seen: Mutex<Seen>,
}

impl Broker {
    pub(super) fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

pub(super) async fn start(
    versions: &'static [(ApiKey, i16, i16)],
    sasl: Option<SaslMechanism>,
    coordinator_host: &'static str,
) -> (Arc<Broker>, AbortOnDropHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker = Arc::new(Broker {
        versions,
        sasl,
        coordinator_host,
        port: listener.local_addr().unwrap().port(),
        seen: Mutex::default(),
    });
    let shared = Arc::clone(&broker);
    let task = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            connections.push(AbortOnDropHandle::new(tokio::spawn(serve(
                stream,
                Arc::clone(&shared),
            ))));
        }
    }));
    (broker, task)
}

fn frame<R: Encodable + HeaderVersion>(correlation: i32, version: i16, response: &R) -> Vec<u8> {
    let mut body = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut body, R::header_version(version))
        .unwrap();
    response.encode(&mut body, version).unwrap();
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// One connection: answers until the client leaves (or breaks a rule, which closes it).
async fn serve(mut stream: TcpStream, broker: Arc<Broker>) -> Option<()> {
    let mut authenticated = broker.sasl.is_none();
    let mut scram = None;
    loop {
        let size = stream.read_i32().await.ok()?;
        let mut body = vec![0; usize::try_from(size).ok()?];
        stream.read_exact(&mut body).await.ok()?;
        let mut body = Bytes::from(body);
        let header = decode_request_header_from_buffer(&mut body).ok()?;
        let (version, correlation) = (header.request_api_version, header.correlation_id);
        let api = ApiKey::try_from(header.request_api_key).ok()?;
        let &(_, min, max) = broker.versions.iter().find(|(k, _, _)| *k == api)?;
        assert!(
            (min..=max).contains(&version),
            "{api:?} v{version} was not offered"
        );
        broker
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .push((api, version));
        let answer = match api {
            ApiKey::ApiVersions => {
                let keys = broker
                    .versions
                    .iter()
                    .map(|&(k, min, max)| {
                        ApiVersion::default()
                            .with_api_key(k as i16)
                            .with_min_version(min)
                            .with_max_version(max)
                    })
                    .collect();
                frame(
                    correlation,
                    version,
                    &ApiVersionsResponse::default().with_api_keys(keys),
                )
            }
            ApiKey::SaslHandshake => {
                let request = SaslHandshakeRequest::decode(&mut body, version).ok()?;
                let offered = broker.sasl.map(crate::kafka::wire::mechanism_name)?;
                let error = if request.mechanism.as_str() == offered {
                    0
                } else {
                    33
                };
                let response = SaslHandshakeResponse::default()
                    .with_error_code(error)
                    .with_mechanisms(vec![StrBytes::from_static_str(offered)]);
                if broker.sasl != Some(SaslMechanism::Plain) {
                    let config = SASLConfig::builder()
                        .with_defaults()
                        .with_callback(Scram(broker.sasl?))
                        .ok()?;
                    let name = Mechname::parse(offered.as_bytes()).ok()?;
                    scram = Some(SASLServer::<Accepted>::new(config).start_suggested(name).ok()?);
                }
                frame(correlation, version, &response)
            }
            ApiKey::SaslAuthenticate => {
                let request = SaslAuthenticateRequest::decode(&mut body, version).ok()?;
                let (error, reply, done) = match &mut scram {
                    None => {
                        let expected = format!("\0{USER}\0{PASSWORD}");
                        let ok = request.auth_bytes.as_ref() == expected.as_bytes();
                        (if ok { 0 } else { 58 }, Vec::new(), ok)
                    }
                    Some(session) => {
                        let mut reply = Vec::new();
                        match session.step(Some(&request.auth_bytes), &mut reply) {
                            Ok(state) => {
                                let done = !state.is_running() && session.validation() == Some(true);
                                (0, reply, done)
                            }
                            Err(_) => (58, Vec::new(), false),
                        }
                    }
                };
                authenticated |= done;
                let response = SaslAuthenticateResponse::default()
                    .with_error_code(error)
                    .with_error_message(
                        (error != 0).then(|| StrBytes::from_static_str("Authentication failed")),
                    )
                    .with_auth_bytes(Bytes::from(reply));
                frame(correlation, version, &response)
            }
            _ if !authenticated => return None,
            ApiKey::FindCoordinator => {
                let request = FindCoordinatorRequest::decode(&mut body, version).ok()?;
                assert_eq!(request.key_type, 0, "a consumer group");
                let host = StrBytes::from_static_str(broker.coordinator_host);
                let port = i32::from(broker.port);
                let response = if version >= 4 {
                    let coordinators = request
                        .coordinator_keys
                        .into_iter()
                        .map(|key| {
                            Coordinator::default()
                                .with_key(key)
                                .with_node_id(1.into())
                                .with_host(host.clone())
                                .with_port(port)
                        })
                        .collect();
                    FindCoordinatorResponse::default().with_coordinators(coordinators)
                } else {
                    FindCoordinatorResponse::default()
                        .with_node_id(1.into())
                        .with_host(host)
                        .with_port(port)
                };
                frame(correlation, version, &response)
            }
            ApiKey::OffsetCommit => {
                let request = OffsetCommitRequest::decode(&mut body, version).ok()?;
                let mut seen = broker.seen.lock().unwrap_or_else(|p| p.into_inner());
                let topics = request
                    .topics
                    .iter()
                    .map(|t| {
                        let partitions = t
                            .partitions
                            .iter()
                            .map(|p| {
                                seen.commits.insert(
                                    (
                                        request.group_id.0.to_string(),
                                        t.name.0.to_string(),
                                        p.partition_index,
                                    ),
                                    (
                                        p.committed_offset,
                                        request.generation_id_or_member_epoch,
                                        request.member_id.to_string(),
                                    ),
                                );
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                            })
                            .collect();
                        OffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(partitions)
                    })
                    .collect();
                frame(
                    correlation,
                    version,
                    &OffsetCommitResponse::default().with_topics(topics),
                )
            }
            ApiKey::OffsetFetch => {
                let request = OffsetFetchRequest::decode(&mut body, version).ok()?;
                let seen = broker.seen.lock().unwrap_or_else(|p| p.into_inner());
                let topics = request
                    .topics
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| {
                        let partitions = t
                            .partition_indexes
                            .iter()
                            .map(|&p| {
                                let key = (request.group_id.0.to_string(), t.name.0.to_string(), p);
                                let offset = seen.commits.get(&key).map_or(-1, |c| c.0);
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                            })
                            .collect();
                        OffsetFetchResponseTopic::default()
                            .with_name(t.name)
                            .with_partitions(partitions)
                    })
                    .collect();
                frame(
                    correlation,
                    version,
                    &OffsetFetchResponse::default().with_topics(topics),
                )
            }
            _ => return None,
        };
        stream.write_all(&answer).await.ok()?;
    }
}

/// The server side of SCRAM: the user's stored password.
struct Scram(SaslMechanism);

impl SessionCallback for Scram {
    fn callback(
        &self,
        _session: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        if context.get_ref::<AuthId>() != Some(USER) {
            return Ok(());
        }
        use rsasl::mechanisms::scram::tools::{derive_keys, hash_password};
        use sha2::digest::generic_array::GenericArray;
        macro_rules! stored {
            ($digest:ty) => {{
                let mut salted = GenericArray::default();
                hash_password::<$digest>(PASSWORD.as_bytes(), ITERATIONS, SALT, &mut salted);
                let (client_key, server_key) = derive_keys::<$digest>(salted.as_slice());
                let stored_key = <$digest>::digest(client_key);
                request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
                    ITERATIONS,
                    SALT,
                    stored_key.as_slice(),
                    server_key.as_slice(),
                ))?;
            }};
        }
        match self.0 {
            SaslMechanism::ScramSha512 => stored!(sha2::Sha512),
            _ => stored!(sha2::Sha256),
        }
        Ok(())
    }

    fn validate(
        &self,
        _session: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        validate.with::<Accepted, _>(|| Ok(context.get_ref::<AuthId>() == Some(USER)))?;
        Ok(())
    }
}

/// Whether the server accepted the user.
struct Accepted;

impl Validation for Accepted {
    type Value = bool;
}
