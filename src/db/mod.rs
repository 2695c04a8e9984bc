//! PostgreSQL: connection pool, creating the database when missing, and
//! dedicated sessions for the work that needs one (advisory locks, LISTEN).
//!
//! No wait is without a bound. A connection that stays open and carries
//! nothing (a peer in a stop-the-world pause, a firewall that drops a flow
//! without a reset) is the fault networks have most, and TCP alone notices
//! it only after hours. So every session is opened with limits of its own:
//!
//! * on the server, per session: `statement_timeout` and `lock_timeout`
//!   (a query or a lock wait ends), `idle_in_transaction_session_timeout`
//!   (a client that went silent inside a transaction loses its session,
//!   and with it every lock the transaction held), TCP keepalives and
//!   `tcp_user_timeout` (a peer that vanished is noticed in seconds);
//! * on the client: the same keepalives, a connect timeout, pool checkouts
//!   bounded, and [`bounded`] around the work itself (a frozen network
//!   answers no query, whatever the server was told).
//!
//! All of them follow `DB_TIMEOUT` ([`DEFAULT_TIMEOUT`]).

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
    #[error("PostgreSQL did not answer within {}s ({what}; DB_TIMEOUT)", .after.as_secs_f64())]
    Timeout { what: &'static str, after: Duration },
}

/// The default of `DB_TIMEOUT`: longest one query, lock wait, pool checkout
/// or session start may take. Far above what any query of ours needs (a
/// batch of 5,000 records commits in about 0.1 s), far below the minutes a
/// stuck partition would cost.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalives of every session, on both ends: the first probe after
/// this much silence, then one every [`KEEPALIVE_INTERVAL`], giving up
/// after [`KEEPALIVE_PROBES`].
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// Runs `work` for at most `limit`; past it, [`DbError::Timeout`] naming
/// `what`. The caller drops the connection `work` used (as
/// `store::Bounded` does): a request may still be queued on it.
pub async fn bounded<T, E>(
    limit: Duration,
    what: &'static str,
    work: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, E>
where
    E: From<DbError>,
{
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(DbError::Timeout { what, after: limit }.into()),
    }
}

/// Errors that may be a [`DbError::Timeout`].
pub trait AsTimeout {
    /// Whether this is a timeout of ours.
    fn is_timeout(&self) -> bool;
}

impl AsTimeout for DbError {
    fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}

/// Result with [`DbError`].
pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// A parsed `DATABASE_URL`.
#[derive(Clone)]
pub struct Database {
    config: Config,
    /// Set for `sslmode=require`.
    tls: Option<MakeRustlsConnect>,
    /// `DB_TIMEOUT`.
    timeout: Duration,
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
        // What pg_stat_activity shows; a URL's own `application_name` wins.
        if config.get_application_name().is_none() {
            config.application_name("catlog-live");
        }
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(tls::require()?),
            _ => None,
        };
        Ok(Self {
            config,
            tls,
            timeout: DEFAULT_TIMEOUT,
        })
    }
}

/// A single connection whose driver task lives as long as the client.
pub struct Session {
    /// The connection.
    pub client: Client,
    _driver: AbortOnDropHandle<()>,
}

impl Database {
    /// The same database with `timeout` as `DB_TIMEOUT`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `DB_TIMEOUT`: the bound on one query, lock wait, checkout or connect.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connection settings with this process's limits (see the module
    /// docs); options the URL gives come after ours, so they win.
    fn limited(&self) -> Config {
        self.limited_with("")
    }

