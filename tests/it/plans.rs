//! Plans that cannot flip: every statement the product reads the history
//! with, run against a history large enough to tempt the planner (a Zipf
//! head, a title quiet for seven weeks, ten weekly partitions), reads a
//! small part of it — with statistics as they are right after a load (none)
//! and after ANALYZE. Counted in pages (EXPLAIN's buffers), not in time.

use crate::common;

use catlog_live::store::{history, partitions};
use common::TestDb;
use tokio_postgres::types::ToSql;

/// Rows of the tempting history.
const ROWS: i64 = 300_000;
/// The title with no event in the last seven weeks.
const QUIET: i32 = 9_999;
/// The busiest title.
const BUSY: i32 = 1;

/// Pages `sql` reads (shared buffers hit or read), from EXPLAIN ANALYZE.
async fn pages(client: &tokio_postgres::Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> (i64, String) {
    let row = client
        .query_one(&format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"), params)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN of {sql}: {e}"));
    let plan: serde_json::Value = row.get(0);
    let top = &plan[0]["Plan"];
    let n = top["Shared Hit Blocks"].as_i64().unwrap_or(0) + top["Shared Read Blocks"].as_i64().unwrap_or(0);
    (n, serde_json::to_string_pretty(top).unwrap_or_default())
}

#[tokio::test]
async fn history_reads_stay_small_whatever_the_statistics_say() {
    let db = TestDb::migrated().await;
    let client = db.connect().await;
    // Ten weeks of history, busiest titles first; the quiet title's three
    // rows are seven weeks old. Autovacuum kept away, so that the planner
    // sees the statistics a fresh load leaves: none.
    client
        .batch_execute(&format!(
            "SELECT ensure_history_partitions(now() - interval '70 days', now() + interval '7 days');
             DO $$ DECLARE p regclass; BEGIN
                 FOR p IN SELECT relid FROM pg_partition_tree('popularity_events') WHERE isleaf LOOP
                     EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = off)', p);
                 END LOOP;
             END $$;
             INSERT INTO popularity_events (topic, partition, \"offset\", mal_id, title, event_type, current_score,
                                            popularity_change, event_time, ingested_at)
             SELECT 't', 0, g, 1 + floor(500 * power(random(), 4))::int4, 'A title', 'SCORE_UPDATE', 8.5, 0.01,
                    now() - interval '70 days' + (g::float8 / {ROWS}) * interval '70 days',
                    now() - interval '70 days' + (g::float8 / {ROWS}) * interval '70 days'
             FROM generate_series(0, {ROWS} - 1) g;
             UPDATE popularity_events SET mal_id = {QUIET}
              WHERE id IN (SELECT id FROM popularity_events ORDER BY id LIMIT 3 OFFSET {});",
            ROWS * 2 / 10
        ))
        .await
        .unwrap();
    let history_pages = db
        .count("SELECT sum(pg_relation_size(relid) / 8192)::int8 FROM pg_partition_tree('popularity_events')")
        .await;
    assert!(history_pages > 2_000, "a history of {history_pages} pages");
    let last = db.count("SELECT max(id) FROM popularity_events").await;

    let max = i64::MAX;
    let (page, panel, window, resume) = (50_i64, history::ANIME_HISTORY, 600.0_f64, 1_000_i64);
    let after = last - resume;
    let edge: i64 = client
        .query_one(history::WINDOW_EDGE, &[&window])
        .await
        .unwrap()
        .get(0);
    let statements: Vec<(&str, &str, Vec<&(dyn ToSql + Sync)>)> = vec![
        ("resume", history::ROWS_AFTER.as_str(), vec![&after, &resume]),
        ("the feed", history::LATEST.as_str(), vec![&page, &max]),
        (
            "a quiet title's events",
            history::LATEST_OF_ANIME.as_str(),
            vec![&page, &QUIET, &max],
        ),
        (
            "a busy title's events",
            history::LATEST_OF_ANIME.as_str(),
            vec![&page, &BUSY, &max],
        ),
        (
            "a quiet title's panel",
            history::ANIME_POINTS.as_str(),
            vec![&panel, &QUIET, &max],
        ),
        (
            "a busy title's panel",
            history::ANIME_POINTS.as_str(),
            vec![&panel, &BUSY, &max],
        ),
        ("the trending window's edge", history::WINDOW_EDGE, vec![&window]),
        (
            "the trending window",
            history::WINDOW.as_str(),
            vec![&edge, &window, &20_000_i64],
        ),
        ("the ids' bounds", history::BOUNDS, vec![]),
        ("the newest id", history::LAST_ID, vec![]),
        ("doctor's freshness", partitions::NEWEST, vec![]),
        ("the oldest row", partitions::OLDEST, vec![]),
    ];
    for stats in ["none", "after ANALYZE"] {
        if stats != "none" {
            client.batch_execute("ANALYZE popularity_events").await.unwrap();
        }
        for (name, sql, params) in &statements {
            let (read, plan) = pages(&client, sql, params).await;
            // Under a twentieth of the history; a walk of it reads it all.
            assert!(
                read * 20 < history_pages,
                "{name} (statistics: {stats}) read {read} of {history_pages} pages:\n{plan}"
            );
        }
    }
    // The quiet title is found where it is.
    let quiet = catlog_live::store::history::latest(
        &catlog_live::db::Database::pool(&db.url.parse().unwrap(), 1).unwrap(),
        50,
        Some(QUIET),
        None,
    )
    .await
    .unwrap();
    assert_eq!(quiet.len(), 3);
}
