//! The writer: drains the readers' queue (records they validated) into
//! batches and commits each
//! in one transaction (see [`crate::store::batch`]). Database trouble is
//! retried with backoff; a batch the database rejects for its data is split
//! so the culprit becomes a dead letter; records read from a log older than
//! the stored one are dropped and their reader is started again; a move to
//! a new log is recorded in queue order, after every record read before it.

use std::borrow::Cow;
use std::time::Instant;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::fetch::Work;
use super::mirror::Stored;
use super::{ConsumeError, ConsumerSettings};
use crate::metrics::names;
use crate::retry::{Backoff, Streak};
use crate::store::{self, Batch, CommitError, DeadLetter, Fence, Mode, NewLog, Position, Written};

/// Where batches go: the pool, and the lease that fences them (see
/// [`crate::store::Fence`]); `None` until the leases hold a session.
pub struct Sink {
    pub pool: Pool,
    pub fence: watch::Receiver<Option<Fence>>,
}

/// Drains the queue into batches and commits them until the queue closes or
/// `shutdown` fires between two batches. Each position it stores is
/// published on `stored` (for the offset mirror, which it never waits for).
pub(super) async fn run(
    settings: ConsumerSettings,
    sink: Sink,
    mut queue: mpsc::Receiver<Work>,
    restart: mpsc::Sender<i32>,
    stored: watch::Sender<Stored>,
    shutdown: CancellationToken,
) {
    let mut carried: Option<Work> = None;
    loop {
        let first = match carried.take() {
            Some(work) => work,
            None => tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                next = queue.recv() => match next {
                    Some(work) => work,
                    None => return,
                },
            },
        };
        let mut batch = match first {
            Work::NewLog(new_log) => {
                if !start_new_log_with_retry(&settings, &sink.pool, &new_log, &stored, &shutdown).await {
                    return;
                }
                continue;
            }
            Work::Records { chunk, .. } => chunk,
        };
        // More chunks, up to a batch; a new log or another log epoch of a
        // partition already in the batch waits for the next one.
        while batch.len() < settings.batch_size {
            match queue.try_recv() {
                Ok(Work::Records {
                    partition,
                    log_epoch,
                    chunk,
                }) if batch
                    .positions
                    .get(&partition)
                    .is_none_or(|p| p.log_epoch == log_epoch) =>
                {
                    batch.append(chunk)
                }
                Ok(other) => {
                    carried = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        match commit_with_retry(&settings, &sink, &batch, &stored, &shutdown).await {
            Committed::Yes => {}
            Committed::ShutDown => return,
            Committed::Stale(partitions) => {
                for p in partitions {
                    let _ = restart.try_send(p);
                }
            }
        }
    }
}

/// How a batch ended.
enum Committed {
    Yes,
    /// Shutdown came before the batch could be committed (nothing of it is).
    ShutDown,
    /// Committed without these partitions, whose stored position is on a newer log.
    Stale(Vec<i32>),
}

/// Commits `batch`, retrying database trouble with backoff.
async fn commit_with_retry(
    settings: &ConsumerSettings,
    sink: &Sink,
    batch: &Batch,
    stored: &watch::Sender<Stored>,
    shutdown: &CancellationToken,
) -> Committed {
    let mut backoff = Backoff::standard();
    let mut streak = Streak::new("cannot commit batch; retrying");
    let mut batch = Cow::Borrowed(batch);
    let mut stale = Vec::new();
    loop {
        let started = Instant::now();
        match commit(settings, sink, &batch).await {
            Ok(written) => {
                streak.ended("batches commit again");
                metrics::histogram!(names::BATCH_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(names::EVENTS_CONSUMED_TOTAL).increment(written.events);
                metrics::counter!(names::DEAD_LETTERS_TOTAL).increment(written.dead_letters);
                tracing::debug!(
                    records = batch.len(),
                    events = written.events,
                    dead_letters = written.dead_letters,
                    "batch committed"
                );
                stored.send_if_modified(|s| s.record(written.positions));
                return if stale.is_empty() {
                    Committed::Yes
                } else {
                    Committed::Stale(stale)
                };
            }
            Err(CommitError::Stale(partitions)) => {
                tracing::warn!(
                    ?partitions,
                    "stored position is on a newer log than these records; dropping them"
                );
                batch = Cow::Owned(batch.without(&partitions));
                stale.extend(partitions);
                if batch.positions.is_empty() {
                    return Committed::Stale(stale);
                }
                continue;
            }
            Err(CommitError::Fenced(partitions)) => {
                tracing::warn!(
                    ?partitions,
                    records = batch.len(),
                    "this consumer lost its lease on these partitions (frozen or cut off for longer than \
                     CONSUMER_SESSION_TIMEOUT?); another consumer reads them now, so these records are dropped \
                     and change nothing"
                );
                metrics::counter!(names::CONSUMER_FENCED_BATCHES_TOTAL).increment(1);
                batch = Cow::Owned(batch.without(&partitions));
                stale.extend(partitions);
                if batch.positions.is_empty() {
                    return Committed::Stale(stale);
                }
                continue;
            }
            Err(error @ CommitError::Data(_)) if batch.len() > 1 => {
                let reason = error.reason();
                tracing::warn!(%reason, records = batch.len(), "database rejected the batch's data; committing record by record");
                return commit_one_by_one(settings, sink, &batch, stored, shutdown).await;
            }
            Err(error @ CommitError::Data(_)) if batch.is_empty() => {
                tracing::warn!(reason = %error.reason(), "cannot store offsets; retrying");
            }
            Err(error @ CommitError::Data(_)) => {
                let dead = rejected(&batch, &error.reason());
                return Box::pin(commit_with_retry(settings, sink, &dead, stored, shutdown)).await;
            }
            // (A duplicate is only reported in Fresh mode, which `commit` retries.)
            Err(CommitError::Duplicate) => tracing::warn!("batch met stored records twice; retrying"),
            Err(error @ (CommitError::Unavailable(_) | CommitError::TimedOut(_))) => {
                streak.failed(&error.to_string())
            }
        }
        if !backoff.wait(shutdown).await {
            return Committed::ShutDown;
        }
    }
}

async fn commit_one_by_one(
    settings: &ConsumerSettings,
    sink: &Sink,
    batch: &Batch,
    stored: &watch::Sender<Stored>,
    shutdown: &CancellationToken,
) -> Committed {
    let position = |partition: i32, log_epoch: i32, offset: i64| Position {
        next_offset: offset + 1,
        log_epoch,
        last: batch
            .positions
            .get(&partition)
            .filter(|p| p.next_offset == offset + 1)
            .and_then(|p| p.last),
    };
    let singles = batch
        .rows
        .iter()
        .map(|row| Batch {
            rows: vec![row.clone()],
            positions: [(row.partition, position(row.partition, row.log_epoch, row.offset))].into(),
            ..Batch::default()
        })
        .chain(batch.dead_letters.iter().map(|dead| {
            Batch {
                dead_letters: vec![dead.clone()],
                positions: [(
                    dead.partition,
                    position(dead.partition, dead.log_epoch, dead.offset),
                )]
                .into(),
                ..Batch::default()
            }
        }));
    let mut stale: Vec<i32> = Vec::new();
    for single in singles {
        if single.positions.keys().any(|p| stale.contains(p)) {
            continue;
        }
        match Box::pin(commit_with_retry(settings, sink, &single, stored, shutdown)).await {
            Committed::Yes => {}
            Committed::ShutDown => return Committed::ShutDown,
            Committed::Stale(partitions) => stale.extend(partitions),
        }
    }
    if stale.is_empty() {
        Committed::Yes
    } else {
        Committed::Stale(stale)
    }
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
            log_epoch: row.log_epoch,
            offset: row.offset,
            key: Some(row.event.key()),
            payload: Some(row.raw.clone()),
            reason: format!("rejected by the database: {reason}"),
        })
        .collect();
    Batch {
        dead_letters,
        positions: batch.positions.clone(),
        ..Batch::default()
    }
}

async fn commit(settings: &ConsumerSettings, sink: &Sink, batch: &Batch) -> Result<Written, CommitError> {
    match commit_in(settings, sink, batch, Mode::Fresh).await {
        // Some record is stored already (a replay, a partition that just
        // changed hands, a retried publish): write again, skipping what is there.
        Err(CommitError::Duplicate) => commit_in(settings, sink, batch, Mode::SkipStored).await,
        other => other,
    }
}

async fn commit_in(
    settings: &ConsumerSettings,
    sink: &Sink,
    batch: &Batch,
    mode: Mode,
) -> Result<Written, CommitError> {
    let pool = &sink.pool;
    let db = pool.get().await.map_err(|e| CommitError::Unavailable(e.into()))?;
    let limit = pool.timeouts().wait.unwrap_or(crate::db::DEFAULT_TIMEOUT);
    let classify = |e| CommitError::classify(e, mode);
    let mut db = db;
    // Records only come from readers of leased partitions: no lease now
    // means it was lost since they were read.
    let Some(fence) = *sink.fence.borrow() else {
        return Err(CommitError::Fenced(batch.positions.keys().copied().collect()));
    };
    let fence = Some(fence);
    let work = async {
        let tx = db.transaction().await.map_err(classify)?;
        let written = store::batch::write(&tx, &settings.group, &settings.topic, batch, mode, fence).await?;
        tx.commit().await.map_err(classify)?;
        Ok(written)
    };
    let result = match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(CommitError::TimedOut(limit)),
    };
    if matches!(result, Err(CommitError::TimedOut(_))) {
        // Its transaction may still be open on the server until
        // idle_in_transaction_session_timeout ends it: never reuse it.
        drop(deadpool_postgres::Object::take(db));
    }
    result
}

