//! Plans that cannot flip: every statement the product reads the history
//! with, run against a history large enough to tempt the planner (a Zipf
//! head, a title quiet for seven weeks, ten weekly partitions), reads a
//! small part of it — with statistics as they are right after a load (none),
//! after ANALYZE, and in the generic plan (the one `serve`'s connections
//! keep: [`catlog_live::db::Database::reading_pool`]).
//! Counted in pages (EXPLAIN's buffers), not in time.

use crate::common;

use catlog_live::store::{history, partitions};
use common::TestDb;

/// Rows of the tempting history.
const ROWS: i64 = 300_000;
/// The title with no event in the last seven weeks.
const QUIET: i32 = 9_999;
/// The busiest title.
const BUSY: i32 = 1;

/// Pages `sql` reads (shared buffers hit or read) with `args`, from EXPLAIN
/// ANALYZE of the statement prepared, as the server keeps it.
async fn pages(client: &tokio_postgres::Client, sql: &str, args: &[String]) -> (i64, String) {
    client
        .batch_execute(&format!("PREPARE read_history AS {sql}"))
        .await
        .unwrap_or_else(|e| panic!("PREPARE of {sql}: {e}"));
    let args = if args.is_empty() {
        String::new()
    } else {
        format!("({})", args.join(", "))
    };
    let row = client
        .query_one(
            &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE read_history{args}"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN of {sql}: {e}"));
    client.batch_execute("DEALLOCATE read_history").await.unwrap();
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

    let window = 600.0_f64;
    let edge: i64 = client
        .query_one(history::WINDOW_EDGE, &[&window])
        .await
        .unwrap()
        .get(0);
    let (max, page, panel) = (
        i64::MAX.to_string(),
        "50".to_owned(),
        history::ANIME_HISTORY.to_string(),
    );
    let (quiet, busy, window) = (QUIET.to_string(), BUSY.to_string(), window.to_string());
    let statements: Vec<(&str, &str, Vec<String>)> = vec![
        (
            "resume",
            history::ROWS_AFTER.as_str(),
            vec![(last - 1000).to_string(), "1001".to_owned()],
        ),
        (
            "the feed",
            history::LATEST.as_str(),
            vec![page.clone(), max.clone()],
        ),
        (
            "a quiet title's events",
            history::LATEST_OF_ANIME.as_str(),
            vec![page.clone(), quiet.clone(), max.clone()],
        ),
        (
            "a busy title's events",
            history::LATEST_OF_ANIME.as_str(),
            vec![page.clone(), busy.clone(), max.clone()],
        ),
        (
            "a quiet title's panel",
            history::ANIME_POINTS.as_str(),
            vec![panel.clone(), quiet.clone(), max.clone()],
        ),
        (
            "a busy title's panel",
            history::ANIME_POINTS.as_str(),
            vec![panel.clone(), busy.clone(), max.clone()],
        ),
        (
            "the trending window's edge",
            history::WINDOW_EDGE,
            vec![window.clone()],
        ),
        (
            "the trending window",
            history::WINDOW.as_str(),
            vec![edge.to_string(), window.clone(), "20000".to_owned()],
        ),
        ("the ids' bounds", history::BOUNDS, vec![]),
        ("the newest id", history::LAST_ID, vec![]),
        ("doctor's freshness", partitions::NEWEST, vec![]),
        ("the oldest row", partitions::OLDEST, vec![]),
    ];
    // The server keeps these statements prepared and runs them in their
    // generic plan (made without the parameters' values): checked too,
    // with statistics and without.
    for (stats, plan) in [
        ("none", "auto"),
        ("none", "force_generic_plan"),
        ("after ANALYZE", "auto"),
        ("after ANALYZE", "force_generic_plan"),
    ] {
        if stats == "after ANALYZE" && plan == "auto" {
            client.batch_execute("ANALYZE popularity_events").await.unwrap();
        }
        client
            .batch_execute(&format!("SET plan_cache_mode = {plan}"))
            .await
            .unwrap();
        for (name, sql, args) in &statements {
            let (read, explained) = pages(&client, sql, args).await;
            // Under a twentieth of the history; a walk of it reads it all.
            assert!(
                read * 20 < history_pages,
                "{name} (statistics: {stats}, plan_cache_mode: {plan}) read {read} of {history_pages} pages:\n{explained}"
            );
        }
    }
    // The server reads through connections that keep the generic plan
    // (planned once, not on every call), and finds the quiet title there.
    let database: catlog_live::db::Database = db.url.parse().unwrap();
    let reads = database.reading_pool(1).unwrap();
    assert_eq!(
        setting(&reads, "plan_cache_mode").await,
        "force_generic_plan",
        "the server's reads are planned on every call"
    );
    // (A generic plan's estimate for `LIMIT $1` is a tenth of the rows: on
    // a large history it would be compiled on every call.)
    assert_eq!(
        setting(&reads, "jit").await,
        "off",
        "the server's reads are compiled"
    );
    let quiet = history::latest(&reads, 50, Some(QUIET), None).await.unwrap();
    assert_eq!(quiet.len(), 3);
    // The writer's and the upkeep's connections leave the choice to PostgreSQL.
    assert_eq!(
        setting(&database.pool(1).unwrap(), "plan_cache_mode").await,
        "auto"
    );
}

/// A server setting as a connection of `pool` has it.
async fn setting(pool: &deadpool_postgres::Pool, name: &str) -> String {
    let db = pool.get().await.unwrap();
    db.query_one("SELECT current_setting($1)", &[&name])
        .await
        .unwrap()
        .get(0)
}
