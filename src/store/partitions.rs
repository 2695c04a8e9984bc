//! The history's partitions: `popularity_events` is partitioned by the week
//! of `event_time` (from Monday, UTC), so that retention removes whole weeks
//! and gives their space back (see
//! `migrations/V5__history_partitioned_by_week.sql` for the layout, why a
//! week, and why exactly once still holds across partitions).
//!
//! `consume` keeps the next week made ([`AHEAD`]), retention drops the old
//! ones, and the history's size is published as metrics: all in
//! [`maintain`], once a minute.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::{Bounded, Result, retention};

/// The partition of rows stored before the history was partitioned.
pub const BEFORE: &str = "popularity_events_before";
/// The partition of events dated outside every daily partition.
pub const DEFAULT: &str = "popularity_events_default";
/// Days ahead whose week is made in advance.
pub const AHEAD: i32 = 7;
/// Time between two rounds of [`maintain`].
const EVERY: Duration = Duration::from_secs(60);

/// Makes the weekly partitions from this week to [`AHEAD`] days ahead that
/// are missing; returns how many it made.
pub async fn ensure(pool: &Pool) -> Result<i32> {
    let db = super::checkout(pool).await?;
    let made: i32 = db
        .query_one(
            "SELECT ensure_history_partitions(now(), now() + make_interval(days => $1))",
            &[&AHEAD],
        )
        .await?
        .get(0);
    Ok(made)
}

/// Whether `table` exists.
pub(super) async fn exists(db: &Bounded, table: &str) -> Result<bool> {
    Ok(db
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .get(0))
}

/// The weekly partitions whose whole week is more than `days` days ago,
/// and the partition from before partitioning once its whole range is.
pub(super) async fn weeks_before(db: &Bounded, days: i32) -> Result<Vec<String>> {
    let rows = db
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'popularity_events'::regclass \
               AND ((c.relname ~ '^popularity_events_w[0-9]{8}$' \
                     AND (to_date(substr(c.relname, 20), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC') \
                         + interval '7 days' <= now() - make_interval(days => $1)) \
                 OR (c.relname = 'popularity_events_before' \
                     AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1] \
                         ::timestamptz <= now() - make_interval(days => $1))) \
             ORDER BY c.relname",
            &[&days],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How big the history is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistorySize {
    /// Rows, as the statistics estimate them (a count would read it all).
    pub rows: i64,
    /// Bytes on disk: every partition's heap, indexes and TOAST.
    pub bytes: i64,
    /// When the oldest row kept was stored; `None` for an empty history.
    pub oldest: Option<DateTime<Utc>>,
}

/// Rows (estimated) and bytes of every partition.
const SIZE: &str = "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::int8, \
            coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 \
     FROM pg_partition_tree('popularity_events') t JOIN pg_class c ON c.oid = t.relid \
     WHERE t.isleaf";
/// When the oldest row kept was stored: one index probe per partition.
pub const OLDEST: &str = "SELECT ingested_at FROM popularity_events ORDER BY id LIMIT 1";

impl HistorySize {
    fn from_rows(size: &tokio_postgres::Row, oldest: Option<tokio_postgres::Row>) -> Self {
        Self {
            rows: size.get(0),
            bytes: size.get(1),
            oldest: oldest.map(|r| r.get(0)),
        }
    }
}

/// The history's size, from the catalog and the oldest row.
pub async fn size(pool: &Pool) -> Result<HistorySize> {
    let db = super::checkout(pool).await?;
    let size = db.query_one(SIZE, &[]).await?;
    let oldest = db.query_opt(OLDEST, &[]).await?;
    Ok(HistorySize::from_rows(&size, oldest))
}

/// The same on a connection of its own (`doctor`'s).
pub async fn size_on(db: &tokio_postgres::Client) -> Result<HistorySize> {
    let size = db.query_one(SIZE, &[]).await?;
    let oldest = db.query_opt(OLDEST, &[]).await?;
    Ok(HistorySize::from_rows(&size, oldest))
}

/// When the newest row was stored.
pub const NEWEST: &str = "SELECT ingested_at FROM popularity_events ORDER BY id DESC LIMIT 1";

/// When the newest history row was stored (`None`: no history): one index
/// probe per partition, whatever the history holds.
pub async fn newest_on(db: &tokio_postgres::Client) -> Result<Option<DateTime<Utc>>> {
    Ok(db.query_opt(NEWEST, &[]).await?.map(|r| r.get(0)))
}

/// Once a minute until `shutdown`: makes the days ahead, applies retention
/// (when `retention_days` is set) and publishes the history's size.
pub async fn maintain(pool: Pool, retention_days: Option<u32>, shutdown: CancellationToken) {
    let retention_days = retention_days.map(|d| i32::try_from(d).unwrap_or(i32::MAX));
    if let Some(days) = retention_days {
        tracing::info!(days, "keeping {days} days of history");
    }
    loop {
        match ensure(&pool).await {
            Ok(0) => {}
            Ok(made) => tracing::info!(made, "made history partitions for the days ahead"),
            Err(error) => tracing::warn!(%error, "could not make the history's next partitions; will retry"),
        }
        if let Some(days) = retention_days {
            match retention::sweep(&pool, days, &shutdown).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, days, "removed old history"),
                Err(error) => tracing::warn!(%error, "history retention sweep failed; will retry"),
            }
        }
        match size(&pool).await {
            Ok(size) => {
                metrics::gauge!(crate::metrics::HISTORY_ROWS).set(size.rows as f64);
                metrics::gauge!(crate::metrics::HISTORY_BYTES).set(size.bytes as f64);
                let age = size
                    .oldest
                    .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1e3)
                    .unwrap_or(0.0);
                metrics::gauge!(crate::metrics::HISTORY_OLDEST_SECONDS).set(age);
            }
            Err(error) => tracing::debug!(%error, "could not measure the history"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
