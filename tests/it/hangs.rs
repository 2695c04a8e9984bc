//! Hung connections, the fault networks have most: a peer that keeps its
//! connection open and carries nothing (a stop-the-world pause, a firewall
//! that drops a flow without a reset, a partition). The real binary runs as
//! child processes; one of them reaches PostgreSQL through a proxy the test
//! *freezes* (every connection held open, nothing forwarded). What was
//! published is counted against what was stored, and what a client
//! received against the history.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::{OwnBroker, Proxy};
use common::{Proc, TestDb, TestTopic, broker, catlog, event_id, free_port, log_records, wait_until};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::faults::assert_all_stored_once;

/// Short limits, so the faults play out in seconds: PostgreSQL ends a
/// consumer's silent lease session after 6 s, and any query or lock wait
/// after 3 s.
const SESSION_TIMEOUT: &str = "6s";
const DB_TIMEOUT: &str = "3s";

fn with_limits(mut cmd: Command) -> Command {
    cmd.env("CONSUMER_SESSION_TIMEOUT", SESSION_TIMEOUT)
        .env("DB_TIMEOUT", DB_TIMEOUT)
        .env("KAFKA_OFFSET_MIRROR", "false");
    cmd
}

/// The newest offset stored per partition.
async fn newest_offsets(db: &TestDb) -> BTreeMap<i32, i64> {
    db.connect()
        .await
        .query(
            r#"SELECT partition, max("offset") FROM popularity_events GROUP BY partition"#,
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Sessions of the test's database idle inside a transaction that holds an
/// advisory lock: a writer frozen mid-batch, holding the commit order.
async fn frozen_mid_batch(db: &TestDb) -> i64 {
    db.count(&format!(
        "SELECT count(DISTINCT a.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND a.state = 'idle in transaction' \
           AND a.datname = current_database() AND a.application_name = '{A_NAME}'"
    ))
    .await
}

/// Consumer A's sessions, as `pg_stat_activity` names them: B's, between
/// its last statement and its commit, hold the same lock for a moment.
const A_NAME: &str = "catlog-live-a";

fn acquired(consumer: &Proc) -> usize {
    consumer.output().matches("acquired partition").count()
}

/// Consumer A reaches PostgreSQL through `proxy`, consumer B directly;
/// events flow on all four partitions and both hold some.
async fn two_consumers(db: &TestDb, topic: &TestTopic, proxy: &Proxy) -> (Proc, Proc, Proc) {
    let a = Proc::spawn(
        with_limits(catlog(
            &["consume"],
            &topic.name,
            &format!("{}?application_name={A_NAME}", db.url_via(proxy.port())),
        )),
        "consume-a",
    );
    wait_until(
        Duration::from_secs(30),
        "consumer A to hold partitions",
        || async { acquired(&a) >= 1 },
    )
    .await;
    let b = Proc::spawn(
        with_limits(catlog(&["consume"], &topic.name, &db.url)),
        "consume-b",
    );
    let producer = Proc::spawn(
        catlog(
            &["produce", "--rate", "100", "--seed", "15"],
            &topic.name,
            &db.url,
        ),
        "produce",
    );
    wait_until(
        Duration::from_secs(60),
        "both consumers to share the partitions and events to flow on all four",
        || async { acquired(&b) >= 1 && newest_offsets(db).await.len() == 4 },
    )
    .await;
    (a, b, producer)
}

/// Waits until every partition stores a record newer than `before`; how long it took.
async fn every_partition_moves(db: &TestDb, before: &BTreeMap<i32, i64>, what: &str) -> Duration {
    let started = Instant::now();
    wait_until(Duration::from_secs(90), what, || async {
        let now = newest_offsets(db).await;
        before.iter().all(|(p, o)| now.get(p).is_some_and(|n| n > o))
    })
    .await;
    started.elapsed()
}

/// After the freeze: the producer stops, and every published event is
/// stored once, nothing else.
async fn all_published_stored_once(db: &TestDb, topic: &TestTopic, producer: Proc, consumer: &Proc) -> usize {
    all_published_on_stored_once(&broker(), db, &topic.name, producer, consumer).await
}

/// The same on the broker at `broker`.
async fn all_published_on_stored_once(
    broker: &str,
    db: &TestDb,
    topic: &str,
    mut producer: Proc,
    consumer: &Proc,
) -> usize {
    assert_eq!(producer.terminate().code(), Some(0), "{}", producer.output());
    let records = log_records(broker, topic).await;
    let published: HashSet<Uuid> = records.iter().map(|(_, _, r)| event_id(r)).collect();
    assert_all_stored_once(db, &published, consumer, Duration::from_secs(60)).await;
    assert_eq!(
        db.count("SELECT count(*) FROM popularity_events").await,
        published.len() as i64,
        "nothing else stored"
    );
    published.len()
}

#[tokio::test]
async fn a_consumer_frozen_mid_batch_loses_its_partitions_and_its_late_batch_changes_nothing() {
    let db = TestDb::migrated().await;
    let topic = TestTopic::new(4).await;
    let proxy = Proxy::tcp(db.server_port());
    let (a, b, producer) = two_consumers(&db, &topic, &proxy).await;
    let held_by_b = acquired(&b);

    // A freezes right after asking for the commit-order lock: inside a
    // transaction, holding the lock every writer takes.
    proxy.freeze_after(b"pg_advisory_xact_lock");
    wait_until(
        Duration::from_secs(30),
        "consumer A to freeze mid-batch",
        || async { proxy.is_frozen() },
    )
    .await;
    let frozen = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "A's transaction to sit idle holding the commit lock",
        || async { frozen_mid_batch(&db).await >= 1 },
    )
    .await;
    let before = newest_offsets(&db).await;
    let moving = every_partition_moves(&db, &before, "every partition, A's too, to move on without A").await;
    assert!(
        acquired(&b) > held_by_b,
        "B took A's partitions over:\n{}",
        b.output()
    );
    assert_eq!(
        frozen_mid_batch(&db).await,
        0,
        "no transaction of A's is left holding the lock"
    );

    // A wakes: its late batch is refused, and it says why.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let frozen_for = frozen.elapsed();
    proxy.thaw();
    wait_until(
        Duration::from_secs(30),
        "A to say it lost its partitions",
        || async { a.output().contains("lost its lease") },
    )
    .await;
    let stored = all_published_stored_once(&db, &topic, producer, &b).await;
    eprintln!(
        "frozen mid-batch for {frozen_for:?}: every partition moving again {moving:?} after the freeze; \
         {stored} events published, all stored once"
    );
}

#[tokio::test]
async fn a_consumer_frozen_between_batches_loses_its_partitions_within_the_session_timeout() {
    let db = TestDb::migrated().await;
    let topic = TestTopic::new(4).await;
    let proxy = Proxy::tcp(db.server_port());
    let (a, b, producer) = two_consumers(&db, &topic, &proxy).await;
    let held_by_b = acquired(&b);

    // A freezes as it asks for its next partition lease round.
    proxy.freeze_after(b"pg_locks");
    wait_until(Duration::from_secs(30), "consumer A to freeze", || async {
        proxy.is_frozen()
    })
    .await;
    let frozen = Instant::now();
    let before = newest_offsets(&db).await;
    let moving = every_partition_moves(&db, &before, "every partition, A's too, to move on without A").await;
    assert!(
        acquired(&b) > held_by_b,
        "B took A's partitions over:\n{}",
        b.output()
    );
    let frozen_for = frozen.elapsed();
    proxy.thaw();
    wait_until(
        Duration::from_secs(30),
        "A to notice it lost its leases",
        || async {
            let log = a.output();
            log.contains("partition leases lost") || log.contains("lost its lease")
        },
    )
    .await;
    let stored = all_published_stored_once(&db, &topic, producer, &b).await;
    eprintln!(
        "frozen between batches for {frozen_for:?}: every partition moving again {moving:?} after the freeze; \
         {stored} events published, all stored once"
    );
}

async fn get(url: &str) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url} did not answer: {e}"));
    let status = response.status().as_u16();
    let body = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("{url}: no JSON: {e}"));
    (status, body, started.elapsed())
}

