//! The history's upkeep, once a minute in `consume`: the weeks ahead made
//! ([`partitions::ensure`]), retention applied when it is set
//! ([`retention::sweep`]), and the history's size published as metrics.

use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::{partitions, retention};
use crate::metrics::names;

/// Time between two rounds.
const EVERY: Duration = Duration::from_secs(60);

/// Once a minute until `shutdown`: makes the weeks ahead, applies retention
/// (when `retention_days` is set) and publishes the history's size.
pub async fn maintain(pool: Pool, retention_days: Option<u32>, shutdown: CancellationToken) {
    let retention_days = retention_days.map(|d| i32::try_from(d).unwrap_or(i32::MAX));
    if let Some(days) = retention_days {
        tracing::info!(days, "keeping {days} days of history");
    }
    loop {
        match partitions::ensure(&pool).await {
            Ok(0) => {}
            Ok(made) => tracing::info!(made, "made history partitions for the weeks ahead"),
            Err(error) => tracing::warn!(%error, "could not make the history's next partitions; will retry"),
        }
        if let Some(days) = retention_days {
            match retention::sweep(&pool, days, &shutdown).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, days, "removed old history"),
                Err(error) => tracing::warn!(%error, "history retention sweep failed; will retry"),
            }
        }
        match partitions::size(&pool).await {
            Ok(size) => {
                metrics::gauge!(names::HISTORY_ROWS).set(size.rows as f64);
                metrics::gauge!(names::HISTORY_BYTES).set(size.bytes as f64);
                let age = size
                    .oldest
                    .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1e3)
                    .unwrap_or(0.0);
                metrics::gauge!(names::HISTORY_OLDEST_SECONDS).set(age);
            }
            Err(error) => tracing::debug!(%error, "could not measure the history"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
