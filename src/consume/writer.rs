//! The writer: drains the readers' queue (records they validated) into
//! batches and commits each in one transaction (see [`crate::store::batch`]).
//! Database trouble is retried with backoff; a batch the database rejects
//! for its data is split so the culprit becomes a dead letter; records read
//! from a log older than the stored one are dropped and their reader is
//! started again; a move to a new log is recorded in queue order, after
//! every record read before it.
//!
//! While one batch commits, the next is already sent, on another
//! connection: its statements wait in the database behind the commit-order
//! lock the first one holds, and run the moment it commits, so PostgreSQL
//! never waits on this process between two batches. The second commits
//! only once the writer knows the first did; if the first did not, the
//! second is rolled back and sent again after it (what it bought:
//! `docs/history.md`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::fetch::Work;
use super::mirror::Stored;
use super::{ConsumeError, ConsumerSettings};
use crate::metrics::names;
use crate::retry::{Backoff, Streak};
use crate::store::{self, Batch, CommitError, DeadLetter, Fence, Mode, NewLog, Position, Written};

/// Where batches go: the pool, and the lease that fences them (see
/// [`crate::store::Fence`]); `None` until the leases hold a session.
#[derive(Clone)]
pub struct Sink {
    pub pool: Pool,
    pub fence: watch::Receiver<Option<Fence>>,
}

/// What the writer's loop works with, besides the queue.
struct Writer {
    settings: ConsumerSettings,
    sink: Sink,
    restart: mpsc::Sender<i32>,
    stored: watch::Sender<Stored>,
    shutdown: CancellationToken,
}

