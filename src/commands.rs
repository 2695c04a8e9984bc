//! What each command does, composed from the stage modules. `main` only
//! parses, starts tracing and calls one of these; `all` is the other three
//! joined, not a fourth implementation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use rskafka::client::Client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{
    AllArgs, ConsumeArgs, ConsumerOptions, DbArgs, DoctorArgs, GroupArgs, KafkaArgs, ProduceArgs,
    ProducerOptions, ServeArgs, ServerOptions,
};
use crate::consume::{self, ConsumerSettings};
use crate::db::Database;
use crate::serve::{self, FollowSettings};
use crate::{kafka, produce};

/// The pause between events of `produce` when none is configured.
pub const PRODUCE_DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// The pause between events of `all` when none is configured.
pub const ALL_DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Connections a consumer keeps open.
const CONSUMER_POOL_SIZE: usize = 4;
/// Connections a server keeps open.
const SERVER_POOL_SIZE: usize = 16;

/// `migrate`: creates the database if needed and applies the migrations.
pub async fn migrate(args: &DbArgs) -> anyhow::Result<()> {
    let db: Database = args.database_url.parse()?;
    db.ensure_exists().await?;
    crate::db::migrate(&db).await?;
    println!("database {} is up to date", db.target());
    Ok(())
}

/// `doctor`: prints one line per check; fails if any check fails.
pub async fn doctor(args: &DoctorArgs) -> anyhow::Result<()> {
    let checks = crate::doctor::run(&args.kafka, &args.db, &args.group).await;
    for check in &checks {
        println!("{check}");
    }
    let failed = checks
        .iter()
        .filter(|c| c.verdict == crate::doctor::Verdict::Fail)
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(())
}

/// `produce`: publishes simulated events until done or shut down.
pub async fn produce(args: &ProduceArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    produce::catalog(&args.producer)?; // a bad catalog file fails before any connection
    let client = kafka::connect(&args.kafka).await?;
    run_producer(
        &args.kafka,
        &args.producer,
        PRODUCE_DEFAULT_INTERVAL,
        client,
        shutdown,
    )
    .await
}

async fn run_producer(
    kafka: &KafkaArgs,
    options: &ProducerOptions,
    default_interval: Duration,
    client: Arc<Client>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pace = options.pace(default_interval);
    produce::run(&kafka.topic, options, pace, client, shutdown).await?;
    Ok(())
}

/// `consume`: migrates, then consumes until shut down.
pub async fn consume(args: &ConsumeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let db: Database = args.db.database_url.parse()?;
    let pool = db.connect_and_migrate(CONSUMER_POOL_SIZE).await?;
    let client = kafka::connect_reader(&args.kafka).await?;
    run_consumer(
        &args.kafka,
        &args.group,
        &args.consumer,
        db,
        pool,
        client,
        shutdown,
    )
    .await
}

async fn run_consumer(
    kafka: &KafkaArgs,
    group: &GroupArgs,
    options: &ConsumerOptions,
    db: Database,
    pool: Pool,
    client: Arc<Client>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = ConsumerSettings {
        group: group.group_id.clone(),
        topic: kafka.topic.clone(),
        start_from: options.start_from,
        batch_size: options.batch_size as usize,
        fetch_wait_ms: options.fetch_wait_ms,
    };
    let _metrics = match options.metrics_addr {
        Some(addr) => {
            let listener = serve::bind(addr).await.context("METRICS_ADDR")?;
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
            Some(crate::shutdown::OwnedTask::spawn(serve::metrics::serve_alone(
                listener,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let _retention = options.retention_days.map(|days| {
        crate::shutdown::OwnedTask::spawn(consume::retention::run(pool.clone(), days, shutdown.clone()))
    });
    consume::run(settings, db, pool, client, shutdown).await;
    Ok(())
}

/// `serve`: migrates, then serves until shut down. The broker is optional
/// (it only gives consumer lag).
pub async fn serve(args: &ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let db: Database = args.db.database_url.parse()?;
    let pool = db.connect_and_migrate(SERVER_POOL_SIZE).await?;
    let client = match kafka::connect(&args.kafka).await {
        Ok(client) => Some(client),
        Err(error) => {
            tracing::warn!(%error, "serving without consumer lag");
            None
        }
    };
    let listener = serve::bind(args.server.listen_addr)
        .await
        .context("LISTEN_ADDR")?;
    run_server(
        &args.kafka,
        &args.group,
        &args.server,
        db,
        pool,
        client,
        listener,
        shutdown,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn run_server(
    kafka: &KafkaArgs,
    group: &GroupArgs,
    options: &ServerOptions,
    db: Database,
    pool: Pool,
    client: Option<Arc<Client>>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = FollowSettings {
        group: group.group_id.clone(),
        topic: kafka.topic.clone(),
        broadcast_every: Duration::from_millis(options.broadcast_interval_ms),
    };
    if let Ok(addr) = listener.local_addr() {
        println!("catlog-live is live at {}", page_url(addr));
    }
    let access = serve::Access::new(options.api_token.clone(), options.allowed_origins.as_deref());
    serve::run(settings, access, db, pool, client, listener, shutdown).await?;
    Ok(())
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

/// `all`: produce, consume and serve in one process until shut down; the
/// first stage to fail stops the others.
pub async fn all(args: &AllArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    produce::catalog(&args.producer)?;
    let db: Database = args.db.database_url.parse()?;
    let pool = db
        .connect_and_migrate(CONSUMER_POOL_SIZE + SERVER_POOL_SIZE)
        .await?;
    let client = kafka::connect(&args.kafka).await?;
    kafka::ensure_topic(&client, &args.kafka.topic, args.producer.partitions).await?;
    let listener = serve::bind(args.server.listen_addr)
        .await
        .context("LISTEN_ADDR")?;
    serve::metrics::handle();

    let stop = shutdown.child_token();
    let stage = |result: anyhow::Result<()>| {
        if result.is_err() {
            stop.cancel();
        }
        result
    };
    let (produced, consumed, served) = tokio::join!(
        async {
            stage(
                run_producer(
                    &args.kafka,
                    &args.producer,
                    ALL_DEFAULT_INTERVAL,
                    client.clone(),
                    stop.clone(),
                )
                .await,
            )
        },
        async {
            let result = match kafka::connect_reader(&args.kafka).await {
                Ok(reader) => {
                    run_consumer(
                        &args.kafka,
                        &args.group,
                        &args.consumer,
                        db.clone(),
                        pool.clone(),
                        reader,
                        stop.clone(),
                    )
                    .await
                }
                Err(e) => Err(e.into()),
            };
            stage(result)
        },
        async {
            let result = run_server(
                &args.kafka,
                &args.group,
                &args.server,
                db.clone(),
                pool.clone(),
                Some(client.clone()),
                listener,
                stop.clone(),
            )
            .await;
            stage(result)
        },
    );
    produced.context("produce")?;
    consumed.context("consume")?;
    served.context("serve")?;
    Ok(())
}