#[tokio::test]
async fn serve_frozen_from_postgres_says_so_and_every_client_gets_what_it_missed() {
    let db = TestDb::migrated().await;
    let topic = TestTopic::new(2).await;
    let proxy = Proxy::tcp(db.server_port());
    let consumer = Proc::spawn(with_limits(catlog(&["consume"], &topic.name, &db.url)), "consume");
    let producer = Proc::spawn(
        catlog(&["produce", "--rate", "40", "--seed", "16"], &topic.name, &db.url),
        "produce",
    );
    let port = free_port();
    let mut serve = with_limits(catlog(&["serve"], &topic.name, &db.url_via(proxy.port())));
    serve.env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
    let server = Proc::spawn(serve, "serve");
    server.wait_for_port(port, Duration::from_secs(30));
    let base = format!("http://127.0.0.1:{port}");

    // A client that records every update id it gets, in order.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    let (ids_tx, mut ids) = tokio::sync::mpsc::unbounded_channel::<i64>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Text(text) = frame {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "update" {
                    let _ = ids_tx.send(message["id"].as_i64().unwrap());
                }
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), ids.recv())
        .await
        .expect("an update before the freeze")
        .unwrap();

    proxy.freeze();
    let frozen = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut not_ready = None;
    while not_ready.is_none() {
        let (status, body, took) = get(&format!("{base}/readyz")).await;
        slowest = slowest.max(took);
        if status == 503 {
            not_ready = Some((body, frozen.elapsed()));
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(60),
            "/readyz stayed 200 while frozen"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (body, detected) = not_ready.unwrap_or_default();
    let reason = body["error"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("PostgreSQL"), "names the cause: {body}");
    wait_until(
        Duration::from_secs(30),
        "stats to say the data is delayed",
        || async {
            let (_, stats, _) = get(&format!("{base}/api/live/stats")).await;
            stats["delayed"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("history"))
                && stats["asOf"].is_string()
                && stats["ageSeconds"].is_number()
        },
    )
    .await;
    let (_, stats, took) = get(&format!("{base}/api/live/stats")).await;
    slowest = slowest.max(took);
    let frozen_for = frozen.elapsed();

    proxy.thaw();
    let thawed = Instant::now();
    wait_until(Duration::from_secs(60), "/readyz to say ready again", || async {
        get(&format!("{base}/readyz")).await.0 == 200
    })
    .await;
    let recovered = thawed.elapsed();
    let mut producer = producer;
    assert_eq!(producer.terminate().code(), Some(0));
    let published = log_records(&broker(), &topic.name).await.len() as i64;
    wait_until(Duration::from_secs(60), "every event stored", || async {
        db.count("SELECT count(*) FROM popularity_events").await == published
    })
    .await;
    let last: i64 = db.count("SELECT max(id) FROM popularity_events").await;
    let mut got = vec![first];
    while got.last() != Some(&last) {
        let id = tokio::time::timeout(Duration::from_secs(30), ids.recv())
            .await
            .unwrap_or_else(|_| panic!("the client stopped at {:?} of {last}", got.last()))
            .unwrap();
        got.push(id);
    }
    reader.abort();
    let history: Vec<i64> = db
        .connect()
        .await
        .query(
            "SELECT id FROM popularity_events WHERE id >= $1 ORDER BY id",
            &[&first],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        got, history,
        "the client got every update after its first, once, in order"
    );
    eprintln!(
        "serve frozen for {frozen_for:?}: /readyz 503 after {detected:?} (\"{reason}\"), slowest answer \
         {slowest:?}; stats said {}; ready again {recovered:?} after the thaw; the client got all {} \
         updates once, in order",
        stats["delayed"],
        got.len()
    );
    drop(consumer);
}

/// `doctor`'s lag line, as a user runs it.
fn doctor_lag(topic: &str, db: &TestDb) -> String {
    doctor_lag_on(&broker(), topic, db)
}

fn doctor_lag_on(broker: &str, topic: &str, db: &TestDb) -> String {
    let mut cmd = with_limits(catlog(&["doctor"], topic, &db.url));
    cmd.env("RUST_LOG", "off")
        .env("CONSUMER_STALLED_AFTER", "4s")
        .env("KAFKA_BROKER", broker);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("lag"))
        .unwrap_or_else(|| panic!("no lag line in:\n{stdout}"))
        .to_owned()
}

