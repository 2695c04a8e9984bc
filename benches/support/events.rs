//! What the ingest and history benchmarks share: simulated events published
//! the way the producer publishes them, a plain `COPY` of the same rows into
//! a table of a history partition's shape, and `consume` draining them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use catlog_live::catalog::Catalog;
use catlog_live::config::{Cli, Command};
use catlog_live::event::{Event, Measure, new_event_id};
use catlog_live::kafka;
use catlog_live::pipeline::{Pipeline, Settings};
use catlog_live::produce::Simulator;
use clap::Parser;
use futures::SinkExt;
use rskafka::client::partition::Compression;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Partitions of a benchmark topic.
pub const PARTITIONS: i32 = 3;

/// A published event: partition, offset, the event and its id.
pub type Published = (i32, i64, Event, Uuid);

/// Publishes `n` simulated events; returns them with their partition and offset.
pub async fn publish(
    client: &rskafka::client::Client,
    topic: &str,
    n: usize,
) -> anyhow::Result<Vec<Published>> {
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
pub async fn copy(
    client: &tokio_postgres::Client,
    table: &str,
    topic: &str,
    rows: &[Published],
) -> anyhow::Result<f64> {
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
        .copy_in(&format!(
            "COPY {table} (topic, partition, \"offset\", event_id, mal_id, title, event_type, current_score, \
             live_members, trending_rank, popularity_change, event_time) FROM STDIN (FORMAT csv)"
        ))
        .await?;
    futures::pin_mut!(sink);
    for chunk in csv.as_bytes().chunks(1 << 20) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
    }
    sink.finish().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// The table a plain COPY baseline copies the shape of: the history, or the
/// partition today's rows go to when the history is partitioned.
pub async fn shape(sql: &tokio_postgres::Client) -> anyhow::Result<String> {
    let leaf: Option<String> = sql
        .query_one(
            "SELECT max(relid::text) FROM pg_partition_tree('popularity_events') \
             WHERE isleaf AND relid::text LIKE 'popularity_events_w%'",
            &[],
        )
        .await?
        .get(0);
    Ok(leaf.unwrap_or_else(|| "popularity_events".into()))
}

/// Runs `consume` from an empty group until it stored `events`; the seconds it took.
pub async fn consume(
    url: &str,
    broker: &str,
    topic: &str,
    sql: &tokio_postgres::Client,
    events: usize,
) -> anyhow::Result<f64> {
    let cli = Cli::try_parse_from([
        "catlog-live",
        "consume",
        "--kafka-broker",
        broker,
        "--kafka-topic",
        topic,
        "--database-url",
        url,
        "--group-id",
        "bench",
    ])?;
    let Command::Consume(args) = cli.command else {
        anyhow::bail!("not consume")
    };
    let consumer = Pipeline::build(Settings::from(&args)).await?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    loop {
        let n: i64 = sql
            .query_one(
                "SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets \
                 WHERE group_id = 'bench' AND topic = $1",
                &[&topic],
            )
            .await?
            .get(0);
        if n as usize >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await??;
    Ok(secs)
}
