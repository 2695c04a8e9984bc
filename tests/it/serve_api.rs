//! The REST API, health, metrics and the server-rendered page, against a real
//! server on port 0 fed by the real broker and PostgreSQL.

use crate::common;

use std::time::Duration;

use common::stack::Stack;

const SAMPLES: [(&str, &str); 3] = [
    (
        "1",
        r#"{"malId":1,"title":"Cowboy Bebop","eventType":"SCORE_UPDATE","currentScore":"8.75","popularityChange":"+0.05","timestamp":"2025-08-14T18:30:00.000Z"}"#,
    ),
    (
        "5114",
        r#"{"malId":5114,"title":"Fullmetal Alchemist: Brotherhood","eventType":"MEMBER_UPDATE","liveMembers":125000,"popularityChange":"+0.8","timestamp":"2025-08-14T18:31:00.000Z"}"#,
    ),
    (
        "9253",
        r#"{"malId":9253,"title":"Steins;Gate","eventType":"TRENDING_CHANGE","trendingRank":15,"popularityChange":"+2.3","timestamp":"2025-08-14T18:32:00.000Z"}"#,
    ),
];

async fn stack_with_samples() -> Stack {
    let stack = Stack::start(1, Duration::from_secs(30)).await;
    let records = SAMPLES
        .iter()
        .map(|(k, v)| (Some(k.as_bytes().to_vec()), Some(v.as_bytes().to_vec())))
        .collect();
    stack.topic.publish_raw(0, records).await;
    stack.wait_until_served(3).await;
    stack
}

