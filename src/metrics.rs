//! Prometheus metrics: one recorder per process, whichever stages it runs
//! (so `all` shows the consumer's figures too), and the route that renders
//! them: `GET /metrics` on `serve`'s server, or on a server of its own for a
//! `consume` process (`METRICS_ADDR`, served by the same HTTP stack), and
//! the [`REGISTRY`] of every metric's name, kind and help.

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use warp::{Filter, Rejection, Reply};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder on first use; `None` if another
/// recorder was installed first.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// `GET /metrics` (and `HEAD`): every metric of this process, in the
/// Prometheus text format.
pub fn route() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get().or(warp::head()).unify())
        .map(|| {
            let body = handle().map(|h| h.render()).unwrap_or_default();
            warp::reply::with_header(body, "content-type", "text/plain; version=0.0.4; charset=utf-8")
                .into_response()
        })
}

/// Drains histogram samples into their summaries; call now and then.
pub fn upkeep() {
    if let Some(handle) = handle() {
        handle.run_upkeep();
    }
}

/// Every metric's name, defined once; the call sites use these, and
/// [`REGISTRY`] says what each one is.
pub mod names {
    pub const EVENTS_CONSUMED_TOTAL: &str = "catlog_events_consumed_total";
    pub const DEAD_LETTERS_TOTAL: &str = "catlog_dead_letters_total";
    pub const BATCH_COMMIT_SECONDS: &str = "catlog_batch_commit_seconds";
    pub const CONSUMER_LAG: &str = "catlog_consumer_lag";
    pub const CONSUMER_STALLED: &str = "catlog_consumer_stalled";
    pub const CONSUMER_SECONDS_SINCE_COMMIT: &str = "catlog_consumer_seconds_since_commit";
    pub const HTTP_REQUESTS_REFUSED_TOTAL: &str = "catlog_http_requests_refused_total";
    pub const CONSUMER_FENCED_BATCHES_TOTAL: &str = "catlog_consumer_fenced_batches_total";
    pub const CONSUMER_NEW_LOG: &str = "catlog_consumer_new_log";
    pub const CONSUMER_LOG_EPOCH: &str = "catlog_consumer_log_epoch";
    pub const CONSUMER_LOG_RESETS_TOTAL: &str = "catlog_consumer_log_resets_total";
    pub const CONSUMER_FETCH_LAG: &str = "catlog_consumer_fetch_lag";
    pub const OFFSET_MIRROR_COMMITS_TOTAL: &str = "catlog_offset_mirror_commits_total";
    pub const OFFSET_MIRROR_FAILURES_TOTAL: &str = "catlog_offset_mirror_failures_total";
    pub const OFFSET_MIRROR_LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
        "catlog_offset_mirror_last_success_timestamp_seconds";
    pub const HISTORY_ROWS: &str = "catlog_history_rows";
    pub const HISTORY_BYTES: &str = "catlog_history_bytes";
    pub const HISTORY_OLDEST_SECONDS: &str = "catlog_history_oldest_seconds";
    pub const WS_CLIENTS: &str = "catlog_ws_clients";
    pub const WS_MESSAGES_SENT_TOTAL: &str = "catlog_ws_messages_sent_total";
    pub const WS_UPDATES_BROADCAST_TOTAL: &str = "catlog_ws_updates_broadcast_total";
    pub const WS_MESSAGES_COALESCED_TOTAL: &str = "catlog_ws_messages_coalesced_total";
    pub const WS_MESSAGES_DROPPED_TOTAL: &str = "catlog_ws_messages_dropped_total";
    pub const WS_CONNECTIONS_REFUSED_TOTAL: &str = "catlog_ws_connections_refused_total";
    pub const WS_RESYNCS_TOTAL: &str = "catlog_ws_resyncs_total";
}

use names::*;

/// What kind of value a metric holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: its name, kind, unit and help text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

