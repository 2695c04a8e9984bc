//! `consume`: the topic into PostgreSQL, exactly once.
//!
//! ```text
//!  leases ──(owned partitions)──► one fetcher per partition ──► bounded queue ──► writer
//!                                  (rskafka fetch, from the        (capacity       (validate, one
//!                                   stored offset)                  QUEUE_DEPTH)    transaction per batch)
//! ```
//!
//! * [`leases`] decides which partitions this process reads.
//! * [`lag`] measures how far a group is behind (for `serve` and `doctor`).
//! * [`retention`] optionally deletes old history.
//! * Fetchers start from the group's stored offset (or the earliest / latest
//!   record for a new group) and feed the queue; a full queue pauses them.
//! * The writer drains the queue into batches, turns each record into a
//!   history row or a dead letter, and commits them with the offsets
//!   ([`store`]). Database errors are retried with backoff; a batch the
//!   database rejects for its data is split so the culprit becomes a dead letter.

pub mod lag;
pub mod leases;
pub mod retention;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::Pool;
use rskafka::client::Client;
use rskafka::client::partition::OffsetAt;
use rskafka::record::RecordAndOffset;
use tokio::sync::{mpsc, watch};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::config::StartFrom;
use crate::db::{Database, error_text};
use crate::event::Event;
use crate::kafka;
use crate::retry::Backoff;
use crate::shutdown::OwnedTask;
pub use store::{Batch, DeadLetter, Mode, Row, Written};

/// Fetched chunks waiting for the writer; a full queue pauses the fetchers.
const QUEUE_DEPTH: usize = 16;
/// Most bytes asked for in one fetch.
const FETCH_MAX_BYTES: i32 = 4 * 1024 * 1024;
/// How long the broker may hold a fetch open waiting for records.
const FETCH_MAX_WAIT_MS: i32 = 500;

/// What a `consume` process needs to know.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group: String,
    pub topic: String,
    pub start_from: StartFrom,
    pub batch_size: usize,
}

/// Records fetched from one partition.
struct Fetched {
    partition: i32,
    records: Vec<RecordAndOffset>,
}

