//! One connection to one broker, for the requests rskafka does not make
//! (the consumer-group APIs of [`super::group`]).
//!
//! The encoding of every request and response is the `kafka-protocol`
//! crate's (its typed messages know each version's fields and header
//! versions); this module only frames them and picks versions. On
//! connecting it asks the broker its versions (`ApiVersions` v0, which every
//! Kafka-protocol broker answers), then authenticates with SASL when
//! `KAFKA_SASL_MECHANISM` is set, over TLS when `KAFKA_TLS` is: the same
//! settings rskafka's connections use.

use std::collections::HashMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::group_error::{GroupError, Result};
use crate::config::{KafkaArgs, SaslMechanism};

/// How we name ourselves to the broker when no setting says (`api_versions`).
const CLIENT_ID: &str = "catlog-live";
/// Longest wait for one request's answer when no setting says (`api_versions`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response we accept (group answers are small).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// Most SASL round trips before we give up on a mechanism that never finishes.
const MAX_SASL_STEPS: usize = 8;

/// How to reach the brokers besides their addresses: TLS and SASL, from
/// the `KAFKA_*` settings.
#[derive(Clone)]
pub(crate) struct Security {
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<Sasl>,
    /// `KAFKA_REQUEST_TIMEOUT`: how long one request may go unanswered.
    timeout: Duration,
    /// `KAFKA_CLIENT_ID`.
    client_id: String,
}

#[derive(Clone)]
struct Sasl {
    mechanism: SaslMechanism,
    username: String,
    password: String,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl.as_ref().map(|s| mechanism_name(s.mechanism)))
            .finish()
    }
}

impl Security {
    /// The TLS and SASL settings of `args`, checked.
    pub(crate) fn from_args(args: &KafkaArgs) -> Result<Self> {
        let tls = if args.tls {
            Some(super::tls_config(args)?)
        } else {
            None
        };
        let sasl = super::sasl_credentials(args)?.map(|(mechanism, username, password)| Sasl {
            mechanism,
            username: username.to_owned(),
            password: password.to_owned(),
        });
        Ok(Self {
            tls,
            sasl,
            timeout: args.request_timeout,
            client_id: args.client_id.clone(),
        })
    }

    /// No TLS, no SASL.
    pub(crate) fn plaintext() -> Self {
        Self {
            tls: None,
            sasl: None,
            timeout: REQUEST_TIMEOUT,
            client_id: CLIENT_ID.to_owned(),
        }
    }
}

/// What the broker is spoken to through: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// An open, authenticated connection to one broker.
pub(crate) struct Connection {
    /// `host:port`, for messages.
    broker: String,
    stream: Box<dyn Io>,
    next_correlation: i32,
    /// How long one request may go unanswered.
    timeout: Duration,
    client_id: StrBytes,
    /// What the broker supports: API key → (lowest, highest) version.
    versions: HashMap<i16, (i16, i16)>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("broker", &self.broker)
            .finish()
    }
}

impl Connection {
    /// Connects to `broker` (`host:port`), learns its API versions and
    /// authenticates.
    pub(crate) async fn open(broker: &str, security: &Security) -> Result<Self> {
        let unreachable = |reason: String| GroupError::Unreachable {
            broker: broker.to_owned(),
            reason,
        };
        let connect = tokio::time::timeout(super::CONNECT_TIMEOUT, TcpStream::connect(broker));
        let tcp = connect
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", super::CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| unreachable(e.to_string()))?;
        // Small requests, each awaited: no reason to wait for more bytes.
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match &security.tls {
            None => Box::new(tcp),
            Some(config) => Box::new(tls(broker, tcp, config).await?),
        };
        let mut connection = Self {
            broker: broker.to_owned(),
            stream,
            next_correlation: 1,
            timeout: security.timeout,
            client_id: StrBytes::from_string(security.client_id.clone()),
            versions: HashMap::new(),
        };
        connection.versions = connection.api_versions().await?;
        if let Some(sasl) = &security.sasl {
            connection.authenticate(sasl).await?;
        }
        Ok(connection)
    }

    /// What the broker supports: (API key, lowest, highest version), by key.
    pub(crate) fn versions(&self) -> Vec<(i16, i16, i16)> {
        let mut versions: Vec<_> = self
            .versions
            .iter()
            .map(|(&key, &(min, max))| (key, min, max))
            .collect();
        versions.sort_unstable();
        versions
    }

    /// `host:port` of the broker.
    pub(crate) fn broker(&self) -> &str {
        &self.broker
    }

    /// The version of `R` to send: the highest in `ours` (within what the
    /// `kafka-protocol` crate knows) that the broker supports too.
    pub(crate) fn version<R: Request>(&self, ours: RangeInclusive<i16>) -> Result<i16> {
        let low = (*ours.start()).max(R::VERSIONS.min);
        let high = (*ours.end()).min(R::VERSIONS.max);
        match self.versions.get(&R::KEY) {
            Some(&(min, max)) if min <= high && low <= max => Ok(max.min(high)),
            theirs => Err(GroupError::Unsupported {
                broker: self.broker.clone(),
                api: api_name(R::KEY),
                ours: format!("{low}–{high}"),
                theirs: theirs.map_or_else(|| "none".to_owned(), |(min, max)| format!("{min}–{max}")),
            }),
        }
    }

