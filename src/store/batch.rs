//! One batch, one transaction: history rows, the newest-wins current state,
//! dead letters and the next offsets commit together or not at all.
//!
//! Writing a batch twice is harmless: history and dead letters are unique on
//! (topic, partition, log epoch, offset), and history also on the event id a
//! record carries; a batch that meets a stored record is written again in
//! [`Mode::SkipStored`], where only the rows actually inserted move the
//! current state and the event counts; offsets only move forward. So a
//! publish retried after a lost acknowledgement (a second record with the
//! same event id) counts once.
//!
//! A stored position is only trusted for the log it came from (see
//! [`super::positions`]): a batch read from an older log than the one
//! stored is refused for those partitions ([`CommitError::Stale`]).
//!
//! The transaction takes [`super::COMMIT_ORDER_LOCK`] first: history ids then
//! follow commit order, and no two writers of one partition's position
//! interleave.
//!
//! A fresh batch is written in one round trip: every statement, prepared
//! once per connection, is sent at once and the answers read in order
//! (tokio-postgres pipelines requests issued together), since the server
//! would otherwise wait on this client between statements while the commit
//! lock is held. The server runs them one after another: the history rows
//! into a table of the session's own first (decoded from the arrays and
//! cast, before the lock, while the batch before may still hold it), then
//! the lock, then the insert from there, the current state, the positions.
//! [`write()`] says when the lock is held, so that a writer can send its next
//! batch behind it (`consume::writer`).

mod columns;

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

use deadpool_postgres::{GenericClient, Transaction};
use tokio::sync::oneshot;
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::StoreError;
use super::positions::{self, Position};
use super::{COMMIT_ORDER_LOCK, NOTIFY_CHANNEL, lock_commit_order};
use crate::event::Event;
use columns::{DeadColumns, EventColumns, LiveColumns, PositionColumns};

/// A valid event and where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub partition: i32,
    pub log_epoch: i32,
    pub offset: i64,
    /// The record's unique event id, when it carries one.
    pub event_id: Option<Uuid>,
    pub event: Event,
    /// The record value as received, kept in case the database refuses the row.
    pub raw: Vec<u8>,
}

/// A record that is not a valid event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub log_epoch: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub reason: String,
}

/// What one transaction writes.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub rows: Vec<Row>,
    pub dead_letters: Vec<DeadLetter>,
    /// The position after the batch, per partition.
    pub positions: BTreeMap<i32, Position>,
}

impl Batch {
    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.rows.len() + self.dead_letters.len()
    }

    /// Adds `other`'s records after this batch's; a partition's position
    /// becomes `other`'s (read later).
    pub fn append(&mut self, other: Batch) {
        self.rows.extend(other.rows);
        self.dead_letters.extend(other.dead_letters);
        self.positions.extend(other.positions);
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch without what it holds of `partitions`.
    pub fn without(&self, partitions: &[i32]) -> Batch {
        let keep = |p: &i32| !partitions.contains(p);
        Batch {
            rows: self.rows.iter().filter(|r| keep(&r.partition)).cloned().collect(),
            dead_letters: self
                .dead_letters
                .iter()
                .filter(|d| keep(&d.partition))
                .cloned()
                .collect(),
            positions: self
                .positions
                .iter()
                .filter(|(p, _)| keep(p))
                .map(|(p, pos)| (*p, *pos))
                .collect(),
        }
    }
}