/// Consumes until `shutdown`: the current batch is committed or rolled back
/// whole before this returns.
pub async fn run(
    settings: ConsumerSettings,
    db: Database,
    pool: Pool,
    kafka: Arc<Client>,
    shutdown: CancellationToken,
) {
    let (owned_tx, mut owned_rx) = watch::channel(BTreeSet::new());
    let stop_leases = CancellationToken::new();
    let leases = OwnedTask::spawn(leases::run(
        db,
        Arc::clone(&kafka),
        settings.group.clone(),
        settings.topic.clone(),
        owned_tx,
        stop_leases.clone(),
    ));

    let (queue_tx, queue_rx) = mpsc::channel(QUEUE_DEPTH);
    let writer = OwnedTask::spawn(write_loop(
        settings.clone(),
        pool.clone(),
        queue_rx,
        shutdown.clone(),
    ));

    let mut fetchers: HashMap<i32, OwnedTask<()>> = HashMap::new();
    loop {
        let owned = owned_rx.borrow_and_update().clone();
        fetchers.retain(|p, _| owned.contains(p));
        for &p in &owned {
            fetchers.entry(p).or_insert_with(|| {
                OwnedTask::spawn(fetch_loop(
                    settings.clone(),
                    pool.clone(),
                    Arc::clone(&kafka),
                    p,
                    queue_tx.clone(),
                ))
            });
        }
        tokio::select! {
            changed = owned_rx.changed() => if changed.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
    }
    drop(fetchers);
    drop(queue_tx);
    writer.join().await;
    // Partitions are released only once the last batch is settled.
    stop_leases.cancel();
    leases.join().await;
    tracing::info!("consumer stopped");
}

/// Reads one partition into the queue, from the group's stored offset, until
/// the partition is taken away (the task is dropped) or the writer is gone.
async fn fetch_loop(
    settings: ConsumerSettings,
    pool: Pool,
    kafka: Arc<Client>,
    partition: i32,
    queue: mpsc::Sender<Fetched>,
) {
    // Only dropping this task stops it; the token is never cancelled.
    let never = CancellationToken::new();
    let mut backoff = Backoff::standard();
    let client = loop {
        match kafka::partition_client(&kafka, &settings.topic, partition).await {
            Ok(client) => break client,
            Err(error) => tracing::warn!(partition, %error, "cannot open partition; retrying"),
        }
        backoff.wait(&never).await;
    };
    let mut offset = loop {
        match start_offset(&settings, &pool, &client, partition).await {
            Ok(offset) => break offset,
            Err(error) => {
                tracing::warn!(partition, %error, "cannot find the start offset; retrying")
            }
        }
        backoff.wait(&never).await;
    };
    tracing::info!(partition, offset, "reading partition");
    loop {
        match client
            .fetch_records(offset, 1..FETCH_MAX_BYTES, FETCH_MAX_WAIT_MS)
            .await
        {
            Ok((records, high_watermark)) => {
                backoff.reset();
                metrics::gauge!("catlog_consumer_fetch_lag", "partition" => partition.to_string())
                    .set((high_watermark - offset).max(0) as f64);
                let mut records: Vec<_> = records.into_iter().filter(|r| r.offset >= offset).collect();
                let Some(last) = records.last() else { continue };
                offset = last.offset + 1;
                // At most one batch per message, so a large fetch still
                // commits in batch-sized transactions.
                while !records.is_empty() {
                    let rest = records.split_off(records.len().min(settings.batch_size));
                    if queue.send(Fetched { partition, records }).await.is_err() {
                        return;
                    }
                    records = rest;
                }
            }
            Err(e) if kafka::is_offset_out_of_range(&e) => {
                match client.get_offset(OffsetAt::Earliest).await {
                    Ok(earliest) if earliest > offset => {
                        tracing::warn!(
                            partition,
                            offset,
                            earliest,
                            "records before {earliest} are gone from the broker; skipping ahead"
                        );
                        offset = earliest;
                    }
                    _ => {
                        tracing::warn!(partition, offset, "offset out of range; retrying");
                        backoff.wait(&never).await;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(partition, %error, "fetch failed; retrying");
                backoff.wait(&never).await;
            }
        }
    }
}

/// The group's stored offset, or where a new group starts.
async fn start_offset(
    settings: &ConsumerSettings,
    pool: &Pool,
    client: &rskafka::client::partition::PartitionClient,
    partition: i32,
) -> Result<i64, String> {
    let db = pool.get().await.map_err(|e| e.to_string())?;
    let stored = db
        .query_opt(
            store::LOAD_OFFSET,
            &[&settings.group, &settings.topic, &partition],
        )
        .await
        .map_err(|e| error_text(&e))?;
    if let Some(row) = stored {
        return Ok(row.get(0));
    }
    match settings.start_from {
        StartFrom::Earliest => client
            .get_offset(OffsetAt::Earliest)
            .await
            .map_err(|e| e.to_string()),
        StartFrom::Latest => kafka::end_offset(client).await.map_err(|e| e.to_string()),
    }
}

/// Drains the queue into batches and commits them until the queue closes or
/// `shutdown` fires between two batches.
async fn write_loop(
    settings: ConsumerSettings,
    pool: Pool,
    mut queue: mpsc::Receiver<Fetched>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            next = queue.recv() => match next {
                Some(fetched) => fetched,
                None => return,
            },
        };
        let mut chunks = vec![first];
        let mut records = chunks[0].records.len();
        while records < settings.batch_size {
            match queue.try_recv() {
                Ok(more) => {
                    records += more.records.len();
                    chunks.push(more);
                }
                Err(_) => break,
            }
        }
        let batch = prepare(chunks);
        if !commit_with_retry(&settings, &pool, &batch, &shutdown).await {
            return;
        }
    }
}

/// Validates every record: a history row or a dead letter each.
fn prepare(chunks: Vec<Fetched>) -> Batch {
    let mut batch = Batch::default();
    for chunk in chunks {
        for RecordAndOffset { record, offset } in chunk.records {
            let partition = chunk.partition;
            batch.next_offsets.insert(partition, offset + 1);
            let value = record.value.unwrap_or_default();
            match Event::from_bytes(&value) {
                Ok(event) => batch.rows.push(Row {
                    partition,
                    offset,
                    event,
                    raw: value,
                }),
                Err(invalid) => {
                    tracing::warn!(partition, offset, reason = %invalid, "dead letter");
                    batch.dead_letters.push(DeadLetter {
                        partition,
                        offset,
                        key: record.key,
                        payload: Some(value),
                        reason: invalid.to_string(),
                    });
                }
            }
        }
    }
    batch
}

/// Commits `batch`, retrying database trouble with backoff. `false` when
/// shutdown came before the batch could be committed (nothing of it is).
async fn commit_with_retry(
    settings: &ConsumerSettings,
    pool: &Pool,
    batch: &Batch,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::standard();
    loop {
        let started = Instant::now();
        match commit(settings, pool, batch).await {
            Ok(written) => {
                metrics::histogram!("catlog_batch_commit_seconds").record(started.elapsed().as_secs_f64());
                metrics::counter!("catlog_events_consumed_total").increment(written.events);
                metrics::counter!("catlog_dead_letters_total").increment(written.dead_letters);
                tracing::debug!(
                    records = batch.len(),
                    events = written.events,
                    dead_letters = written.dead_letters,
                    "batch committed"
                );
                return true;
            }
            Err(CommitError::Data(reason)) if batch.len() > 1 => {
                tracing::warn!(%reason, records = batch.len(), "database rejected the batch's data; committing record by record");
                return commit_one_by_one(settings, pool, batch, shutdown).await;
            }
            Err(CommitError::Data(reason)) if batch.is_empty() => {
                tracing::warn!(%reason, "cannot store offsets; retrying");
            }
            Err(CommitError::Data(reason)) => {
                let dead = rejected(batch, &reason);
                return Box::pin(commit_with_retry(settings, pool, &dead, shutdown)).await;
            }
            // (A duplicate is only reported in Fresh mode, which `commit` retries.)
            Err(CommitError::Duplicate) => tracing::warn!("batch met stored records twice; retrying"),
            Err(CommitError::Unavailable(error)) => {
                tracing::warn!(%error, "cannot commit batch; retrying");
            }
        }
        if !backoff.wait(shutdown).await {
            return false;
        }
    }
}

async fn commit_one_by_one(
    settings: &ConsumerSettings,
    pool: &Pool,
    batch: &Batch,
    shutdown: &CancellationToken,
) -> bool {
    let singles = batch
        .rows
        .iter()
        .map(|row| Batch {
            rows: vec![row.clone()],
            next_offsets: [(row.partition, row.offset + 1)].into(),
            ..Batch::default()
        })
        .chain(batch.dead_letters.iter().map(|dead| Batch {
            dead_letters: vec![dead.clone()],
            next_offsets: [(dead.partition, dead.offset + 1)].into(),
            ..Batch::default()
        }));
    for single in singles {
        if !Box::pin(commit_with_retry(settings, pool, &single, shutdown)).await {
            return false;
        }
    }
    true
}

/// A one-record batch the database refused: its event becomes a dead letter
/// with the database's reason. (A refused dead letter is logged and skipped.)
fn rejected(batch: &Batch, reason: &str) -> Batch {
    for dead in &batch.dead_letters {
        tracing::error!(
            partition = dead.partition,
            offset = dead.offset,
            reason,
            "dead letter refused by the database; skipped"
        );
    }
    let dead_letters = batch
        .rows
        .iter()
        .map(|row| DeadLetter {
            partition: row.partition,
            offset: row.offset,
            key: Some(row.event.key()),
            payload: Some(row.raw.clone()),
            reason: format!("rejected by the database: {reason}"),
        })
        .collect();
    Batch {
        dead_letters,
        next_offsets: batch.next_offsets.clone(),
        ..Batch::default()
    }
}

enum CommitError {
    /// Some record of the batch is stored already.
    Duplicate,
    /// The database refused the data itself (SQLSTATE class 22 or 23).
    Data(String),
    /// Anything else: connection, pool, server restarting.
    Unavailable(String),
}

async fn commit(settings: &ConsumerSettings, pool: &Pool, batch: &Batch) -> Result<Written, CommitError> {
    match commit_in(settings, pool, batch, Mode::Fresh).await {
        // Some record is stored already (a replay, or a partition that just
        // changed hands): write again, skipping what is there.
        Err(CommitError::Duplicate) => commit_in(settings, pool, batch, Mode::SkipStored).await,
        other => other,
    }
}

async fn commit_in(
    settings: &ConsumerSettings,
    pool: &Pool,
    batch: &Batch,
    mode: Mode,
) -> Result<Written, CommitError> {
    let classify = |e: tokio_postgres::Error| match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION && mode == Mode::Fresh => CommitError::Duplicate,
        Some(code) if code.code().starts_with("22") || code.code().starts_with("23") => {
            CommitError::Data(error_text(&e))
        }
        _ => CommitError::Unavailable(error_text(&e)),
    };
    let mut db = pool
        .get()
        .await
        .map_err(|e| CommitError::Unavailable(e.to_string()))?;
    let tx = db.transaction().await.map_err(classify)?;
    let written = store::write(&tx, &settings.group, &settings.topic, batch, mode)
        .await
        .map_err(classify)?;
    tx.commit().await.map_err(classify)?;
    Ok(written)
}