    /// Sends `request` at `version` and reads its response.
    pub(crate) async fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let api = api_name(R::KEY);
        match tokio::time::timeout(self.timeout, self.exchange(request, version)).await {
            Ok(result) => result,
            Err(_) => Err(GroupError::Silent {
                broker: self.broker.clone(),
                api,
                after: self.timeout,
            }),
        }
    }

    async fn exchange<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let broker = self.broker.clone();
        let api = api_name(R::KEY);
        let protocol = |reason: String| GroupError::Protocol {
            broker: broker.clone(),
            api: api.clone(),
            reason,
        };
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(self.client_id.clone()));

        let mut frame = BytesMut::new();
        frame.put_i32(0); // the size, filled in below
        header
            .encode(&mut frame, R::header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|e| protocol(format!("cannot encode the request: {e}")))?;
        let size = i32::try_from(frame.len() - 4).map_err(|_| protocol("request too large".into()))?;
        frame[..4].copy_from_slice(&size.to_be_bytes());

        let io = |source: std::io::Error| GroupError::Io {
            broker: broker.clone(),
            api: api.clone(),
            source,
        };
        self.stream.write_all(&frame).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let size = self.stream.read_i32().await.map_err(io)?;
        let size = usize::try_from(size)
            .ok()
            .filter(|s| (4..=MAX_RESPONSE).contains(s))
            .ok_or_else(|| protocol(format!("implausible response size {size}")))?;
        let mut body = vec![0; size];
        self.stream.read_exact(&mut body).await.map_err(io)?;

        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| protocol(format!("cannot decode the response header: {e}")))?;
        if header.correlation_id != correlation {
            return Err(protocol(format!(
                "answer to request {} instead of {correlation}",
                header.correlation_id
            )));
        }
        R::Response::decode(&mut body, version)
            .map_err(|e| protocol(format!("cannot decode the response: {e}")))
    }

    /// The broker's API versions (v0: understood by every broker).
    async fn api_versions(&mut self) -> Result<HashMap<i16, (i16, i16)>> {
        let response = self.send(&ApiVersionsRequest::default(), 0).await?;
        if let Some(error) = response.error_code.err() {
            return Err(GroupError::Protocol {
                broker: self.broker.clone(),
                api: api_name(ApiVersionsRequest::KEY),
                reason: error.to_string(),
            });
        }
        Ok(response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect())
    }

    /// SASL: `SaslHandshake` v1 names the mechanism, then `SaslAuthenticate`
    /// carries each step of it (rsasl plays the client side, as in rskafka).
    async fn authenticate(&mut self, sasl: &Sasl) -> Result<()> {
        use rsasl::prelude::{Mechname, SASLClient, SASLConfig};

        let mechanism = mechanism_name(sasl.mechanism);
        let broker = self.broker.clone();
        let failed = |reason: String| GroupError::Sasl {
            broker: broker.clone(),
            mechanism,
            reason,
        };
        let handshake = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let version = self.version::<SaslHandshakeRequest>(1..=1)?;
        let answer = self.send(&handshake, version).await?;
        if let Some(error) = answer.error_code.err() {
            let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(failed(format!("{error} (the broker offers {offered:?})")));
        }

        let config = SASLConfig::with_credentials(None, sasl.username.clone(), sasl.password.clone())
            .map_err(|e| failed(e.to_string()))?;
        let name = Mechname::parse(mechanism.as_bytes()).map_err(|e| failed(e.to_string()))?;
        let mut session = SASLClient::new(config)
            .start_suggested([&name])
            .map_err(|e| failed(e.to_string()))?;
        let version = self.version::<SaslAuthenticateRequest>(0..=2)?;
        let mut received: Option<Bytes> = None;
        for _ in 0..MAX_SASL_STEPS {
            let mut to_send = Vec::new();
            let state = session
                .step(received.as_deref(), &mut to_send)
                .map_err(|e| failed(e.to_string()))?;
            if state.has_sent_message() {
                let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(to_send));
                let answer = self.send(&request, version).await?;
                if let Some(error) = answer.error_code.err() {
                    let message = answer.error_message.as_ref().map(|m| m.as_str().to_owned());
                    return Err(failed(message.unwrap_or_else(|| error.to_string())));
                }
                received = Some(answer.auth_bytes);
            }
            if state.is_finished() {
                return Ok(());
            }
        }
        Err(failed(format!("not finished after {MAX_SASL_STEPS} steps")))
    }
}

/// TLS over `tcp`, checking the certificate against `broker`'s host name.
async fn tls(
    broker: &str,
    tcp: TcpStream,
    config: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let failed = |reason: String| GroupError::Tls {
        broker: broker.to_owned(),
        reason,
    };
    let host = broker.rsplit_once(':').map_or(broker, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned()).map_err(|e| failed(e.to_string()))?;
    let handshake = tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, tcp);
    tokio::time::timeout(super::CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| GroupError::Silent {
            broker: broker.to_owned(),
            api: "the TLS handshake".into(),
            after: super::CONNECT_TIMEOUT,
        })?
        .map_err(|e| failed(e.to_string()))
}

/// The name the protocol (and `KAFKA_SASL_MECHANISM`) gives a mechanism.
pub(crate) fn mechanism_name(mechanism: SaslMechanism) -> &'static str {
    match mechanism {
        SaslMechanism::Plain => "PLAIN",
        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
    }
}

/// An API's name for messages (`OffsetCommit`), from its key.
pub(crate) fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|()| format!("API {key}"), |k| format!("{k:?}"))
}
