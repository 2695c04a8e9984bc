//! A broker that wants a SASL PLAIN login: a small front end, in front of a
//! tansu of its own, that answers `SaslHandshake` and `SaslAuthenticate`
//! itself and, once a client has logged in, forwards its connection to the
//! broker. (Tansu 0.6 asks for SASL but cannot complete a login, so the
//! login is checked here; everything after it is the real broker's.)
//!
//! A refused login is answered as Kafka answers it: error 58
//! (`SASL_AUTHENTICATION_FAILED`) with a message, then the connection closes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::broker::{accept_on_thread, listen, tansu_on};
use super::{Proc, free_port};

/// What a refused login hears, as Apache Kafka says it.
pub const REFUSED: &str = "Authentication failed: Invalid username or password";

/// A broker behind a PLAIN login of `username` / `password`.
pub struct SaslBroker {
    /// What clients use (`KAFKA_BROKER`): the front end.
    pub addr: String,
    _broker: Proc,
    _stop: watch::Sender<()>,
}

impl SaslBroker {
    pub fn start(username: &str, password: &str) -> Self {
        let (listener, addr) = listen();
        let port = free_port();
        let broker = tansu_on(port, &addr);
        let secret: Arc<[u8]> = format!("\0{username}\0{password}").into_bytes().into();
        let stop = accept_on_thread(listener, move |client| {
            tokio::spawn(serve(client, port, Arc::clone(&secret)));
        });
        Self {
            addr,
            _broker: broker,
            _stop: stop,
        }
    }
}

async fn read_frame(stream: &mut TcpStream) -> Option<Bytes> {
    let size = stream.read_i32().await.ok()?;
    let mut body = vec![0; usize::try_from(size).ok()?];
    stream.read_exact(&mut body).await.ok()?;
    Some(Bytes::from(body))
}

async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> Option<()> {
    let size = i32::try_from(body.len()).ok()?;
    stream.write_all(&size.to_be_bytes()).await.ok()?;
    stream.write_all(body).await.ok()
}

/// Answers `response` to the request of `header` (its API's version).
fn answer<R: Encodable>(key: ApiKey, header: &RequestHeader, response: &R) -> Option<BytesMut> {
    let version = header.request_api_version;
    let mut body = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(header.correlation_id)
        .encode(&mut body, key.response_header_version(version))
        .ok()?;
    response.encode(&mut body, version).ok()?;
    Some(body)
}

/// One client connection: requests before the login are answered here
/// (SASL) or passed one by one (`ApiVersions`); after it, both ways are
/// copied as they come.
async fn serve(mut client: TcpStream, upstream: u16, secret: Arc<[u8]>) -> Option<()> {
    let mut broker = TcpStream::connect(("127.0.0.1", upstream)).await.ok()?;
    loop {
        let frame = read_frame(&mut client).await?;
        let mut body = frame.clone();
        let key = ApiKey::try_from(i16::from_be_bytes([*frame.first()?, *frame.get(1)?])).ok()?;
        let version = i16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]);
        let header = RequestHeader::decode(&mut body, key.request_header_version(version)).ok()?;
        match key {
            ApiKey::SaslHandshake => {
                let request = SaslHandshakeRequest::decode(&mut body, version).ok()?;
                let plain = request.mechanism.as_str() == "PLAIN";
                let response = SaslHandshakeResponse::default()
                    .with_error_code(if plain { 0 } else { 33 })
                    .with_mechanisms(vec![StrBytes::from_static_str("PLAIN")]);
                write_frame(&mut client, &answer(key, &header, &response)?).await?;
            }
            ApiKey::SaslAuthenticate => {
                let request = SaslAuthenticateRequest::decode(&mut body, version).ok()?;
                let good = request.auth_bytes.as_ref() == &secret[..];
                let response = if good {
                    SaslAuthenticateResponse::default()
                } else {
                    SaslAuthenticateResponse::default()
                        .with_error_code(58)
                        .with_error_message(Some(StrBytes::from_static_str(REFUSED)))
                };
                write_frame(&mut client, &answer(key, &header, &response)?).await?;
                if !good {
                    return None;
                }
                tokio::io::copy_bidirectional(&mut client, &mut broker)
                    .await
                    .ok()?;
                return Some(());
            }
            ApiKey::ApiVersions => {
                write_frame(&mut broker, &frame).await?;
                let response = read_frame(&mut broker).await?;
                write_frame(&mut client, &response).await?;
            }
            // Anything else before a login: Kafka closes the connection.
            _ => return None,
        }
    }
}
