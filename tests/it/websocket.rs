//! The WebSocket protocol against a real server on port 0, fed by the real
//! broker and PostgreSQL.

use crate::common;

use std::time::{Duration, Instant};

use catlog_live::pipeline::Settings;
use common::stack::{Running, Stack, Ws, next_json, next_of, send, settings, ws_at};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(30);

fn score_event(mal_id: i32, title: &str, score: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let value = json!({
        "malId": mal_id, "title": title, "eventType": "SCORE_UPDATE", "currentScore": score,
        "popularityChange": "+0.01", "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    (
        Some(mal_id.to_string().into_bytes()),
        Some(value.to_string().into_bytes()),
    )
}

/// A server that has stored and taken in one Cowboy Bebop score.
async fn bebop_stack() -> Stack {
    let stack = Stack::start(1, Duration::from_secs(30)).await;
    stack
        .topic
        .publish_raw(0, vec![score_event(1, "Cowboy Bebop", "8.75")])
        .await;
    stack.wait_until_served(1).await;
    stack
}

/// The same, and a client past its snapshot.
async fn bebop_and_a_client() -> (Stack, Ws) {
    let stack = bebop_stack().await;
    let mut ws = stack.ws().await;
    next_of(&mut ws, "snapshot", WAIT).await;
    (stack, ws)
}

#[tokio::test]
async fn snapshot_first_then_an_update_for_each_new_record() {
    let stack = bebop_stack().await;

    let mut ws = stack.ws().await;
    let snapshot = next_json(&mut ws, WAIT).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["updates"][0]["type"], "update");
    assert_eq!(snapshot["updates"][0]["event"]["title"], "Cowboy Bebop");
    let last_id = snapshot["lastId"].as_i64().unwrap();
    assert!(snapshot["trending"].is_array());

    stack
        .topic
        .publish_raw(
            0,
            vec![score_event(5114, "Fullmetal Alchemist: Brotherhood", "9.10")],
        )
        .await;
    let update = next_of(&mut ws, "update", WAIT).await;
    assert_eq!(update["event"]["malId"], 5114);
    assert_eq!(update["event"]["currentScore"], "9.10");
    assert!(update["id"].as_i64().unwrap() > last_id);
    // The ranking changed: a trending message follows without waiting for the period.
    let trending = next_of(&mut ws, "trending", WAIT).await;
    assert!(
        trending["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["malId"] == 5114)
    );
}

/// Reads `n` updates from each client, concurrently; their malIds per client.
async fn updates_of(clients: &mut [Ws], n: usize) -> Vec<Vec<i64>> {
    let reads = clients.iter_mut().map(|ws| async move {
        let mut seen = Vec::new();
        while seen.len() < n {
            let update = next_of(ws, "update", WAIT).await;
            seen.push(update["event"]["malId"].as_i64().unwrap());
        }
        seen
    });
    futures::future::join_all(reads).await
}

#[tokio::test]
async fn many_clients_on_two_servers_each_get_every_update_in_order() {
    let stack = Stack::start(1, Duration::from_secs(30)).await;
    // A second server of its own on the same database: it learns from PostgreSQL only.
    let only_serve = Settings {
        consume: None,
        ..settings(&stack.topic.name, &stack.db.url, Duration::from_secs(30), &[])
    };
    let server = Running::start(only_serve).await;
    let mut clients = Vec::new();
    for i in 0..200 {
        let addr = if i % 2 == 0 { stack.addr } else { server.addr };
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        next_of(&mut ws, "snapshot", WAIT).await;
        clients.push(ws);
    }

    let records = (0..50)
        .map(|i| score_event(100 + i, &format!("Anime {i}"), "7.00"))
        .collect();
    stack.topic.publish_raw(0, records).await;
    for (i, seen) in updates_of(&mut clients, 50).await.into_iter().enumerate() {
        assert_eq!(
            seen,
            (100..150).collect::<Vec<_>>(),
            "client {i}: every update, in order"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn over_the_connection_cap_a_client_gets_503_and_a_flood_slows_no_one() {
    const CAP: usize = 150;
    let stack = Stack::start_with(1, Duration::from_secs(30), &["--max-connections", "150"]).await;
    let mut clients = Vec::new();
    for _ in 0..CAP {
        let mut ws = stack.ws().await;
        next_of(&mut ws, "snapshot", WAIT).await;
        clients.push(ws);
    }

    // One more: 503 with a JSON reason.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", stack.addr)).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("the client over the cap was let in");
    };
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value =
        serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("MAX_CONNECTIONS"),
        "{body}"
    );

    // A flood: 300 more connects, and ten clients sending junk as fast as
    // they can, while 30 events are published. Everyone connected gets every one.
    let url = format!("ws://{}/ws", stack.addr);
    let knocking = tokio::spawn(async move {
        let tries = (0..300).map(|_| tokio_tungstenite::connect_async(url.clone()));
        futures::future::join_all(tries)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count()
    });
    let mut noisy: Vec<Ws> = clients.drain(..10).collect();
    let junk = tokio::spawn(async move {
        for _ in 0..200 {
            for ws in &mut noisy {
                if ws.send(Message::text(r#"{"type":"dance"}"#)).await.is_err() {
                    return noisy;
                }
            }
        }
        noisy
    });
    let records = (0..30)
        .map(|i| score_event(300 + i, &format!("Anime {i}"), "6.00"))
        .collect();
    stack.topic.publish_raw(0, records).await;
    for (i, seen) in updates_of(&mut clients, 30).await.into_iter().enumerate() {
        assert_eq!(
            seen,
            (300..330).collect::<Vec<_>>(),
            "client {i}: every update, in order"
        );
    }
    let (_, stats) = stack.get("/api/live/stats").await;
    assert_eq!(
        knocking.await.unwrap(),
        0,
        "no client over the cap got in: {stats}"
    );
    let noisy = junk.await.unwrap();
    assert_eq!(noisy.len(), 10);

    let (_, stats) = stack.get("/api/live/stats").await;
    assert!(stats["connections"].as_u64().unwrap() <= CAP as u64, "{stats}");
    let metrics = stack.text("/metrics").await;
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("catlog_ws_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(refused >= 301.0, "refused connections counted: {refused}");
}

#[tokio::test]
async fn subscribing_to_a_room_sends_the_anime_and_its_changes() {
    let (stack, mut ws) = bebop_and_a_client().await;

    send(&mut ws, json!({"type": "subscribe", "malId": 1})).await;
    let anime = next_of(&mut ws, "anime", WAIT).await;
    assert_eq!(anime["malId"], 1);
    assert_eq!(anime["current"]["currentScore"], "8.75");
    assert_eq!(anime["history"].as_array().unwrap().len(), 1);

    stack
        .topic
        .publish_raw(0, vec![score_event(1, "Cowboy Bebop", "8.80")])
        .await;
    let anime = next_of(&mut ws, "anime", WAIT).await;
    assert_eq!(anime["current"]["currentScore"], "8.80");
    assert_eq!(anime["history"].as_array().unwrap().len(), 2);

    let (_, stats) = stack.get("/api/live/stats").await;
    assert_eq!(stats["rooms"], 1);
    send(&mut ws, json!({"type": "unsubscribe", "malId": 1})).await;
    common::wait_until(WAIT, "the room to close", || async {
        stack.get("/api/live/stats").await.1["rooms"] == 0
    })
    .await;

    send(&mut ws, json!({"type": "subscribe", "malId": 999999})).await;
    let error = next_of(&mut ws, "error", WAIT).await;
    assert!(error["error"].as_str().unwrap().contains("999999"));
}

/// Every history id, oldest first.
async fn history_ids(db: &common::TestDb) -> Vec<i64> {
    db.connect()
        .await
        .query("SELECT id FROM popularity_events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Whether a resume from `after` sends `"eventId": null` on every update
/// (records published without an event id).
async fn replayed_event_ids_are_null(stack: &Stack, after: i64) -> bool {
    let mut ws = stack.ws_at(&format!("/ws?lastId={after}")).await;
    loop {
        let message = next_json(&mut ws, WAIT).await;
        match message["type"].as_str() {
            Some("update") if !message["eventId"].is_null() => return false,
            Some("resumed") => return true,
            _ => {}
        }
    }
}

/// Reads a resume: the updates' ids up to `resumed`, and `resumed`; fails on
/// a snapshot or a resync first.
async fn replay_of(ws: &mut Ws) -> (Vec<i64>, serde_json::Value) {
    let mut ids = Vec::new();
    loop {
        let message = next_json(ws, WAIT).await;
        match message["type"].as_str() {
            Some("update") => ids.push(message["id"].as_i64().unwrap()),
            Some("resumed") => return (ids, message),
            Some("snapshot" | "resync") => panic!("{message} before `resumed` (after {ids:?})"),
            _ => {}
        }
    }
}

/// Connects to `path`: the first message is `resync` (its reason), the next a snapshot.
async fn resync_at(stack: &Stack, path: &str) -> String {
    let mut ws = stack.ws_at(path).await;
    let resync = next_json(&mut ws, WAIT).await;
    assert_eq!(resync["type"], "resync", "{path}: {resync}");
    let snapshot = next_json(&mut ws, WAIT).await;
    assert_eq!(
        snapshot["type"], "snapshot",
        "{path}: a snapshot after the resync"
    );
    resync["reason"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn resume_at_connect_replays_oldest_first_says_resumed_then_goes_live() {
    let stack = Stack::start(1, Duration::from_secs(30)).await;
    let records = (0..5)
        .map(|i| score_event(200 + i, &format!("Anime {i}"), "7.00"))
        .collect();
    stack.topic.publish_raw(0, records).await;
    stack.wait_until_served(5).await;
    let ids = history_ids(&stack.db).await;
    let seen_up_to = ids[1]; // the client saw the two oldest, missed three

    let mut ws = stack.ws_at(&format!("/ws?lastId={seen_up_to}")).await;
    let (replayed, resumed) = replay_of(&mut ws).await;
    assert_eq!(
        replayed,
        ids[2..],
        "the missed updates, oldest first, no snapshot in front"
    );
    assert_eq!(resumed["lastId"], seen_up_to);
    assert_eq!(resumed["replayed"], 3);

    // Then live: each new update once, ids rising.
    let records = (0..3)
        .map(|i| score_event(300 + i, &format!("Anime {i}"), "7.00"))
        .collect();
    stack.topic.publish_raw(0, records).await;
    let mut last = *ids.last().unwrap();
    for _ in 0..3 {
        let id = next_of(&mut ws, "update", WAIT).await["id"].as_i64().unwrap();
        assert!(id > last, "update {id} after {last}");
        last = id;
    }
    assert_eq!(history_ids(&stack.db).await.last(), Some(&last));

    // Each update carries its event id: null for these records (published
    // without one), the record's own for the producer's.
    assert!(replayed_event_ids_are_null(&stack, seen_up_to).await);
    stack.topic.publish_simulated(2, 5).await;
    let mut sent = Vec::new();
    while sent.len() < 2 {
        let update = next_of(&mut ws, "update", WAIT).await;
        sent.push((
            update["id"].as_i64().unwrap(),
            update["eventId"].as_str().unwrap().to_owned(),
        ));
    }
    let stored: Vec<(i64, String)> = stack
        .db
        .connect()
        .await
        .query(
            "SELECT id, event_id::text FROM popularity_events WHERE id > $1 ORDER BY id",
            &[&last],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(sent, stored, "each update's eventId is its record's");
    last = sent[1].0;

    // Resuming from the newest id replays nothing.
    let mut ws = stack.ws_at(&format!("/ws?lastId={last}")).await;
    let (replayed, resumed) = replay_of(&mut ws).await;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(resumed["replayed"], 0);
}

#[tokio::test]
async fn resume_at_connect_answers_resync_for_a_gap_it_cannot_replay_and_400_for_a_bad_id() {
    let stack = Stack::start_with(1, Duration::from_secs(30), &["--resume-max-updates", "3"]).await;
    let records = (0..6)
        .map(|i| score_event(200 + i, &format!("Anime {i}"), "7.00"))
        .collect();
    stack.topic.publish_raw(0, records).await;
    stack.wait_until_served(6).await;
    let ids = history_ids(&stack.db).await;

    let over = resync_at(&stack, &format!("/ws?lastId={}", ids[0])).await;
    assert!(over.contains("more than 3"), "over RESUME_MAX_UPDATES: {over}");
    let mut ws = stack.ws_at(&format!("/ws?lastId={}", ids[2])).await;
    let (replayed, _) = replay_of(&mut ws).await;
    assert_eq!(replayed, ids[3..], "at the limit: replayed");

    let never = resync_at(&stack, &format!("/ws?lastId={}", ids[5] + 1000)).await;
    assert!(never.contains("never handed out"), "{never}");

    stack
        .db
        .connect()
        .await
        .execute("DELETE FROM popularity_events WHERE id <= $1", &[&ids[1]])
        .await
        .unwrap();
    let gone = resync_at(&stack, &format!("/ws?lastId={}", ids[0])).await;
    assert!(gone.contains("no longer holds"), "older than the history: {gone}");

    for bad in ["abc", "-1", "1.5", ""] {
        let url = format!("ws://{}/ws?lastId={bad}", stack.addr);
        let Err(tokio_tungstenite::tungstenite::Error::Http(response)) =
            tokio_tungstenite::connect_async(&url).await
        else {
            panic!("{url} was upgraded");
        };
        assert_eq!(response.status().as_u16(), 400, "{url}");
        let body: serde_json::Value =
            serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("lastId"),
            "{url}: {body}"
        );
    }
}

#[tokio::test]
async fn a_server_behind_the_client_catches_up_from_the_history_instead_of_resync() {
    let stack = bebop_stack().await;
    // A second server on the same database, without a consumer: it learns
    // of new rows from PostgreSQL only.
    let only_serve = Settings {
        consume: None,
        ..settings(&stack.topic.name, &stack.db.url, Duration::from_secs(30), &[])
    };
    let behind = Running::start(only_serve).await;
    let insert = |n: i64| {
        let db = &stack.db;
        async move {
            // Rows written by hand, with no notification: the second
            // server's follower sees them at its next poll, not before.
            db.connect()
                .await
                .query(
                    "INSERT INTO popularity_events (topic, partition, \"offset\", mal_id, title, event_type, \
                         current_score, popularity_change, event_time) \
                     SELECT 'by-hand', 0, o, 30, 'Cowboy Bebop: The Movie', 'SCORE_UPDATE', 8.30, 0.01, now() \
                     FROM generate_series((SELECT count(*) FROM popularity_events), \
                                          (SELECT count(*) FROM popularity_events) + $1 - 1) AS o \
                     RETURNING id",
                    &[&n],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, i64>(0))
                .collect::<Vec<i64>>()
        }
    };

    // The client comes from a server that has read three new rows; this
    // one has not yet.
    let mut added = insert(3).await;
    added.sort();
    let mut ws = ws_at(behind.addr, &format!("/ws?lastId={}", added[0])).await;
    let (replayed, resumed) = replay_of(&mut ws).await;
    assert_eq!(replayed, added[1..], "replayed from PostgreSQL");
    assert_eq!(resumed["replayed"], 2);

    // A client that has everything the history holds, from a server this
    // one has not caught up with: nothing to replay, and when its follower
    // reads those rows they are not sent either.
    let mut more = insert(2).await;
    more.sort();
    let mut ws = ws_at(behind.addr, &format!("/ws?lastId={}", more[1])).await;
    let (replayed, _) = replay_of(&mut ws).await;
    assert!(replayed.is_empty(), "{replayed:?}");
    stack
        .topic
        .publish_raw(
            0,
            vec![score_event(5114, "Fullmetal Alchemist: Brotherhood", "9.10")],
        )
        .await;
    let next = next_of(&mut ws, "update", WAIT).await;
    assert!(
        next["id"].as_i64().unwrap() > more[1],
        "an update the client had: {next}"
    );
    assert_eq!(next["event"]["malId"], 5114);

    // An id the history does not hold yet, committed while the server waits.
    let next = history_ids(&stack.db).await.last().unwrap() + 1;
    let mut ws = ws_at(behind.addr, &format!("/ws?lastId={next}")).await;
    let later = insert(3).await;
    let (replayed, _) = replay_of(&mut ws).await;
    let expected: Vec<i64> = later.into_iter().filter(|id| *id > next).collect();
    assert_eq!(replayed, expected, "caught up, no resync");
    behind.stop().await;
}

#[tokio::test]
async fn the_resume_message_never_repeats_an_id_nor_goes_back() {
    let stack = Stack::start(1, Duration::from_secs(30)).await;
    let records = (0..5)
        .map(|i| score_event(200 + i, &format!("Anime {i}"), "7.00"))
        .collect();
    stack.topic.publish_raw(0, records).await;
    stack.wait_until_served(5).await;
    let ids = history_ids(&stack.db).await;

    let mut ws = stack.ws().await;
    let snapshot = next_of(&mut ws, "snapshot", WAIT).await;
    let covered = snapshot["lastId"].as_i64().unwrap();
    assert_eq!(covered, ids[4]);
    // Older than what the snapshot covered: nothing is sent again.
    send(&mut ws, json!({"type": "resume", "lastId": ids[1]})).await;
    let (replayed, resumed) = replay_of(&mut ws).await;
    assert!(replayed.is_empty(), "sent again: {replayed:?}");
    assert_eq!(resumed["replayed"], 0);
    stack
        .topic
        .publish_raw(0, vec![score_event(300, "Anime 300", "7.00")])
        .await;
    let update = next_of(&mut ws, "update", WAIT).await;
    assert!(update["id"].as_i64().unwrap() > covered);

    // A position the server never handed out: resync, then a fresh snapshot.
    send(&mut ws, json!({"type": "resume", "lastId": 1_000_000})).await;
    let resync = next_of(&mut ws, "resync", WAIT).await;
    assert!(
        resync["reason"].as_str().unwrap().contains("never handed out"),
        "{resync}"
    );
    next_of(&mut ws, "snapshot", WAIT).await;
}

#[tokio::test]
async fn resume_after_too_large_a_gap_answers_resync() {
    let stack = Stack::start(2, Duration::from_secs(30)).await;
    stack.topic.publish_simulated(1_200, 3).await;
    stack.wait_for_history(1_200).await;
    common::wait_until(WAIT, "the server to catch up", || async {
        stack.get("/api/live/stats").await.1["eventsLastMinute"].as_u64() >= Some(1_200)
    })
    .await;
    let mut ws = stack.ws().await;
    next_of(&mut ws, "snapshot", WAIT).await;
    send(&mut ws, json!({"type": "resume", "lastId": 0})).await;
    let resync = next_of(&mut ws, "resync", WAIT).await;
    assert!(resync["reason"].as_str().unwrap().contains("1000"), "{resync}");
    next_of(&mut ws, "snapshot", WAIT).await;
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_delay_another() {
    let stack = Stack::start(2, Duration::from_secs(30)).await;
    let mut stalled = stack.ws().await; // connected, never read again
    let mut reader = stack.ws().await;
    next_of(&mut reader, "snapshot", WAIT).await;

    let started = Instant::now();
    stack.topic.publish_simulated(5_000, 9).await;
    stack.wait_for_history(5_000).await;
    let newest = stack.db.count("SELECT max(id) FROM popularity_events").await;

    // The reader gets every update, or (if it is too slow itself) a snapshot
    // that covers it; either way it reaches the newest row.
    let (mut covered, mut updates, mut resyncs) = (0, 0, 0);
    while covered < newest {
        let message = next_json(&mut reader, WAIT).await;
        match message["type"].as_str() {
            Some("update") => {
                updates += 1;
                covered = covered.max(message["id"].as_i64().unwrap());
            }
            Some("snapshot") => covered = covered.max(message["lastId"].as_i64().unwrap()),
            Some("resync") => resyncs += 1,
            _ => {}
        }
    }
    eprintln!(
        "reader reached the newest row in {:?} ({updates} updates, {resyncs} resyncs) while another client stalled",
        started.elapsed()
    );
    // The stalled client's connection is still open (or closed by the server), never blocking anyone.
    let _ = stalled.send(Message::Ping(Vec::new().into())).await;
    let (_, stats) = stack.get("/api/live/stats").await;
    assert!(stats["connections"].as_u64().unwrap() <= 2);
}

#[tokio::test]
async fn a_client_that_stops_reading_for_a_while_catches_up_in_order() {
    let stack = Stack::start(2, Duration::from_secs(30)).await;
    // A small receive buffer, so the server's writes back up soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(stack.addr).await.unwrap();
    let (mut paused, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws", stack.addr),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let snapshot = next_of(&mut paused, "snapshot", WAIT).await;
    let mut covered = snapshot["lastId"].as_i64().unwrap();

    // Far more than its socket holds, while it reads nothing.
    stack.topic.publish_simulated(30_000, 11).await;
    stack.wait_until_served(30_000).await;
    let newest = stack.db.count("SELECT max(id) FROM popularity_events").await;

    // Reading again: whole frames, updates in order, and if it fell too far
    // behind, a resync and a snapshot that covers what it missed.
    let (mut updates, mut resyncs) = (0, 0);
    while covered < newest {
        let message = next_json(&mut paused, WAIT).await;
        match message["type"].as_str() {
            Some("update") => {
                let id = message["id"].as_i64().unwrap();
                assert!(id > covered, "update {id} after {covered}: out of order");
                covered = id;
                updates += 1;
            }
            Some("resync") => {
                resyncs += 1;
                let snapshot = next_json(&mut paused, WAIT).await;
                assert_eq!(
                    snapshot["type"], "snapshot",
                    "a snapshot follows a resync: {snapshot}"
                );
                covered = covered.max(snapshot["lastId"].as_i64().unwrap());
            }
            _ => {}
        }
    }
    eprintln!("a paused client read on: {updates} updates, {resyncs} resyncs, up to the newest row");

    // And it is served as usual afterwards.
    stack.topic.publish_simulated(1, 12).await;
    let update = next_of(&mut paused, "update", WAIT).await;
    assert!(update["id"].as_i64().unwrap() > newest);
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_an_error_and_the_connection_carries_on() {
    let (stack, mut ws) = bebop_and_a_client().await;

    for bad in [
        "not json",
        r#"{"type":"dance"}"#,
        r#"{"type":"subscribe","malId":"x"}"#,
        "[]",
    ] {
        ws.send(Message::text(bad)).await.unwrap();
        let error = next_of(&mut ws, "error", WAIT).await;
        assert!(error["error"].is_string(), "{bad}: {error}");
    }
    ws.send(Message::text("x".repeat(100_000))).await.unwrap();
    let error = next_of(&mut ws, "error", WAIT).await;
    assert!(error["error"].as_str().unwrap().contains("limit"), "{error}");
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    next_of(&mut ws, "error", WAIT).await;
    send(&mut ws, json!({"type": "subscribe", "malId": 0})).await;
    next_of(&mut ws, "error", WAIT).await;

    // Still connected and still served.
    send(&mut ws, json!({"type": "subscribe", "malId": 1})).await;
    assert_eq!(next_of(&mut ws, "anime", WAIT).await["malId"], 1);
    assert_eq!(stack.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn every_client_is_pinged_and_a_stopping_server_closes_them() {
    let stack = bebop_stack().await;
    let mut first = stack.ws().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut second = stack.ws().await;

    // Pings every 15 s: each client, whenever it connected, gets one within
    // that time (plus slack), and the connection carries on after it.
    for (name, ws) in [("first", &mut first), ("second", &mut second)] {
        let started = Instant::now();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(25), ws.next())
                .await
                .unwrap_or_else(|_| panic!("the {name} client was not pinged within 25 s"))
                .expect("the connection stays open")
                .expect("a valid frame");
            if matches!(frame, Message::Ping(_)) {
                eprintln!(
                    "{name} client pinged {:?} after it started waiting",
                    started.elapsed()
                );
                break;
            }
        }
    }
    stack
        .topic
        .publish_raw(
            0,
            vec![score_event(5114, "Fullmetal Alchemist: Brotherhood", "9.10")],
        )
        .await;
    for ws in [&mut first, &mut second] {
        let update = next_of(ws, "update", WAIT).await;
        assert_eq!(update["event"]["malId"], 5114);
    }

    // Stopping the server closes every connection (stop() itself fails
    // unless the stages end within 10 s).
    let stopping = tokio::spawn(stack.stop());
    for ws in [&mut first, &mut second] {
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(frame)) = ws.next().await {
                if matches!(frame, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a client still open 10 s after the server began to stop"
        );
    }
    stopping.await.unwrap();
}

#[tokio::test]
async fn the_resume_message_answers_resync_when_what_was_missed_is_older_than_the_snapshot() {
    let stack = Stack::start(1, Duration::from_secs(30)).await;
    let records = (0..60)
        .map(|i| score_event(200 + i, &format!("Anime {i}"), "7.00"))
        .collect();
    stack.topic.publish_raw(0, records).await;
    stack.wait_until_served(60).await;
    let ids = history_ids(&stack.db).await;

    // The snapshot holds the newest 50: the ten after the oldest are in
    // neither it nor anything this connection may still send.
    let mut ws = stack.ws().await;
    let snapshot = next_of(&mut ws, "snapshot", WAIT).await;
    assert_eq!(snapshot["lastId"], ids[59]);
    send(&mut ws, json!({"type": "resume", "lastId": ids[0]})).await;
    let mut replayed = Vec::new();
    let resync = loop {
        let message = next_json(&mut ws, WAIT).await;
        match message["type"].as_str() {
            Some("update") => replayed.push(message["id"].as_i64().unwrap()),
            Some("resync") => break message,
            Some("resumed") => panic!("resumed over a gap: {message}"),
            _ => {}
        }
    };
    assert!(replayed.is_empty(), "sent again: {replayed:?}");
    assert!(
        resync["reason"]
            .as_str()
            .unwrap()
            .contains("older than this connection's snapshot"),
        "{resync}"
    );
    next_of(&mut ws, "snapshot", WAIT).await;

    // What the snapshot holds needs nothing sent again.
    send(&mut ws, json!({"type": "resume", "lastId": ids[20]})).await;
    let (replayed, resumed) = replay_of(&mut ws).await;
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(resumed["replayed"], 0);
}
