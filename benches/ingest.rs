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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use catlog_live::catalog::Catalog;
use catlog_live::config::{Cli, Command};
use catlog_live::db::Database;
use catlog_live::event::{Event, Measure, new_event_id};
use catlog_live::kafka;
use catlog_live::pipeline::{Pipeline, Settings};
use catlog_live::produce::Simulator;
use clap::Parser;
use futures::SinkExt;
use rskafka::client::partition::Compression;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PARTITIONS: i32 = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
        .batch_execute("CREATE TABLE copy_baseline (LIKE popularity_events INCLUDING ALL)")
        .await?;
    let copy_secs = copy(&session.client, &topic, &rows).await?;
    let copy_rate = events as f64 / copy_secs;
    println!("COPY baseline    {events:>8} rows   in {copy_secs:>7.2} s  = {copy_rate:>9.0} rows/s");

    // The consumer, built as `catlog-live consume` builds it, from an empty
    // group until every row is in.
    let batch_size = std::env::var("CONSUMER_BATCH_SIZE").unwrap_or_else(|_| "5000".into());
    let cli = Cli::try_parse_from([
        "catlog-live",
        "consume",
        "--kafka-broker",
        &broker,
        "--kafka-topic",
        &topic,
        "--database-url",
        &db_url,
        "--group-id",
        "bench",
        "--batch-size",
        &batch_size,
    ])?;
    let Command::Consume(args) = cli.command else {
        anyhow::bail!("not consume")
    };
    let consumer = Pipeline::build(Settings::from(&args)).await?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let consumer = tokio::spawn(consumer.run(shutdown.clone()));
    loop {
        let n: i64 = session
            .client
            .query_one("SELECT count(*) FROM popularity_events", &[])
            .await?
            .get(0);
        if n as usize >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    consumer.await??;
    let ingest_rate = events as f64 / ingest_secs;
    println!("consume ingest   {events:>8} rows   in {ingest_secs:>7.2} s  = {ingest_rate:>9.0} rows/s");
    println!(
        "ratio            ingest / COPY = {:.0} %  (target ≥ 50 %)",
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

/// A published event: partition, offset, the event and its id.
type Published = (i32, i64, Event, Uuid);

/// Publishes `n` simulated events; returns them with their partition and offset.
async fn publish(client: &rskafka::client::Client, topic: &str, n: usize) -> anyhow::Result<Vec<Published>> {
    let catalog = Catalog::builtin()?;
    let mut sim = Simulator::new(&catalog, Some(1));
    let mut partitions = Vec::new();
    for p in 0..PARTITIONS {
        partitions.push(kafka::partition_client(client, topic, p).await?);
    }
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let chunk = left.min(3_000);
        let mut by_partition: BTreeMap<i32, Vec<Event>> = BTreeMap::new();
        for _ in 0..chunk {
            let event = sim.next_event(chrono::Utc::now());
            by_partition
                .entry(kafka::partition_for(&event.key(), PARTITIONS))
                .or_default()
                .push(event);
        }
        for (p, events) in by_partition {
            let events: Vec<(Event, Uuid)> = events.into_iter().map(|e| (e, new_event_id())).collect();
            let records = events.iter().map(|(e, id)| kafka::record(e, *id)).collect();
            let offsets = partitions[p as usize]
                .produce(records, Compression::NoCompression)
                .await?;
            out.extend(offsets.into_iter().zip(events).map(|(o, (e, id))| (p, o, e, id)));
        }
        left -= chunk;
    }
    Ok(out)
}

/// COPYs the rows as CSV; returns the seconds it took (text built beforehand).
async fn copy(client: &tokio_postgres::Client, topic: &str, rows: &[Published]) -> anyhow::Result<f64> {
    let mut csv = String::with_capacity(rows.len() * 160);
    for (p, o, e, id) in rows {
        let (score, members, rank) = match e.measure {
            Measure::Score(s) => (s.to_string(), String::new(), String::new()),
            Measure::Members(m) => (String::new(), m.to_string(), String::new()),
            Measure::Rank(r) => (String::new(), String::new(), r.to_string()),
        };
        csv.push_str(&format!(
            "{topic},{p},{o},{id},{},\"{}\",{},{score},{members},{rank},{},{}\n",
            e.mal_id,
            e.title.replace('"', "\"\""),
            e.event_type(),
            e.popularity_change,
            e.timestamp_text()
        ));
    }
    let started = Instant::now();
    let sink = client
        .copy_in(
            "COPY copy_baseline (topic, partition, \"offset\", event_id, mal_id, title, event_type, current_score, \
             live_members, trending_rank, popularity_change, event_time) FROM STDIN (FORMAT csv)",
        )
        .await?;
    futures::pin_mut!(sink);
    for chunk in csv.as_bytes().chunks(1 << 20) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
    }
    sink.finish().await?;
    Ok(started.elapsed().as_secs_f64())
}