/// Every metric this process may export, described to the recorder at start.
pub const REGISTRY: &[Metric] = &[
    Metric {
        name: EVENTS_CONSUMED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "History rows written by the consumer in this process",
    },
    Metric {
        name: DEAD_LETTERS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Records stored as dead letters by the consumer in this process",
    },
    Metric {
        name: BATCH_COMMIT_SECONDS,
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        help: "Time to write and commit one batch",
    },
    Metric {
        name: CONSUMER_LAG,
        kind: Kind::Gauge,
        unit: None,
        help: "Records of the broker's log the group has not stored, per partition (all of a new log's)",
    },
    Metric {
        name: CONSUMER_STALLED,
        kind: Kind::Gauge,
        unit: None,
        help: "1 while a partition has records waiting and no commit for CONSUMER_STALLED_AFTER, per partition",
    },
    Metric {
        name: CONSUMER_SECONDS_SINCE_COMMIT,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Time since the group's stored position last moved, per partition",
    },
    Metric {
        name: HTTP_REQUESTS_REFUSED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Request heads refused before the routes (malformed, over a limit), by status",
    },
    Metric {
        name: CONSUMER_FENCED_BATCHES_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Batches refused because this consumer lost the partitions' lease meanwhile",
    },
    Metric {
        name: CONSUMER_NEW_LOG,
        kind: Kind::Gauge,
        unit: None,
        help: "1 while a partition's stored offset belongs to an older log than the broker's, else 0",
    },
    Metric {
        name: CONSUMER_LOG_EPOCH,
        kind: Kind::Gauge,
        unit: None,
        help: "How many times a partition's log has started again, as stored with the group's offsets",
    },
    Metric {
        name: CONSUMER_LOG_RESETS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Partitions this consumer found on a new log and started again",
    },
    Metric {
        name: CONSUMER_FETCH_LAG,
        kind: Kind::Gauge,
        unit: None,
        help: "Broker high watermark minus the fetch position, per partition",
    },
    Metric {
        name: OFFSET_MIRROR_COMMITS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Successful OffsetCommit requests copying the group's offsets from PostgreSQL to Kafka",
    },
    Metric {
        name: OFFSET_MIRROR_FAILURES_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Failed attempts to copy the group's offsets to Kafka (retried; ingestion is not affected)",
    },
    Metric {
        name: OFFSET_MIRROR_LAST_SUCCESS_TIMESTAMP_SECONDS,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Unix time of the last successful offset copy to Kafka (0: none yet)",
    },
    Metric {
        name: HISTORY_ROWS,
        kind: Kind::Gauge,
        unit: None,
        help: "History rows, as PostgreSQL's statistics estimate them (measured by consume once a minute)",
    },
    Metric {
        name: HISTORY_BYTES,
        kind: Kind::Gauge,
        unit: Some(Unit::Bytes),
        help: "History size on disk: every partition's table, indexes and TOAST",
    },
    Metric {
        name: HISTORY_OLDEST_SECONDS,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Time since the oldest history row kept was stored (0: none)",
    },
    Metric {
        name: WS_CLIENTS,
        kind: Kind::Gauge,
        unit: None,
        help: "Open WebSocket connections",
    },
    Metric {
        name: WS_MESSAGES_SENT_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "WebSocket messages sent",
    },
    Metric {
        name: WS_UPDATES_BROADCAST_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Updates broadcast to WebSocket clients",
    },
    Metric {
        name: WS_MESSAGES_COALESCED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Broadcasts a lagging client skipped (it got a snapshot instead)",
    },
    Metric {
        name: WS_MESSAGES_DROPPED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Sends abandoned because a client stopped reading",
    },
    Metric {
        name: WS_CONNECTIONS_REFUSED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "WebSocket clients turned away over MAX_CONNECTIONS",
    },
    Metric {
        name: WS_RESYNCS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Fresh snapshots sent instead of a backlog",
    },
];

fn describe() {
    for metric in REGISTRY {
        let (name, help) = (metric.name, metric.help);
        match (metric.kind, metric.unit) {
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(name, unit, help),
            (Kind::Counter, None) => metrics::describe_counter!(name, help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(name, unit, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_once_with_the_prefix() {
        let mut seen = std::collections::HashSet::new();
        for metric in REGISTRY {
            assert!(metric.name.starts_with("catlog_"), "{}", metric.name);
            assert!(seen.insert(metric.name), "{} registered twice", metric.name);
            assert_eq!(
                metric.kind == Kind::Counter,
                metric.name.ends_with("_total"),
                "{}: counters, and only they, end in _total",
                metric.name
            );
        }
    }
}
