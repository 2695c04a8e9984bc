//! The history's partitions: `popularity_events` is partitioned by the week
//! of `event_time` (from Monday, UTC), so that retention removes whole weeks
//! and gives their space back (see
//! `migrations/V5__history_partitioned_by_week.sql` for the layout, why a
//! week, and why exactly once still holds across partitions).
//!
//! `consume` keeps the next week made ([`AHEAD`]) and retention drops the
//! old ones, once a minute (see [`super::upkeep`]).

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

use super::{Bounded, Result};

/// The partition of rows stored before the history was partitioned.
pub const BEFORE: &str = "popularity_events_before";
/// The partition of events dated outside every weekly partition.
pub const DEFAULT: &str = "popularity_events_default";
/// Days ahead whose week is made in advance.
pub const AHEAD: i32 = 7;

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
