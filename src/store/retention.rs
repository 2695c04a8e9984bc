//! Optional history retention: keep only the last N days of
//! `popularity_events`, deleting in small batches (rows no one is writing,
//! `SKIP LOCKED`) with a pause between them, so ingestion never waits.
//! The current state and dead letters are kept.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::Result;

/// Rows deleted per statement.
pub const BATCH: i64 = 5_000;
/// Time between two sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Pause between two batches of one sweep.
const PAUSE: Duration = Duration::from_millis(100);

const DELETE_OLD: &str = "DELETE FROM popularity_events WHERE id IN ( \
     SELECT id FROM popularity_events \
     WHERE ingested_at < now() - make_interval(days => $1) \
     ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Deletes one batch of history older than `days`; returns the rows deleted.
pub async fn delete_batch(pool: &Pool, days: i32, limit: i64) -> Result<u64> {
    let db = super::checkout(pool).await?;
    db.execute(DELETE_OLD, &[&days, &limit]).await
}

/// One sweep: batches until nothing older than `days` is left, or shutdown.
pub async fn sweep(pool: &Pool, days: i32, shutdown: &CancellationToken) -> Result<u64> {
    let mut total = 0;
    loop {
        let deleted = delete_batch(pool, days, BATCH).await?;
        total += deleted;
        if deleted < BATCH as u64 {
            return Ok(total);
        }
        tokio::select! {
            _ = tokio::time::sleep(PAUSE) => {}
            _ = shutdown.cancelled() => return Ok(total),
        }
    }
}

/// Sweeps every minute until `shutdown`.
pub async fn run(pool: Pool, days: u32, shutdown: CancellationToken) {
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    tracing::info!(days, "keeping {days} days of history");
    loop {
        match sweep(&pool, days, &shutdown).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, days, "deleted old history"),
            Err(error) => tracing::warn!(%error, "history retention sweep failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
