//! History retention: whole weeks of old history are dropped (their space
//! comes back), old rows outside the weekly partitions are deleted in
//! batches, and the rest is kept.

use crate::common;

use catlog_live::db::Database;
use catlog_live::store::retention;
use common::TestDb;
use tokio_util::sync::CancellationToken;

/// Rows of `mal_id` 1, `n` of them from offset `from`, dated `age` ago.
fn rows(from: i64, n: i64, age: &str) -> String {
    format!(
        "INSERT INTO popularity_events (topic, partition, \"offset\", mal_id, title, event_type, current_score, \
                                        popularity_change, event_time, ingested_at) \
         SELECT 't', 0, g, 1, 'Cowboy Bebop', 'SCORE_UPDATE', 8.75, 0.01, now() - interval '{age}', \
                now() - interval '{age}' \
         FROM generate_series({from}, {}) g",
        from + n - 1
    )
}

const CURRENT: &str = "INSERT INTO live_popularity (mal_id, title, popularity_change, last_event_type, last_update, \
                                                    event_count) \
                       VALUES (1, 'Cowboy Bebop', 0.01, 'SCORE_UPDATE', now(), 1)";

#[tokio::test]
async fn retention_deletes_only_history_older_than_the_limit() {
    let db = TestDb::migrated().await;
    let client = db.connect().await;
    // 12,000 rows dated 40 days ago (before every weekly partition: in the
    // default one, deleted row by row), 50 from an hour ago.
    client
        .batch_execute(&format!(
            "{}; {}; {CURRENT}",
            rows(0, 12_000, "40 days"),
            rows(12_000, 50, "1 hour")
        ))
        .await
        .unwrap();
    let database: Database = db.url.parse().unwrap();
    let pool = database.pool(2).unwrap();

    // One batch at a time...
    assert_eq!(retention::delete_batch(&pool, 2, 100).await.unwrap(), 100);
    // ...and a sweep finishes the job in batches.
    let deleted = retention::sweep(&pool, 2, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(deleted, 12_000 - 100);
    assert_eq!(db.count("SELECT count(*) FROM popularity_events").await, 50);
    assert_eq!(
        db.count("SELECT count(*) FROM popularity_events WHERE event_time < now() - interval '2 days'")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM live_popularity").await,
        1,
        "current state is kept"
    );
    assert_eq!(
        retention::sweep(&pool, 2, &CancellationToken::new())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn retention_drops_whole_old_weeks_and_gives_their_space_back() {
    let db = TestDb::migrated().await;
    let client = db.connect().await;
    // Weekly partitions back to ten weeks ago; 5,000 rows dated 50 days ago,
    // 20 dated 20 days ago, 30 from an hour ago.
    client
        .batch_execute(&format!(
            "SELECT ensure_history_partitions(now() - interval '70 days', now()); {}; {}; {}; {CURRENT}",
            rows(0, 5_000, "50 days"),
            rows(5_000, 20, "20 days"),
            rows(5_020, 30, "1 hour"),
        ))
        .await
        .unwrap();
    let old_week: String = client
        .query_one(
            "SELECT tableoid::regclass::text FROM popularity_events WHERE \"offset\" = 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(old_week.starts_with("popularity_events_w"), "{old_week}");
    let size = "SELECT sum(pg_total_relation_size(relid))::int8 FROM pg_partition_tree('popularity_events')";
    let before = db.count(size).await;

    let database: Database = db.url.parse().unwrap();
    let pool = database.pool(2).unwrap();
    let removed = retention::sweep(&pool, 30, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(removed, 5_000, "the week of the rows 50 days old goes, whole");
    assert_eq!(db.count("SELECT count(*) FROM popularity_events").await, 50);
    let gone: bool = client
        .query_one("SELECT to_regclass($1) IS NULL", &[&old_week])
        .await
        .unwrap()
        .get(0);
    assert!(gone, "{old_week} is dropped");
    assert!(db.count(size).await < before, "the history takes less space");
    // Nothing left to do: the next sweep removes nothing.
    assert_eq!(
        retention::sweep(&pool, 30, &CancellationToken::new())
            .await
            .unwrap(),
        0
    );
    // New history still goes in.
    client.batch_execute(&rows(6_000, 1, "1 minute")).await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM popularity_events").await, 51);
}

mod embedded {
    refinery::embed_migrations!("migrations");
}

#[tokio::test]
async fn a_history_from_before_partitioning_is_kept_and_retention_still_applies() {
    let db = TestDb::new();
    let database: Database = db.url.parse().unwrap();
    database.ensure_exists().await.unwrap();
    let mut client = db.connect().await;
    // The tables as they were before partitioning, with 3,000 rows dated
    // 40 days ago and 20 from an hour ago.
    embedded::migrations::runner()
        .set_target(refinery::Target::Version(2))
        .run_async(&mut client)
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "{}; {}; {CURRENT}",
            rows(0, 3_000, "40 days"),
            rows(3_000, 20, "1 hour")
        ))
        .await
        .unwrap();

    let pool = database.connect_and_migrate(2).await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM popularity_events").await, 3_020);
    assert_eq!(
        db.count("SELECT count(*) FROM popularity_events_before").await,
        3_020,
        "the rows stay where they were, as the first partition"
    );
    // Exactly once still holds for them: the same record is refused.
    let again = client.batch_execute(&rows(5, 1, "40 days")).await;
    assert!(again.is_err(), "a stored record is stored once");
    // New history goes in, and ids go on from the same sequence (the
    // refused insert drew one).
    client.batch_execute(&rows(3_020, 1, "1 minute")).await.unwrap();
    assert_eq!(db.count("SELECT max(id) FROM popularity_events").await, 3_022);

    // Retention deletes the old rows of that partition in batches and keeps the rest.
    let removed = retention::sweep(&pool, 30, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(removed, 3_000);
    assert_eq!(db.count("SELECT count(*) FROM popularity_events").await, 21);
    assert_eq!(
        retention::sweep(&pool, 30, &CancellationToken::new())
            .await
            .unwrap(),
        0
    );
}
