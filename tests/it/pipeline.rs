//! The pipeline on the real broker and the real PostgreSQL: what another
//! program publishes lands in the tables, poison becomes dead letters, and
//! the current state is never overwritten by an older event.

use crate::common;

use std::time::Duration;

use catlog_live::event::Event;
use common::{Proc, TestDb, TestTopic, catlog, wait_until};
use serde_json::Value;

const SAMPLES: [&str; 3] = [
    r#"{"malId":1,"title":"Cowboy Bebop","eventType":"SCORE_UPDATE","currentScore":"8.75","popularityChange":"+0.05","timestamp":"2025-08-14T18:30:00.000Z"}"#,
    r#"{"malId":5114,"title":"Fullmetal Alchemist: Brotherhood","eventType":"MEMBER_UPDATE","liveMembers":125000,"popularityChange":"+0.8","timestamp":"2025-08-14T18:31:00.000Z"}"#,
    r#"{"malId":9253,"title":"Steins;Gate","eventType":"TRENDING_CHANGE","trendingRank":15,"popularityChange":"+2.3","timestamp":"2025-08-14T18:32:00.000Z"}"#,
];

const WAIT: Duration = Duration::from_secs(60);

fn consumer(topic: &TestTopic, db: &TestDb) -> Proc {
    Proc::spawn(catlog(&["consume"], &topic.name, &db.url), "consume")
}

async fn wait_for_rows(db: &TestDb, sql: &str, n: i64, consumer: &Proc) {
    wait_until(WAIT, &format!("{n} rows from `{sql}`"), || async {
        let got = db.count(sql).await;
        assert!(
            got <= n,
            "more rows than records: {got} > {n}\n{}",
            consumer.output()
        );
        got == n
    })
    .await;
}

#[tokio::test]
async fn seed_samples_published_by_another_program_reach_the_monitoring_view() {
    let topic = TestTopic::new(1).await;
    let db = TestDb::new();
    let keys = ["1", "5114", "9253"];
    let records = keys
        .iter()
        .zip(SAMPLES)
        .map(|(k, v)| (Some(k.as_bytes().to_vec()), Some(v.as_bytes().to_vec())))
        .collect();
    topic.publish_raw(0, records).await;

    let mut consumer = consumer(&topic, &db);
    wait_for_rows(&db, "SELECT count(*) FROM popularity_events", 3, &consumer).await;
    wait_for_rows(&db, "SELECT count(*) FROM live_popularity", 3, &consumer).await;

    // The original monitoring query, unchanged, as a person would type it.
    let client = db.connect().await;
    let messages = client
        .simple_query(r#"SELECT * FROM "LivePopularity" ORDER BY "lastUpdate" DESC LIMIT 10;"#)
        .await
        .unwrap();
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 3);
    let columns: Vec<_> = rows[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        columns,
        [
            "malId",
            "title",
            "currentScore",
            "liveMembers",
            "trendingRank",
            "popularityChange",
            "lastUpdate"
        ]
    );
    let row = |i: usize| -> Vec<Option<&str>> { (0..7).map(|c| rows[i].get(c)).collect() };
    assert_eq!(
        row(0)[..5],
        [Some("9253"), Some("Steins;Gate"), None, None, Some("15")]
    );
    assert_eq!(row(0)[5], Some("2.3"));
    assert_eq!(
        row(1)[..5],
        [
            Some("5114"),
            Some("Fullmetal Alchemist: Brotherhood"),
            None,
            Some("125000"),
            None
        ]
    );
    assert_eq!(
        row(2)[..5],
        [Some("1"), Some("Cowboy Bebop"), Some("8.75"), None, None]
    );
    assert!(row(2)[6].unwrap().starts_with("2025-08-14 18:30:00"));

    let offsets = db.count("SELECT next_offset FROM consumer_offsets").await;
    assert_eq!(offsets, 3, "the next offset to read is stored with the rows");
    assert_eq!(
        consumer.terminate().code(),
        Some(0),
        "SIGTERM ends consume cleanly"
    );
}

