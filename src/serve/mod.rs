//! `serve`: the live page, the WebSocket feed, the REST API, health and
//! metrics, fed from PostgreSQL.
//!
//! * [`follow`] reads new history rows (LISTEN/NOTIFY + poll) into the [`hub`].
//! * [`hub`] holds what every connection shares and broadcasts, serialised once.
//! * [`ws`] runs one WebSocket connection.
//! * [`routes`] (what requests look like), [`handlers`] (what they do),
//!   [`models`] (the JSON), [`queries`] (the SQL), [`page`] (the HTML).
//! * [`trending`] ranks anime by momentum.
//! * [`access`] checks the API token and the allowed origins.

pub mod access;
pub mod follow;
pub mod handlers;
pub mod hub;
pub mod metrics;
pub mod models;
pub mod page;
pub mod queries;
pub mod routes;
pub mod trending;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use deadpool_postgres::Pool;
use rskafka::client::Client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use access::Access;
pub use follow::FollowSettings;
use hub::Hub;

/// What the handlers share.
#[derive(Clone)]
pub struct App {
    pub hub: Arc<Hub>,
    pub pool: Pool,
    pub access: Arc<Access>,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}; pick a free address")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load the recent history: {0}")]
    Load(#[from] queries::QueryError),
}

/// Binds `addr`, with an error that names the setting.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves on `listener` until `shutdown`; `kafka` is only asked for lag.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    settings: FollowSettings,
    access: Access,
    db: crate::db::Database,
    pool: Pool,
    kafka: Option<Arc<Client>>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    metrics::handle();
    let hub = Arc::new(Hub::new());
    let follower = follow::Follower::start(settings, pool.clone(), kafka, Arc::clone(&hub)).await?;
    let following = crate::shutdown::OwnedTask::spawn(follower.run(db, shutdown.clone()));
    let app = App {
        hub,
        pool,
        access: Arc::new(access),
    };
    let stop = shutdown.clone();
    warp::serve(routes::routes(app, shutdown))
        .incoming(listener)
        .graceful(async move { stop.cancelled().await })
        .run()
        .await;
    following.join().await;
    tracing::info!("server stopped");
    Ok(())
}