/// Records the move of a partition to a new log, retrying database trouble.
/// `false` when shutdown came first.
async fn start_new_log_with_retry(
    settings: &ConsumerSettings,
    pool: &Pool,
    new_log: &NewLog,
    stored: &watch::Sender<Stored>,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::standard();
    loop {
        match start_new_log(settings, pool, new_log).await {
            Ok(true) => {
                stored.send_if_modified(|s| s.record([(new_log.partition, new_log.restart_at)]));
                return true;
            }
            Ok(false) => {
                tracing::info!(
                    partition = new_log.partition,
                    "another consumer moved the partition's position first"
                );
                return true;
            }
            Err(error) => tracing::warn!(%error, "cannot record the new log; retrying"),
        }
        if !backoff.wait(shutdown).await {
            return false;
        }
    }
}

async fn start_new_log(
    settings: &ConsumerSettings,
    pool: &Pool,
    new_log: &NewLog,
) -> Result<bool, ConsumeError> {
    let mut db = pool.get().await?;
    let limit = pool.timeouts().wait.unwrap_or(crate::db::DEFAULT_TIMEOUT);
    let work = async {
        let tx = db.transaction().await?;
        let moved = store::positions::start_new_log(&tx, &settings.group, &settings.topic, new_log).await?;
        tx.commit().await?;
        Ok::<_, ConsumeError>(moved)
    };
    let result = crate::db::bounded(limit, "recording a new log", work).await;
    crate::db::discard_on_timeout(db, &result);
    result
}
