//! `serve`: the live page, the WebSocket feed, the REST API, health and
//! metrics, fed from PostgreSQL.
//!
//! * [`server`] accepts connections and finishes WebSocket upgrades.
//! * [`follow`] reads new history rows (LISTEN/NOTIFY + poll) into the [`hub`].
//! * [`hub`] holds what every connection shares and broadcasts, serialised once.
//! * [`ws`] runs one WebSocket connection.
//! * [`routes`] (what requests look like), [`handlers`] (what they do),
//!   [`models`] (the JSON), [`page`] (the HTML), [`error`] (every failure
//!   as JSON).
//! * [`trending`] ranks anime by momentum.
//! * [`access`] checks the API token, signed tokens ([`tokens`]) and the
//!   allowed origins.
//!
//! What it reads from PostgreSQL comes through [`crate::store`].

pub mod access;
pub mod error;
pub mod follow;
pub mod frame;
pub mod handlers;
pub mod head;
pub mod hub;
pub mod models;
pub mod page;
pub mod routes;
pub mod server;
pub mod tokens;
pub mod trending;
pub mod ws;

use std::sync::Arc;

use crate::kafka::Broker;
use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

pub use access::Access;
pub use follow::FollowSettings;
use hub::Hub;

use crate::db::Database;
use crate::store::StoreError;

/// What the handlers share.
#[derive(Clone)]
pub struct App {
    pub hub: Arc<Hub>,
    pub pool: Pool,
    pub access: Arc<Access>,
    /// The WebSocket connections, so shutdown can wait for them.
    pub sockets: TaskTracker,
    /// Most WebSocket clients at once.
    pub max_connections: usize,
    /// Most updates one resume replays.
    pub resume_max_updates: i64,
}

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub follow: FollowSettings,
    pub access: Access,
    /// Most WebSocket clients at once (`MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Limits on request heads (`HTTP_*`).
    pub http: server::HttpSettings,
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
    let hub = Arc::new(Hub::new());
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
    let figures = AbortOnDropHandle::new(tokio::spawn(follow::figures(
        Arc::clone(&hub),
        lag_rx,
        shutdown.clone(),
    )));
    let follower = follow::Follower::start(settings.follow, pool.clone(), Arc::clone(&hub)).await?;
    let following = AbortOnDropHandle::new(tokio::spawn(follower.run(db, shutdown.clone())));
    let sockets = TaskTracker::new();
    let beating = AbortOnDropHandle::new(tokio::spawn(ws::heartbeat(Arc::clone(&hub), shutdown.clone())));
    let app = App {
        hub,
        pool,
        access: Arc::new(settings.access),
        sockets: sockets.clone(),
        max_connections: settings.max_connections,
        resume_max_updates: settings.resume_max_updates,
    };
    let routes = routes::routes(app, shutdown.clone());
    server::run(listener, routes, sockets, settings.http, shutdown).await;
    let _ = following.await;
    let _ = figures.await;
    if let Some(measuring) = measuring {
        let _ = measuring.await;
    }
    let _ = beating.await;
    tracing::info!("server stopped");
    Ok(())
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
