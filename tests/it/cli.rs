//! What a person sees at the command line: help that explains every option,
//! and one clear line (never a panic) for a wrong setting.

use crate::common;

use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catlog-live"));
    cmd.args(args).env_remove("RUST_BACKTRACE").env("RUST_LOG", "off");
    for name in [
        "KAFKA_BROKER",
        "DATABASE_URL",
        "KAFKA_PARTITIONS",
        "PRODUCER_RATE",
    ] {
        cmd.env_remove(name);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Exit code non-zero, one line on stderr containing every word in `words`.
fn assert_one_line_error(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line, got: {stderr}");
    for word in words {
        assert!(stderr.contains(word), "{word:?} missing from: {stderr}");
    }
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn help_explains_every_option_with_its_variable_and_default() {
    let out = run(&["produce", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for text in [
        "KAFKA_BROKER",
        "localhost:9092",
        "KAFKA_TOPIC",
        "anime-popularity",
        "KAFKA_PARTITIONS",
        "PRODUCER_INTERVAL_MS",
        "60000",
        "PRODUCER_RATE",
        "PRODUCER_MAX_EVENTS",
        "PRODUCER_SEED",
    ] {
        assert!(help.contains(text), "{text} missing from produce --help:\n{help}");
    }
    let help = String::from_utf8_lossy(&run(&["consume", "--help"], &[]).stdout).into_owned();
    for text in [
        "DATABASE_URL",
        "postgres://postgres@localhost:5432/catlog",
        "CONSUMER_GROUP_ID",
        "catlog-live",
    ] {
        assert!(help.contains(text), "{text} missing from consume --help:\n{help}");
    }
}

#[test]
fn bad_number_in_the_environment_names_the_variable() {
    let out = run(&["produce"], &[("KAFKA_PARTITIONS", "three")]);
    assert_one_line_error(&out, &["KAFKA_PARTITIONS", "three"]);
    let out = run(&["produce"], &[("PRODUCER_RATE", "-4")]);
    assert_one_line_error(&out, &["PRODUCER_RATE"]);
}

#[test]
fn bad_database_url_names_the_setting() {
    let out = run(
        &["migrate"],
        &[("DATABASE_URL", "postgres://localhost:notaport/x")],
    );
    assert_one_line_error(&out, &["DATABASE_URL"]);
}

#[test]
fn unreachable_database_says_how_to_fix_it() {
    let out = run(
        &["migrate"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/catlog")],
    );
    assert_one_line_error(&out, &["DATABASE_URL", "127.0.0.1:1", "start PostgreSQL"]);
}

#[test]
fn unreachable_broker_says_how_to_fix_it() {
    let out = run(
        &["produce", "--max-events", "1"],
        &[("KAFKA_BROKER", "127.0.0.1:1")],
    );
    assert_one_line_error(&out, &["KAFKA_BROKER", "127.0.0.1:1"]);
}

#[test]
fn missing_catalog_file_is_one_line() {
    let out = run(&["produce", "--catalog", "/nonexistent/anime.csv"], &[]);
    assert_one_line_error(&out, &["/nonexistent/anime.csv"]);
}

#[tokio::test]
async fn migrate_creates_the_database_and_is_safe_to_run_concurrently() {
    let db = common::TestDb::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_catlog-live"))
                .arg("migrate")
                .env("DATABASE_URL", &db.url)
                .env("RUST_LOG", "warn")
                .output()
        })
        .collect();
    for out in children {
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let tables = db
        .count(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN \
             ('live_popularity', 'popularity_events', 'consumer_offsets', 'dead_letters', 'LivePopularity')",
        )
        .await;
    assert_eq!(tables, 5);
}

#[tokio::test]
async fn all_prints_its_url_and_stops_cleanly_on_sigterm() {
    let db = common::TestDb::new();
    let topic = common::unique("catlog-all");
    let mut cmd = common::catlog(&["all"], &topic, &db.url);
    cmd.env("LISTEN_ADDR", "127.0.0.1:0")
        .env("PRODUCER_INTERVAL_MS", "100");
    let mut app = common::Proc::spawn(cmd, "all");
    common::wait_until(std::time::Duration::from_secs(60), "the page URL", || async {
        app.output().contains("catlog-live is live at http://127.0.0.1:")
    })
    .await;
    common::wait_until(std::time::Duration::from_secs(60), "events to flow", || async {
        db.count("SELECT count(*) FROM popularity_events").await > 3
    })
    .await;
    let status = app.terminate();
    assert_eq!(status.code(), Some(0), "{}", app.output());
    let log = app.output();
    for stage in ["producer finished", "consumer stopped", "server stopped"] {
        assert!(log.contains(stage), "{stage} missing from:\n{log}");
    }
}

#[test]
fn token_prints_a_signed_token_the_server_accepts() {
    let out = run(&["token", "--ttl", "10m"], &[("LIVE_JWT_SECRET", "cli-secret")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let verifier = catlog_live::serve::tokens::Verifier::from_settings(Some("cli-secret"), None)
        .unwrap()
        .unwrap();
    let left = verifier.verify(&token).unwrap().remaining();
    assert!(left > std::time::Duration::from_secs(590), "{left:?}");

    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let private = keys.join("ec-private.pem");
    let out = run(
        &[
            "token",
            "--ttl",
            "30s",
            "--jwt-private-key-file",
            private.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let verifier =
        catlog_live::serve::tokens::Verifier::from_settings(None, Some(&keys.join("ec-public.pem")))
            .unwrap()
            .unwrap();
    assert!(verifier.verify(&token).is_ok(), "ES256 from the private key file");
}

#[test]
fn token_settings_that_cannot_work_are_one_line_naming_them() {
    assert_one_line_error(
        &run(&["token"], &[]),
        &["LIVE_JWT_SECRET", "LIVE_JWT_PRIVATE_KEY_FILE"],
    );
    assert_one_line_error(
        &run(&["token", "--ttl", "forever"], &[("LIVE_JWT_SECRET", "x")]),
        &["--ttl", "LIVE_JWT_TTL"],
    );
    assert_one_line_error(
        &run(&["token", "--jwt-private-key-file", "/nonexistent/key.pem"], &[]),
        &["LIVE_JWT_PRIVATE_KEY_FILE", "/nonexistent/key.pem"],
    );
    // A server with a key it cannot read says so before it connects anywhere.
    assert_one_line_error(
        &run(
            &["serve", "--jwt-public-key-file", "/nonexistent/public.pem"],
            &[],
        ),
        &["LIVE_JWT_PUBLIC_KEY_FILE", "/nonexistent/public.pem"],
    );
}
