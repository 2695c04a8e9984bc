//! `doctor` against the real services: all green on a running pipeline, and
//! a FAIL with a fix when the broker, the database or the topic is missing.

use crate::common;

use std::process::Output;
use std::time::Duration;

use common::{Proc, TestDb, TestTopic, catlog, wait_until};

fn doctor(topic: &str, db_url: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = catlog(&["doctor"], topic, db_url);
    cmd.env("RUST_LOG", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in:\n{stdout}"))
}

#[tokio::test]
async fn all_checks_pass_on_a_running_pipeline() {
    let topic = TestTopic::new(2).await;
    let db = TestDb::new();
    topic.publish_simulated(200, 1).await;
    let consumer = Proc::spawn(catlog(&["consume"], &topic.name, &db.url), "consume");
    wait_until(Duration::from_secs(60), "the backlog to drain", || async {
        db.count("SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets")
            .await
            == 200
    })
    .await;
    drop(consumer);

    let out = doctor(&topic.name, &db.url, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "broker",
        "topic",
        "database",
        "migrations",
        "tables",
        "lag",
        "freshness",
    ] {
        assert!(line(&stdout, name).starts_with("PASS"), "{stdout}");
    }
    assert!(
        line(&stdout, "broker").contains("Fetch v"),
        "which API versions: {stdout}"
    );
    assert!(line(&stdout, "topic").contains("2 partitions"));
    assert!(line(&stdout, "lag").contains("0=0 1=0"), "{stdout}");
}

#[tokio::test]
async fn broker_down_is_a_fail_that_says_what_to_do() {
    let db = TestDb::migrated().await;
    let out = doctor("t", &db.url, &[("KAFKA_BROKER", "127.0.0.1:1")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(line(&stdout, "broker").starts_with("FAIL"));
    assert!(line(&stdout, "broker").contains("KAFKA_BROKER"));
    assert!(
        line(&stdout, "database").starts_with("PASS"),
        "the other checks still run: {stdout}"
    );
}

#[tokio::test]
async fn database_down_or_missing_is_a_fail_that_says_what_to_do() {
    let topic = TestTopic::new(1).await;
    let out = doctor(&topic.name, "postgres://postgres@127.0.0.1:1/catlog", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(line(&stdout, "broker").starts_with("PASS"), "{stdout}");
    assert!(line(&stdout, "database").starts_with("FAIL"));
    assert!(line(&stdout, "database").contains("start PostgreSQL"), "{stdout}");

    let missing = TestDb::new();
    let out = doctor(&topic.name, &missing.url, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(line(&stdout, "database").contains("does not exist"), "{stdout}");
    assert!(
        line(&stdout, "database").contains("catlog-live migrate"),
        "{stdout}"
    );
}

#[tokio::test]
async fn missing_topic_is_a_fail() {
    let db = TestDb::migrated().await;
    let out = doctor(&common::unique("no-such-topic"), &db.url, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(line(&stdout, "topic").starts_with("FAIL"), "{stdout}");
    assert!(line(&stdout, "topic").contains("produce"), "{stdout}");
}
