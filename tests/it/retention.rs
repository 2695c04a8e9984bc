//! History retention deletes old history in batches and keeps the rest.

use crate::common;

use catlog_live::db::Database;
use catlog_live::store::retention;
use common::TestDb;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn retention_deletes_only_history_older_than_the_limit() {
    let db = TestDb::migrated().await;
    let client = db.connect().await;
    // 12,000 rows ingested three days ago, 50 today.
    client
        .batch_execute(
            "INSERT INTO popularity_events (topic, partition, \"offset\", mal_id, title, event_type, current_score, \
                                            popularity_change, event_time, ingested_at) \
             SELECT 't', 0, g, 1, 'Cowboy Bebop', 'SCORE_UPDATE', 8.75, 0.01, now(), \
                    now() - CASE WHEN g < 12000 THEN interval '3 days' ELSE interval '1 hour' END \
             FROM generate_series(0, 12049) g;
             INSERT INTO live_popularity (mal_id, title, popularity_change, last_event_type, last_update, event_count) \
             VALUES (1, 'Cowboy Bebop', 0.01, 'SCORE_UPDATE', now(), 12050);",
        )
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
        db.count("SELECT count(*) FROM popularity_events WHERE ingested_at < now() - interval '2 days'")
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