/// What a committed batch changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// History rows inserted (fewer than the batch's rows on a replay).
    pub events: u64,
    /// Dead letters inserted.
    pub dead_letters: u64,
    /// The next offset now stored, per partition whose position the batch
    /// moved (not those where a further position was stored already).
    pub positions: BTreeMap<i32, i64>,
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Some record of the batch is stored already (only in [`Mode::Fresh`]).
    #[error("some record of the batch is stored already")]
    Duplicate,
    /// The stored position of these partitions is on a newer log than the
    /// batch was read from: the batch must not be written for them.
    #[error("partitions {0:?} are stored from a newer log")]
    Stale(Vec<i32>),
    /// The database refused the data itself (SQLSTATE class 22 or 23);
    /// [`CommitError::reason`] is what a dead letter keeps of it.
    #[error("the database refused the data: {}", crate::db::error_text(.0))]
    Data(#[source] tokio_postgres::Error),
    /// Anything else: connection, pool, server restarting.
    #[error(transparent)]
    Unavailable(#[from] StoreError),
    /// The lease of these partitions is no longer this process's (see
    /// [`Fence`]): another consumer reads them now.
    #[error("partitions {0:?} are leased to another consumer now")]
    Fenced(Vec<i32>),
    /// PostgreSQL did not answer within this long.
    #[error("PostgreSQL did not answer within {}s (DB_TIMEOUT); the connection is dropped", .0.as_secs_f64())]
    TimedOut(std::time::Duration),
}

/// The lease a batch is written under: the advisory locks of `key` that the
/// lease session (backend `pid`) holds, one per partition (see
/// `consume::leases`). A batch whose partitions that session no longer
/// holds — it was frozen or cut off long enough for PostgreSQL to end it,
/// and another consumer took them over — is refused for those partitions,
/// in the same transaction that would have written it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The partitions' advisory-lock key space.
    pub key: i32,
    /// The backend of the session holding the locks.
    pub pid: i32,
}

/// Of `partitions`, those whose lock under `key` the backend `pid` holds.
const HELD_PARTITIONS: &str = "SELECT objid::int8 FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
       AND classid = $1::int8::oid AND pid = $2 AND objid::int8 = ANY($3) \
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

impl CommitError {
    /// Sorts a driver error: a refusal of the data, a duplicate, or trouble.
    pub fn classify(error: tokio_postgres::Error, mode: Mode) -> Self {
        match error.code() {
            Some(code) if *code == SqlState::UNIQUE_VIOLATION && mode == Mode::Fresh => Self::Duplicate,
            Some(code) if code.code().starts_with("22") || code.code().starts_with("23") => Self::Data(error),
            _ => Self::Unavailable(error.into()),
        }
    }

    /// The server's own words for a refusal of the data, as a dead letter
    /// keeps them; for anything else, the whole message.
    pub fn reason(&self) -> String {
        match self {
            Self::Data(error) => crate::db::error_text(error),
            other => other.to_string(),
        }
    }
}

/// The insert of a batch's history rows, from arrays.
const INSERT_EVENTS: &str = r#"
INSERT INTO popularity_events (topic, partition, log_epoch, "offset", event_id, mal_id, title, event_type,
                               current_score, live_members, trending_rank, popularity_change, event_time)
SELECT $1, partition, log_epoch, "offset", event_id, mal_id, title, event_type,
       current_score::numeric, live_members, trending_rank, popularity_change::numeric, event_time
FROM unnest($2::int4[], $3::int4[], $4::int8[], $5::uuid[], $6::int4[], $7::text[], $8::text[],
            $9::text[], $10::int8[], $11::int4[], $12::text[], $13::timestamptz[])
    AS t(partition, log_epoch, "offset", event_id, mal_id, title, event_type,
         current_score, live_members, trending_rank, popularity_change, event_time)
"#;

/// A table of this session's own, where a fresh batch's history rows wait
/// (decoded from the arrays, cast, in rows) while the batch before holds the
/// commit-order lock: what is left once it is taken is the insert itself.
/// Created once per session, without a notice; emptied at every commit.
const STAGE_TABLE: &str = r#"
DO $$ BEGIN
    IF to_regclass('pg_temp.history_batch') IS NULL THEN
        CREATE TEMP TABLE history_batch (LIKE popularity_events) ON COMMIT DELETE ROWS;
        ALTER TABLE history_batch DROP COLUMN id, DROP COLUMN ingested_at;
    END IF;
END $$"#;

/// A fresh batch's rows into [`STAGE_TABLE`], before the lock.
static STAGE_EVENTS: LazyLock<String> = LazyLock::new(|| {
    INSERT_EVENTS.replacen(
        "INSERT INTO popularity_events",
        "INSERT INTO pg_temp.history_batch",
        1,
    )
});

/// From there into the history, under the lock.
const INSERT_STAGED: &str = r#"
INSERT INTO popularity_events (topic, partition, log_epoch, "offset", event_id, mal_id, title, event_type,
                               current_score, live_members, trending_rank, popularity_change, event_time)
SELECT topic, partition, log_epoch, "offset", event_id, mal_id, title, event_type,
       current_score, live_members, trending_rank, popularity_change, event_time
