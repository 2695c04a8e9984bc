//! The optional API token and origin check, against a real server.

use crate::common;

use std::time::Duration;

use common::stack::{Stack, next_of};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const TOKEN: &str = "s3cret-t0ken";

async fn status(url: &str, bearer: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn api_token_guards_the_page_the_api_and_the_websocket() {
    let stack = Stack::start_with(1, Duration::from_secs(30), &["--api-token", TOKEN]).await;

    for path in ["/", "/api/live/stats", "/api/live/updates", "/api/live/trending"] {
        assert_eq!(
            status(&stack.url(path), None).await,
            401,
            "{path} without a token"
        );
        assert_eq!(
            status(&stack.url(path), Some("wrong")).await,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            status(&stack.url(path), Some(TOKEN)).await,
            200,
            "{path} with the bearer token"
        );
    }
    let response = reqwest::get(stack.url("/api/live/stats")).await.unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("token"), "{body}");

    // Browsers pass it in the query; the page hands it on to its script and socket.
    assert_eq!(
        status(&stack.url(&format!("/api/live/stats?token={TOKEN}")), None).await,
        200
    );
    let page = reqwest::get(stack.url(&format!("/?token={TOKEN}")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!(r#"data-token-query="?token={TOKEN}""#)));

    // Health and metrics stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/static/app.js"] {
        assert_eq!(status(&stack.url(path), None).await, 200, "{path}");
    }

    let url = format!("ws://{}/ws", stack.addr);
    let refused = tokio_tungstenite::connect_async(&url).await;
    assert!(refused.is_err(), "a WebSocket without the token is refused");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={TOKEN}"))
        .await
        .unwrap();
    next_of(&mut ws, "snapshot", Duration::from_secs(30)).await;
}

#[tokio::test]
async fn allowed_origins_check_the_websocket_and_answer_cors() {
    let allowed = "https://catlog.example";
    let stack = Stack::start_with(1, Duration::from_secs(30), &["--allowed-origins", allowed]).await;
    let url = format!("ws://{}/ws", stack.addr);
    let with_origin = |origin: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin).unwrap());
        request
    };

    let refused = tokio_tungstenite::connect_async(with_origin("https://evil.example")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        other => panic!("a foreign origin must get 403, got {other:?}"),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(with_origin(allowed))
        .await
        .unwrap();
    next_of(&mut ws, "snapshot", Duration::from_secs(30)).await;

    // CORS on the API: the allowed origin gets the header, a preflight is answered.
    let client = reqwest::Client::new();
    let response = client
        .get(stack.url("/api/live/stats"))
        .header("origin", allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], allowed);
    let preflight = client
        .request(reqwest::Method::OPTIONS, stack.url("/api/live/stats"))
        .header("origin", allowed)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 200);
    let foreign = client
        .get(stack.url("/api/live/stats"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(foreign.headers().get("access-control-allow-origin").is_none());
}

/// Against a broker that wants a SASL PLAIN login (the test helpers' front
/// end, see `common::sasl`): the right password produces and consumes; a
/// wrong one is one line naming the settings with the broker's own
/// message, at once, not a retried "cannot reach the broker".
#[tokio::test]
async fn kafka_sasl_logs_in_and_a_refused_login_is_one_line_at_once() {
    use common::sasl::{REFUSED, SaslBroker};
    use common::{Proc, TestDb, catlog, unique, wait_until};
    use std::time::Instant;

    let broker = SaslBroker::start("catlog", "right-secret");
    let db = TestDb::migrated().await;
    let topic = unique("catlog-sasl");
    let with = |password: &str, args: &[&str]| {
        let mut cmd = catlog(args, &topic, &db.url);
        cmd.env("KAFKA_BROKER", &broker.addr)
            .env("KAFKA_SASL_MECHANISM", "PLAIN")
            .env("KAFKA_SASL_USERNAME", "catlog")
            .env("KAFKA_SASL_PASSWORD", password);
        cmd
    };

    let started = Instant::now();
    let refused = with("wrong-secret", &["produce", "--max-events", "1"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a refused login fails: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    assert!(
        lines[0].contains("refused the SASL PLAIN login")
            && lines[0].contains(REFUSED)
            && lines[0].contains("KAFKA_SASL_PASSWORD"),
        "names the settings and carries the broker's message: {stderr}"
    );
    assert!(!stderr.contains("cannot reach"), "{stderr}");

    let produced = with(
        "right-secret",
        &["produce", "--rate", "200", "--max-events", "50"],
    )
    .output()
    .unwrap();
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let consumer = Proc::spawn(with("right-secret", &["consume"]), "consume-sasl");
    wait_until(Duration::from_secs(60), "the 50 events stored", || async {
        db.count("SELECT count(*) FROM popularity_events").await == 50
    })
    .await;
    eprintln!(
        "SASL PLAIN: a wrong password said in {took:?}: {}; the right one produced and consumed 50 events",
        lines[0]
    );
    drop(consumer);
}

/// Against a broker that wants a client certificate: with
/// KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE the pipeline produces and
/// consumes (offset mirror included); without them the message names
/// them, at once.
#[tokio::test]
async fn kafka_mutual_tls_with_a_client_certificate() {
    use common::mtls::{Certs, MtlsBroker};
    use common::{Proc, TestDb, catlog, unique, wait_until};

    let certs = Certs::make();
    let broker = MtlsBroker::start(&certs);
    let db = TestDb::migrated().await;
    let topic = unique("catlog-mtls");
    let with = |client_cert: bool, args: &[&str]| {
        let mut cmd = catlog(args, &topic, &db.url);
        cmd.env("KAFKA_BROKER", &broker.addr)
            .env("KAFKA_TLS", "true")
            .env("KAFKA_TLS_CA_FILE", certs.ca());
        if client_cert {
            cmd.env("KAFKA_TLS_CERT_FILE", certs.client_cert())
                .env("KAFKA_TLS_KEY_FILE", certs.client_key());
        }
        cmd
    };

    let without = with(false, &["produce", "--max-events", "1"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(
        !without.status.success(),
        "no client certificate, no broker: {stderr}"
    );

    let half = with(false, &["produce", "--max-events", "1"])
        .env("KAFKA_TLS_CERT_FILE", certs.client_cert())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let half_err = String::from_utf8_lossy(&half.stderr);
    assert!(
        !half.status.success() && half_err.contains("KAFKA_TLS_KEY_FILE"),
        "a certificate without its key names the missing setting: {half_err}"
    );

    let produced = with(true, &["produce", "--rate", "200", "--max-events", "50"])
        .output()
        .unwrap();
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let consumer = Proc::spawn(with(true, &["consume"]), "consume-mtls");
    wait_until(Duration::from_secs(60), "the 50 events stored", || async {
        db.count("SELECT count(*) FROM popularity_events").await == 50
    })
    .await;
    eprintln!(
        "mutual TLS: 50 events produced and consumed; without a client certificate: {}",
        stderr.trim()
    );
    drop(consumer);
}

#[tokio::test]
async fn signed_tokens_open_the_websocket_refresh_in_band_and_expire_with_4401() {
    use catlog_live::serve::tokens::Signer;
    use common::stack::send;
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    const SECRET: &str = "ws-secret";
    let stack = Stack::start_with(1, Duration::from_secs(30), &["--jwt-secret", SECRET]).await;
    let signer = Signer::secret(SECRET).unwrap();
    let url = format!("ws://{}/ws", stack.addr);

    // Refused at the door: none, a forged one, an expired one, each saying why.
    assert!(tokio_tungstenite::connect_async(&url).await.is_err());
    let forged = Signer::secret("not-ours")
        .unwrap()
        .mint(Duration::from_secs(60), None)
        .unwrap();
    let response = reqwest::get(stack.url(&format!("/api/live/stats?token={forged}")))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("signature"), "{body}");

    // What a page asks before it connects: answered to any origin.
    let probe = reqwest::Client::new()
        .get(stack.url("/api/live/access"))
        .header("origin", "https://any.example")
        .send()
        .await
        .unwrap();
    assert_eq!(probe.headers()["access-control-allow-origin"], "*");
    let probe: serde_json::Value = probe.json().await.unwrap();
    assert_eq!(probe["allowed"], false, "{probe}");
    assert_eq!(probe["tokenNeeded"], true, "{probe}");
    let good = signer.mint(Duration::from_secs(60), None).unwrap();
    let probe: serde_json::Value = reqwest::get(stack.url(&format!("/api/live/access?token={good}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(probe["allowed"], true, "{probe}");
    // The module and its styles load from anywhere.
    for path in [
        "/static/catlog-live.js",
        "/static/catlog-live.css",
        "/static/live-client.js",
    ] {
        let response = reqwest::get(stack.url(path)).await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        assert_eq!(response.headers()["access-control-allow-origin"], "*", "{path}");
    }

    // A short token: the server says how long it holds.
    let short = signer.mint(Duration::from_secs(1), None).unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={short}"))
        .await
        .unwrap();
    let told = next_of(&mut ws, "token", Duration::from_secs(10)).await;
    assert_eq!(told["accepted"], true, "{told}");
    let left = told["expiresInMs"].as_u64().unwrap();
    assert!(left <= 6_000, "{told}");

    // A forged refresh is refused in words; the connection keeps its end.
    send(&mut ws, serde_json::json!({"type": "token", "token": forged})).await;
    let refused = next_of(&mut ws, "token", Duration::from_secs(10)).await;
    assert_eq!(refused["accepted"], false, "{refused}");
    assert!(
        refused["reason"].as_str().unwrap().contains("signature"),
        "{refused}"
    );
    // A good one moves the end.
    let fresh = signer.mint(Duration::from_secs(2), None).unwrap();
    send(&mut ws, serde_json::json!({"type": "token", "token": fresh})).await;
    let moved = next_of(&mut ws, "token", Duration::from_secs(10)).await;
    assert_eq!(moved["accepted"], true, "{moved}");

    // Left unrefreshed, it is closed with 4401, "token expired".
    let close = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("the connection ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed once the token expires")
    .expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 4401);
    assert_eq!(close.reason.as_str(), "token expired");
}