#[tokio::test]
async fn producer_records_pass_our_validator_and_the_seed_format() {
    let topic = TestTopic::new(3).await;
    let db = TestDb::new();
    let status = catlog(
        &["produce", "--rate", "2000", "--max-events", "600", "--seed", "42"],
        &topic.name,
        &db.url,
    )
    .status()
    .unwrap();
    assert!(
        status.success(),
        "produce exits 0 after its last record is acknowledged"
    );

    let records = topic.read_all().await;
    assert_eq!(records.len(), 600);
    let score = regex::Regex::new(r"^\d{1,2}\.\d{2}$").unwrap();
    let change = regex::Regex::new(r"^[+-]\d+(\.\d+)?$").unwrap();
    let stamp = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$").unwrap();
    let mut types = std::collections::BTreeSet::new();
    for (partition, _, key, value) in &records {
        let event =
            Event::from_bytes(value).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(value)));
        assert_eq!(key, &event.key());
        assert_eq!(*partition, catlog_live::kafka::partition_for(key, 3));

        let json: serde_json::Map<String, Value> = serde_json::from_slice(value).unwrap();
        let names: Vec<&str> = json.keys().map(String::as_str).collect();
        let kind = json["eventType"].as_str().unwrap();
        types.insert(kind.to_owned());
        let measure = match kind {
            "SCORE_UPDATE" => "currentScore",
            "MEMBER_UPDATE" => "liveMembers",
            "TRENDING_CHANGE" => "trendingRank",
            other => panic!("unknown type {other}"),
        };
        let mut expected = vec![
            "malId",
            "title",
            "eventType",
            measure,
            "popularityChange",
            "timestamp",
        ];
        expected.sort_unstable();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, expected);
        assert!(json["malId"].is_u64());
        assert!(json["title"].is_string());
        match measure {
            "currentScore" => assert!(score.is_match(json[measure].as_str().unwrap())),
            _ => assert!(json[measure].is_u64()),
        }
        assert!(change.is_match(json["popularityChange"].as_str().unwrap()));
        assert!(stamp.is_match(json["timestamp"].as_str().unwrap()));
    }
    assert_eq!(types.len(), 3, "all three event types appear");
    let ids: std::collections::HashSet<_> = common::log_records(&common::broker(), &topic.name)
        .await
        .iter()
        .map(|(_, _, record)| common::event_id(record))
        .collect();
    assert_eq!(ids.len(), 600, "every record carries an event id of its own");

    // Same seed, same sequence (timestamps aside).
    let again = TestTopic::new(3).await;
    let status = catlog(
        &["produce", "--rate", "2000", "--max-events", "600", "--seed", "42"],
        &again.name,
        &db.url,
    )
    .status()
    .unwrap();
    assert!(status.success());
    let strip = |records: Vec<(i32, i64, Vec<u8>, Vec<u8>)>| -> Vec<(i32, i64, Value)> {
        records
            .into_iter()
            .map(|(p, o, _, v)| {
                let mut json: Value = serde_json::from_slice(&v).unwrap();
                json.as_object_mut().unwrap().remove("timestamp");
                (p, o, json)
            })
            .collect()
    };
    assert_eq!(strip(records), strip(again.read_all().await));
}

