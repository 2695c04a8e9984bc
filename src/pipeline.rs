//! One way to build the pipeline: the stages a command runs, wired from
//! its settings. `produce`, `consume`, `serve` and `all` are the same
//! [`Pipeline`] with different stages switched on, and the tests start it
//! exactly so (on port 0), so they run what users run.
//!
//! [`Pipeline::build`] does everything that can fail at once with a clear
//! message (a bad catalog, a database or broker that does not answer, an
//! address in use) before anything runs; [`Pipeline::run`] runs the stages
//! until shutdown. The first stage to fail stops the others.

use std::net::SocketAddr;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::catalog::CatalogError;
use crate::config::{
    AllArgs, ConsumeArgs, ConsumerOptions, DbArgs, GroupArgs, KafkaArgs, ProduceArgs, ProducerOptions,
    ServeArgs, ServerOptions,
};
use crate::consume::{self, ConsumerSettings};
use crate::db::{Database, DbError};
use crate::kafka::group::{GroupClient, GroupError};
use crate::kafka::{Broker, KafkaError};
use crate::produce::{self, ProduceError};
use crate::serve::{self, Access, FollowSettings, ServeError, ServeSettings};

/// The pause between events of `produce` when none is configured.
pub const PRODUCE_DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// The pause between events of `all` when none is configured.
pub const ALL_DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Connections a consumer keeps open.
const CONSUMER_POOL_SIZE: usize = 4;
/// Connections a server keeps open.
const SERVER_POOL_SIZE: usize = 16;

/// Errors building or running the pipeline; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("cannot listen on {addr} ({setting}): {source}; pick a free address")]
    Bind {
        setting: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("produce: {0}")]
    Produce(#[from] ProduceError),
    #[error("serve: {0}")]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Tokens(#[from] serve::tokens::KeyError),
}

/// Which stages run, and with what settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: KafkaArgs,
    pub db: DbArgs,
    pub group: GroupArgs,
    /// The simulator, and its pause when no interval is configured.
    pub produce: Option<(ProducerOptions, Duration)>,
    pub consume: Option<ConsumerOptions>,
    pub serve: Option<ServerOptions>,
}

impl From<&ProduceArgs> for Settings {
    fn from(args: &ProduceArgs) -> Self {
        Self {
            kafka: args.kafka.clone(),
            db: DbArgs::default(),
            group: GroupArgs::default(),
            produce: Some((args.producer.clone(), PRODUCE_DEFAULT_INTERVAL)),
            consume: None,
            serve: None,
        }
    }
}

impl From<&ConsumeArgs> for Settings {
    fn from(args: &ConsumeArgs) -> Self {
        Self {
            kafka: args.kafka.clone(),
            db: args.db.clone(),
            group: args.group.clone(),
            produce: None,
            consume: Some(args.consumer.clone()),
            serve: None,
        }
    }
}

impl From<&ServeArgs> for Settings {
    fn from(args: &ServeArgs) -> Self {
        Self {
            kafka: args.kafka.clone(),
            db: args.db.clone(),
            group: args.group.clone(),
            produce: None,
            consume: None,
            serve: Some(args.server.clone()),
        }
    }
}

impl From<&AllArgs> for Settings {
    fn from(args: &AllArgs) -> Self {
        Self {
            kafka: args.kafka.clone(),
            db: args.db.clone(),
            group: args.group.clone(),
            produce: Some((args.producer.clone(), ALL_DEFAULT_INTERVAL)),
            consume: Some(args.consumer.clone()),
            serve: Some(args.server.clone()),
        }
    }
}

/// The pipeline, connected and bound, ready to run.
pub struct Pipeline {
    settings: Settings,
    /// The database and its pool, when a stage needs them.
    db: Option<(Database, Pool)>,
    /// For producing, and for the server's lag figures.
    kafka: Option<Broker>,
    /// For consuming: reports lost connections instead of retrying them.
    reader: Option<Broker>,
    /// For mirroring the consumer's offsets to Kafka, when it does.
    mirror: Option<GroupClient>,
    /// The page's address, bound.
    listener: Option<TcpListener>,
    /// Who may use the server (its keys read at build), when it runs.
    access: Option<Access>,
    /// A consumer's own `/metrics`, bound.
    metrics_listener: Option<TcpListener>,
}

