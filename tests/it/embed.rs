//! The elements on somebody else's page, in a real browser: a host page
//! served by the test from another origin (another port) loads the module
//! from `catlog-live all`, embeds the three elements and sees live data over
//! one socket; a page from an origin not allowed is refused and says so; a
//! signed token refreshed in band and one left to expire both end with every
//! update shown once.

use crate::browser::{console_errors, js, open_browser, screenshot_path, shown_and_history};
use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use catlog_live::serve::tokens::Signer;
use common::{TestDb, start_all, unique};
use fantoccini::{Client, Locator};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "embed-test-secret";
const STATIC_TOKEN: &str = "operator-token";

/// A plain site of its own: `/` is `page`, `/token` a fresh signed token
/// valid for `ttl` (what the site's backend would hand its visitors).
struct Host {
    origin: String,
    _serving: AbortOnDropHandle<()>,
}

async fn host(page: String, ttl: Duration) -> Host {
    host_at("127.0.0.1:0", page, ttl).await
}

/// [`host`] on `addr`.
async fn host_at(addr: &str, page: String, ttl: Duration) -> Host {
    let listener = TcpListener::bind(addr).await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let page = Arc::new(page);
    let signer = Arc::new(Signer::secret(SECRET).unwrap());
    let serving = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let page = Arc::clone(&page);
            let signer = Arc::clone(&signer);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (kind, body) = match path.as_str() {
                    "/token" => ("text/plain", signer.mint(ttl, Some("host-page")).unwrap()),
                    "/favicon.ico" => ("text/plain", String::new()),
                    _ => ("text/html; charset=utf-8", page.to_string()),
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Host {
        origin,
        _serving: AbortOnDropHandle::new(serving),
    }
}

/// A host page embedding `elements` from the server at `server` (its URL,
/// ending in `/`); it counts the sockets the page opens, and hands the
/// elements tokens from its own `/token` unless `window.tokenPaused`.
fn host_page(server: &str, elements: &str, with_tokens: bool) -> String {
    let tokens = if with_tokens {
        r#"configure({ getToken: async () => {
             if (window.tokenPaused) throw new Error("the site holds its tokens back");
             const answer = await fetch("/token");
             if (!answer.ok) throw new Error("no token");
             window.tokensFetched += 1;
             return answer.text();
           } });"#
    } else {
        ""
    };
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>A CatLog page</title>
<style>
  :root {{ color-scheme: light; font-family: system-ui, sans-serif; }}
  :root.dark {{ color-scheme: dark; background: #101217; color: #e8eaee; }}
  body {{ margin: 24px; }}
  .grid {{ display: grid; grid-template-columns: 1.3fr 1fr; gap: 16px; align-items: start; }}
  catlog-live-feed {{ grid-row: span 2; }}
</style>
<script>
  window.sockets = 0; window.tokensFetched = 0; window.tokenPaused = false;
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {{ constructor(...args) {{ super(...args); window.sockets += 1; }} }};
</script>
<script type="module">
  import {{ configure }} from "{server}static/catlog-live.js";
  {tokens}
</script>
</head><body>
<h1>CatLog</h1>
<div class="grid">{elements}</div>
</body></html>"#
    )
}