/// Drains the queue into batches and commits them until the queue closes or
/// `shutdown` fires between two batches; whatever was sent is committed or
/// rolled back before this returns. Each position it stores is published
/// on `stored` (for the offset mirror, which it never waits for).
pub(super) async fn run(
    settings: ConsumerSettings,
    sink: Sink,
    mut queue: mpsc::Receiver<Work>,
    restart: mpsc::Sender<i32>,
    stored: watch::Sender<Stored>,
    shutdown: CancellationToken,
) {
    let writer = Writer {
        settings,
        sink,
        restart,
        stored,
        shutdown,
    };
    // Meanwhile the readers start: the connections the first batches go
    // on are made ready then, not by those batches.
    let mut warming = Some(AbortOnDropHandle::new(tokio::spawn(ready(
        writer.sink.pool.clone(),
    ))));
    let mut carried: Option<Work> = None;
    // The batch sent last, not yet known to be committed.
    let mut ahead: Option<InFlight> = None;
    loop {
        if writer.shutdown.is_cancelled() {
            if let Some(flight) = ahead.take() {
                writer.settle(flight).await;
            }
            return;
        }
        let work = match (carried.take(), ahead.take()) {
            (Some(work), flight) => {
                ahead = flight;
                work
            }
            // Something is in flight: more work only if it is there now,
            // else that batch is seen through first.
            (None, Some(flight)) => match queue.try_recv() {
                Ok(work) => {
                    ahead = Some(flight);
                    work
                }
                Err(_) => {
                    if !writer.settle(flight).await {
                        return;
                    }
                    continue;
                }
            },
            (None, None) => tokio::select! {
                biased;
                _ = writer.shutdown.cancelled() => return,
                next = queue.recv() => match next {
                    Some(work) => work,
                    None => return,
                },
            },
        };
        let mut batch = match work {
            Work::NewLog(new_log) => {
                // Recorded after every record read before it.
                if let Some(flight) = ahead.take()
                    && !writer.settle(flight).await
                {
                    return;
                }
                if !start_new_log_with_retry(
                    &writer.settings,
                    &writer.sink.pool,
                    &new_log,
                    &writer.stored,
                    &writer.shutdown,
                )
                .await
                {
                    return;
                }
                continue;
            }
            Work::Records { chunk, .. } => chunk,
        };
        // More chunks, up to a batch; a new log or another log epoch of a
        // partition already in the batch waits for the next one.
        while batch.len() < writer.settings.batch_size {
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
        let batch = Arc::new(batch);
        if let Some(warming) = warming.take() {
            tokio::select! {
                _ = warming => {}
                _ = writer.shutdown.cancelled() => {}
            }
        }
        let Some(mut before) = ahead.take() else {
            ahead = Some(writer.send(batch, None, None));
            continue;
        };
        // Sent now, committed once `before` is.
        let (gate, opens) = oneshot::channel();
        let flight = writer.send(batch, Some(&mut before), Some(opens));
        match writer.land(before).await {
            Ok(at) => {
                let _ = gate.send(at);
                ahead = Some(InFlight {
                    since: at.max(flight.since),
                    ..flight
                });
            }
            Err(failed) => {
                // Rolled back first: it may hold the commit-order lock the
                // retry of `before` needs.
                drop(gate);
                let batch = flight.recall().await;
                tracing::info!(
                    records = batch.len(),
                    "a batch did not commit as sent; the batch sent after it was rolled back and goes again after it"
                );
                if !writer.recover(failed).await {
                    return;
                }
                ahead = Some(writer.send(batch, None, None));
            }
        }
    }
}

/// Makes the connections of a batch committing and of the one sent ahead
/// ready to write (see [`store::batch::ready`]); trouble is only logged,
/// as the batches meet it again and retry.
async fn ready(pool: Pool) {
    let one = async || {
        let mut conn = store::checkout(&pool).await?;
        conn.within("readying a connection", async |db| {
            Ok(store::batch::ready(db).await?)
        })
        .await?;
        // Both held until both are ready: two connections, not one twice.
        Ok::<_, store::StoreError>(conn)
    };
    if let Err(error) = futures::try_join!(one(), one()) {
        tracing::debug!(%error, "could not ready the writer's connections ahead");
    }
}

/// A batch sent to the database, its commit possibly waiting on the one
/// before it.
struct InFlight {
    batch: Arc<Batch>,
    task: AbortOnDropHandle<Result<Option<Written>, CommitError>>,
    /// Resolves once its transaction holds the commit-order lock (or has
    /// ended): the batch after it takes the lock only then.
    locked: Option<oneshot::Receiver<()>>,
    /// Since when the batch is the database's to write: its sending, or the
    /// commit of the one before it if later (what `catlog_batch_commit_seconds`
    /// measures).
    since: Instant,
}

impl InFlight {
    /// Takes the batch back, its task stopped: whatever it wrote is rolled
    /// back (it commits only through its gate, closed by now).
    async fn recall(self) -> Arc<Batch> {
        self.task.abort();
        let _ = self.task.await;
        self.batch
    }
}

/// Where a batch stands in the line of batches sent ahead.
#[derive(Default)]
struct Turn {
    /// Resolves once the batch before it holds the commit-order lock (or
    /// has ended): only then does this one ask for it, so that the two take
    /// it in the order they were sent.
    after: Option<oneshot::Receiver<()>>,
    /// Told once this batch holds the lock.
    locked: Option<oneshot::Sender<()>>,
    /// Opened (commit) or closed (roll back) once the batch before it landed.
    gate: Option<oneshot::Receiver<Instant>>,
}

/// A batch that did not commit as sent, and how its attempt ended (`None`:
/// to be written again from the start).
struct Failed {
    batch: Arc<Batch>,
    first: Option<CommitError>,
}

impl Writer {
    /// Sends `batch` in a transaction of its own, after `before` (if any):
    /// it then commits only once `gate` opens.
    fn send(
        &self,
        batch: Arc<Batch>,
        before: Option<&mut InFlight>,
        gate: Option<oneshot::Receiver<Instant>>,
    ) -> InFlight {
        let since = Instant::now();
        let (locked, locked_rx) = oneshot::channel();
        let turn = Turn {
            after: before.and_then(|b| b.locked.take()),
            locked: Some(locked),
            gate,
        };
        let (settings, sink, sent) = (self.settings.clone(), self.sink.clone(), batch.clone());
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            commit_in(&settings, &sink, &sent, Mode::Fresh, turn).await
        }));
        InFlight {
            batch,
            task,
            locked: Some(locked_rx),
            since,
        }
    }

    /// Waits for a batch in flight (whose gate is open) to land: when it
    /// committed, or what failed.
    async fn land(&self, flight: InFlight) -> Result<Instant, Failed> {
        let first = match flight.task.await {
            Ok(Ok(Some(written))) => {
                let at = Instant::now();
                landed(&written, flight.batch.len(), at - flight.since, &self.stored);
                return Ok(at);
            }
            // A replay (written again from the start, skipping what is
            // stored); a closed gate cannot reach here, but would mean the same.
            Ok(Ok(None) | Err(CommitError::Duplicate)) => None,
            Ok(Err(error)) => Some(error),
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => None,
        };
        Err(Failed {
            batch: flight.batch,
            first,
        })
    }

    /// Sees a failed batch through [`commit_with_retry`]; `false` when
    /// shutdown came first.
    async fn recover(&self, failed: Failed) -> bool {
        let committed = commit_with_retry(
            &self.settings,
            &self.sink,
            &failed.batch,
            &self.stored,
            &self.shutdown,
            failed.first,
        )
        .await;
        match committed {
            Committed::Yes => true,
            Committed::ShutDown => false,
            Committed::Stale(partitions) => {
                for p in partitions {
                    let _ = self.restart.try_send(p);
                }
                true
            }
        }
    }

    /// Sees a batch in flight (nothing sent after it) committed; `false`
    /// when shutdown came first.
    async fn settle(&self, flight: InFlight) -> bool {
        match self.land(flight).await {
            Ok(_) => true,
            Err(failed) => self.recover(failed).await,
        }
    }
}

