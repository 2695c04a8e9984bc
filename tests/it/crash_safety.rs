//! Exactly once across crashes and across processes: `consume` killed with
//! SIGKILL mid-backlog loses nothing and duplicates nothing, and consumers of
//! one group share the partitions and take over from each other.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Proc, TestDb, TestTopic, catlog, wait_until};
use rand::Rng;

const HISTORY: &str = "SELECT count(*) FROM popularity_events";

/// History rows, counted events per anime, and stored next offsets must all
/// agree with the number of records published.
async fn assert_exactly_once(db: &TestDb, topic: &TestTopic, published: i64) {
    assert_eq!(
        db.count(HISTORY).await,
        published,
        "history holds every record once"
    );
    let distinct = db
        .count(r#"SELECT count(DISTINCT (partition, "offset")) FROM popularity_events"#)
        .await;
    assert_eq!(distinct, published, "no record twice");
    let counted = db
        .count("SELECT coalesce(sum(event_count), 0)::int8 FROM live_popularity")
        .await;
    assert_eq!(counted, published, "current state counted each event once");
    let mut ends = 0;
    for p in 0..topic.partitions {
        ends += catlog_live::kafka::end_offset(&topic.partition(p).await)
            .await
            .unwrap();
    }
    let stored = db
        .count("SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets")
        .await;
    assert_eq!(stored, ends, "stored offsets reach the end of every partition");
}

#[tokio::test]
async fn consumer_killed_repeatedly_mid_backlog_loses_and_duplicates_nothing() {
    const RECORDS: i64 = 50_000;
    let topic = TestTopic::new(3).await;
    let db = TestDb::migrated().await;
    topic.publish_simulated(RECORDS as usize, 7).await;

    let consume = || {
        let mut cmd = catlog(&["consume"], &topic.name, &db.url);
        cmd.env("CONSUMER_BATCH_SIZE", "200");
        Proc::spawn(cmd, "consume")
    };
    let mut kills_mid_backlog = 0;
    for round in 0..10 {
        let before = db.count(HISTORY).await;
        if before == RECORDS {
            break;
        }
        let mut consumer = consume();
        // Let it make progress, then kill it at a random instant.
        wait_until(
            Duration::from_secs(60),
            "the consumer to make progress",
            || async { db.count(HISTORY).await > before },
        )
        .await;
        let pause = rand::rng().random_range(0..80);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        consumer.kill_hard();
        let after = db.count(HISTORY).await;
        if after < RECORDS {
            kills_mid_backlog += 1;
        }
        eprintln!("round {round}: killed after {pause} ms with {after} of {RECORDS} rows");
    }
    assert!(
        kills_mid_backlog >= 4,
        "only {kills_mid_backlog} kills landed mid-backlog"
    );

    let consumer = consume();
    let started = Instant::now();
    wait_until(Duration::from_secs(120), "the backlog to drain", || async {
        db.count(HISTORY).await >= RECORDS
    })
    .await;
    // Let the last commit settle, then check nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!("final run drained in {:?}", started.elapsed());
    assert_exactly_once(&db, &topic, RECORDS).await;
    drop(consumer);
}

/// Partitions a consumer holds now, replaying its log's acquire and release lines.
fn holding(proc: &Proc) -> BTreeSet<i32> {
    let mut held = BTreeSet::new();
    for line in proc.output().lines() {
        let partition = || {
            line.split("partition=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        if line.contains("acquired partition") {
            held.extend(partition());
        } else if line.contains("released partition") {
            partition().map(|p| held.remove(&p));
        }
    }
    held
}

#[tokio::test]
async fn two_consumers_split_partitions_and_one_takes_over_when_the_other_dies() {
    const RECORDS: i64 = 20_000;
    let topic = TestTopic::new(4).await;
    let db = TestDb::migrated().await;
    let consume = || {
        let mut cmd = catlog(&["consume"], &topic.name, &db.url);
        cmd.env("CONSUMER_BATCH_SIZE", "200");
        Proc::spawn(cmd, "consume")
    };
    let mut first = consume();
    let second = consume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (holding(&first), holding(&second));
        if a.len() == 2 && b.len() == 2 {
            assert!(a.is_disjoint(&b), "{a:?} and {b:?} overlap");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the consumers did not split the partitions two and two: {a:?} / {b:?}\nfirst:\n{}\nsecond:\n{}",
            first.output(),
            second.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    topic.publish_simulated(RECORDS as usize, 11).await;
    wait_until(Duration::from_secs(60), "the pair to make progress", || async {
        db.count(HISTORY).await > 1_000
    })
    .await;
    first.kill_hard();
    let at_kill = db.count(HISTORY).await;
    eprintln!("killed the first consumer with {at_kill} of {RECORDS} rows");

    wait_until(
        Duration::from_secs(60),
        "the survivor to take over every partition",
        || async { holding(&second).len() == 4 },
    )
    .await;
    wait_until(
        Duration::from_secs(120),
        "the survivor to finish every record",
        || async { db.count(HISTORY).await >= RECORDS },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&db, &topic, RECORDS).await;
}

#[tokio::test]
async fn replaying_the_whole_topic_counts_nothing_twice() {
    const RECORDS: i64 = 3_000;
    let topic = TestTopic::new(2).await;
    let db = TestDb::migrated().await;
    topic.publish_simulated(RECORDS as usize, 5).await;
    let consume = || Proc::spawn(catlog(&["consume"], &topic.name, &db.url), "consume");

    let consumer = consume();
    wait_until(Duration::from_secs(60), "the first pass", || async {
        db.count(HISTORY).await == RECORDS
    })
    .await;
    drop(consumer);

    // Forget where the group was: the next consumer reads everything again.
    db.connect()
        .await
        .batch_execute("DELETE FROM consumer_offsets")
        .await
        .unwrap();
    let consumer = consume();
    wait_until(Duration::from_secs(60), "the replay to reach the end", || async {
        db.count("SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets")
            .await
            == RECORDS
    })
    .await;
    drop(consumer);
    assert_exactly_once(&db, &topic, RECORDS).await;
}

#[tokio::test]
async fn consumer_recovers_when_its_database_connections_are_killed() {
    const RECORDS: i64 = 20_000;
    let topic = TestTopic::new(3).await;
    let db = TestDb::migrated().await;
    topic.publish_simulated(RECORDS as usize, 13).await;
    let mut cmd = catlog(&["consume"], &topic.name, &db.url);
    cmd.env("CONSUMER_BATCH_SIZE", "200");
    let consumer = Proc::spawn(cmd, "consume");
    wait_until(
        Duration::from_secs(60),
        "the consumer to make progress",
        || async { db.count(HISTORY).await > 0 },
    )
    .await;

    // Cut every connection the consumer has, twice, while it drains.
    let admin = db.connect().await;
    let kill = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{}' AND application_name = 'catlog-live' AND pid <> pg_backend_pid()",
        db.name
    );
    for _ in 0..2 {
        let killed: i64 = admin.query_one(&kill, &[]).await.unwrap().get(0);
        assert!(killed > 0, "the consumer's connections were found");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until(
        Duration::from_secs(120),
        "the consumer to finish after reconnecting",
        || async { db.count(HISTORY).await >= RECORDS },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&db, &topic, RECORDS).await;
    assert!(
        consumer.output().contains("retrying"),
        "the loss was logged:\n{}",
        consumer.output()
    );
}

/// A record that reaches one batch twice (its partition read again while
/// the first reading still waited in the writer's queue) is stored once and
/// counted once in the current state.
#[tokio::test]
async fn a_record_twice_in_one_batch_is_stored_and_counted_once() {
    use catlog_live::event::Event;
    use catlog_live::store::batch::{Batch, Mode, Row, write};

    let db = common::TestDb::migrated().await;
    let raw = br#"{"malId":5114,"title":"Fullmetal Alchemist: Brotherhood","eventType":"SCORE_UPDATE","currentScore":"9.10","popularityChange":"+0.01","timestamp":"2025-08-14T18:30:00.000Z"}"#;
    let event = Event::from_bytes(raw).unwrap_or_else(|e| panic!("{e:?}"));
    let row = Row {
        partition: 0,
        log_epoch: 0,
        offset: 7,
        event_id: Some(catlog_live::event::new_event_id()),
        event,
        raw: raw.to_vec(),
    };
    let batch = Batch {
        rows: vec![row.clone(), row],
        ..Batch::default()
    };
    let database: catlog_live::db::Database = db.url.parse().unwrap();
    let pool = database.pool(1).unwrap();
    let mut client = pool.get().await.unwrap();
    for mode in [Mode::Fresh, Mode::SkipStored] {
        let tx = client.transaction().await.unwrap();
        let written = write(&tx, "g", "t", &batch, mode, None, None).await;
        match (mode, written) {
            (Mode::Fresh, Err(_)) => tx.rollback().await.unwrap(),
            (Mode::SkipStored, Ok(written)) => {
                assert_eq!(written.events, 1, "one row inserted");
                tx.commit().await.unwrap();
            }
            (mode, other) => panic!("{mode:?}: {other:?}"),
        }
    }
    assert_eq!(db.count("SELECT count(*) FROM popularity_events").await, 1);
    assert_eq!(
        db.count("SELECT event_count::int8 FROM live_popularity WHERE mal_id = 5114")
            .await,
        1,
        "counted once"
    );
}
