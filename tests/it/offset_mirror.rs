//! The offset mirror, checked with a client that is not ours: after
//! `consume` stores a topic, kafkajs (as Kafka UI or a lag exporter would)
//! lists the group and reads the same offsets as `consumer_offsets`; with
//! the group coordinator unreachable, ingestion goes on and the mirror
//! catches up afterwards. Each test has a broker of its own (behind a proxy
//! that can refuse chosen APIs), so the group it lists is its consumer's.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::broker::OwnBroker;
use common::kafkajs::{GroupView, read_group};
use common::{Proc, TestDb, TestTopic, catlog, free_port, wait_until};

const GROUP: &str = "catlog-live";
const HISTORY: &str = "SELECT count(*) FROM popularity_events";
const COMMITS: &str = "catlog_offset_mirror_commits_total";
const FAILURES: &str = "catlog_offset_mirror_failures_total";
const LAST_SUCCESS: &str = "catlog_offset_mirror_last_success_timestamp_seconds";
const WAIT: Duration = Duration::from_secs(60);
/// Kafka API keys of the group coordinator's requests.
const FIND_COORDINATOR: i16 = 10;
const OFFSET_COMMIT: i16 = 8;

/// A fresh topic on the test's own broker.
async fn topic_on(broker: &OwnBroker, partitions: i32) -> TestTopic {
    TestTopic::on(&broker.addr, partitions).await
}

/// `consume` on the test's broker, with its metrics at `metrics_port`.
fn consume(broker: &OwnBroker, topic: &TestTopic, db: &TestDb, metrics_port: u16, mirror: bool) -> Proc {
    let mut cmd = catlog(&["consume"], &topic.name, &db.url);
    cmd.env("KAFKA_BROKER", &broker.addr)
        .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("KAFKA_OFFSET_MIRROR", mirror.to_string());
    Proc::spawn(cmd, "consume")
}