impl Pipeline {
    /// Checks the settings, connects, migrates and binds; nothing runs yet.
    pub async fn build(settings: Settings) -> Result<Self, PipelineError> {
        if let Some((options, _)) = &settings.produce {
            produce::catalog(options)?; // a bad catalog file fails before any connection
        }
        // So do unreadable token keys.
        let access = settings.serve.as_ref().map(access).transpose()?;
        let pool_size = settings.consume.as_ref().map_or(0, |_| CONSUMER_POOL_SIZE)
            + settings.serve.as_ref().map_or(0, |_| SERVER_POOL_SIZE);
        let db = if pool_size > 0 {
            let db: Database = settings.db.database_url.parse()?;
            let db = db.with_timeout(settings.db.timeout);
            let pool = db.connect_and_migrate(pool_size).await?;
            Some((db, pool))
        } else {
            None
        };
        let kafka = match (&settings.produce, &settings.serve) {
            (Some(_), _) => Some(Broker::connect(&settings.kafka).await?),
            // A server without a broker still serves; it only lacks lag figures.
            (None, Some(_)) => match Broker::connect(&settings.kafka).await {
                Ok(client) => Some(client),
                Err(error) => {
                    tracing::warn!(%error, "serving without consumer lag");
                    None
                }
            },
            (None, None) => None,
        };
        let reader = match &settings.consume {
            Some(_) => Some(Broker::connect_reader(&settings.kafka).await?),
            None => None,
        };
        let mirror = match &settings.consume {
            Some(options) if options.offset_mirror => Some(GroupClient::new(
                &settings.kafka,
                settings.group.group_id.clone(),
            )?),
            _ => None,
        };
        // With every stage in one process, the topic exists before any reads it.
        if let (Some((options, _)), Some(_), Some(client)) = (&settings.produce, &settings.consume, &kafka) {
            client
                .ensure_topic(&settings.kafka.topic, options.partitions)
                .await?;
        }
        let listener = match &settings.serve {
            Some(options) => Some(bind(options.listen_addr, "LISTEN_ADDR").await?),
            None => None,
        };
        let metrics_listener = match settings.consume.as_ref().and_then(|c| c.metrics_addr) {
            Some(addr) => Some(bind(addr, "METRICS_ADDR").await?),
            None => None,
        };
        if settings.consume.is_some() || settings.serve.is_some() {
            crate::metrics::handle();
        }
        Ok(Self {
            settings,
            db,
            kafka,
            reader,
            mirror,
            listener,
            access,
            metrics_listener,
        })
    }

    /// Where the page is served, when a server runs.
    pub fn address(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where a consumer's own `/metrics` is served, when asked for.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs the stages until `shutdown` (a producer with a maximum stops on
    /// its own); the first stage to fail stops the others.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), PipelineError> {
        let stop = shutdown.child_token();
        let stop_others_if_failed = |result: &Result<(), PipelineError>| {
            if result.is_err() {
                stop.cancel();
            }
        };
        let s = &self.settings;
        let db = self.db.as_ref();
        let (produced, (), served) = tokio::join!(
            async {
                let produced = produce_stage(s, self.kafka.as_ref(), stop.clone()).await;
                stop_others_if_failed(&produced);
                produced
            },
            consume_stage(
                s,
                db,
                self.reader.as_ref(),
                self.mirror,
                self.metrics_listener,
                stop.clone()
            ),
            async {
                let served = serve_stage(
                    s,
                    db,
                    self.kafka.clone(),
                    self.listener,
                    self.access,
                    stop.clone(),
                )
                .await;
                stop_others_if_failed(&served);
                served
            },
        );
        produced.and(served)
    }
}

