//! What each command does, composed from the stage modules. `main` only
//! parses, starts tracing and calls one of these.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{ConsumeArgs, DbArgs, ProduceArgs};
use crate::consume::{self, ConsumerSettings};
use crate::db::Database;
use crate::{kafka, produce};

/// The pause between events of `produce` when none is configured.
pub const PRODUCE_DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Connections a consumer keeps open.
const CONSUMER_POOL_SIZE: usize = 4;

/// `migrate`: creates the database if needed and applies the migrations.
pub async fn migrate(args: &DbArgs) -> anyhow::Result<()> {
    let db: Database = args.database_url.parse()?;
    db.ensure_exists().await?;
    crate::db::migrate(&db).await?;
    println!("database {} is up to date", db.target());
    Ok(())
}

/// `produce`: publishes simulated events until done or shut down.
pub async fn produce(
    args: &ProduceArgs,
    default_interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    produce::catalog(args)?; // a bad catalog file fails before any connection
    let client = kafka::connect(&args.kafka.broker_list()).await?;
    produce::run(args, args.pace(default_interval), client, shutdown).await?;
    Ok(())
}

/// `consume`: migrates, then consumes until shut down.
pub async fn consume(args: &ConsumeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let db: Database = args.db.database_url.parse()?;
    let pool = db.connect_and_migrate(CONSUMER_POOL_SIZE).await?;
    let client = kafka::connect(&args.kafka.broker_list()).await?;
    let settings = ConsumerSettings {
        group: args.group_id.clone(),
        topic: args.kafka.topic.clone(),
        start_from: args.start_from,
        batch_size: args.batch_size as usize,
    };
    kafka::partitions(&client, &settings.topic)
        .await
        .context("listing the topic's partitions")?
        .is_none()
        .then(|| tracing::warn!(topic = %settings.topic, "topic does not exist yet; waiting for a producer to create it"));
    consume::run(settings, db, pool, client, shutdown).await;
    Ok(())
}