#[tokio::test]
async fn a_stalled_group_is_said_by_doctor_stats_and_metrics_and_catches_up() {
    let db = TestDb::migrated().await;
    let topic = TestTopic::new(2).await;
    let proxy = Proxy::tcp(db.server_port());
    let stalled_after = |mut cmd: Command| {
        cmd.env("CONSUMER_STALLED_AFTER", "4s");
        cmd
    };
    let consumer = Proc::spawn(
        stalled_after(with_limits(catlog(
            &["consume"],
            &topic.name,
            &db.url_via(proxy.port()),
        ))),
        "consume",
    );
    let producer = Proc::spawn(
        catlog(&["produce", "--rate", "40", "--seed", "17"], &topic.name, &db.url),
        "produce",
    );
    let port = free_port();
    let mut serve = stalled_after(with_limits(catlog(&["serve"], &topic.name, &db.url)));
    serve.env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
    let server = Proc::spawn(serve, "serve");
    server.wait_for_port(port, Duration::from_secs(30));
    let base = format!("http://127.0.0.1:{port}");
    wait_until(
        Duration::from_secs(60),
        "events stored on both partitions",
        || async { newest_offsets(&db).await.len() == 2 },
    )
    .await;
    assert!(doctor_lag(&topic.name, &db).starts_with("PASS"));

    // The only consumer freezes: records keep coming, nothing is committed.
    proxy.freeze();
    let frozen = Instant::now();
    let waiting = |stats: &serde_json::Value| -> i64 {
        stats["lag"]
            .as_object()
            .map_or(0, |l| l.values().filter_map(|v| v.as_i64()).sum())
    };
    let first_lag = waiting(&get(&format!("{base}/api/live/stats")).await.1);
    wait_until(
        Duration::from_secs(60),
        "stats to say the group is stalled",
        || async {
            let (_, stats, _) = get(&format!("{base}/api/live/stats")).await;
            stats["stalled"].as_object().is_some_and(|s| !s.is_empty())
                && stats["delayed"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("consumers"))
        },
    )
    .await;
    let detected = frozen.elapsed();
    let (_, stats, _) = get(&format!("{base}/api/live/stats")).await;
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("catlog_consumer_stalled{") && l.ends_with(" 1")),
        "a stalled partition in the metrics:\n{metrics}"
    );
    let doctor = doctor_lag(&topic.name, &db);
    assert!(doctor.starts_with("FAIL"), "{doctor}");
    assert!(
        doctor.contains("stalled") && doctor.contains("no commit for"),
        "{doctor}"
    );
    let lag_at_detection = waiting(&stats);
    assert!(
        lag_at_detection > first_lag,
        "the lag grows during the stall: {first_lag} then {lag_at_detection}"
    );
    let frozen_for = frozen.elapsed();

    proxy.thaw();
    let thawed = Instant::now();
    wait_until(Duration::from_secs(60), "doctor to pass again", || async {
        doctor_lag(&topic.name, &db).starts_with("PASS")
    })
    .await;
    let recovered = thawed.elapsed();
    let stored = all_published_stored_once(&db, &topic, producer, &consumer).await;
    eprintln!(
        "lone consumer frozen for {frozen_for:?}: stalled in stats after {detected:?} (lag {lag_at_detection}, \
         \"{}\"); doctor said: {doctor}; PASS again {recovered:?} after the thaw; {stored} events, all stored once",
        stats["delayed"]["reason"].as_str().unwrap_or_default()
    );
}

