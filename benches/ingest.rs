//! Ingest benchmark: how fast `consume` drains a backlog into PostgreSQL,
//! against a plain `COPY` of the same rows into a table of the same shape,
//! measured in the same run on the same database.
//!
//! ```text
//! scripts/bench                 # starts a broker, 200,000 events
//! scripts/bench --events 50000
//! ```
//!
//! Needs a broker (`KAFKA_BROKER`, default 127.0.0.1:9092) and PostgreSQL
//! (`CATLOG_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/postgres).

use std::time::Instant;

use catlog_live::db::Database;
use catlog_live::kafka;

#[path = "support/events.rs"]
mod events;
use events::{PARTITIONS, consume, copy, publish, shape};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The consumer's own log on stderr, as RUST_LOG asks (errors only without it).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut events: usize = 200_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => events = args.next().and_then(|n| n.parse().ok()).unwrap_or(events),
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other}; use --events N"),
        }
    }
    let broker = std::env::var("KAFKA_BROKER").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let admin = std::env::var("CATLOG_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let suffix = format!("{}_{}", std::process::id(), chrono::Utc::now().timestamp());
    let topic = format!("catlog-bench-{suffix}");
    let db_name = format!("catlog_bench_{suffix}");
    let db_url = format!(
        "{}/{db_name}",
        admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin)
    );

    println!("ingest benchmark: {events} events, {PARTITIONS} partitions, broker {broker}");
    let client = kafka::connect(&catlog_live::config::KafkaArgs::plain(
        broker.clone(),
        topic.clone(),
    ))
    .await?;
    kafka::ensure_topic(&client, &topic, PARTITIONS, None).await?;
    let db: Database = db_url.parse()?;
    db.connect_and_migrate(1).await?;

    // The events, published the way the producer does, kept for the COPY.
    let started = Instant::now();
    let rows = publish(&client, &topic, events).await?;
    println!(
        "published        {events:>8} events in {:>7.2} s",
        started.elapsed().as_secs_f64()
    );

    // Baseline: COPY of the same rows into a table of the same shape.
    let session = db.session().await?;
    session
        .client
        .batch_execute(&format!(
            "CREATE TABLE copy_baseline (LIKE {} INCLUDING ALL)",
            shape(&session.client).await?
        ))
        .await?;
    let copy_secs = copy(&session.client, "copy_baseline", &topic, &rows).await?;
    let copy_rate = events as f64 / copy_secs;
    println!("COPY baseline    {events:>8} rows   in {copy_secs:>7.2} s  = {copy_rate:>9.0} rows/s");

    // The consumer, built as `catlog-live consume` builds it, from an empty
    // group until every row is in.
    let ingest_secs = consume(&db_url, &broker, &topic, &session.client, events).await?;
    let ingest_rate = events as f64 / ingest_secs;
    println!("consume ingest   {events:>8} rows   in {ingest_secs:>7.2} s  = {ingest_rate:>9.0} rows/s");
    println!(
        "ratio            ingest / COPY = {:.0} %  (target ≥ 75 %)",
        100.0 * ingest_rate / copy_rate
    );

    drop(session);
    let (admin_client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    admin_client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"))
        .await?;
    Ok(())
}
