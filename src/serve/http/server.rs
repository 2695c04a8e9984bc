//! The HTTP server under every listener of the process (`serve`'s routes,
//! and a `consume` process's own `/metrics`): hyper's HTTP/1 connections
//! serving warp's filters, every request head checked first by
//! [`super::head`].
//!
//! Why hyper by hand and not `warp::serve`: WebSocket upgrades are finished
//! by the live feed, not by warp. The feed writes frames encoded once for
//! every client straight to the upgraded socket, one vectored write a burst
//! (see [`crate::serve::live::socket`]); warp's WebSocket is a
//! tungstenite sink that encodes and buffers each message again per client.
//! hyper hands a request's upgrade over in its extensions, where a filter
//! cannot take it; [`run`] moves it into an [`Upgrade`] slot the `/ws`
//! route takes it from. The sockets live in tasks this server tracks, so on
//! shutdown it stops accepting, lets requests in flight finish, and waits
//! for every WebSocket to say goodbye.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use warp::Filter;
use warp::reply::Reply;

use super::head::{Guarded, HeadLimits};

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

/// A request's upgrade, taken by the first route that finishes it.
#[derive(Clone, Default)]
pub struct Upgrade(Arc<Mutex<Option<OnUpgrade>>>);

impl Upgrade {
    /// The upgrade, once: `None` if the request had none or it was taken.
    pub fn take(&self) -> Option<OnUpgrade> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
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