/// A process of the pipeline on `broker` (through its proxy), named to the
/// broker as `client_id` so the proxy can freeze it alone, with a short
/// broker request timeout.
fn on_broker(args: &[&str], broker: &OwnBroker, topic: &str, db: &TestDb, client_id: &str) -> Command {
    let mut cmd = with_limits(catlog(args, topic, &db.url));
    cmd.env("KAFKA_BROKER", &broker.addr)
        .env("KAFKA_CLIENT_ID", client_id)
        .env("KAFKA_REQUEST_TIMEOUT", "2s")
        .env("CONSUMER_STALLED_AFTER", "4s");
    cmd
}

/// A broker of the test's own, a database, a 2-partition topic, and a
/// consumer named "consume" to the broker.
async fn consumer_on_own_broker() -> (OwnBroker, TestDb, TestTopic, Proc) {
    let broker = OwnBroker::start();
    let db = TestDb::migrated().await;
    let topic = TestTopic::on(&broker.addr, 2).await;
    let consumer = Proc::spawn(
        on_broker(&["consume"], &broker, &topic.name, &db, "consume"),
        "consume",
    );
    (broker, db, topic, consumer)
}

/// "N records waiting" in a doctor line.
fn records_waiting(doctor: &str) -> i64 {
    doctor
        .split(" records waiting")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no records waiting in: {doctor}"))
}

