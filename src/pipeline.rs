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

use crate::catalog::{Catalog, CatalogError};
use crate::config::{
    AllArgs, ConsumeArgs, ConsumerOptions, DbArgs, GroupArgs, KafkaArgs, Pace, ProduceArgs, ProducerOptions,
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

/// Which stages run, and with what settings: each stage holds exactly what
/// it needs, and a stage that is `None` does not run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: KafkaArgs,
    pub produce: Option<ProduceStage>,
    pub consume: Option<ConsumeStage>,
    pub serve: Option<ServeStage>,
}

/// The simulator's settings, with its pace settled.
#[derive(Debug, Clone)]
pub struct ProduceStage {
    pub options: ProducerOptions,
    pub pace: Pace,
}

/// The consumer's settings.
#[derive(Debug, Clone)]
pub struct ConsumeStage {
    pub db: DbArgs,
    pub group: GroupArgs,
    pub options: ConsumerOptions,
}

/// The server's settings; `group` names whose lag it shows.
#[derive(Debug, Clone)]
pub struct ServeStage {
    pub db: DbArgs,
    pub group: GroupArgs,
    pub options: ServerOptions,
}

impl ProduceStage {
    fn new(options: &ProducerOptions, default_interval: Duration) -> Self {
        Self {
            options: options.clone(),
            pace: options.pace(default_interval),
        }
    }
}

impl From<&ProduceArgs> for Settings {
    fn from(args: &ProduceArgs) -> Self {
        Self {
            kafka: args.kafka.clone(),
            produce: Some(ProduceStage::new(&args.producer, PRODUCE_DEFAULT_INTERVAL)),
            consume: None,
            serve: None,
        }
    }
}

impl From<&ConsumeArgs> for Settings {
    fn from(args: &ConsumeArgs) -> Self {
        Self {
            kafka: args.kafka.clone(),
            produce: None,
            consume: Some(ConsumeStage {
                db: args.db.clone(),
                group: args.group.clone(),
                options: args.consumer.clone(),
            }),
            serve: None,
        }
    }
}

impl From<&ServeArgs> for Settings {
    fn from(args: &ServeArgs) -> Self {
        Self {
            kafka: args.kafka.clone(),
            produce: None,
            consume: None,
            serve: Some(ServeStage {
                db: args.db.clone(),
                group: args.group.clone(),
                options: args.server.clone(),
            }),
        }
    }
}

impl From<&AllArgs> for Settings {
    fn from(args: &AllArgs) -> Self {
        Self {
            kafka: args.kafka.clone(),
            produce: Some(ProduceStage::new(&args.producer, ALL_DEFAULT_INTERVAL)),
            consume: Some(ConsumeStage {
                db: args.db.clone(),
                group: args.group.clone(),
                options: args.consumer.clone(),
            }),
            serve: Some(ServeStage {
                db: args.db.clone(),
                group: args.group.clone(),
                options: args.server.clone(),
            }),
        }
    }
}

/// The pipeline, connected and bound, ready to run: the stages that run,
/// each with everything it needs.
pub struct Pipeline {
    producer: Option<Producer>,
    consumer: Option<Consumer>,
    server: Option<Server>,
}

/// The simulator, its catalog loaded and its broker connected.
struct Producer {
    topic: String,
    options: ProducerOptions,
    pace: Pace,
    catalog: Catalog,
    broker: Broker,
}

/// The consumer, connected, with its own `/metrics` bound when asked for.
struct Consumer {
    settings: ConsumerSettings,
    retention_days: Option<u32>,
    db: Database,
    pool: Pool,
    /// Reports lost connections instead of retrying them.
    reader: Broker,
    /// For mirroring the consumer's offsets to Kafka, when it does.
    mirror: Option<GroupClient>,
    metrics_listener: Option<TcpListener>,
}

/// The server, connected and bound; the broker only gives lag figures.
struct Server {
    settings: ServeSettings,
    db: Database,
    pool: Pool,
    kafka: Option<Broker>,
    listener: TcpListener,
}

impl Pipeline {
    /// Checks the settings, connects, migrates and binds; nothing runs yet.
    /// What a person can get wrong fails first: a bad catalog file or
    /// unreadable token keys before any connection.
    pub async fn build(settings: Settings) -> Result<Self, PipelineError> {
        let catalog = settings
            .produce
            .as_ref()
            .map(|stage| produce::catalog(&stage.options))
            .transpose()?;
        let access = settings
            .serve
            .as_ref()
            .map(|stage| access(&stage.options))
            .transpose()?;
        let Settings {
            kafka,
            produce,
            consume,
            serve,
        } = settings;

        let consumer = match consume {
            Some(stage) => Some(Consumer::build(&kafka, stage).await?),
            None => None,
        };
        let producer = match (produce, catalog) {
            (Some(stage), Some(catalog)) => Some(Producer {
                topic: kafka.topic.clone(),
                options: stage.options,
                pace: stage.pace,
                catalog,
                broker: Broker::connect(&kafka).await?,
            }),
            _ => None,
        };
        // With every stage in one process, the topic exists before any reads it.
        if let (Some(producer), Some(_)) = (&producer, &consumer) {
            producer
                .broker
                .ensure_topic(&producer.topic, producer.options.partitions)
                .await?;
        }
        let server = match (serve, access) {
            (Some(stage), Some(access)) => {
                let broker = producer.as_ref().map(|p| p.broker.clone());
                Some(Server::build(&kafka, stage, access, broker).await?)
            }
            _ => None,
        };
        if consumer.is_some() || server.is_some() {
            crate::metrics::handle();
        }
        Ok(Self {
            producer,
            consumer,
            server,
        })
    }

