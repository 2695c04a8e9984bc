//! Faults, survived and counted: a fresh broker beside an old database, a
//! broker killed and started again empty, a broker cut off for 20 s, a
//! publish retried, a topic created again with more partitions. The real
//! binary runs as child processes against a broker of the test's own (behind
//! a proxy the test can cut) and a database of its own; what was published
//! is counted against what was stored.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::OwnBroker;
use common::{Proc, TestDb, TestTopic, catlog, event_id, log_records, unique, wait_until};
use uuid::Uuid;

const HISTORY: &str = "SELECT count(*) FROM popularity_events";
const COUNTED: &str = "SELECT coalesce(sum(event_count), 0)::int8 FROM live_popularity";

/// The binary against the test's own broker.
fn on(broker: &OwnBroker, args: &[&str], topic: &str, db: &TestDb) -> Command {
    let mut cmd = catlog(args, topic, &db.url);
    cmd.env("KAFKA_BROKER", &broker.addr);
    cmd
}

/// `doctor`'s lag line.
fn doctor_lag(broker: &OwnBroker, topic: &str, db: &TestDb) -> String {
    let mut cmd = on(broker, &["doctor"], topic, db);
    cmd.env("RUST_LOG", "off");
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("lag"))
        .unwrap_or_else(|| panic!("no lag line in:\n{stdout}"))
        .to_owned()
}

