//! `serve`: the live page, the WebSocket feed, the REST API, health and
//! metrics, fed from PostgreSQL.
//!
//! * [`follow`] reads new history rows (LISTEN/NOTIFY + poll) into the [`hub`].
//! * [`hub`] holds what every connection shares and broadcasts, serialised once.
//! * [`ws`] runs one WebSocket connection.
//! * [`routes`] (what requests look like), [`handlers`] (what they do),
//!   [`models`] (the JSON), [`page`] (the HTML), [`error`] (every failure
//!   as JSON).
//! * [`trending`] ranks anime by momentum.
//! * [`access`] checks the API token and the allowed origins.
//!
//! What it reads from PostgreSQL comes through [`crate::store`].

pub mod access;
pub mod error;
pub mod follow;
pub mod handlers;
pub mod hub;
pub mod models;
pub mod page;
pub mod routes;
pub mod trending;
pub mod ws;

use std::sync::Arc;

use deadpool_postgres::Pool;
use rskafka::client::Client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

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
}

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub follow: FollowSettings,
    pub access: Access,
}

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
    kafka: Option<Arc<Client>>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    crate::metrics::handle();
    let hub = Arc::new(Hub::new());
    let follower = follow::Follower::start(settings.follow, pool.clone(), kafka, Arc::clone(&hub)).await?;
    let following = AbortOnDropHandle::new(tokio::spawn(follower.run(db, shutdown.clone())));
    let app = App {
        hub,
        pool,
        access: Arc::new(settings.access),
    };
    let stop = shutdown.clone();
    warp::serve(routes::routes(app, shutdown))
        .incoming(listener)
        .graceful(async move { stop.cancelled().await })
        .run()
        .await;
    let _ = following.await;
    tracing::info!("server stopped");
    Ok(())
}