#[tokio::test]
async fn consume_frozen_from_the_broker_grows_the_lag_fails_doctor_and_catches_up() {
    let (broker, db, topic, consumer) = consumer_on_own_broker().await;
    let producer = Proc::spawn(
        on_broker(
            &["produce", "--rate", "40", "--seed", "19"],
            &broker,
            &topic.name,
            &db,
            "produce",
        ),
        "produce",
    );
    wait_until(
        Duration::from_secs(60),
        "events stored on both partitions",
        || async { newest_offsets(&db).await.len() == 2 },
    )
    .await;
    let doctor = || doctor_lag_on(&broker.addr, &topic.name, &db);
    assert!(doctor().starts_with("PASS"), "{}", doctor());

    // Only the consumer's connections to the broker hang; the producer,
    // doctor and PostgreSQL go on.
    broker.proxy.freeze_client("consume");
    let frozen = Instant::now();
    wait_until(Duration::from_secs(60), "doctor to FAIL on the stall", || async {
        doctor().starts_with("FAIL")
    })
    .await;
    let detected = frozen.elapsed();
    let first = doctor();
    assert!(
        first.contains("stalled") && first.contains("no commit for"),
        "{first}"
    );
    wait_until(
        Duration::from_secs(30),
        "the consumer to say the broker does not answer",
        || async {
            consumer
                .output()
                .contains("did not answer a fetch request within 2s")
        },
    )
    .await;
    let later = doctor();
    assert!(later.starts_with("FAIL"), "{later}");
    let (waiting_first, waiting_later) = (records_waiting(&first), records_waiting(&later));
    assert!(
        waiting_later > waiting_first,
        "the lag grows during the stall: {first} then {later}"
    );
    let log = consumer.output();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("cannot read the partition from the broker"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "one warning per partition's streak, not one per retry ({warnings}):\n{log}"
    );
    let frozen_for = frozen.elapsed();

    broker.proxy.thaw();
    let thawed = Instant::now();
    wait_until(Duration::from_secs(60), "doctor to pass again", || async {
        doctor().starts_with("PASS")
    })
    .await;
    let recovered = thawed.elapsed();
    let stored = all_published_on_stored_once(&broker.addr, &db, &topic.name, producer, &consumer).await;
    eprintln!(
        "consume frozen from the broker for {frozen_for:?}: doctor FAIL after {detected:?} ({waiting_first} \
         then {waiting_later} records waiting: \"{later}\"); PASS again {recovered:?} after the thaw; \
         {stored} events, all stored once"
    );
}

#[tokio::test]
async fn produce_frozen_from_the_broker_retries_with_the_same_ids_and_loses_or_doubles_nothing() {
    const EVENTS: usize = 1_200;
    let (broker, db, topic, consumer) = consumer_on_own_broker().await;
    let events = EVENTS.to_string();
    let mut producer = Proc::spawn(
        on_broker(
            &[
                "produce",
                "--rate",
                "100",
                "--seed",
                "23",
                "--max-events",
                &events,
            ],
            &broker,
            &topic.name,
            &db,
            "produce",
        ),
        "produce",
    );
    wait_until(Duration::from_secs(60), "some events stored", || async {
        db.count("SELECT count(*) FROM popularity_events").await > 100
    })
    .await;

    broker.proxy.freeze_client("produce");
    let frozen = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "the producer to say its publish went unanswered",
        || async {
            producer
                .output()
                .contains("did not answer a produce request within 2s")
        },
    )
    .await;
    let detected = frozen.elapsed();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let frozen_for = frozen.elapsed();
    broker.proxy.thaw();
    let thawed = Instant::now();
    wait_until(Duration::from_secs(90), "the producer to finish", || async {
        producer.output().contains("producer finished")
    })
    .await;
    let finished = thawed.elapsed();
    assert_eq!(producer.terminate().code(), Some(0), "{}", producer.output());
    let log = producer.output();
    assert!(log.contains(&format!("sent={EVENTS}")), "{log}");
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("publish failed"))
        .count();

    let records = log_records(&broker.addr, &topic.name).await;
    let published: HashSet<Uuid> = records.iter().map(|(_, _, r)| event_id(r)).collect();
    assert_eq!(
        published.len(),
        EVENTS,
        "every event the producer made is in the log"
    );
    assert_all_stored_once(&db, &published, &consumer, Duration::from_secs(60)).await;
    assert_eq!(
        db.count("SELECT count(*) FROM popularity_events").await,
        EVENTS as i64,
        "each event stored once"
    );
    eprintln!(
        "produce frozen from the broker for {frozen_for:?}: the timeout said after {detected:?} \
         ({warnings} warning lines); finished {finished:?} after the thaw; {EVENTS} events made, \
         {} records in the log ({} published twice), {EVENTS} stored, 0 lost, 0 counted twice",
        records.len(),
        records.len() - published.len()
    );
}
