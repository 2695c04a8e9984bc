//! PostgreSQL: connection pool, creating the database when missing, and
//! dedicated sessions for the work that needs one (advisory locks, LISTEN).

mod migrate;
mod tls;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use tokio_util::task::AbortOnDropHandle;

pub use migrate::{migrate, pending};

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(tokio_postgres::Error),
    #[error("DATABASE_URL names no database (add /NAME at the end)")]
    NoDatabaseName,
    #[error(
        "cannot connect to PostgreSQL at {target} (DATABASE_URL): {reason}; start PostgreSQL or fix DATABASE_URL"
    )]
    Unreachable { target: String, reason: String },
    #[error(
        "database {name:?} does not exist and could not be created: {reason}; create it, or use a user allowed to (CREATEDB)"
    )]
    Create { name: String, reason: String },
    #[error("migrations failed: {0}")]
    Migrate(String),
    #[error("TLS to PostgreSQL (sslmode=require) cannot be set up: {0}")]
    Tls(#[from] rustls::Error),
    #[error("PostgreSQL pool cannot be built: {0}")]
    PoolBuild(#[from] deadpool_postgres::BuildError),
    #[error("PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// Result with [`DbError`].
pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// A parsed `DATABASE_URL`.
#[derive(Clone)]
pub struct Database {
    config: Config,
    /// Set for `sslmode=require`.
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.target())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl FromStr for Database {
    type Err = DbError;

    fn from_str(url: &str) -> Result<Self> {
        let mut config = Config::from_str(url).map_err(DbError::BadUrl)?;
        if config.get_dbname().is_none() {
            return Err(DbError::NoDatabaseName);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("catlog-live");
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(tls::require()?),
            _ => None,
        };
        Ok(Self { config, tls })
    }
}

/// A single connection whose driver task lives as long as the client.
pub struct Session {
    /// The connection.
    pub client: Client,
    _driver: AbortOnDropHandle<()>,
}

impl Database {
    /// The database name.
    pub fn name(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    /// `host:port` for messages (never the password).
    pub fn target(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}/{}", self.name())
    }

    /// Opens one connection.
    pub async fn session(&self) -> Result<Session> {
        self.open(&self.config).await
    }

    async fn open(&self, config: &Config) -> Result<Session> {
        let (client, driver) = match &self.tls {
            Some(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                (client, drive(connection, None))
            }
            None => {
                let (client, connection) = config.connect(NoTls).await?;
                (client, drive(connection, None))
            }
        };
        Ok(Session {
            client,
            _driver: driver,
        })
    }

    /// Checks that the database answers, creating it first when it is missing.
    pub async fn ensure_exists(&self) -> Result<()> {
        match self.session().await {
            Ok(_) => Ok(()),
            Err(DbError::Query(e)) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                self.create().await
            }
            Err(DbError::Query(e)) => Err(self.unreachable(&e)),
            Err(other) => Err(other),
        }
    }

    fn unreachable(&self, error: &tokio_postgres::Error) -> DbError {
        DbError::Unreachable {
            target: self.target(),
            reason: error_text(error),
        }
    }

    async fn create(&self) -> Result<()> {
        let name = self.name().to_owned();
        let create_error = |reason: String| DbError::Create {
            name: name.clone(),
            reason,
        };
        let mut admin = self.config.clone();
        admin.dbname("postgres");
        let session = self.open(&admin).await.map_err(|e| match e {
            DbError::Query(e) => create_error(error_text(&e)),
            other => other,
        })?;
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match session.client.batch_execute(&sql).await {
            Ok(()) => {
                tracing::info!(database = %name, "created database");
                Ok(())
            }
            // Another process created it first (or is creating it right now:
            // PostgreSQL then reports the clash on its catalog's unique index).
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
            {
                Ok(())
            }
            Err(e) => Err(create_error(error_text(&e))),
        }
    }

    /// A pool of `size` connections; checks the database answers (creating
    /// it if missing) and applies the migrations.
    pub async fn connect_and_migrate(&self, size: usize) -> Result<Pool> {
        self.ensure_exists().await?;
        migrate(self).await?;
        self.pool(size)
    }

    /// A pool of `size` connections, opened lazily.
    pub fn pool(&self, size: usize) -> Result<Pool> {
        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &self.tls {
            Some(tls) => Manager::from_config(self.config.clone(), tls.clone(), recycling),
            None => Manager::from_config(self.config.clone(), NoTls, recycling),
        };
        Ok(Pool::builder(manager)
            .max_size(size)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()?)
    }
}

/// A `LISTEN` session: each notification's payload arrives on `notified`,
/// which closes when the connection does.
pub struct Listener {
    _client: Client,
    /// Payloads of notifications; a full channel drops the surplus (each
    /// is only a wake-up call).
    pub notified: tokio::sync::mpsc::Receiver<String>,
    _driver: AbortOnDropHandle<()>,
}

impl Database {
    /// Opens a connection that listens on `channel` (an SQL identifier).
    pub async fn listen(&self, channel: &str) -> Result<Listener> {
        let (tx, notified) = tokio::sync::mpsc::channel(16);
        let (client, driver) = match &self.tls {
            Some(tls) => {
                let (client, connection) = self.config.connect(tls.clone()).await?;
                (client, drive(connection, Some(tx)))
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await?;
                (client, drive(connection, Some(tx)))
            }
        };
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        Ok(Listener {
            _client: client,
            notified,
            _driver: driver,
        })
    }
}

/// Drives a connection until it closes, passing on notifications if asked.
fn drive<T>(
    mut connection: Connection<Socket, T>,
    notify: Option<tokio::sync::mpsc::Sender<String>>,
) -> AbortOnDropHandle<()>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use futures::StreamExt;
    use tokio_postgres::AsyncMessage;

    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some(tx) = &notify {
                        // A full channel drops the surplus: each is only a wake-up call.
                        let _ = tx.try_send(n.payload().to_owned());
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "database connection closed");
                    break;
                }
            }
        }
    }))
}

/// The most useful text of a driver error: the server's message when there is one.
pub fn error_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}