FROM pg_temp.history_batch
"#;

/// The same, skipping records already stored (by position or by event id);
/// says which were inserted.
static INSERT_EVENTS_SKIPPING_STORED: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"{INSERT_EVENTS} ON CONFLICT DO NOTHING
RETURNING partition, log_epoch, "offset""#
    )
});

/// The current state: each measure only moves to a value at least as new as
/// the one it shows; every event counts.
const UPSERT_LIVE: &str = r#"
INSERT INTO live_popularity AS lp (mal_id, title, current_score, score_updated_at,
                                   live_members, members_updated_at, trending_rank, rank_updated_at,
                                   popularity_change, last_event_type, last_update, event_count)
SELECT mal_id, title, current_score::numeric, score_updated_at, live_members, members_updated_at,
       trending_rank, rank_updated_at, popularity_change::numeric, last_event_type, last_update, event_count
FROM unnest($1::int4[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[], $6::timestamptz[],
            $7::int4[], $8::timestamptz[], $9::text[], $10::text[], $11::timestamptz[], $12::int8[])
    AS t(mal_id, title, current_score, score_updated_at, live_members, members_updated_at,
         trending_rank, rank_updated_at, popularity_change, last_event_type, last_update, event_count)
ON CONFLICT (mal_id) DO UPDATE SET
    current_score = CASE WHEN EXCLUDED.score_updated_at >= lp.score_updated_at
                           OR lp.score_updated_at IS NULL
                         THEN coalesce(EXCLUDED.current_score, lp.current_score)
                         ELSE lp.current_score END,
    score_updated_at = greatest(lp.score_updated_at, EXCLUDED.score_updated_at),
    live_members = CASE WHEN EXCLUDED.members_updated_at >= lp.members_updated_at
                          OR lp.members_updated_at IS NULL
                        THEN coalesce(EXCLUDED.live_members, lp.live_members)
                        ELSE lp.live_members END,
    members_updated_at = greatest(lp.members_updated_at, EXCLUDED.members_updated_at),
    trending_rank = CASE WHEN EXCLUDED.rank_updated_at >= lp.rank_updated_at
                           OR lp.rank_updated_at IS NULL
                         THEN coalesce(EXCLUDED.trending_rank, lp.trending_rank)
                         ELSE lp.trending_rank END,
    rank_updated_at = greatest(lp.rank_updated_at, EXCLUDED.rank_updated_at),
    title = CASE WHEN EXCLUDED.last_update >= lp.last_update THEN EXCLUDED.title ELSE lp.title END,
    popularity_change = CASE WHEN EXCLUDED.last_update >= lp.last_update
                             THEN EXCLUDED.popularity_change ELSE lp.popularity_change END,
    last_event_type = CASE WHEN EXCLUDED.last_update >= lp.last_update
                           THEN EXCLUDED.last_event_type ELSE lp.last_event_type END,
    last_update = greatest(lp.last_update, EXCLUDED.last_update),
    event_count = lp.event_count + EXCLUDED.event_count,
    updated_at = now()
"#;

const INSERT_DEAD_LETTERS: &str = r#"
INSERT INTO dead_letters (topic, partition, log_epoch, "offset", record_key, payload, reason)
SELECT $1, partition, log_epoch, "offset", record_key, payload, reason
FROM unnest($2::int4[], $3::int4[], $4::int8[], $5::bytea[], $6::bytea[], $7::text[])
    AS t(partition, log_epoch, "offset", record_key, payload, reason)
ON CONFLICT DO NOTHING
"#;

/// Moves positions forward only; the record mark follows the offset.
const SAVE_POSITIONS: &str = r#"
INSERT INTO consumer_offsets AS co (group_id, topic, partition, next_offset, log_epoch,
                                    last_record_time, last_event_id)
SELECT $1, $2, partition, next_offset, log_epoch, last_record_time, last_event_id
FROM unnest($3::int4[], $4::int8[], $5::int4[], $6::timestamptz[], $7::uuid[])
    AS t(partition, next_offset, log_epoch, last_record_time, last_event_id)
ON CONFLICT (group_id, topic, partition) DO UPDATE
    SET next_offset = EXCLUDED.next_offset,
        last_record_time = EXCLUDED.last_record_time,
        last_event_id = EXCLUDED.last_event_id,
        updated_at = now()
    WHERE co.log_epoch = EXCLUDED.log_epoch AND co.next_offset <= EXCLUDED.next_offset
RETURNING partition, next_offset
"#;

/// How a batch treats records that may already be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain inserts: the usual case, a unique violation aborts the transaction.
    Fresh,
    /// Skips records already stored (a replay, a partition changing hands,
    /// a retried publish): only the rows actually inserted move the current state.
    SkipStored,
}