/// Runs `script` (a function body) until it returns `true`; panics with
/// `what` and what the elements say after [`WAIT`].
async fn wait_for(client: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if client.execute(script, vec![]).await.unwrap_or(Value::Null) == Value::Bool(true) {
            return;
        }
        if Instant::now() >= deadline {
            let said = js(
                client,
                "return [...document.querySelectorAll('catlog-live-feed, catlog-live-trending, catlog-live-anime')] \
                   .map(e => e.localName + ': ' + (e.shadowRoot ? e.shadowRoot.textContent.slice(0, 200) : 'no shadow root'))",
            )
            .await;
            panic!("timed out waiting for {what}; the elements show {said}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The words an element's state line says.
fn status_of(selector: &str) -> String {
    format!(
        "return document.querySelector('{selector}').shadowRoot.querySelector('[part=status]').textContent"
    )
}

const ALL_LIVE: &str = "return [...document.querySelectorAll('catlog-live-feed, catlog-live-trending, catlog-live-anime')] \
    .every(e => e.dataset.state === 'live')";

#[tokio::test]
async fn embedded_elements_on_another_origin_share_one_socket_and_a_refused_origin_says_so() {
    let db = TestDb::new();
    let topic = unique("catlog-embed");
    // The host page's port is known only once it listens: start it first,
    // with the page filled in once the server's address is known.
    let allowed_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let allowed_origin = format!("http://{}", allowed_listener.local_addr().unwrap());
    drop(allowed_listener);
    let (app, url) = start_all(
        &topic,
        &db,
        &[
            ("PRODUCER_INTERVAL_MS", "250"),
            ("BROADCAST_INTERVAL_MS", "2000"),
            ("PRODUCER_SEED", "11"),
            ("ALLOWED_ORIGINS", allowed_origin.as_str()),
            ("LIVE_JWT_SECRET", SECRET),
            ("LIVE_API_TOKEN", STATIC_TOKEN),
        ],
    )
    .await;
    let elements = r#"<catlog-live-feed limit="12"></catlog-live-feed>
        <catlog-live-anime follow-selection></catlog-live-anime>
        <catlog-live-trending limit="5" selectable></catlog-live-trending>"#;
    let page = host_page(&url, elements, true);
    let site = host_on(&allowed_origin, page).await;

    let (_driver, client) = open_browser().await;
    client.set_window_size(1200, 1000).await.unwrap();
    client.goto(&format!("{}/", site.origin)).await.unwrap();
    wait_for(&client, "every element to say Live", ALL_LIVE).await;
    assert_eq!(js(&client, &status_of("catlog-live-trending")).await, "Live");
    wait_for(
        &client,
        "the feed to fill and the trending list to appear",
        "const f = document.querySelector('catlog-live-feed').shadowRoot.querySelectorAll('li').length; \
         const t = document.querySelector('catlog-live-trending').shadowRoot.querySelectorAll('li').length; \
         return f >= 5 && t >= 3",
    )
    .await;

    // The anime element follows a title's room, then another's.
    let follow = |n: usize| {
        format!(
            "const rows = [...document.querySelector('catlog-live-trending').shadowRoot.querySelectorAll('li')]; \
             const row = rows[{n}]; const a = document.querySelector('catlog-live-anime'); \
             a.setAttribute('mal-id', row.dataset.malId); \
             return row.querySelector('[part~=title]').textContent"
        )
    };
    let shows = |title: &Value| {
        format!(
            "const r = document.querySelector('catlog-live-anime').shadowRoot; \
             return r.querySelector('[part~=heading]').textContent === {title} \
               && r.querySelectorAll('[part=fact]').length === 5 && r.querySelectorAll('path.line').length > 0"
        )
    };
    let first = js(&client, &follow(0)).await;
    wait_for(
        &client,
        &format!("the anime element to show {first}"),
        &shows(&first),
    )
    .await;
    // The second the way a person does it: a click (or Enter) on another
    // trending title. (The list is redrawn as the ranking moves: the first
    // may have changed places, and a title gone under the pointer is
    // looked up again.)
    let mut second = None;
    'tries: for _ in 0..5 {
        let trending = client.find(Locator::Css("catlog-live-trending")).await.unwrap();
        let titles = trending
            .shadow_root()
            .await
            .unwrap()
            .find_all(Locator::Css("li button.title"))
            .await
            .unwrap();
        for title in titles {
            let Ok(text) = title.text().await else {
                continue 'tries;
            };
            if Value::String(text.clone()) == first {
                continue;
            }
            if title.click().await.is_ok() {
                second = Some(Value::String(text));
                break 'tries;
            }
            continue 'tries;
        }
    }
    let second = second.expect("a click on the second trending title");
    assert_ne!(first, second);
    wait_for(
        &client,
        &format!("the anime element to follow {second}"),
        &shows(&second),
    )
    .await;
    // It shows its room's changes as they come: its event count moves on.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // One socket for the whole page, however many elements.
    assert_eq!(
        js(&client, "return window.sockets").await,
        1,
        "sockets opened by the page"
    );
    let stats: Value = reqwest::Client::new()
        .get(format!("{url}api/live/stats"))
        .bearer_auth(STATIC_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["connections"], 1, "connections the server holds: {stats}");
    assert_eq!(stats["rooms"], 1, "rooms followed: {stats}");
    assert_eq!(console_errors(&client).await, Vec::<String>::new());

    std::fs::write(
        screenshot_path("embedding-light.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    js(
        &client,
        "document.documentElement.classList.add('dark'); return true",
    )
    .await;
    let dark = js(
        &client,
        "return getComputedStyle(document.querySelector('catlog-live-feed').shadowRoot.querySelector('.frame')).backgroundColor",
    )
    .await;
    assert_ne!(
        dark, "rgb(255, 255, 255)",
        "the elements follow the page into dark"
    );
    // Rows that flashed in the light finish their flash first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(
        screenshot_path("embedding-dark.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    // A site that is not in ALLOWED_ORIGINS: every element says so, in words.
    let refused = host(host_page(&url, elements, false), Duration::from_secs(60)).await;
    for _ in 0..2 {
        client.goto(&format!("{}/", refused.origin)).await.unwrap();
        wait_for(
            &client,
            "every element to say not allowed",
            "return [...document.querySelectorAll('catlog-live-feed, catlog-live-trending, catlog-live-anime')] \
               .every(e => e.dataset.state === 'not-allowed')",
        )
        .await;
    }
    let said = js(&client, &status_of("catlog-live-feed")).await;
    let said = said.as_str().unwrap_or_default();
    assert!(said.starts_with("Not allowed: "), "{said}");
    assert!(said.contains(&refused.origin), "names the site: {said}");
    assert_eq!(
        js(&client, "return window.sockets").await,
        0,
        "no socket is even tried"
    );
    assert_eq!(console_errors(&client).await, Vec::<String>::new());
    let logged = app
        .output()
        .matches(&format!("refused a page from {}", refused.origin))
        .count();
    assert_eq!(logged, 1, "the refused origin is logged once:\n{}", app.output());
    client.close().await.unwrap();
}

/// [`host`] on the address of `origin` (free a moment ago).
async fn host_on(origin: &str, page: String) -> Host {
    host_at(
        origin.trim_start_matches("http://"),
        page,
        Duration::from_secs(600),
    )
    .await
}

#[tokio::test]
async fn a_token_refreshed_in_band_and_one_left_to_expire_both_show_every_update_once() {
    let db = TestDb::new();
    let topic = unique("catlog-embed-tokens");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let (_app, url) = start_all(
        &topic,
        &db,
        &[
            ("PRODUCER_INTERVAL_MS", "200"),
            ("PRODUCER_SEED", "12"),
            ("ALLOWED_ORIGINS", origin.as_str()),
            ("LIVE_JWT_SECRET", SECRET),
        ],
    )
    .await;
    // Tokens of two seconds (the server allows five more for clocks apart):
    // the page refreshes each some five seconds in.
    let page = host_page(
        &url,
        r#"<catlog-live-feed limit="2000"></catlog-live-feed>"#,
        true,
    );
    let site = host_at(origin.trim_start_matches("http://"), page, Duration::from_secs(2)).await;
    let (_driver, client) = open_browser().await;
    client.goto(&format!("{}/", site.origin)).await.unwrap();
    wait_for(&client, "the feed to say Live", ALL_LIVE).await;
    // Every row the feed takes in, in the order it does.
    js(
        &client,
        "window.rowsShown = []; \
         new MutationObserver((changes) => { for (const c of changes) for (const n of c.addedNodes) \
           if (n.dataset && n.dataset.id) window.rowsShown.push(Number(n.dataset.id)); }) \
           .observe(document.querySelector('catlog-live-feed').shadowRoot.querySelector('[part=list]'), { childList: true }); \
         return true;",
    )
    .await;

    // Refreshed in band, twice, on the one socket.
    wait_for(
        &client,
        "two refreshes of the token",
        "return window.tokensFetched >= 3",
    )
    .await;
    assert_eq!(
        js(&client, "return window.sockets").await,
        1,
        "a refresh does not reconnect"
    );
    wait_for(&client, "the feed to be Live after the refreshes", ALL_LIVE).await;

    // The site stops handing out tokens: the server closes the connection
    // when the token runs out, and the feed says what it is doing.
    js(&client, "window.tokenPaused = true; return true").await;
    wait_for(
        &client,
        "the feed to say it renews its access",
        "return document.querySelector('catlog-live-feed').shadowRoot.querySelector('[part=status]').textContent === 'Renewing access…'",
    )
    .await;
    let newest = "SELECT coalesce(max(id), 0) FROM popularity_events";
    let at_expiry = db.count(newest).await;
    common::wait_until(WAIT, "20 events to go by", || async {
        db.count(newest).await >= at_expiry + 20
    })
    .await;
    // Tokens again: a fresh one first, then the resume.
    js(&client, "window.tokenPaused = false; return true").await;
    wait_for(&client, "the feed to be Live again", ALL_LIVE).await;
    let target = db.count(newest).await;
    wait_for(
        &client,
        &format!("the feed to reach row {target}"),
        &format!("return window.rowsShown.some((id) => id >= {target})"),
    )
    .await;
    assert_eq!(
        js(&client, "return window.sockets").await,
        2,
        "one new socket after the expiry, no storm"
    );

    let (shown, history) = shown_and_history(&client, &db).await;
    let (first, last) = (shown[0], *shown.last().unwrap());
    eprintln!(
        "{} rows shown from {first} to {last} across two refreshes and an expiry",
        shown.len()
    );
    assert_eq!(shown, history, "every update once, in order");
    let errors = console_errors(&client).await;
    assert_eq!(errors, Vec::<String>::new());
    client.close().await.unwrap();
}

/// What a page downloads for the elements, gzipped as a server or CDN
/// would send it: the module, the client it imports, the styles.
#[test]
fn the_module_and_its_styles_are_under_15_kb_gzipped() {
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    let mut total = 0;
    for file in ["catlog-live.js", "live-client.js", "catlog-live.css"] {
        let text = std::fs::read(dir.join(file)).unwrap();
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(&text).unwrap();
        let size = gz.finish().unwrap().len();
        eprintln!("{file}: {} bytes, {size} gzipped", text.len());
        total += size;
    }
    eprintln!("the elements: {total} bytes gzipped");
    assert!(total < 15 * 1024, "{total} bytes gzipped, over 15 KB");
}

#[tokio::test]
async fn our_page_shows_real_content_before_any_script_runs() {
    let db = TestDb::new();
    let topic = unique("catlog-no-script");
    let (_app, url) = start_all(
        &topic,
        &db,
        &[("PRODUCER_INTERVAL_MS", "100"), ("PRODUCER_SEED", "13")],
    )
    .await;
    // The page as the server renders it once there is something to show…
    common::wait_until(WAIT, "20 events stored", || async {
        db.count("SELECT count(*) FROM popularity_events").await >= 20
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let html = reqwest::get(&url).await.unwrap().text().await.unwrap();
    // …without its scripts, as a browser shows it before they run (or
    // without JavaScript at all).
    let mut page = String::new();
    let mut rest = html.as_str();
    while let Some(start) = rest.find("<script") {
        page.push_str(&rest[..start]);
        let end = rest[start..]
            .find("</script>")
            .map_or(rest.len(), |e| start + e + "</script>".len());
        rest = &rest[end..];
    }
    page.push_str(rest);
    let page = page.replace(r#"href="/static/"#, &format!(r#"href="{url}static/"#));
    assert!(!page.contains("<script"));
    let site = host(page, Duration::from_secs(60)).await;
    let (_driver, client) = open_browser().await;
    client.goto(&format!("{}/", site.origin)).await.unwrap();
    let shown = js(
        &client,
        "const feed = document.getElementById('live-feed').shadowRoot; \
         const trending = document.getElementById('live-trending').shadowRoot; \
         return [feed.querySelectorAll('#feed li button.title').length, \
                 trending.querySelectorAll('#trending li .momentum').length, \
                 getComputedStyle(feed.getElementById('feed')).listStyleType]",
    )
    .await;
    eprintln!("without scripts the page shows {shown}");
    assert!(shown[0].as_u64().unwrap() >= 10, "feed rows: {shown}");
    assert!(shown[1].as_u64().unwrap() >= 1, "trending rows: {shown}");
    assert_eq!(
        shown[2], "none",
        "the elements' styles apply (bare: no frame): {shown}"
    );
    std::fs::write(
        screenshot_path("live-page-before-scripts.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    client.close().await.unwrap();
}
