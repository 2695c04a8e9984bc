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
