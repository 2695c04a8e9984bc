//! The HTTP server under the routes: hyper's HTTP/1 connections serving
//! warp's filters, and WebSocket upgrades finished here rather than by warp,
//! so every socket gets tungstenite's configuration for many cheap
//! connections (warp lets us set the size limits, not the buffers).
//!
//! hyper hands a request's upgrade over in its extensions, where a filter
//! cannot take it; [`run`] moves it into an [`Upgrade`] slot the `/ws`
//! route takes it from. The sockets live in tasks this server tracks, so on
//! shutdown it stops accepting, lets requests in flight finish, and waits
//! for every WebSocket to say goodbye.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use warp::Filter;
use warp::reply::Reply;

use super::head::{Guarded, HeadLimits};

/// A WebSocket connection once upgraded.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Most bytes hyper buffers; every head is checked against smaller limits
/// before it gets there (see [`super::head`]).
const MAX_BUFFER_BYTES: usize = 64 * 1024;

/// Limits on the requests of one connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    pub limits: HeadLimits,
    /// A client that sends no complete request head in this time is
    /// dropped (`HTTP_HEAD_TIMEOUT`).
    pub head_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            limits: HeadLimits::default(),
            head_timeout: Duration::from_secs(10),
        }
    }
}
/// How long shutdown waits for requests in flight and sockets to close.
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// Bytes tungstenite reads at a time (its buffer grows for a larger frame).
/// Client messages are small, this buffer is allocated for every socket, and
/// tungstenite clears it on each read attempt.
const SOCKET_READ_BUFFER: usize = 512;

/// How every WebSocket is configured: small buffers, because ten thousand
/// idle browsers should cost little; messages written as they come (the
/// connection flushes once per burst); frames above `max_frame` refused.
pub fn socket_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// A request's upgrade, taken by the first route that finishes it.
#[derive(Clone, Default)]
pub struct Upgrade(Arc<Mutex<Option<OnUpgrade>>>);

impl Upgrade {
    /// The upgrade, once: `None` if the request had none or it was taken.
    pub fn take(&self) -> Option<OnUpgrade> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Finishes an upgrade in a task the server tracks: waits for hyper to hand
/// the connection over, then runs `session` on it as a WebSocket.
pub fn spawn_socket<F, Fut>(sockets: &TaskTracker, upgrade: OnUpgrade, config: WebSocketConfig, session: F)
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    sockets.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                        .await;
                session(socket).await;
            }
            Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
        }
    });
}

/// Serves `routes` on `listener` until `shutdown`, then drains: requests in
/// flight finish and the sockets in `sockets` close (each watches `shutdown`
/// itself), for at most a few seconds.
pub async fn run<F>(
    listener: TcpListener,
    routes: F,
    sockets: TaskTracker,
    http: HttpSettings,
    shutdown: CancellationToken,
) where
    F: Filter<Error = Infallible> + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    let requests = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(http.head_timeout)
        .max_buf_size(MAX_BUFFER_BYTES);
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait, do not spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = warp::service(routes.clone());
        let handler = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let upgrade = request.extensions_mut().remove::<OnUpgrade>();
            request
                .extensions_mut()
                .insert(Upgrade(Arc::new(Mutex::new(upgrade))));
            let response = service.clone().call(request);
            async move { Ok::<_, Infallible>(response.await.unwrap_or_else(|never| match never {})) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(Guarded::new(stream, http.limits)), handler)
            .with_upgrades();
        let shutdown = shutdown.clone();
        requests.spawn(async move {
            let mut connection = pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = shutdown.cancelled() => {
                    // Finish the request in flight, take no other.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    requests.close();
    sockets.close();
    let drained = async {
        requests.wait().await;
        sockets.wait().await;
    };
    if tokio::time::timeout(DRAIN_FOR, drained).await.is_err() {
        tracing::warn!(
            "connections still open after {}s; closing anyway",
            DRAIN_FOR.as_secs()
        );
    }
}