/// The simulator, when it runs: until its maximum or `stop`.
async fn produce_stage(
    settings: &Settings,
    kafka: Option<&Broker>,
    stop: CancellationToken,
) -> Result<(), PipelineError> {
    let (Some((options, default_interval)), Some(client)) = (&settings.produce, kafka) else {
        return Ok(());
    };
    let pace = options.pace(*default_interval);
    produce::run(&settings.kafka.topic, options, pace, client.clone(), stop).await?;
    Ok(())
}

/// The consumer, when it runs, with its own `/metrics`, the history's
/// upkeep (partitions ahead, retention, size) and offset mirror.
async fn consume_stage(
    settings: &Settings,
    db: Option<&(Database, Pool)>,
    reader: Option<&Broker>,
    mirror: Option<GroupClient>,
    metrics_listener: Option<TcpListener>,
    stop: CancellationToken,
) {
    let (Some(options), Some((db, pool)), Some(reader)) = (&settings.consume, db, reader) else {
        return;
    };
    let _metrics = metrics_listener.map(|listener| {
        AbortOnDropHandle::new(tokio::spawn(crate::metrics::serve_alone(listener, stop.clone())))
    });
    let _maintenance = AbortOnDropHandle::new(tokio::spawn(crate::store::upkeep::maintain(
        pool.clone(),
        options.retention_days,
        stop.clone(),
    )));
    let consumer = ConsumerSettings {
        group: settings.group.group_id.clone(),
        topic: settings.kafka.topic.clone(),
        start_from: options.start_from,
        batch_size: options.batch_size as usize,
        fetch_wait_ms: options.fetch_wait_ms,
        session_timeout: options.session_timeout,
        stalled_after: settings.group.stalled_after,
    };
    consume::run(consumer, db.clone(), pool.clone(), reader.clone(), mirror, stop).await;
}

/// The server, when it runs.
async fn serve_stage(
    settings: &Settings,
    db: Option<&(Database, Pool)>,
    kafka: Option<Broker>,
    listener: Option<TcpListener>,
    access: Option<Access>,
    stop: CancellationToken,
) -> Result<(), PipelineError> {
    let (Some(options), Some((db, pool)), Some(listener), Some(access)) =
        (&settings.serve, db, listener, access)
    else {
        return Ok(());
    };
    let serve = ServeSettings {
        follow: FollowSettings {
            group: settings.group.group_id.clone(),
            topic: settings.kafka.topic.clone(),
            broadcast_every: Duration::from_millis(options.broadcast_interval_ms),
            stalled_after: settings.group.stalled_after,
        },
        access,
        max_connections: options.max_connections as usize,
        http: serve::server::HttpSettings {
            limits: serve::head::HeadLimits {
                max_headers: options.http_max_headers as usize,
                max_header_bytes: options.http_max_header_bytes as usize,
                max_url_bytes: options.http_max_url_bytes as usize,
            },
            head_timeout: options.http_head_timeout,
        },
        resume_max_updates: i64::from(options.resume_max_updates),
    };
    serve::run(serve, db.clone(), pool.clone(), kafka, listener, stop).await?;
    Ok(())
}

/// The server's access settings, with its token keys read.
fn access(options: &ServerOptions) -> Result<Access, serve::tokens::KeyError> {
    let verifier = serve::tokens::Verifier::from_settings(
        options.jwt_secret.as_deref(),
        options.jwt_public_key_file.as_deref(),
    )?;
    Ok(Access::new(options.api_token.clone(), options.allowed_origins.as_deref()).with_verifier(verifier))
}

/// Binds `addr`, with an error that names the setting.
pub async fn bind(addr: SocketAddr, setting: &'static str) -> Result<TcpListener, PipelineError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| PipelineError::Bind {
            setting,
            addr,
            source,
        })
}

/// The URL a person opens for `addr`.
pub fn page_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "localhost".to_owned()
    } else {
        addr.ip().to_string()
    };
    format!("http://{host}:{}/", addr.port())
}
