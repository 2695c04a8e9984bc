//! Optional history retention: keep only the last N days of
//! `popularity_events`, by the events' own time. The history is partitioned
//! by week (see [`super::partitions`]), so what retention costs is what it
//! removes, and the space comes back:
//!
//! * a week's partition whose whole week is older than N days is dropped, a
//!   moment's lock (never waited for long: a busy table is tried again at
//!   the next sweep), so up to a week more than N days is kept;
//! * the partition of the rows stored before partitioning, and the default
//!   one (events dated outside the weekly partitions), are deleted from in
//!   small batches with a pause between them, so ingestion never waits.
//!   Each batch of the first looks only at its oldest rows by id, so a
//!   sweep stops where the old rows end instead of reading what remains;
//!   once its whole range is older than N days it is dropped like a week.
//!
//! The current state and dead letters are kept.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use super::Result;
use super::partitions::{self, BEFORE, DEFAULT};

/// Rows deleted per statement.
pub const BATCH: i64 = 5_000;
/// Pause between two batches of one sweep.
const PAUSE: Duration = Duration::from_millis(100);
/// How long dropping a week waits for the history's lock before giving up
/// until the next sweep (writers queue behind a waiting drop).
const DROP_LOCK_WAIT: &str = "500ms";

/// One batch of the partition of rows from before partitioning: of its
/// `$2` oldest rows by id, those dated more than `$1` days ago. Ids follow
/// the order rows were stored in, which is their time order up to a
/// producer's clock, so the oldest rows come first and a batch that finds
/// none is the last one. (No row lock is asked for: history rows are only
/// ever inserted, and two sweeps at once delete each row once.)
const DELETE_BEFORE: &str = "DELETE FROM popularity_events_before WHERE id IN ( \
     SELECT id FROM (SELECT id, event_time FROM popularity_events_before ORDER BY id LIMIT $2) AS oldest \
     WHERE event_time < now() - make_interval(days => $1))";
/// Whether the oldest row of that partition is old enough to delete: one
/// index probe, so a sweep with nothing to do reads no more.
const BEFORE_HAS_OLD: &str = "SELECT coalesce((SELECT event_time < now() - make_interval(days => $1) \
     FROM popularity_events_before ORDER BY id LIMIT 1), false)";

/// One batch of the default partition, which holds only the odd event dated
/// outside the weekly partitions.
const DELETE_DEFAULT: &str = "DELETE FROM popularity_events_default WHERE id IN ( \
     SELECT id FROM popularity_events_default \
     WHERE event_time < now() - make_interval(days => $1) \
     ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Deletes one batch (at most `limit` rows of each of the partitions
/// retention deletes from row by row) of history dated more than `days` ago;
/// returns the rows deleted.
pub async fn delete_batch(pool: &Pool, days: i32, limit: i64) -> Result<u64> {
    let db = super::checkout(pool).await?;
    let mut deleted = 0;
    if partitions::exists(&db, BEFORE).await?
        && db.query_one(BEFORE_HAS_OLD, &[&days]).await?.get::<_, bool>(0)
    {
        deleted += db.execute(DELETE_BEFORE, &[&days, &limit]).await?;
    }
    if partitions::exists(&db, DEFAULT).await? {
        deleted += db.execute(DELETE_DEFAULT, &[&days, &limit]).await?;
    }
    Ok(deleted)
}

/// One sweep: drops every week older than `days`, then deletes in batches
/// until nothing older is left, or shutdown. Returns the rows removed.
pub async fn sweep(pool: &Pool, days: i32, shutdown: &CancellationToken) -> Result<u64> {
    let mut total = drop_old_weeks(pool, days).await?;
    loop {
        let deleted = delete_batch(pool, days, BATCH).await?;
        total += deleted;
        if deleted == 0 {
            return Ok(total);
        }
        tokio::select! {
            _ = tokio::time::sleep(PAUSE) => {}
            _ = shutdown.cancelled() => return Ok(total),
        }
    }
}

/// Drops the weekly partitions whose whole week is older than `days` (and
/// the partition from before partitioning once its range is); returns the
/// rows they held.
async fn drop_old_weeks(pool: &Pool, days: i32) -> Result<u64> {
    let db = super::checkout(pool).await?;
    let mut removed = 0;
    for week in partitions::weeks_before(&db, days).await? {
        let rows: i64 = db
            .query_one(&format!("SELECT count(*) FROM {week}"), &[])
            .await?
            .get(0);
        let drop =
            format!("DO $$ BEGIN SET LOCAL lock_timeout = '{DROP_LOCK_WAIT}'; DROP TABLE {week}; END $$");
        match db.execute(&drop, &[]).await {
            Ok(_) => {
                tracing::info!(partition = %week, rows, "dropped a week of history older than {days} days");
                removed += rows as u64;
            }
            Err(super::StoreError::Query(e)) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                tracing::info!(partition = %week, "history busy; dropping this week at the next sweep");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(removed)
}