/// Every kind of invalid record DESIGN §2 names, with a word its reason must contain.
fn poison() -> Vec<(&'static str, Option<Vec<u8>>, &'static str)> {
    let sample = SAMPLES[0];
    let with = |from: &str, to: &str| Some(sample.replace(from, to).into_bytes());
    vec![
        ("bad JSON", Some(b"{\"malId\": 1, ".to_vec()), "JSON"),
        (
            "bad UTF-8",
            Some(b"{\"malId\":1,\"title\":\"\xff\xfe\"}".to_vec()),
            "UTF-8",
        ),
        ("empty value", Some(Vec::new()), "empty"),
        ("null value", None, "empty"),
        ("not an object", Some(b"[1,2,3]".to_vec()), "object"),
        ("wrong type", with(r#""malId":1"#, r#""malId":"one""#), "malId"),
        (
            "malId out of range",
            with(r#""malId":1"#, r#""malId":0"#),
            "malId",
        ),
        ("missing title", with(r#""title":"Cowboy Bebop","#, ""), "title"),
        ("title too long", with("Cowboy Bebop", &"x".repeat(301)), "title"),
        (
            "unknown event type",
            with("SCORE_UPDATE", "VIEW_UPDATE"),
            "eventType",
        ),
        (
            "score out of range",
            with(r#""8.75""#, r#""10.5""#),
            "currentScore",
        ),
        (
            "missing score",
            with(r#""currentScore":"8.75","#, ""),
            "currentScore",
        ),
        ("bad change", with(r#""+0.05""#, r#""up""#), "popularityChange"),
        (
            "bad timestamp",
            with("2025-08-14T18:30:00.000Z", "yesterday"),
            "timestamp",
        ),
        (
            "members below zero",
            Some(SAMPLES[1].replace("125000", "-5").into_bytes()),
            "liveMembers",
        ),
        (
            "rank below one",
            Some(SAMPLES[2].replace(":15,", ":0,").into_bytes()),
            "trendingRank",
        ),
        (
            "over 64 KiB",
            Some(format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000)).into_bytes()),
            "limit",
        ),
    ]
}

#[tokio::test]
async fn consumer_survives_poison_messages_as_dead_letters() {
    let topic = TestTopic::new(1).await;
    let db = TestDb::new();
    let poison = poison();
    let mut records = vec![(Some(b"1".to_vec()), Some(SAMPLES[0].as_bytes().to_vec()))];
    records.extend(
        poison
            .iter()
            .map(|(_, value, _)| (Some(b"1".to_vec()), value.clone())),
    );
    records.push((Some(b"9253".to_vec()), Some(SAMPLES[2].as_bytes().to_vec())));
    let total = records.len() as i64;
    topic.publish_raw(0, records).await;

    let mut consumer = consumer(&topic, &db);
    wait_for_rows(
        &db,
        "SELECT count(*) FROM dead_letters",
        poison.len() as i64,
        &consumer,
    )
    .await;
    wait_for_rows(&db, "SELECT count(*) FROM popularity_events", 2, &consumer).await;

    let client = db.connect().await;
    let dead = client
        .query(
            r#"SELECT "offset", payload, reason, topic, partition FROM dead_letters ORDER BY "offset""#,
            &[],
        )
        .await
        .unwrap();
    for (row, (what, value, word)) in dead.iter().zip(&poison) {
        let reason: String = row.get("reason");
        assert!(
            reason.contains(word),
            "{what}: reason {reason:?} should mention {word}"
        );
        let payload: Option<Vec<u8>> = row.get("payload");
        assert_eq!(
            payload.unwrap_or_default(),
            value.clone().unwrap_or_default(),
            "{what}: raw bytes kept"
        );
        assert_eq!(row.get::<_, String>("topic"), topic.name);
        assert_eq!(row.get::<_, i32>("partition"), 0);
    }
    let dead_offsets: Vec<i64> = dead.iter().map(|r| r.get(0)).collect();
    assert_eq!(dead_offsets, (1..total - 1).collect::<Vec<_>>());

    // The valid records before and after the poison landed; the group moved past all of it.
    let landed: Vec<i64> = client
        .query(r#"SELECT "offset" FROM popularity_events ORDER BY "offset""#, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(landed, [0, total - 1]);
    assert_eq!(db.count("SELECT next_offset FROM consumer_offsets").await, total);
    assert_eq!(consumer.terminate().code(), Some(0));
}

#[tokio::test]
async fn older_event_never_overwrites_newer_state() {
    let topic = TestTopic::new(1).await;
    let db = TestDb::new();
    let score = |value: &str, time: &str| {
        let json = SAMPLES[0]
            .replace("8.75", value)
            .replace("2025-08-14T18:30:00.000Z", time);
        (Some(b"1".to_vec()), Some(json.into_bytes()))
    };
    let members = |value: &str, time: &str| {
        let json = SAMPLES[1]
            .replace("125000", value)
            .replace("2025-08-14T18:31:00.000Z", time);
        (Some(b"5114".to_vec()), Some(json.into_bytes()))
    };
    // Within one batch: the newer score arrives first.
    topic
        .publish_raw(
            0,
            vec![
                score("9.00", "2025-08-14T19:00:00.000Z"),
                score("7.00", "2025-08-14T18:00:00.000Z"),
            ],
        )
        .await;
    let consumer = consumer(&topic, &db);
    wait_for_rows(&db, "SELECT count(*) FROM popularity_events", 2, &consumer).await;

    // Across batches: a late, older member count after a newer one.
    topic
        .publish_raw(0, vec![members("200000", "2025-08-14T19:00:00.000Z")])
        .await;
    wait_for_rows(&db, "SELECT count(*) FROM popularity_events", 3, &consumer).await;
    topic
        .publish_raw(
            0,
            vec![
                members("100000", "2025-08-14T18:00:00.000Z"),
                score("8.00", "2025-08-14T18:30:00.000Z"),
            ],
        )
        .await;
    wait_for_rows(&db, "SELECT count(*) FROM popularity_events", 5, &consumer).await;

    let client = db.connect().await;
    let bebop = client
        .query_one(
            "SELECT current_score::text, event_count, last_update = '2025-08-14T19:00:00Z' FROM live_popularity WHERE mal_id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(bebop.get::<_, String>(0), "9.00", "the 19:00 score stays");
    assert_eq!(bebop.get::<_, i64>(1), 3, "every event is counted, old or not");
    assert!(bebop.get::<_, bool>(2));
    let fmab = client
        .query_one(
            "SELECT live_members, event_count FROM live_popularity WHERE mal_id = 5114",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(fmab.get::<_, i64>(0), 200_000, "the 19:00 member count stays");
    assert_eq!(fmab.get::<_, i64>(1), 2);
}

#[tokio::test]
async fn a_standalone_consumer_exposes_its_metrics() {
    let topic = TestTopic::new(1).await;
    let db = TestDb::new();
    let records = SAMPLES
        .iter()
        .map(|v| (Some(b"1".to_vec()), Some(v.as_bytes().to_vec())))
        .collect();
    topic.publish_raw(0, records).await;
    let port = common::free_port();
    let mut cmd = catlog(&["consume"], &topic.name, &db.url);
    cmd.env("METRICS_ADDR", format!("127.0.0.1:{port}"));
    let consumer = Proc::spawn(cmd, "consume");
    wait_for_rows(&db, "SELECT count(*) FROM popularity_events", 3, &consumer).await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_until(WAIT, "the consumer's counters", || async {
        let text = reqwest::get(&url)
            .await
            .ok()
            .map(|r| async { r.text().await.unwrap_or_default() });
        match text {
            Some(body) => body.await.contains("catlog_events_consumed_total 3"),
            None => false,
        }
    })
    .await;
    // The same HTTP front door as `serve`: anything else is a JSON 404 that
    // says what is there, and an oversized head is refused in JSON.
    let other = reqwest::get(format!("http://127.0.0.1:{port}/api/live/stats"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(other.status(), 404);
    let body: serde_json::Value = other.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["error"], "not found: this server only has /metrics");
    let huge = reqwest::Client::new()
        .get(&url)
        .header("x-filler", "x".repeat(64 * 1024))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        huge.status(),
        431,
        "an oversized head is refused before the route"
    );
}

#[tokio::test]
async fn titles_and_times_are_stored_exactly_as_sent() {
    let topic = TestTopic::new(1).await;
    let db = TestDb::new();
    // What a CSV or text encoding could trip on: quotes, commas, line
    // breaks, a line that is only `\.`, backslashes, tabs, any script, the
    // text format's own null, a carriage return; and a time finer than a
    // microsecond (stored cut to one, whichever statement writes it).
    let titles = [
        "Say \"I love you\"",
        "Re:Zero, Starting Life",
        "Two\nlines",
        "before\n\\.\nafter",
        "C:\\path\\to\tanime",
        "進撃の巨人 — ½ 🎉",
        ",",
        "\\N",
        "carriage\rreturn",
    ];
    let records = titles
        .iter()
        .enumerate()
        .map(|(i, title)| {
            let json = serde_json::json!({
                "malId": 100 + i,
                "title": title,
                "eventType": "SCORE_UPDATE",
                "currentScore": "8.75",
                "popularityChange": "-0.05",
                "timestamp": format!("2025-08-14T18:30:0{i}.123456{}Z", if i % 2 == 1 { "789" } else { "" }),
            });
            (Some(b"k".to_vec()), Some(json.to_string().into_bytes()))
        })
        .collect();
    topic.publish_raw(0, records).await;
    let consumer = consumer(&topic, &db);
    wait_for_rows(
        &db,
        "SELECT count(*) FROM popularity_events",
        titles.len() as i64,
        &consumer,
    )
    .await;

    let client = db.connect().await;
    let stored = client
        .query(
            "SELECT title, popularity_change::text, event_time = '2025-08-14T18:30:00.123456Z'::timestamptz \
                    + (mal_id - 100) * interval '1 second' \
             FROM popularity_events ORDER BY mal_id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<String> = stored.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, titles);
    for row in &stored {
        assert_eq!(row.get::<_, String>(1), "-0.05");
        assert!(row.get::<_, bool>(2), "the time to the microsecond");
    }
}

#[tokio::test]
async fn a_batch_the_database_refuses_while_the_next_is_on_its_way_costs_one_dead_letter_and_nothing_else() {
    // A trigger refuses one title, as a constraint would: its batch fails
    // while the writer has already sent the next one behind it. That one is
    // rolled back and sent again; the refused record becomes a dead letter
    // in the database's words; every other event is stored and counted once.
    let topic = TestTopic::new(1).await;
    let db = TestDb::migrated().await;
    db.connect()
        .await
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
                 IF NEW.title = 'Poison' THEN \
                     RAISE EXCEPTION 'no poison here' USING ERRCODE = 'check_violation'; \
                 END IF; \
                 RETURN NEW; \
             END $$; \
             CREATE TRIGGER refuse_poison BEFORE INSERT ON popularity_events \
                 FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .await
        .unwrap();
    let n: i64 = 6_000;
    let poison = 3_100;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let records = chunk
            .iter()
            .map(|&i| {
                let mal_id = 1 + i % 50;
                let title = if i == poison {
                    "Poison".to_owned()
                } else {
                    format!("Title {mal_id}")
                };
                let json = serde_json::json!({
                    "malId": mal_id,
                    "title": title,
                    "eventType": "SCORE_UPDATE",
                    "currentScore": "8.75",
                    "popularityChange": "+0.01",
                    "timestamp": "2025-08-14T18:30:00.000Z",
                });
                (
                    Some(mal_id.to_string().into_bytes()),
                    Some(json.to_string().into_bytes()),
                )
            })
            .collect();
        topic.publish_raw(0, records).await;
    }
    let mut cmd = catlog(&["consume"], &topic.name, &db.url);
    cmd.env("CONSUMER_BATCH_SIZE", "500");
    let consumer = Proc::spawn(cmd, "consume");
    wait_for_rows(&db, "SELECT count(*) FROM dead_letters", 1, &consumer).await;
    wait_for_rows(&db, "SELECT count(*) FROM popularity_events", n - 1, &consumer).await;

    let client = db.connect().await;
    let dead = client
        .query_one(r#"SELECT "offset", reason FROM dead_letters"#, &[])
        .await
        .unwrap();
    assert_eq!(dead.get::<_, i64>(0), poison, "the refused record");
    let reason: String = dead.get(1);
    assert!(
        reason.contains("rejected by the database") && reason.contains("no poison here"),
        "{reason}"
    );
    assert_eq!(
        db.count(r#"SELECT count(DISTINCT "offset") FROM popularity_events"#)
            .await,
        n - 1,
        "every other record stored once"
    );
    assert_eq!(
        db.count("SELECT sum(event_count)::int8 FROM live_popularity")
            .await,
        n - 1,
        "and counted once:\n{}",
        consumer.output()
    );
    let said = consumer.output();
    assert!(said.contains("committing record by record"), "{said}");
    assert!(
        said.contains("the batch sent after it was rolled back"),
        "the next batch was on its way:\n{said}"
    );
}
