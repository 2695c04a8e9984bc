//! Prometheus metrics: one recorder per process, whichever stages it runs
//! (so `all` shows the consumer's figures too), and the route that renders
//! them: `GET /metrics` on `serve`'s server, or on a server of its own for a
//! `consume` process ([`serve_alone`], at `METRICS_ADDR`).

use std::sync::OnceLock;

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

/// Serves only [`route`] on `listener` until `shutdown`: for a `consume`
/// process, which has no web server of its own.
pub async fn serve_alone(listener: tokio::net::TcpListener, shutdown: tokio_util::sync::CancellationToken) {
    handle();
    let not_found = |_: Rejection| async {
        Ok::<_, std::convert::Infallible>(warp::reply::with_status(
            warp::reply::json(&serde_json::json!({"error": "not found: this server only has /metrics"})),
            warp::http::StatusCode::NOT_FOUND,
        ))
    };
    warp::serve(route().recover(not_found))
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await })
        .run()
        .await;
}

/// Drains histogram samples into their summaries; call now and then.
pub fn upkeep() {
    if let Some(handle) = handle() {
        handle.run_upkeep();
    }
}

/// History rows, as the statistics estimate them (set by `consume`).
pub const HISTORY_ROWS: &str = "catlog_history_rows";
/// History bytes on disk, every partition with its indexes.
pub const HISTORY_BYTES: &str = "catlog_history_bytes";
/// Seconds since the oldest history row kept was stored.
pub const HISTORY_OLDEST_SECONDS: &str = "catlog_history_oldest_seconds";

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "catlog_events_consumed_total",
        "History rows written by the consumer in this process"
    );
    describe_counter!(
        "catlog_dead_letters_total",
        "Records stored as dead letters by the consumer in this process"
    );
    describe_histogram!(
        "catlog_batch_commit_seconds",
        Unit::Seconds,
        "Time to write and commit one batch"
    );
    describe_gauge!(
        "catlog_consumer_lag",
        "Records of the broker's log the group has not stored, per partition (all of a new log's)"
    );
    describe_gauge!(
        "catlog_consumer_stalled",
        "1 while a partition has records waiting and no commit for CONSUMER_STALLED_AFTER, per partition"
    );
    describe_gauge!(
        "catlog_consumer_seconds_since_commit",
        Unit::Seconds,
        "Time since the group's stored position last moved, per partition"
    );
    describe_counter!(
        "catlog_http_requests_refused_total",
        "Request heads refused before the routes (malformed, over a limit), by status"
    );
    describe_counter!(
        "catlog_consumer_fenced_batches_total",
        "Batches refused because this consumer lost the partitions' lease meanwhile"
    );
    describe_gauge!(
        "catlog_consumer_new_log",
        "1 while a partition's stored offset belongs to an older log than the broker's, else 0"
    );
    describe_gauge!(
        "catlog_consumer_log_epoch",
        "How many times a partition's log has started again, as stored with the group's offsets"
    );
    describe_counter!(
        "catlog_consumer_log_resets_total",
        "Partitions this consumer found on a new log and started again"
    );
    describe_gauge!(
        "catlog_consumer_fetch_lag",
        "Broker high watermark minus the fetch position, per partition"
    );
    describe_counter!(
        "catlog_offset_mirror_commits_total",
        "Successful OffsetCommit requests copying the group's offsets from PostgreSQL to Kafka"
    );
    describe_counter!(
        "catlog_offset_mirror_failures_total",
        "Failed attempts to copy the group's offsets to Kafka (retried; ingestion is not affected)"
    );
    describe_gauge!(
        "catlog_offset_mirror_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last successful offset copy to Kafka (0: none yet)"
    );
    describe_gauge!(
        HISTORY_ROWS,
        "History rows, as PostgreSQL's statistics estimate them (measured by consume once a minute)"
    );
    describe_gauge!(
        HISTORY_BYTES,
        Unit::Bytes,
        "History size on disk: every partition's table, indexes and TOAST"
    );
    describe_gauge!(
        HISTORY_OLDEST_SECONDS,
        Unit::Seconds,
        "Time since the oldest history row kept was stored (0: none)"
    );
    describe_gauge!("catlog_ws_clients", "Open WebSocket connections");
    describe_counter!("catlog_ws_messages_sent_total", "WebSocket messages sent");
    describe_counter!(
        "catlog_ws_updates_broadcast_total",
        "Updates broadcast to WebSocket clients"
    );
    describe_counter!(
        "catlog_ws_messages_coalesced_total",
        "Broadcasts a lagging client skipped (it got a snapshot instead)"
    );
    describe_counter!(
        "catlog_ws_messages_dropped_total",
        "Sends abandoned because a client stopped reading"
    );
    describe_counter!(
        "catlog_ws_connections_refused_total",
        "WebSocket clients turned away over MAX_CONNECTIONS"
    );
    describe_counter!(
        "catlog_ws_resyncs_total",
        "Fresh snapshots sent instead of a backlog"
    );
}