/// Writes `batch` for `group` reading `topic` inside `tx` (not committed
/// here). `locked` is told as soon as the transaction holds the
/// commit-order lock (a writer sends its next batch only then, so that
/// batches take the lock in the order they were sent).
pub async fn write(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    batch: &Batch,
    mode: Mode,
    fence: Option<Fence>,
    locked: Option<oneshot::Sender<()>>,
) -> Result<Written, CommitError> {
    match mode {
        Mode::Fresh => write_pipelined(tx, group, topic, batch, fence, locked).await,
        Mode::SkipStored => write_in_turn(tx, group, topic, batch, mode, fence, locked).await,
    }
}

/// Tells `locked`, if anyone listens, that the commit-order lock is held.
fn tell(locked: Option<oneshot::Sender<()>>) {
    if let Some(locked) = locked {
        let _ = locked.send(());
    }
}

/// `NOTIFY` of [`NOTIFY_CHANNEL`].
const NOTIFY: &str = "SELECT pg_notify($1, '')";

/// The commit-order lock as plain text, the first statement of a pipelined
/// batch: nothing to prepare, and a writer waiting for it reads as such
/// wherever its statements are seen (`pg_stat_activity`, the wire).
static TAKE_COMMIT_ORDER: LazyLock<String> =
    LazyLock::new(|| format!("SELECT pg_advisory_xact_lock({COMMIT_ORDER_LOCK})"));

/// The statements of a fresh batch, prepared once per connection.
struct Statements {
    held: Statement,
    stored: Statement,
    stage: Statement,
    insert: Statement,
    upsert: Statement,
    dead: Statement,
    save: Statement,
    notify: Statement,
}

/// [`Statements`] on `tx`'s connection: the staging table made if this
/// session has none yet (every batch: a transaction that made it and
/// rolled back took it away), and whatever is not prepared yet prepared,
/// all at once.
async fn statements(tx: &Transaction<'_>) -> Result<Statements, tokio_postgres::Error> {
    tx.batch_execute(STAGE_TABLE).await?;
    let (held, stored, stage, insert, upsert, dead, save, notify) = futures::try_join!(
        tx.prepare_cached(HELD_PARTITIONS),
        tx.prepare_cached(positions::LOAD_POSITIONS),
        tx.prepare_cached(&STAGE_EVENTS),
        tx.prepare_cached(INSERT_STAGED),
        tx.prepare_cached(UPSERT_LIVE),
        tx.prepare_cached(INSERT_DEAD_LETTERS),
        tx.prepare_cached(SAVE_POSITIONS),
        tx.prepare_cached(NOTIFY),
    )?;
    Ok(Statements {
        held,
        stored,
        stage,
        insert,
        upsert,
        dead,
        save,
        notify,
    })
}

/// Makes `db` ready to write fresh batches: its staging table made and
/// their statements prepared, so that a consumer's first batches after a
/// start do not wait for that (a new connection's first batch otherwise
/// spends some 25 ms on it, before it asks for the commit-order lock).
pub async fn ready(db: &mut deadpool_postgres::Object) -> Result<(), tokio_postgres::Error> {
    let tx = db.transaction().await?;
    statements(&tx).await?;
    tx.commit().await
}