    /// Where the page is served, when a server runs.
    pub fn address(&self) -> Option<SocketAddr> {
        self.server.as_ref().and_then(|s| s.listener.local_addr().ok())
    }

    /// Where a consumer's own `/metrics` is served, when asked for.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        let consumer = self.consumer.as_ref()?;
        consumer.metrics_listener.as_ref()?.local_addr().ok()
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
        let (produced, (), served) = tokio::join!(
            async {
                let Some(producer) = self.producer else {
                    return Ok(());
                };
                let produced = producer.run(stop.clone()).await;
                stop_others_if_failed(&produced);
                produced
            },
            async {
                if let Some(consumer) = self.consumer {
                    consumer.run(stop.clone()).await;
                }
            },
            async {
                let Some(server) = self.server else { return Ok(()) };
                let served = server.run(stop.clone()).await;
                stop_others_if_failed(&served);
                served
            },
        );
        produced.and(served)
    }
}

impl Producer {
    /// Publishes until its maximum or `stop`.
    async fn run(self, stop: CancellationToken) -> Result<(), PipelineError> {
        produce::run(
            &self.topic,
            &self.catalog,
            &self.options,
            self.pace,
            self.broker,
            stop,
        )
        .await?;
        Ok(())
    }
}

impl Consumer {
    async fn build(kafka: &KafkaArgs, stage: ConsumeStage) -> Result<Self, PipelineError> {
        let db = connect(&stage.db).await?;
        let pool = db.pool(CONSUMER_POOL_SIZE)?;
        let reader = Broker::connect_reader(kafka).await?;
        let mirror = if stage.options.offset_mirror {
            Some(GroupClient::new(kafka, stage.group.group_id.clone())?)
        } else {
            None
        };
        let metrics_listener = match stage.options.metrics_addr {
            Some(addr) => Some(bind(addr, "METRICS_ADDR").await?),
            None => None,
        };
        let options = stage.options;
        Ok(Self {
            settings: ConsumerSettings {
                group: stage.group.group_id,
                topic: kafka.topic.clone(),
                start_from: options.start_from,
                batch_size: options.batch_size as usize,
                fetch_wait_ms: options.fetch_wait_ms,
                session_timeout: options.session_timeout,
                stalled_after: stage.group.stalled_after,
            },
            retention_days: options.retention_days,
            db,
            pool,
            reader,
            mirror,
            metrics_listener,
        })
    }

    /// Consumes until `stop`, with its own `/metrics` and the history's
    /// upkeep (partitions ahead, retention, size) beside it.
    async fn run(self, stop: CancellationToken) {
        let _metrics = self.metrics_listener.map(|listener| {
            AbortOnDropHandle::new(tokio::spawn(serve::metrics_only(listener, stop.clone())))
        });
        let _upkeep = AbortOnDropHandle::new(tokio::spawn(crate::store::upkeep::maintain(
            self.pool.clone(),
            self.retention_days,
            stop.clone(),
        )));
        consume::run(self.settings, self.db, self.pool, self.reader, self.mirror, stop).await;
    }
}

impl Server {
    /// `broker` is the producer's, when one runs in this process; else the
    /// server connects its own, and serves without lag figures if it cannot.
    async fn build(
        kafka: &KafkaArgs,
        stage: ServeStage,
        access: Access,
        broker: Option<Broker>,
    ) -> Result<Self, PipelineError> {
        let db = connect(&stage.db).await?;
        let pool = db.reading_pool(SERVER_POOL_SIZE)?;
        let kafka_client = match broker {
            Some(broker) => Some(broker),
            None => match Broker::connect(kafka).await {
                Ok(client) => Some(client),
                Err(error) => {
                    tracing::warn!(%error, "serving without consumer lag");
                    None
                }
            },
        };
        let listener = bind(stage.options.listen_addr, "LISTEN_ADDR").await?;
        let options = stage.options;
        let settings = ServeSettings {
            follow: FollowSettings {
                group: stage.group.group_id,
                topic: kafka.topic.clone(),
                broadcast_every: Duration::from_millis(options.broadcast_interval_ms),
                stalled_after: stage.group.stalled_after,
            },
            access,
            max_connections: options.max_connections as usize,
            http: serve::http::server::HttpSettings {
                limits: serve::http::head::HeadLimits {
                    max_headers: options.http_max_headers as usize,
                    max_header_bytes: options.http_max_header_bytes as usize,
                    max_url_bytes: options.http_max_url_bytes as usize,
                },
                head_timeout: options.http_head_timeout,
            },
            resume_max_updates: i64::from(options.resume_max_updates),
        };
        Ok(Self {
            settings,
            db,
            pool,
            kafka: kafka_client,
            listener,
        })
    }

    /// Serves until `stop`.
    async fn run(self, stop: CancellationToken) -> Result<(), PipelineError> {
        serve::run(self.settings, self.db, self.pool, self.kafka, self.listener, stop).await?;
        Ok(())
    }
}

/// The database a stage names, migrated.
async fn connect(args: &DbArgs) -> Result<Database, PipelineError> {
    let db: Database = args.database_url.parse()?;
    let db = db.with_timeout(args.timeout);
    db.ensure_migrated().await?;
    Ok(db)
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
