//! Hostile input at the front door: a list of bad HTTP requests and bad
//! WebSocket handshakes and frames, replayed against the real binary
//! (`all`) while a good client listens. Every answer is JSON with the
//! status the request earns, nothing in the log says "panicked", and the
//! good client keeps receiving updates.

use crate::common;

use std::time::Duration;

use common::{TestDb, TestTopic, start_all};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A key RFC 6455 uses as its example: 16 bytes in base64.
const GOOD_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends `request` as bytes and reads the answers until one that is not a
/// 200 is complete, or the server closes, or a moment passes: the status of
/// the last response, and its body.
async fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before all of a huge request is sent.
    let _ = stream.write_all(request).await;
    let head_request = request.starts_with(b"HEAD ");
    let mut answer = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let last = loop {
        if let Some(last) = last_complete(&answer, head_request)
            && last.0 != 200
        {
            break Some(last);
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&chunk[..n]),
            _ => break last_complete(&answer, head_request),
        }
    };
    last.unwrap_or_else(|| {
        panic!(
            "no answer to {:?}",
            String::from_utf8_lossy(&request[..request.len().min(80)])
        )
    })
}

/// The last complete response in `bytes`: its status and body.
fn last_complete(bytes: &[u8], head_request: bool) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let mut rest: &str = &text;
    let mut last = None;
    while let Some(start) = rest.find("HTTP/1.1 ") {
        let response = &rest[start..];
        let (head, after) = response.split_once("\r\n\r\n")?;
        let status = head.get(9..12)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let length = if head_request { 0 } else { length };
        let body = after.get(..length)?;
        last = Some((status, body.to_owned()));
        rest = &after[length..];
    }
    last
}

fn handshake(extra: &str) -> Vec<u8> {
    format!("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n")
        .into_bytes()
}

#[tokio::test]
async fn hostile_requests_get_json_errors_and_no_panic_while_a_client_keeps_receiving() {
    let db = TestDb::migrated().await;
    let topic = TestTopic::new(1).await;
    let (app, url) = start_all(
        &topic.name,
        &db,
        &[("PRODUCER_INTERVAL_MS", "100"), ("RUST_LOG", "info,rskafka=warn")],
    )
    .await;
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let (mut good, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();

    let many_headers: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "a".repeat(200 * 1024));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("authority-form target", b"GET example.com:80 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405),
        ("absolute-form without a path", b"GET http://example.com HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 404),
        ("101 header fields", format!("GET / HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(), 431),
        ("a 200 KB header", format!("GET / HTTP/1.1\r\nHost: x\r\n{big_header}\r\n").into_bytes(), 431),
        ("a 60,000-byte URL", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(60_000)).into_bytes(), 414),
        ("a 70,000-byte URL", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(), 414),
        ("a 1 MB URL", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1 << 20)).into_bytes(), 414),
        ("a space in a header name", b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n".to_vec(), 400),
        ("NUL in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n".to_vec(), 400),
        ("DEL in a value", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n".to_vec(), 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n".to_vec(), 400),
        ("HTTP/1.1x", b"GET / HTTP/1.1x\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("HTTP/2.0 on the wire", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec(), 400),
        ("Transfer-Encoding: chunked, identity", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("two Content-Lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), 400),
        ("garbage inside a pipeline", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE GARBAGE\r\n\r\n".to_vec(), 400),
        ("an odd method", b"BREW /api/live/stats HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405),
        ("traversal under /static/", b"GET /static/..%2f..%2fetc%2fpasswd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 404),
        ("a bad query parameter", b"GET /api/live/updates?limit=abc HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400),
        ("HEAD /ws", format!("HEAD /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {GOOD_KEY}\r\n\r\n").into_bytes(), 400),
        ("an empty key", handshake("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: \r\n"), 400),
        ("a key that is not base64", handshake("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: !!not-base64!!\r\n"), 400),
        ("a 2,000-character key", handshake(&format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n", "A".repeat(2000))), 400),
        ("two keys", handshake(&format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {GOOD_KEY}\r\nSec-WebSocket-Key: {GOOD_KEY}\r\n")), 400),
        ("no version", handshake(&format!("Sec-WebSocket-Key: {GOOD_KEY}\r\n")), 400),
        ("version 8", handshake(&format!("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {GOOD_KEY}\r\n")), 426),
    ];
    let mut wrong = Vec::new();
    for (what, request, expected) in &cases {
        let (status, body) = raw(&addr, request).await;
        let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        // A HEAD answer has no body, by HTTP.
        let has_reason = request.starts_with(b"HEAD ")
            || json
                .as_ref()
                .is_some_and(|j| j["error"].as_str().is_some_and(|e| !e.is_empty()));
        if status != *expected || !has_reason {
            wrong.push(format!(
                "{what}: {status} {body:?} (wanted {expected} with a JSON reason)"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "answers not as they should be:\n{}",
        wrong.join("\n")
    );

    // Bad frames on an open socket: an error reply or a close, never a panic.
    let (mut bad, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let frames = [
        Message::text("{not json"),
        Message::text(r#"{"type":"subscribe","malId":"five"}"#),
        Message::text(r#"{"type":"subscribe","malId":99999999999999999999}"#),
        Message::text(r#"{"type":"resume","lastId":-1}"#),
        Message::text(deep),
        Message::binary(vec![0xff, 0xfe, 0x00]),
    ];
    for frame in frames {
        if bad.send(frame).await.is_err() {
            break;
        }
    }
    drop(bad);

    // The good client still gets updates after all of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut updates = 0;
    while updates < 3 {
        let next = tokio::time::timeout_at(deadline, good.next())
            .await
            .unwrap_or_else(|_| panic!("the good client stopped receiving:\n{}", app.output()));
        let Some(Ok(Message::Text(text))) = next else {
            continue;
        };
        if text.contains(r#""type":"update""#) {
            updates += 1;
        }
    }
    let log = app.output();
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    eprintln!(
        "{} hostile requests, each answered with its JSON error; 6 bad frames; the good client received on; no panic",
        cases.len()
    );
}