/// A fresh batch, every statement sent at once (see the module's comment).
/// Each answer is looked at in the order the statements ran: after a
/// refusal the rest fail as "transaction aborted", so the first error says
/// why; a fence lost or a stale log returns before anything is committed
/// (the caller rolls the transaction back).
async fn write_pipelined(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    batch: &Batch,
    fence: Option<Fence>,
    locked: Option<oneshot::Sender<()>>,
) -> Result<Written, CommitError> {
    let classify = |e| CommitError::classify(e, Mode::Fresh);
    let statement = statements(tx).await.map_err(classify)?;
    let rows: Vec<&Row> = batch.rows.iter().collect();
    let anything = !rows.is_empty() || !batch.dead_letters.is_empty();
    let (staged, locked, held_rows, stored_rows, inserted, upserted, dead_letters, moved, notified) = futures::join!(
        async {
            if rows.is_empty() {
                return Ok(0);
            }
            tx.execute(&statement.stage, &EventColumns::of(&batch.rows).params(&topic))
                .await
        },
        async {
            let taken = tx.simple_query(&TAKE_COMMIT_ORDER).await?;
            tell(locked);
            Ok::<_, tokio_postgres::Error>(taken)
        },
        async {
            match fence {
                Some(fence) => {
                    let wanted = wanted(batch);
                    tx.query(&statement.held, &[&i64::from(fence.key), &fence.pid, &wanted])
                        .await
                        .map(Some)
                }
                None => Ok(None),
            }
        },
        async { tx.query(&statement.stored, &[&group, &topic]).await },
        async {
            if rows.is_empty() {
                return Ok(0);
            }
            tx.execute(&statement.insert, &[]).await
        },
        async {
            if rows.is_empty() {
                return Ok(0);
            }
            tx.execute(&statement.upsert, &LiveColumns::of(&rows).params())
                .await
        },
        async {
            if batch.dead_letters.is_empty() {
                return Ok(0);
            }
            tx.execute(
                &statement.dead,
                &DeadColumns::of(&batch.dead_letters).params(&topic),
            )
            .await
        },
        async {
            if batch.positions.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(
                &statement.save,
                &PositionColumns::of(&batch.positions).params(&group, &topic),
            )
            .await
        },
        async {
            if !anything {
                return Ok(0);
            }
            tx.execute(&statement.notify, &[&NOTIFY_CHANNEL]).await
        },
    );
    staged.map_err(classify)?;
    locked.map_err(classify)?;
    if let Some(held) = held_rows.map_err(classify)? {
        let lost = not_held(&held, batch);
        if !lost.is_empty() {
            return Err(CommitError::Fenced(lost));
        }
    }
    let stale = on_other_logs(&positions::from_rows(&stored_rows.map_err(classify)?), batch);
    if !stale.is_empty() {
        return Err(CommitError::Stale(stale));
    }
    inserted.map_err(classify)?;
    upserted.map_err(classify)?;
    let dead_letters = dead_letters.map_err(classify)?;
    let moved = moved.map_err(classify)?;
    notified.map_err(classify)?;
    Ok(Written {
        events: rows.len() as u64,
        dead_letters,
        positions: moved.iter().map(|r| (r.get(0), r.get(1))).collect(),
    })
}

/// A batch in turn, one statement after another: needed where one
/// statement's answer decides the next (which rows were new).
async fn write_in_turn(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    batch: &Batch,
    mode: Mode,
    fence: Option<Fence>,
    locked: Option<oneshot::Sender<()>>,
) -> Result<Written, CommitError> {
    let classify = |e| CommitError::classify(e, mode);
    lock_commit_order(tx).await.map_err(classify)?;
    tell(locked);
    if let Some(fence) = fence {
        let lost = lost_partitions(tx, fence, batch).await.map_err(classify)?;
        if !lost.is_empty() {
            return Err(CommitError::Fenced(lost));
        }
    }
    let stale = stale_partitions(tx, group, topic, batch)
        .await
        .map_err(classify)?;
    if !stale.is_empty() {
        return Err(CommitError::Stale(stale));
    }
    let mut written = Written::default();
    if !batch.rows.is_empty() {
        let inserted = insert_events(tx, topic, &batch.rows, mode)
            .await
            .map_err(classify)?;
        written.events = inserted.len() as u64;
        if !inserted.is_empty() {
            upsert_live(tx, &inserted).await.map_err(classify)?;
        }
    }
    if !batch.dead_letters.is_empty() {
        written.dead_letters = insert_dead_letters(tx, topic, &batch.dead_letters)
            .await
            .map_err(classify)?;
    }
    if !batch.positions.is_empty() {
        written.positions = save_positions(tx, group, topic, &batch.positions)
            .await
            .map_err(classify)?;
    }
    if written.events > 0 || written.dead_letters > 0 {
        tx.execute(NOTIFY, &[&NOTIFY_CHANNEL]).await.map_err(classify)?;
    }
    Ok(written)
}