/// A committed batch, counted and published.
fn landed(written: &Written, records: usize, took: std::time::Duration, stored: &watch::Sender<Stored>) {
    metrics::histogram!(names::BATCH_COMMIT_SECONDS).record(took.as_secs_f64());
    metrics::counter!(names::EVENTS_CONSUMED_TOTAL).increment(written.events);
    metrics::counter!(names::DEAD_LETTERS_TOTAL).increment(written.dead_letters);
    tracing::debug!(
        records,
        events = written.events,
        dead_letters = written.dead_letters,
        "batch committed"
    );
    stored.send_if_modified(|s| s.record(written.positions.iter().map(|(p, o)| (*p, *o))));
}

/// How a batch ended.
enum Committed {
    Yes,
    /// Shutdown came before the batch could be committed (nothing of it is).
    ShutDown,
    /// Committed without these partitions, whose stored position is on a newer log.
    Stale(Vec<i32>),
}

/// Commits `batch`, retrying database trouble with backoff; `first` is the
/// outcome of an attempt already made, if any.
async fn commit_with_retry(
    settings: &ConsumerSettings,
    sink: &Sink,
    batch: &Batch,
    stored: &watch::Sender<Stored>,
    shutdown: &CancellationToken,
    mut first: Option<CommitError>,
) -> Committed {
    let mut backoff = Backoff::standard();
    let mut streak = Streak::new("cannot commit batch; retrying");
    let mut batch = Cow::Borrowed(batch);
    let mut stale = Vec::new();
    loop {
        let started = Instant::now();
        let attempt = match first.take() {
            Some(error) => Err(error),
            None => commit(settings, sink, &batch).await,
        };
        match attempt {
            Ok(written) => {
                streak.ended("batches commit again");
                landed(&written, batch.len(), started.elapsed(), stored);
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
                return Box::pin(commit_with_retry(settings, sink, &dead, stored, shutdown, None)).await;
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
        match Box::pin(commit_with_retry(settings, sink, &single, stored, shutdown, None)).await {
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
    let attempt = match commit_in(settings, sink, batch, Mode::Fresh, Turn::default()).await {
        // Some record is stored already (a replay, a partition that just
        // changed hands, a retried publish): write again, skipping what is there.
        Err(CommitError::Duplicate) => {
            commit_in(settings, sink, batch, Mode::SkipStored, Turn::default()).await
        }
        other => other,
    };
    // (Without a gate, a batch written is committed.)
    attempt.map(Option::unwrap_or_default)
}

/// Writes `batch` in one transaction when its `turn` comes, then commits
/// it, once its gate opens if it has one: `None` when the gate closes (the
/// transaction is rolled back). The writing and the commit are each
/// bounded by `DB_TIMEOUT`; the waits for the batch before are not (that
/// one is bounded itself, and the writer opens or closes the gate as soon
/// as it lands). A connection given up halfway (timed out, or the task
/// stopped by the writer) may still owe answers or hold the transaction
/// open on the server: it leaves the pool ([`store::Bounded::held`]).
async fn commit_in(
    settings: &ConsumerSettings,
    sink: &Sink,
    batch: &Batch,
    mode: Mode,
    turn: Turn,
) -> Result<Option<Written>, CommitError> {
    let Turn { after, locked, gate } = turn;
    if let Some(after) = after {
        let _ = after.await;
    }
    let mut conn = store::checkout(&sink.pool)
        .await
        .map_err(CommitError::Unavailable)?;
    let limit = conn.limit();
    let classify = |e| CommitError::classify(e, mode);
    let elapsed = |_| CommitError::TimedOut(limit);
    let db = conn.held();
    let work = async {
        // Records only come from readers of leased partitions: no lease now
        // means it was lost since they were read.
        let Some(fence) = *sink.fence.borrow() else {
            return Err(CommitError::Fenced(batch.positions.keys().copied().collect()));
        };
        let (tx, written) = tokio::time::timeout(limit, async {
            let tx = db.transaction().await.map_err(classify)?;
            let written = store::batch::write(
                &tx,
                &settings.group,
                &settings.topic,
                batch,
                mode,
                Some(fence),
                locked,
            )
            .await?;
            Ok::<_, CommitError>((tx, written))
        })
        .await
        .map_err(elapsed)??;
        if let Some(gate) = gate
            && gate.await.is_err()
        {
            return Ok(None);
        }
        tokio::time::timeout(limit, tx.commit())
            .await
            .map_err(elapsed)?
            .map_err(classify)?;
        Ok(Some(written))
    };
    let result = work.await;
    if !matches!(result, Err(CommitError::TimedOut(_))) {
        conn.answered();
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
    let mut conn = store::checkout(pool).await?;
    let moved = conn
        .within("recording a new log", async |db| {
            let tx = db.transaction().await?;
            let moved =
                store::positions::start_new_log(&tx, &settings.group, &settings.topic, new_log).await?;
            tx.commit().await?;
            Ok(moved)
        })
        .await?;
    Ok(moved)
}