/// Event ids stored in the history, each with how many rows carry it.
async fn stored_ids(db: &TestDb) -> BTreeMap<Uuid, i64> {
    db.connect()
        .await
        .query(
            "SELECT event_id, count(*) FROM popularity_events WHERE event_id IS NOT NULL GROUP BY event_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until every id of `published` is stored; then checks nothing is
/// stored twice and the current state counted each stored event once.
pub(crate) async fn assert_all_stored_once(
    db: &TestDb,
    published: &HashSet<Uuid>,
    consumer: &Proc,
    within: Duration,
) {
    wait_until(
        within,
        &format!("{} published events to be stored", published.len()),
        || async {
            let stored = stored_ids(db).await;
            published.iter().all(|id| stored.contains_key(id))
        },
    )
    .await;
    let stored = stored_ids(db).await;
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}\n{}", consumer.output());
    let (counted, history) = (db.count(COUNTED).await, db.count(HISTORY).await);
    if counted != history {
        let off: Vec<(i32, i64, i64)> = db
            .connect()
            .await
            .query(
                "SELECT lp.mal_id, lp.event_count::int8, (SELECT count(*) FROM popularity_events e WHERE e.mal_id = lp.mal_id) \
                 FROM live_popularity lp",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .filter(|(_, counted, stored)| counted != stored)
            .collect();
        panic!(
            "the current state counted {counted} events, the history holds {history}; (malId, counted, stored): {off:?}\n{}",
            consumer.output()
        );
    }
}

#[tokio::test]
async fn demo_rerun_with_a_fresh_broker_stores_every_new_event() {
    let mut broker = OwnBroker::start();
    let db = TestDb::new();
    let topic = unique("catlog-rerun");
    let produce = |broker: &OwnBroker, n: &str| {
        let status = on(
            broker,
            &["produce", "--rate", "300", "--max-events", n],
            &topic,
            &db,
        )
        .status()
        .unwrap();
        assert!(status.success(), "produce exits 0");
    };

    // The first demo: 600 events, stored, then everything stops.
    produce(&broker, "600");
    let mut consumer = Proc::spawn(on(&broker, &["consume"], &topic, &db), "consume");
    wait_until(Duration::from_secs(60), "the first 600 events", || async {
        db.count(HISTORY).await == 600
    })
    .await;
    assert!(doctor_lag(&broker, &topic, &db).starts_with("PASS"));
    consumer.terminate();

    // The second demo: a fresh broker (its logs start at 0), the old database.
    broker.start_again();
    produce(&broker, "90");
    let before = doctor_lag(&broker, &topic, &db);
    assert!(before.starts_with("FAIL"), "{before}");
    assert!(before.contains("NEW-LOG"), "{before}");
    assert!(before.contains("consume"), "says what to do: {before}");
    let published: HashSet<Uuid> = log_records(&broker.addr, &topic)
        .await
        .iter()
        .map(|(_, _, r)| event_id(r))
        .collect();
    assert_eq!(published.len(), 90);

    let started = Instant::now();
    let consumer = Proc::spawn(on(&broker, &["consume"], &topic, &db), "consume");
    assert_all_stored_once(&db, &published, &consumer, Duration::from_secs(10)).await;
    eprintln!(
        "new log: {} events published, all stored {:?} after the consumer started",
        published.len(),
        started.elapsed()
    );
    assert_eq!(db.count(HISTORY).await, 690);
    let log = consumer.output();
    assert!(
        log.contains("WARN") && log.contains("log is new") && log.contains("stored_offset"),
        "the consumer says so in its log:\n{log}"
    );
    let resets = db.count("SELECT count(*) FROM log_resets").await;
    assert!(resets >= 1, "the reset is recorded");
    wait_until(Duration::from_secs(10), "doctor to pass again", || async {
        doctor_lag(&broker, &topic, &db).starts_with("PASS")
    })
    .await;
}

#[tokio::test]
async fn broker_killed_mid_load_and_restarted_empty_loses_no_later_event() {
    let mut broker = OwnBroker::start();
    let db = TestDb::new();
    let topic = unique("catlog-restart");
    let port = common::free_port();
    let mut producer = Proc::spawn(on(&broker, &["produce", "--rate", "150"], &topic, &db), "produce");
    let consumer = Proc::spawn(on(&broker, &["consume"], &topic, &db), "consume");
    let mut serve = on(&broker, &["serve"], &topic, &db);
    serve.env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
    let mut server = Proc::spawn(serve, "serve");
    wait_until(Duration::from_secs(60), "events flowing", || async {
        db.count(HISTORY).await >= 300
    })
    .await;

    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    broker.start_again();
    let stored_at_restart = db.count(HISTORY).await;
    wait_until(
        Duration::from_secs(60),
        "the first event of the new log to be stored",
        || async { db.count(HISTORY).await > stored_at_restart },
    )
    .await;
    let recovered = restarted.elapsed();
    wait_until(
        Duration::from_secs(60),
        "the producer to publish again",
        || async { log_records(&broker.addr, &topic).await.len() >= 300 },
    )
    .await;
    assert_eq!(producer.terminate().code(), Some(0), "{}", producer.output());

    let records = log_records(&broker.addr, &topic).await;
    let published: HashSet<Uuid> = records.iter().map(|(_, _, r)| event_id(r)).collect();
    assert_all_stored_once(&db, &published, &consumer, Duration::from_secs(60)).await;
    eprintln!(
        "broker restart: {} records in the new log ({} distinct events), all stored once; \
         the first stored {recovered:?} after the restart",
        records.len(),
        published.len(),
    );
    assert!(
        consumer.output().contains("log is new"),
        "the consumer saw the new log:\n{}",
        consumer.output()
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "serve survives:\n{}",
        server.output()
    );
    wait_until(
        Duration::from_secs(30),
        "serve's stats to show the reset",
        || async {
            let (_, stats) = get_json(&format!("http://127.0.0.1:{port}/api/live/stats")).await;
            let resets = stats["logResets"].as_object().cloned().unwrap_or_default();
            resets.values().any(|n| n.as_i64() >= Some(1)) && stats["newLogs"] == serde_json::json!({})
        },
    )
    .await;
    let (status, body) = get_json(&format!("http://127.0.0.1:{port}/api/live/updates?limit=1")).await;
    assert_eq!(status, 200);
    let newest = body["updates"][0]["event"]["timestamp"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!newest.is_empty(), "serve still answers with the newest update");
    let mut consumer = consumer;
    assert_eq!(
        consumer.terminate().code(),
        Some(0),
        "consume survives and stops cleanly"
    );
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test]
async fn broker_cut_off_for_20_seconds_mid_load_loses_and_duplicates_nothing() {
    let broker = OwnBroker::start();
    let db = TestDb::new();
    let topic = unique("catlog-cut");
    let mut producer = Proc::spawn(on(&broker, &["produce", "--rate", "100"], &topic, &db), "produce");
    let consumer = Proc::spawn(on(&broker, &["consume"], &topic, &db), "consume");
    wait_until(Duration::from_secs(60), "events flowing", || async {
        db.count(HISTORY).await >= 200
    })
    .await;

    broker.proxy.cut();
    let stored_at_cut = db.count(HISTORY).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut consumer = consumer;
    assert!(
        producer.child.try_wait().unwrap().is_none(),
        "produce survives the cut"
    );
    assert!(
        consumer.child.try_wait().unwrap().is_none(),
        "consume survives the cut"
    );
    let restored = Instant::now();
    broker.proxy.restore();
    let stored_at_restore = db.count(HISTORY).await;
    wait_until(Duration::from_secs(60), "ingestion to resume", || async {
        db.count(HISTORY).await > stored_at_restore
    })
    .await;
    let resumed = restored.elapsed();
    wait_until(Duration::from_secs(60), "ingestion to go on", || async {
        db.count(HISTORY).await > stored_at_cut + 100
    })
    .await;
    assert_eq!(producer.terminate().code(), Some(0), "{}", producer.output());

    let records = log_records(&broker.addr, &topic).await;
    let published: HashSet<Uuid> = records.iter().map(|(_, _, r)| event_id(r)).collect();
    assert_all_stored_once(&db, &published, &consumer, Duration::from_secs(60)).await;
    assert_eq!(
        db.count(HISTORY).await,
        published.len() as i64,
        "nothing else stored"
    );
    eprintln!(
        "20 s cut: {} records published ({} retried duplicates), {} events stored once; \
         ingestion resumed {resumed:?} after the cut ended",
        records.len(),
        records.len() - published.len(),
        published.len(),
    );
    assert_eq!(consumer.terminate().code(), Some(0));
}

#[tokio::test]
async fn a_retried_publish_is_counted_once_and_records_without_an_id_still_land() {
    let topic = TestTopic::new(1).await;
    let db = TestDb::new();
    let event = |mal_id: i32, score: &str| {
        format!(
            r#"{{"malId":{mal_id},"title":"Anime {mal_id}","eventType":"SCORE_UPDATE","currentScore":"{score}","popularityChange":"+0.01","timestamp":"2025-08-14T18:30:00.000Z"}}"#
        )
        .into_bytes()
    };
    let with_id = |value: Vec<u8>, id: &str| rskafka::record::Record {
        key: Some(b"1".to_vec()),
        value: Some(value),
        headers: [(
            catlog_live::event::EVENT_ID_HEADER.to_owned(),
            id.as_bytes().to_vec(),
        )]
        .into(),
        timestamp: chrono::Utc::now(),
    };
    let (a, b, c) = (
        Uuid::now_v7().to_string(),
        Uuid::now_v7().to_string(),
        Uuid::now_v7().to_string(),
    );
    let partition = topic.partition(0).await;
    let produce = |records: Vec<rskafka::record::Record>| {
        let partition = &partition;
        async move {
            partition
                .produce(records, rskafka::client::partition::Compression::NoCompression)
                .await
                .unwrap()
        }
    };
    // One event published twice (a retry after a lost acknowledgement)…
    produce(vec![with_id(event(1, "8.00"), &a)]).await;
    produce(vec![with_id(event(1, "8.00"), &a)]).await;
    // …a whole batch published twice…
    let batch = || vec![with_id(event(2, "7.00"), &b), with_id(event(3, "6.00"), &c)];
    produce(batch()).await;
    produce(batch()).await;
    // …a record of another producer, without an id, and one with a broken id.
    topic
        .publish_raw(0, vec![(Some(b"4".to_vec()), Some(event(4, "5.00")))])
        .await;
    produce(vec![with_id(event(5, "4.00"), "not-a-uuid")]).await;

    let consumer = Proc::spawn(catlog(&["consume"], &topic.name, &db.url), "consume");
    wait_until(Duration::from_secs(60), "all 8 records to be read", || async {
        db.count("SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets")
            .await
            == 8
    })
    .await;
    assert_eq!(
        db.count(HISTORY).await,
        4,
        "a, b, c once each, and the record without an id"
    );
    assert_eq!(db.count(COUNTED).await, 4, "event counts agree");
    assert_eq!(
        db.count("SELECT count(*) FROM popularity_events WHERE event_id IS NULL AND mal_id = 4")
            .await,
        1
    );
    let client = db.connect().await;
    let reason: String = client
        .query_one("SELECT reason FROM dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("catlog-event-id"), "{reason}");
    drop(consumer);
}

#[tokio::test]
async fn a_topic_created_again_with_more_partitions_is_read_whole() {
    let topic = TestTopic::new(2).await;
    let db = TestDb::migrated().await;
    topic.publish_simulated(200, 21).await;
    let consumer = Proc::spawn(catlog(&["consume"], &topic.name, &db.url), "consume");
    wait_until(Duration::from_secs(60), "the first 200 events", || async {
        db.count(HISTORY).await == 200
    })
    .await;

    // This broker cannot add partitions to a topic (no CreatePartitions), so
    // the topic is deleted and created again with four: two new partitions,
    // and two that start new logs.
    let controller = topic.client.controller_client().unwrap();
    controller.delete_topic(&topic.name, 5_000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    match controller.create_topic(&topic.name, 4, 1, 5_000).await {
        Ok(()) => {}
        // The consumer's metadata requests may have made the broker create
        // it first, with its default of four partitions.
        Err(rskafka::client::error::Error::ServerError {
            protocol_error: rskafka::client::error::ProtocolError::TopicAlreadyExists,
            ..
        }) => {}
        Err(e) => panic!("cannot create the topic again: {e}"),
    }
    let grown = TestTopic {
        name: topic.name.clone(),
        partitions: 4,
        client: topic.client.clone(),
    };
    grown.publish_simulated(400, 22).await;
    let published: HashSet<Uuid> = log_records(&common::broker(), &topic.name)
        .await
        .iter()
        .map(|(_, _, r)| event_id(r))
        .collect();
    assert_eq!(published.len(), 400);
    assert_all_stored_once(&db, &published, &consumer, Duration::from_secs(60)).await;
    assert_eq!(db.count(HISTORY).await, 600);
    // Partitions 0 and 1 on their second log, 2 and 3 on their first.
    let per_partition = db
        .count("SELECT count(DISTINCT partition)::int8 FROM popularity_events WHERE log_epoch = 1 OR partition >= 2")
        .await;
    assert_eq!(per_partition, 4, "all four partitions were read");
    assert_eq!(
        db.count("SELECT count(*) FROM log_resets").await,
        2,
        "two partitions started new logs"
    );
}

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}