/// Inserts `dead` (those stored already are skipped); how many were new.
async fn insert_dead_letters(
    tx: &Transaction<'_>,
    topic: &str,
    dead: &[DeadLetter],
) -> Result<u64, tokio_postgres::Error> {
    let statement = tx.prepare_cached(INSERT_DEAD_LETTERS).await?;
    tx.execute(&statement, &DeadColumns::of(dead).params(&topic))
        .await
}

/// Moves `group`'s positions forward to `positions`; the next offset now
/// stored for each partition it moved.
async fn save_positions(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    positions: &BTreeMap<i32, Position>,
) -> Result<BTreeMap<i32, i64>, tokio_postgres::Error> {
    let statement = tx.prepare_cached(SAVE_POSITIONS).await?;
    Ok(tx
        .query(&statement, &PositionColumns::of(positions).params(&group, &topic))
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Partitions of `batch` whose lease `fence` no longer holds.
async fn lost_partitions(
    tx: &Transaction<'_>,
    fence: Fence,
    batch: &Batch,
) -> Result<Vec<i32>, tokio_postgres::Error> {
    let wanted = wanted(batch);
    let held = tx
        .query(HELD_PARTITIONS, &[&i64::from(fence.key), &fence.pid, &wanted])
        .await?;
    Ok(not_held(&held, batch))
}

/// The partitions of `batch`, as [`HELD_PARTITIONS`] takes them.
fn wanted(batch: &Batch) -> Vec<i64> {
    batch.positions.keys().map(|p| i64::from(*p)).collect()
}

/// Of `batch`'s partitions, those not among `held` (rows of [`HELD_PARTITIONS`]).
fn not_held(held: &[tokio_postgres::Row], batch: &Batch) -> Vec<i32> {
    let held: HashSet<i64> = held.iter().map(|r| r.get(0)).collect();
    batch
        .positions
        .keys()
        .copied()
        .filter(|p| !held.contains(&i64::from(*p)))
        .collect()
}

/// Partitions of `batch` whose stored position is on another log.
async fn stale_partitions(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    batch: &Batch,
) -> Result<Vec<i32>, tokio_postgres::Error> {
    let stored = positions::positions(&**tx, group, topic).await?;
    Ok(on_other_logs(&stored, batch))
}

/// Of `batch`'s partitions, those `stored` holds on another log.
fn on_other_logs(stored: &BTreeMap<i32, Position>, batch: &Batch) -> Vec<i32> {
    batch
        .positions
        .iter()
        .filter(|(p, pos)| stored.get(p).is_some_and(|s| s.log_epoch != pos.log_epoch))
        .map(|(p, _)| *p)
        .collect()
}

/// Inserts the history rows; returns those actually inserted.
async fn insert_events<'a>(
    tx: &Transaction<'_>,
    topic: &str,
    rows: &'a [Row],
    mode: Mode,
) -> Result<Vec<&'a Row>, tokio_postgres::Error> {
    let columns = EventColumns::of(rows);
    let params = columns.params(&topic);
    match mode {
        Mode::Fresh => {
            let statement = tx.prepare_cached(INSERT_EVENTS).await?;
            tx.execute(&statement, &params).await?;
            Ok(rows.iter().collect())
        }
        Mode::SkipStored => {
            let statement = tx.prepare_cached(&INSERT_EVENTS_SKIPPING_STORED).await?;
            let mut inserted: HashSet<(i32, i32, i64)> = tx
                .query(&statement, &params)
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            // A record can be in one batch twice (a partition read again
            // while its first reading still waited in the queue): each
            // inserted row counts once, for its first copy.
            Ok(rows
                .iter()
                .filter(|r| inserted.remove(&(r.partition, r.log_epoch, r.offset)))
                .collect())
        }
    }
}

async fn upsert_live(tx: &Transaction<'_>, rows: &[&Row]) -> Result<(), tokio_postgres::Error> {
    let statement = tx.prepare_cached(UPSERT_LIVE).await?;
    tx.execute(&statement, &LiveColumns::of(rows).params()).await?;
    Ok(())
}
