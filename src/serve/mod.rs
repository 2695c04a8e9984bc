//! `serve`: the live page, the WebSocket feed, the REST API, health and
//! metrics, fed from PostgreSQL. Two halves, and what both speak:
//!
//! * [`http`] — the HTTP front door: the server under every listener, the
//!   request-head limits, the routes and their handlers, the page, every
//!   failure as JSON.
//! * [`live`] — the live feed: following the history into the hub, the
//!   figures, trending, and one WebSocket connection.
//! * [`models`] — the JSON both halves speak (the contract).
//! * [`access`] and [`tokens`] — who may have data: the API token, signed
//!   tokens and the allowed origins, decided once for requests and sockets.
//!
//! [`run`] starts the live tasks and the HTTP server and waits for all of
//! them on shutdown. What it reads from PostgreSQL comes through
//! [`crate::store`].

pub mod access;
pub mod http;
pub mod live;
pub mod models;
pub mod tokens;

use std::sync::Arc;

use crate::kafka::Broker;
use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

pub use access::Access;
pub use live::follow::FollowSettings;
use live::hub::Hub;
use live::{figures, follow, ws};

use crate::db::Database;
use crate::store::StoreError;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub follow: FollowSettings,
    pub access: Access,
    /// Most WebSocket clients at once (`MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Limits on request heads (`HTTP_*`).
    pub http: http::server::HttpSettings,
    /// Most updates one resume replays (`RESUME_MAX_UPDATES`).
    pub resume_max_updates: i64,
}

/// File descriptors kept for everything but WebSockets (database, broker,
/// HTTP requests).
const SPARE_FDS: u64 = 256;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot load the recent history: {0}")]
    Load(#[from] StoreError),
}

/// Serves on `listener` until `shutdown`; `kafka` is only asked for lag.
pub async fn run(
    settings: ServeSettings,
    db: Database,
    pool: Pool,
    kafka: Option<Broker>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    crate::metrics::handle();
    connection_budget(settings.max_connections);
    let hub = Arc::new(Hub::new(settings.max_connections));
    let (lag_tx, lag_rx) = tokio::sync::watch::channel(None);
    let measuring = kafka.map(|kafka| {
        let source = crate::lag::Source {
            kafka,
            pool: pool.clone(),
            group: settings.follow.group.clone(),
            topic: settings.follow.topic.clone(),
            stalled_after: settings.follow.stalled_after,
        };
        AbortOnDropHandle::new(tokio::spawn(crate::lag::watch(source, lag_tx, shutdown.clone())))
    });
    let figures = AbortOnDropHandle::new(tokio::spawn(figures::run(
        Arc::clone(&hub),
        lag_rx,
        shutdown.clone(),
    )));
    let follower = follow::Follower::start(settings.follow, pool.clone(), Arc::clone(&hub)).await?;
    let following = AbortOnDropHandle::new(tokio::spawn(follower.run(db, shutdown.clone())));
    let sockets = TaskTracker::new();
    let beating = AbortOnDropHandle::new(tokio::spawn(ws::heartbeat(Arc::clone(&hub), shutdown.clone())));
    let app = http::App {
        hub,
        pool,
        access: Arc::new(settings.access),
        sockets: sockets.clone(),
        resume_max_updates: settings.resume_max_updates,
    };
    let routes = http::routes::routes(app, shutdown.clone());
    http::server::run(listener, routes, sockets, settings.http, shutdown).await;
    let _ = following.await;
    let _ = figures.await;
    if let Some(measuring) = measuring {
        let _ = measuring.await;
    }
    let _ = beating.await;
    tracing::info!("server stopped");
    Ok(())
}

/// Serves only the process's `/metrics` on `listener` until `shutdown`, on
/// the same HTTP stack as [`run`]: for a `consume` process, which has no
/// web server of its own (`METRICS_ADDR`).
pub async fn metrics_only(listener: TcpListener, shutdown: CancellationToken) {
    crate::metrics::handle();
    let routes = http::routes::metrics_only();
    let settings = http::server::HttpSettings::default();
    http::server::run(listener, routes, TaskTracker::new(), settings, shutdown).await;
}

/// Raises the open-file limit to the hard limit and says how many sockets
/// this process can hold, against the configured cap.
fn connection_budget(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let sockets = limit.saturating_sub(SPARE_FDS);
            tracing::info!(
                open_files = limit,
                max_connections,
                "can hold about {sockets} WebSocket clients; taking at most {max_connections} (MAX_CONNECTIONS)"
            );
            if (max_connections as u64) > sockets {
                tracing::warn!(
                    open_files = limit,
                    max_connections,
                    "MAX_CONNECTIONS is above what the open-file limit allows; raise the hard limit (ulimit -Hn) or lower MAX_CONNECTIONS"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
}