#[tokio::test]
async fn updates_come_newest_first_with_the_event_as_published() {
    let stack = stack_with_samples().await;
    let (status, body) = stack.get("/api/live/updates").await;
    assert_eq!(status, 200);
    let updates = body["updates"].as_array().unwrap();
    let titles: Vec<&str> = updates
        .iter()
        .map(|u| u["event"]["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        ["Steins;Gate", "Fullmetal Alchemist: Brotherhood", "Cowboy Bebop"]
    );
    // The event exactly as on the wire, byte for byte.
    let raw = stack.text("/api/live/updates").await;
    for (_, sample) in SAMPLES {
        assert!(
            raw.contains(&format!(r#""event":{sample}"#)),
            "{sample} not in {raw}"
        );
    }

    let ids: Vec<i64> = updates.iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "ids decrease: {ids:?}");

    // Paging and filtering.
    let (_, page) = stack.get("/api/live/updates?limit=2").await;
    assert_eq!(page["updates"].as_array().unwrap().len(), 2);
    let next = page["nextBefore"].as_i64().unwrap();
    let (_, rest) = stack.get(&format!("/api/live/updates?before={next}")).await;
    assert_eq!(rest["updates"][0]["event"]["malId"], 1);
    let (_, one) = stack.get("/api/live/updates?malId=5114").await;
    assert_eq!(one["updates"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_parameters_get_400_with_a_json_reason() {
    let stack = stack_with_samples().await;
    for (path, word) in [
        ("/api/live/updates?limit=0", "limit"),
        ("/api/live/updates?limit=abc", "limit"),
        ("/api/live/updates?limit=100000", "limit"),
        ("/api/live/updates?malId=-3", "malId"),
        ("/api/live/updates?before=x", "before"),
        ("/api/live/trending?limit=0", "limit"),
        ("/api/live/anime/abc", "malId"),
    ] {
        let (status, body) = stack.get(path).await;
        assert_eq!(status, 400, "{path}");
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{path}: {body}"));
        assert!(error.contains(word), "{path}: {error}");
        assert!(!error.to_lowercase().contains("sql"), "{path}: {error}");
    }
    let (status, body) = stack.get("/api/live/anime/424242").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("424242"));
    let (status, body) = stack.get("/no/such/page").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn anime_shows_current_state_and_history() {
    let stack = stack_with_samples().await;
    let (status, body) = stack.get("/api/live/anime/1").await;
    assert_eq!(status, 200);
    assert_eq!(body["current"]["title"], "Cowboy Bebop");
    assert_eq!(body["current"]["currentScore"], "8.75");
    assert_eq!(body["current"]["popularityChange"], "+0.05");
    assert_eq!(body["current"]["eventCount"], 1);
    assert_eq!(body["history"][0]["eventType"], "SCORE_UPDATE");
}

#[tokio::test]
async fn trending_stats_health_and_metrics() {
    let stack = stack_with_samples().await;
    // The ranking follows the updates it is made from.
    common::wait_until(Duration::from_secs(20), "three anime trending", || async {
        stack.get("/api/live/trending").await.1["items"]
            .as_array()
            .map(Vec::len)
            == Some(3)
    })
    .await;
    let (status, trending) = stack.get("/api/live/trending").await;
    assert_eq!(status, 200);
    let items = trending["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["rank"], 1);
    for field in ["malId", "title", "score", "members", "momentum"] {
        assert!(items[0].get(field).is_some(), "{field}");
    }
    let (_, two) = stack.get("/api/live/trending?limit=2").await;
    assert_eq!(two["items"].as_array().unwrap().len(), 2);

    common::wait_until(Duration::from_secs(20), "stats with lag", || async {
        let (_, stats) = stack.get("/api/live/stats").await;
        stats["lag"]["0"] == 0 && stats["eventsLastMinute"].as_u64().is_some()
    })
    .await;
    let (_, stats) = stack.get("/api/live/stats").await;
    for field in [
        "connections",
        "rooms",
        "eventsLastMinute",
        "lag",
        "newLogs",
        "logResets",
        "uptimeSeconds",
    ] {
        assert!(stats.get(field).is_some(), "{field} missing from {stats}");
    }

    assert_eq!(stack.get("/healthz").await.0, 200);
    let (status, ready) = stack.get("/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));

    let metrics = stack.text("/metrics").await;
    for name in [
        "catlog_events_consumed_total",
        "catlog_consumer_lag",
        "catlog_consumer_new_log",
        "catlog_consumer_log_epoch",
        "catlog_batch_commit_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn page_is_rendered_on_the_server_with_updates_and_trending() {
    let stack = stack_with_samples().await;
    let response = reqwest::get(stack.url("/")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("Steins;Gate"));
    assert!(html.contains(r#"id="feed""#) && html.contains(r#"aria-live="polite""#));
    assert!(html.contains(r#"id="trending""#));
    // Built from the elements, their shadow roots rendered in the page.
    for element in ["<catlog-live-feed", "<catlog-live-trending", "<catlog-live-anime"] {
        assert!(html.contains(element), "{element} missing from the page");
    }
    assert_eq!(html.matches(r#"<template shadowrootmode="open">"#).count(), 2);
    assert!(html.contains("125,000"), "members formatted for people");

    for (path, kind) in [
        ("/static/app.js", "javascript"),
        ("/static/live-client.js", "javascript"),
        ("/static/app.css", "css"),
        ("/static/catlog-live.js", "javascript"),
        ("/static/catlog-live.css", "css"),
    ] {
        let response = reqwest::get(stack.url(path)).await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.contains(kind), "{path}: {content_type}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn http_edges_answer_head_and_json_errors() {
    let stack = Stack::start(1, Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    for path in [
        "/healthz",
        "/readyz",
        "/",
        "/api/live/updates",
        "/static/app.js",
        "/metrics",
    ] {
        let response = client.head(stack.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "HEAD {path}");
        assert!(
            response.bytes().await.unwrap().is_empty(),
            "HEAD {path} has no body"
        );
    }

    let response = client.post(stack.url("/api/live/updates")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("GET"), "{body}");

    let long = format!("/api/live/updates?limit=1&pad={}", "x".repeat(10_000));
    let response = client.get(stack.url(&long)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 414);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");

    let response = client
        .get(stack.url("/healthz"))
        .header("x-padding", "y".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 431);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("headers"), "{body}");

    let response = client.get(stack.url("/favicon.ico")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("image/")
    );
}
