//! The figures every client and `/api/live/stats` see, refreshed every
//! [`STATS_EVERY`] in a task of their own: events in the last minute, the
//! lag (measured by [`crate::lag::watch`]), stalled partitions, partitions
//! on a new log, and whether the data is delayed, and why.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use crate::lag::{Lag, PartitionLag};
use crate::serve::models::{Delayed, NewLogSeen, StallSeen, Stats};

/// How often figures (stats, lag) are refreshed and broadcast.
pub const STATS_EVERY: Duration = Duration::from_secs(5);

/// Refreshes and broadcasts the figures every [`STATS_EVERY`] until
/// `shutdown`: events in the last minute, the lag (`lag`, measured
/// elsewhere), stalled partitions, and whether the data is delayed.
pub async fn run(hub: Arc<Hub>, lag: watch::Receiver<Option<Lag>>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let latest = lag.borrow().clone();
        hub.set_stats(stats_of(&hub, latest.as_ref()));
        crate::metrics::upkeep();
    }
}

fn stats_of(hub: &Hub, lag: Option<&Lag>) -> Stats {
    let now = Utc::now();
    let mut waiting = BTreeMap::new();
    let mut new_logs = BTreeMap::new();
    let mut stalled = BTreeMap::new();
    let mut log_resets = BTreeMap::new();
    if let Some(lag) = lag {
        for (partition, value) in &lag.per_partition {
            let Some(n) = value.waiting() else { continue };
            if let PartitionLag::NewLog { stored, log_end, .. } = value {
                new_logs.insert(
                    partition.to_string(),
                    NewLogSeen {
                        stored_offset: *stored,
                        log_end: *log_end,
                    },
                );
            }
            waiting.insert(partition.to_string(), n);
        }
        for stall in &lag.stalls {
            stalled.insert(
                stall.partition.to_string(),
                StallSeen {
                    waiting: stall.waiting,
                    no_commit_for_seconds: stall.no_commit_for.as_secs(),
                },
            );
        }
        log_resets = lag.log_resets.iter().map(|(p, e)| (p.to_string(), *e)).collect();
    }
    let delayed = match hub.feed_trouble() {
        Some((reason, since)) => Some(Delayed { reason, since }),
        None => lag.filter(|l| !l.stalls.is_empty()).map(|l| {
            let longest = l.stalls.iter().map(|s| s.no_commit_for).max().unwrap_or_default();
            let since = now - chrono::Duration::from_std(longest).unwrap_or_default();
            Delayed {
                reason: format!(
                    "the consumers have stored nothing for {} s while {} records wait",
                    longest.as_secs(),
                    l.stalls.iter().map(|s| s.waiting).sum::<i64>()
                ),
                since: since.to_rfc3339_opts(SecondsFormat::Secs, true),
            }
        }),
    };
    Stats {
        events_last_minute: hub.events_last_minute(now.timestamp()),
        lag: waiting,
        new_logs,
        log_resets,
        stalled,
        delayed,
        as_of: Some(now.to_rfc3339_opts(SecondsFormat::Millis, true)),
        lag_as_of: lag
            .and_then(|l| l.measured_at)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        ..hub.stats()
    }
}