/// The group's next offsets as PostgreSQL holds them.
async fn stored_offsets(db: &TestDb, topic: &str) -> BTreeMap<i32, i64> {
    db.connect()
        .await
        .query(
            "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
            &[&GROUP, &topic],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The consumer's `/metrics` text.
async fn metrics_text(port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// One unlabelled metric's value.
async fn metric(port: u16, name: &str) -> Option<f64> {
    metrics_text(port).await.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Waits until kafkajs lists the group and reads `expected` as its offsets;
/// what it read, and how long that took.
async fn until_kafkajs_reads(
    broker: &OwnBroker,
    topic: &str,
    expected: &BTreeMap<i32, i64>,
    within: Duration,
    consumer: &Proc,
) -> (GroupView, Duration) {
    let start = Instant::now();
    loop {
        let last = match read_group(&broker.addr, GROUP, topic).await {
            Ok(view) if view.groups.iter().any(|g| g == GROUP) && view.offsets == *expected => {
                return (view, start.elapsed());
            }
            Ok(view) => view.json,
            Err(error) => error,
        };
        assert!(
            start.elapsed() < within,
            "kafkajs did not read {expected:?} for group {GROUP} within {within:?}; last answer: {last}\n{}",
            consumer.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn offset_mirror_lets_kafkajs_read_the_offsets_postgres_holds() {
    let broker = OwnBroker::start();
    let topic = topic_on(&broker, 3).await;
    let db = TestDb::new();
    topic.publish_simulated(300, 31).await;
    let port = free_port();
    let consumer = consume(&broker, &topic, &db, port, true);

    wait_until(WAIT, "300 events stored", || async {
        db.count(HISTORY).await == 300
    })
    .await;
    let stored = stored_offsets(&db, &topic.name).await;
    assert_eq!(stored.len(), 3, "every partition has a stored offset: {stored:?}");
    assert_eq!(stored.values().sum::<i64>(), 300);
    let (view, took) =
        until_kafkajs_reads(&broker, &topic.name, &stored, Duration::from_secs(15), &consumer).await;
    eprintln!(
        "kafkajs read {} ({took:?} after the last row was stored); consumer_offsets: {stored:?}",
        view.json
    );

    assert!(metric(port, COMMITS).await >= Some(1.0));
    assert_eq!(metric(port, FAILURES).await, Some(0.0), "{}", consumer.output());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = metric(port, LAST_SUCCESS).await.unwrap_or_default();
    assert!(now - last < 60.0, "last success {last}, now {now}");

    // Steady traffic: many batches, at most about one mirror commit a second.
    let commits_before = metric(port, COMMITS).await.unwrap_or_default();
    let batches_before = metric(port, "catlog_batch_commit_seconds_count")
        .await
        .unwrap_or_default();
    let start = Instant::now();
    for burst in 0..20 {
        topic.publish_simulated(10, 100 + burst).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_until(WAIT, "500 events stored", || async {
        db.count(HISTORY).await == 500
    })
    .await;
    let stored = stored_offsets(&db, &topic.name).await;
    until_kafkajs_reads(&broker, &topic.name, &stored, Duration::from_secs(15), &consumer).await;
    let elapsed = start.elapsed();
    let commits = metric(port, COMMITS).await.unwrap_or_default() - commits_before;
    let batches = metric(port, "catlog_batch_commit_seconds_count")
        .await
        .unwrap_or_default()
        - batches_before;
    eprintln!("steady traffic: {batches} batches stored, {commits} mirror commits in {elapsed:?}");
    assert!(
        commits <= elapsed.as_secs_f64() + 2.0,
        "{commits} mirror commits in {elapsed:?}: more than one a second"
    );
}

#[tokio::test]
async fn offset_mirror_catches_up_after_the_group_coordinator_was_unreachable() {
    let broker = OwnBroker::start();
    let topic = topic_on(&broker, 2).await;
    let db = TestDb::new();
    topic.publish_simulated(100, 41).await;
    let port = free_port();
    let consumer = consume(&broker, &topic, &db, port, true);
    wait_until(WAIT, "100 events stored", || async {
        db.count(HISTORY).await == 100
    })
    .await;
    let stored = stored_offsets(&db, &topic.name).await;
    until_kafkajs_reads(&broker, &topic.name, &stored, Duration::from_secs(15), &consumer).await;

    // The coordinator's APIs are refused; everything else passes.
    broker.proxy.block_apis(&[FIND_COORDINATOR, OFFSET_COMMIT]);
    let blocked = Instant::now();
    let failures_before = metric(port, FAILURES).await.unwrap_or_default();
    for burst in 0..10 {
        topic.publish_simulated(30, 200 + burst).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_until(WAIT, "rows to keep landing: 400 stored", || async {
        db.count(HISTORY).await == 400
    })
    .await;
    let stored_while_blocked = Instant::now() - blocked;
    wait_until(
        Duration::from_secs(30),
        "the mirror's failures to be counted",
        || async { metric(port, FAILURES).await.unwrap_or_default() >= failures_before + 2.0 },
    )
    .await;
    let failures = metric(port, FAILURES).await.unwrap_or_default() - failures_before;
    let mut consumer = consumer;
    assert!(
        consumer.child.try_wait().unwrap().is_none(),
        "consume survives:\n{}",
        consumer.output()
    );
    let stored = stored_offsets(&db, &topic.name).await;
    assert_eq!(stored.values().sum::<i64>(), 400);

    broker.proxy.block_apis(&[]);
    let (view, caught_up) =
        until_kafkajs_reads(&broker, &topic.name, &stored, Duration::from_secs(30), &consumer).await;
    eprintln!(
        "coordinator blocked {:?}: 300 rows stored within {stored_while_blocked:?} of the block, \
         {failures} failed mirror attempts; kafkajs read {} {caught_up:?} after the unblock",
        blocked.elapsed() - caught_up,
        view.json
    );

    let log = consumer.output();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot mirror the group's offsets"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per streak of failures:\n{log}");
    let caught_up_line = log.lines().find(|l| l.contains("offset mirror caught up"));
    assert!(caught_up_line.is_some(), "{log}");
    eprintln!(
        "the consumer said:\n{}\n{}",
        warnings[0],
        caught_up_line.unwrap_or_default()
    );
    assert_eq!(consumer.terminate().code(), Some(0), "{}", consumer.output());
}

#[tokio::test]
async fn offset_mirror_switched_off_leaves_kafka_without_the_group() {
    let broker = OwnBroker::start();
    let topic = topic_on(&broker, 1).await;
    let db = TestDb::new();
    topic.publish_simulated(50, 51).await;
    let port = free_port();
    let consumer = consume(&broker, &topic, &db, port, false);
    wait_until(WAIT, "50 events stored", || async {
        db.count(HISTORY).await == 50
    })
    .await;
    // Longer than a mirror round.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let view = read_group(&broker.addr, GROUP, &topic.name)
        .await
        .unwrap_or_else(|e| panic!("kafkajs: {e}"));
    assert!(!view.groups.iter().any(|g| g == GROUP), "{}", view.json);
    assert!(view.offsets.is_empty(), "{}", view.json);
    assert!(
        !metrics_text(port).await.contains(COMMITS),
        "no mirror, no mirror metrics"
    );
    drop(consumer);
}