    /// [`Database::limited`] with `more` server settings (`-c name=value`)
    /// after this process's limits, and still before the URL's own.
    fn limited_with(&self, more: &str) -> Config {
        let mut config = self.config.clone();
        let ms = self.timeout.as_millis();
        let mut ours = format!(
            "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={ms} \
             -c tcp_keepalives_idle={} -c tcp_keepalives_interval={} -c tcp_keepalives_count={KEEPALIVE_PROBES} \
             -c tcp_user_timeout={ms}",
            KEEPALIVE_IDLE.as_secs(),
            KEEPALIVE_INTERVAL.as_secs(),
        );
        if !more.is_empty() {
            ours = format!("{ours} {more}");
        }
        let options = match self.config.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{ours} {theirs}"),
            _ => ours,
        };
        config
            .options(options)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_PROBES)
            .tcp_user_timeout(self.timeout);
        let connect = config.get_connect_timeout().copied().unwrap_or(self.timeout);
        config.connect_timeout(connect.min(self.timeout));
        config
    }

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
        self.open(&self.limited()).await
    }

    async fn open(&self, config: &Config) -> Result<Session> {
        bounded(self.timeout, "opening a session", self.open_unbounded(config)).await
    }

    async fn open_unbounded(&self, config: &Config) -> Result<Session> {
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
        let mut admin = self.limited();
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
        self.ensure_migrated().await?;
        self.pool(size)
    }

    /// Checks that the database answers (creating it first when it is
    /// missing) and applies the migrations.
    pub async fn ensure_migrated(&self) -> Result<()> {
        self.ensure_exists().await?;
        migrate(self).await
    }

    /// A pool of `size` connections, opened lazily. Checking one out waits
    /// at most `DB_TIMEOUT`, and each is verified with an empty query
    /// (bounded too) before it is handed out again, so a connection left
    /// waiting on a frozen network is dropped, not reused.
    pub fn pool(&self, size: usize) -> Result<Pool> {
        self.pool_of(size, self.limited())
    }

    /// A pool for the history's readers (`serve`): as [`Database::pool`],
    /// and each connection plans a statement it keeps prepared once, not on
    /// every call (`plan_cache_mode = force_generic_plan`), and never
    /// compiles one (`jit = off`).
    ///
    /// Every statement `serve` runs is written so that its plan does not
    /// depend on its values (`tests/it/plans.rs` checks each in the plan
    /// made without them); yet for one with `LIMIT $1` PostgreSQL's own
    /// choice, once the history is large, is to plan it afresh on every
    /// call, which costs more than running it (a title's last 50 events at
    /// 30 M rows: 0.45 ms a call planned each time, 0.19 ms planned once).
    /// And the plan made without the values assumes `LIMIT $1` wants a
    /// tenth of the rows: at 100 M rows its estimate passes
    /// `jit_above_cost`, and PostgreSQL would compile the statement on
    /// every call (20 to 40 ms) to read 50 rows. The writer's and the
    /// upkeep's statements, whose best plan may depend on the values (how
    /// many rows an array holds, how old a week is), keep PostgreSQL's
    /// choices.
    pub fn reading_pool(&self, size: usize) -> Result<Pool> {
        self.pool_of(
            size,
            self.limited_with("-c plan_cache_mode=force_generic_plan -c jit=off"),
        )
    }

    fn pool_of(&self, size: usize, config: Config) -> Result<Pool> {
        let recycling = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match &self.tls {
            Some(tls) => Manager::from_config(config, tls.clone(), recycling),
            None => Manager::from_config(config, NoTls, recycling),
        };
        Ok(Pool::builder(manager)
            .max_size(size)
            // The connection returned last is handed out first, so the
            // work of the moment keeps the same few connections, their
            // statements prepared and the server's caches warm (as
            // PgBouncer reuses server connections).
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .wait_timeout(Some(self.timeout))
            .create_timeout(Some(self.timeout))
            .recycle_timeout(Some(self.timeout))
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
        let config = self.limited();
        let connect = async {
            let (client, driver) = match &self.tls {
                Some(tls) => {
                    let (client, connection) = config.connect(tls.clone()).await?;
                    (client, drive(connection, Some(tx)))
                }
                None => {
                    let (client, connection) = config.connect(NoTls).await?;
                    (client, drive(connection, Some(tx)))
                }
            };
            client.batch_execute(&format!("LISTEN {channel}")).await?;
            Ok::<_, DbError>((client, driver))
        };
        let (client, driver) = bounded(self.timeout, "starting to LISTEN", connect).await?;
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
