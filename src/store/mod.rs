//! The PostgreSQL contract between the stages: what `consume` writes and
//! `serve` and `doctor` read, in one place. The stages meet only here.
//!
//! * [`batch`] — one batch, one transaction: history rows, current state,
//!   dead letters and positions (written by `consume`).
//! * [`positions`] — where each group stands on each partition, in which
//!   log, and the move to a new log.
//! * [`history`] — history rows and current state read back as events and
//!   anime (for `serve`); both directions of event ↔ columns live here and
//!   in [`batch`].
//! * [`lag`] — how far a group is behind the broker's logs.
//! * [`retention`] — deleting old history.
//!
//! Two names tie writers and readers together: every transaction that
//! writes positions takes [`COMMIT_ORDER_LOCK`] first (so history ids become
//! visible in commit order, and "rows after id N" never skips a late row),
//! and a batch with new rows sends a notification on [`NOTIFY_CHANNEL`].

pub mod batch;
pub mod history;
pub mod lag;
pub mod positions;
pub mod retention;

pub use batch::{Batch, CommitError, DeadLetter, Mode, Row, Written};
pub use history::{AnimeState, HistoryPoint, StoredEvent};
pub use lag::{Lag, LagError, LogEnds, PartitionLag};
pub use positions::{NewLog, Position};

/// Advisory lock taken by every transaction that writes positions ("catlog-commit").
pub const COMMIT_ORDER_LOCK: i64 = 0x6361_746c_6f67_636f;
/// Channel `NOTIFY`'d after each batch with new history rows (the payload is empty).
pub const NOTIFY_CHANNEL: &str = "catlog_live_events";

/// Errors reading or writing the store outside a batch.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database query failed: {}", crate::db::error_text(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Takes [`COMMIT_ORDER_LOCK`] for the rest of `tx`.
async fn lock_commit_order(tx: &tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COMMIT_ORDER_LOCK])
        .await?;
    Ok(())
}
