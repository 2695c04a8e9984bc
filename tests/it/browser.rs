//! The live page in a real browser: headless Chromium, driven over WebDriver,
//! opens the page served by `catlog-live all`, sees the indicator reach
//! "connected", sees the feed grow, follows an anime and sees its chart.
//! Screenshots are saved under `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test installs
//! them when missing).

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::Proxy;
use common::{Proc, TestDb, catlog, free_port, start_all, unique, wait_until, which};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// chromedriver listening on `port`.
fn chromedriver(port: u16) -> Proc {
    let path = which("chromedriver").unwrap_or_else(|| {
        panic!("chromedriver not found: install Debian's chromium and chromium-driver (scripts/test does)")
    });
    let mut cmd = Command::new(path);
    cmd.arg(format!("--port={port}")).stdin(Stdio::null());
    let proc = Proc::spawn(cmd, "chromedriver");
    proc.wait_for_port(port, Duration::from_secs(20));
    proc
}

/// A headless Chromium of the test's own, and the chromedriver driving it
/// (which must live as long as the browser is used).
pub(crate) async fn open_browser() -> (Proc, Client) {
    let port = free_port();
    let driver = chromedriver(port);
    (driver, browser(port).await)
}

async fn browser(driver_port: u16) -> Client {
    let profile = std::env::temp_dir().join(unique("chromium-profile"));
    let mut caps = serde_json::Map::new();
    // The page's console, read back with `console_errors`.
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": which("chromium").map(|p| p.display().to_string()).unwrap_or_else(|| "/usr/bin/chromium".into()),
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-quic", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .unwrap_or_else(|e| panic!("cannot start Chromium through chromedriver: {e}"))
}

/// chromedriver's log of the page's console (not in W3C WebDriver).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (warp::http::Method, Option<String>) {
        (warp::http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// Errors the page's console showed since the last call.
pub(crate) async fn console_errors(client: &Client) -> Vec<String> {
    let log = client.issue_cmd(BrowserLog).await.unwrap_or(Value::Null);
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["level"] == "SEVERE")
        .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Runs `script` (a function body) until it returns `true`.
async fn wait_js(client: &Client, what: &str, script: &str) {
    wait_js_for(client, WAIT, what, script).await;
}

/// The same, for at most `within`.
async fn wait_js_for(client: &Client, within: Duration, what: &str, script: &str) {
    let deadline = Instant::now() + within;
    loop {
        let value = client.execute(script, vec![]).await.unwrap_or(Value::Null);
        if value == Value::Bool(true) {
            return;
        }
        if Instant::now() >= deadline {
            let seen = client
                .execute(
                    "return document.getElementById('status').outerHTML + ' feed=' + document.getElementById('live-feed').shadowRoot.querySelectorAll('#feed li').length",
                    vec![],
                )
                .await
                .unwrap_or(Value::Null);
            panic!("timed out waiting for {what}; the page shows {seen}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The element `css` finds inside the shadow root of the element `host` finds.
async fn in_shadow(client: &Client, host: &str, css: &str) -> fantoccini::elements::Element {
    let host = client.find(Locator::Css(host)).await.unwrap();
    let root = host.shadow_root().await.unwrap();
    root.find(Locator::Css(css)).await.unwrap()
}

pub(crate) async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.unwrap()
}

/// The history ids the page recorded as shown (`window.rowsShown`, in the
/// order shown), and the history's ids over the same span.
pub(crate) async fn shown_and_history(client: &Client, db: &TestDb) -> (Vec<i64>, Vec<i64>) {
    let shown: Vec<i64> = js(client, "return window.rowsShown")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let (first, last) = (shown[0], *shown.last().unwrap());
    let history = db
        .connect()
        .await
        .query(
            "SELECT id FROM popularity_events WHERE id BETWEEN $1 AND $2 ORDER BY id",
            &[&first, &last],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (shown, history)
}

pub(crate) fn screenshot_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test]
async fn live_page_connects_streams_and_follows_an_anime_in_chromium() {
    let db = TestDb::new();
    let topic = unique("catlog-browser");
    let (app, url) = start_all(
        &topic,
        &db,
        &[
            ("PRODUCER_INTERVAL_MS", "250"),
            ("BROADCAST_INTERVAL_MS", "2000"),
            ("PRODUCER_SEED", "7"),
        ],
    )
    .await;

    let (driver, client) = open_browser().await;
    client.goto(&url).await.unwrap();

    wait_js(
        &client,
        "the indicator to say connected",
        "return document.getElementById('status').dataset.state === 'connected'",
    )
    .await;
    let status_text = js(&client, "return document.getElementById('status').textContent").await;
    assert_eq!(status_text, "Live");

    let first = js(
        &client,
        "return document.getElementById('live-feed').shadowRoot.querySelectorAll('#feed li').length",
    )
    .await
    .as_u64()
    .unwrap();
    wait_js(
        &client,
        "the feed to grow",
        &format!("return document.getElementById('live-feed').shadowRoot.querySelectorAll('#feed li').length > {first} + 2"),
    )
    .await;
    wait_js(
        &client,
        "a trending list",
        "return document.getElementById('live-trending').shadowRoot.querySelectorAll('#trending li').length > 0",
    )
    .await;

    // Follow the newest anime in the feed.
    let link = in_shadow(&client, "#live-feed", "#feed li button.title").await;
    let title = link.text().await.unwrap();
    link.click().await.unwrap();
    wait_js(&client, "the anime panel",
        "const p = document.getElementById('anime-panel'); return !p.hidden && document.getElementById('anime').shadowRoot.getElementById('anime-title').textContent !== 'Loading…'").await;
    assert_eq!(
        js(
            &client,
            "return document.getElementById('anime').shadowRoot.getElementById('anime-title').textContent"
        )
        .await,
        title
    );
    wait_js(&client, "the chart's two lines",
        "return document.getElementById('anime').shadowRoot.querySelectorAll('#anime-chart path.line.score, #anime-chart path.line.members').length === 2").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(
        screenshot_path("live-page.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    // A phone: one column, no sideways scrolling.
    client.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let overflow = js(
        &client,
        "return document.documentElement.scrollWidth - window.innerWidth",
    )
    .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "page scrolls sideways on a phone by {overflow}px"
    );
    std::fs::write(
        screenshot_path("live-page-phone.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    // The server goes away: the page says so, reconnects when it is back,
    // resumes, and the feed moves on.
    client.set_window_size(1280, 900).await.unwrap();
    let mut app = app;
    assert_eq!(app.terminate().code(), Some(0));
    wait_js(
        &client,
        "the indicator to say reconnecting",
        "return ['reconnecting', 'offline'].includes(document.getElementById('status').dataset.state)",
    )
    .await;
    let before = js(
        &client,
        "return Math.max(...[...document.getElementById('live-feed').shadowRoot.querySelectorAll('#feed li')].map(li => Number(li.dataset.id)))",
    )
    .await;
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut again = catlog(&["all"], &topic, &db.url);
    again
        .env("LISTEN_ADDR", &addr)
        .env("PRODUCER_INTERVAL_MS", "250")
        .env("BROADCAST_INTERVAL_MS", "2000");
    let app = Proc::spawn(again, "all-again");
    wait_js(
        &client,
        "the indicator to be connected again",
        "return document.getElementById('status').dataset.state === 'connected'",
    )
    .await;
    wait_js(
        &client,
        "new updates after the reconnect",
        &format!(
            "return [...document.getElementById('live-feed').shadowRoot.querySelectorAll('#feed li')].some(li => Number(li.dataset.id) > {before})"
        ),
    )
    .await;

    client.close().await.unwrap();
    drop(driver);
    drop(app);
}

#[tokio::test]
async fn the_indicator_says_stale_when_events_stop_and_live_when_they_come_back() {
    let db = TestDb::new();
    let topic = unique("catlog-stale");
    // The page first, on a pipeline that produces nothing itself…
    let (_app, url) = start_all(&topic, &db, &[("PRODUCER_MAX_EVENTS", "0")]).await;
    let (_driver, client) = open_browser().await;
    client.goto(&url).await.unwrap();
    wait_js(
        &client,
        "the page to connect",
        "return document.getElementById('status').dataset.state === 'connected'",
    )
    .await;
    // …then ten events a quarter second apart, seen live, then silence.
    let produce = |n: &str| {
        catlog(
            &["produce", "--interval-ms", "250", "--max-events", n],
            &topic,
            &db.url,
        )
        .status()
        .unwrap()
    };
    assert!(produce("10").success());
    wait_js(
        &client,
        "the ten events in the feed",
        "return document.getElementById('live-feed').shadowRoot.querySelectorAll('#feed li').length === 10",
    )
    .await;
    wait_js(
        &client,
        "the indicator to say stale once events stop",
        "const s = document.getElementById('status'); \
         return s.dataset.state === 'stale' && s.textContent.includes('no new events for')",
    )
    .await;
    let color = js(
        &client,
        "return getComputedStyle(document.getElementById('status')).color",
    )
    .await;
    assert_ne!(color, "rgb(11, 107, 46)", "stale is not drawn in Live's green");

    // One more event: Live again.
    assert!(produce("1").success());
    wait_js(
        &client,
        "the indicator to say Live again",
        "const s = document.getElementById('status'); \
         return s.dataset.state === 'connected' && s.textContent === 'Live'",
    )
    .await;
    client.close().await.unwrap();
}

#[tokio::test]
async fn on_a_phone_trending_is_one_tap_away_and_everything_can_be_tapped() {
    let db = TestDb::new();
    let topic = unique("catlog-phone");
    let (_app, url) = start_all(
        &topic,
        &db,
        &[("PRODUCER_INTERVAL_MS", "250"), ("PRODUCER_SEED", "3")],
    )
    .await;
    let (_driver, client) = open_browser().await;
    client.set_window_size(390, 844).await.unwrap();
    client.goto(&url).await.unwrap();
    wait_js(
        &client,
        "a trending list",
        "return document.getElementById('live-trending').shadowRoot.querySelectorAll('#trending li').length > 3",
    )
    .await;
    let shown =
        |id: &str| format!("return getComputedStyle(document.getElementById('{id}')).display !== 'none'");
    assert_eq!(js(&client, &shown("feed-section")).await, true, "the feed first");
    assert_eq!(
        js(&client, &shown("trending-section")).await,
        false,
        "trending behind its tab"
    );

    client
        .find(Locator::Css("#tab-trending"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(js(&client, &shown("trending-section")).await, true);
    assert_eq!(js(&client, &shown("feed-section")).await, false);
    let top = js(
        &client,
        "return document.getElementById('live-trending').getBoundingClientRect().top < window.innerHeight / 2",
    )
    .await;
    assert_eq!(top, true, "one tap puts the list on screen, not fifty rows down");

    let small = js(
        &client,
        "return [...document.querySelectorAll('.tab, #anime-close'), \
                 ...document.getElementById('live-trending').shadowRoot.querySelectorAll('#trending button.title')] \
           .filter(b => b.getBoundingClientRect().height > 0) \
           .filter(b => b.getBoundingClientRect().height < 44) \
           .map(b => b.textContent.trim() + ' ' + b.getBoundingClientRect().height)",
    )
    .await;
    assert_eq!(small, json!([]), "tap targets of 44 px or more");
    let overflow = js(
        &client,
        "return document.documentElement.scrollWidth - window.innerWidth",
    )
    .await;
    assert!(overflow.as_i64().unwrap() <= 0, "no sideways scroll: {overflow}");

    client
        .find(Locator::Css("#tab-feed"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        js(&client, &shown("feed-section")).await,
        true,
        "and one tap back"
    );
    assert_eq!(console_errors(&client).await, Vec::<String>::new());
    client.close().await.unwrap();
}

#[tokio::test]
async fn following_the_top_trending_title_shows_its_story_within_a_minute() {
    let db = TestDb::new();
    let topic = unique("catlog-first-minute");
    // The demo as a new user runs it: one event a second.
    let (_app, url) = start_all(&topic, &db, &[("PRODUCER_SEED", "1")]).await;
    let (_driver, client) = open_browser().await;
    client.set_window_size(1366, 900).await.unwrap();
    client.goto(&url).await.unwrap();
    // A person looks for a moment, then follows what is on top for a reason
    // (more than one recent event, not the first title that happened to move).
    wait_js(
        &client,
        "a trending list with a leader",
        "const top = document.getElementById('live-trending').shadowRoot.querySelector('#trending li:first-child .momentum'); \
         return top !== null && Number(top.textContent) >= 2",
    )
    .await;
    let started = Instant::now();
    in_shadow(&client, "#live-trending", "#trending li:first-child button.title")
        .await
        .click()
        .await
        .unwrap();
    wait_js(
        &client,
        "the panel",
        "return document.getElementById('anime').shadowRoot.getElementById('anime-title').textContent !== 'Loading…'",
    )
    .await;
    let title = js(
        &client,
        "return document.getElementById('anime').shadowRoot.getElementById('anime-title').textContent",
    )
    .await;
    wait_js_for(
        &client,
        Duration::from_secs(60),
        &format!("two points in the chart of {title}"),
        "return document.getElementById('anime').shadowRoot.querySelectorAll('#anime-chart circle.dot').length >= 2",
    )
    .await;
    let title = js(
        &client,
        "return document.getElementById('anime').shadowRoot.getElementById('anime-title').textContent",
    )
    .await;
    eprintln!(
        "{title}: two points in its chart {:?} after following it",
        started.elapsed()
    );
    let legend = js(
        &client,
        "return [...document.getElementById('anime').shadowRoot.querySelectorAll('#anime-chart text')].map(t => t.textContent).join(' | ')",
    )
    .await;
    let legend = legend.as_str().unwrap_or_default();
    assert!(
        legend.contains("Score") && legend.contains("Members"),
        "labelled: {legend}"
    );
    let unit = js(
        &client,
        "return document.getElementById('anime').shadowRoot.getElementById('anime-sub').textContent",
    )
    .await;
    assert!(unit.as_str().unwrap_or_default().contains("MAL #"), "{unit}");

    // The rest of the first minute, then what a person sees.
    let rest = Duration::from_secs(60).saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    let points = js(
        &client,
        "return document.getElementById('anime').shadowRoot.querySelectorAll('#anime-chart circle.dot').length",
    )
    .await;
    eprintln!("{title}: {points} points in its chart after a minute");
    std::fs::write(
        screenshot_path("first-minute.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    client.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(
        screenshot_path("first-minute-phone.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    assert_eq!(console_errors(&client).await, Vec::<String>::new());
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_movement_arrow_appears_in_the_trending_list() {
    let db = TestDb::new();
    let topic = unique("catlog-arrows");
    let (_app, url) = start_all(
        &topic,
        &db,
        &[("PRODUCER_INTERVAL_MS", "100"), ("PRODUCER_SEED", "5")],
    )
    .await;
    let (_driver, client) = open_browser().await;
    client.goto(&url).await.unwrap();
    let started = Instant::now();
    wait_js_for(
        &client,
        Duration::from_secs(180),
        "a ▲ or ▼ in the trending list",
        "return document.getElementById('live-trending').shadowRoot.querySelectorAll('#trending .movement.up, #trending .movement.down').length > 0",
    )
    .await;
    eprintln!("first movement arrow after {:?}", started.elapsed());
    let label = js(
        &client,
        "return document.getElementById('live-trending').shadowRoot.querySelector('#trending .movement.up, #trending .movement.down').getAttribute('aria-label')",
    )
    .await;
    assert!(
        label
            .as_str()
            .is_some_and(|l| l.starts_with("Up ") || l.starts_with("Down ")),
        "{label}"
    );
    assert_eq!(console_errors(&client).await, Vec::<String>::new());
    client.close().await.unwrap();
}

#[tokio::test]
async fn the_page_loses_its_connection_twice_during_a_replay_and_still_shows_every_update_once() {
    let db = TestDb::new();
    let topic = unique("catlog-replay");
    let (_app, url) = start_all(
        &topic,
        &db,
        &[("PRODUCER_INTERVAL_MS", "100"), ("PRODUCER_SEED", "5")],
    )
    .await;
    let port: u16 = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"));
    // The page reaches the server through a proxy the test can cut.
    let proxy = Proxy::tcp(port);
    let (_driver, client) = open_browser().await;
    client
        .goto(&format!("http://127.0.0.1:{}/", proxy.port()))
        .await
        .unwrap();
    wait_js(
        &client,
        "the page to be live",
        "return document.getElementById('status').dataset.state === 'connected'",
    )
    .await;
    // Every row the feed takes in, in the order it does.
    js(
        &client,
        "window.rowsShown = []; \
         new MutationObserver((changes) => { for (const c of changes) for (const n of c.addedNodes) \
           if (n.dataset && n.dataset.id) window.rowsShown.push(Number(n.dataset.id)); }) \
           .observe(document.getElementById('live-feed').shadowRoot.getElementById('feed'), { childList: true }); return true;",
    )
    .await;
    wait_js(&client, "live rows", "return window.rowsShown.length >= 5").await;

    // Cut off while 60 events go by (the page's backoff may keep it away
    // longer, far from the 1,000 a resume replays)…
    proxy.cut();
    wait_js(
        &client,
        "the indicator to say reconnecting",
        "return ['reconnecting', 'offline'].includes(document.getElementById('status').dataset.state)",
    )
    .await;
    let newest = "SELECT coalesce(max(id), 0) FROM popularity_events";
    let at_cut = db.count(newest).await;
    wait_until(WAIT, "60 events to go by", || async {
        db.count(newest).await >= at_cut + 60
    })
    .await;
    // …then back, and the next two connections that resume are lost a few
    // updates into their replay.
    proxy.close_answers_after(b"lastId=", 3_000, 2);
    proxy.restore();
    wait_until(WAIT, "two replays cut short", || async {
        proxy.closed_answers() == 2
    })
    .await;
    let target = db.count(newest).await;
    wait_js(
        &client,
        &format!("the feed to reach row {target}"),
        &format!("return window.rowsShown.some((id) => id >= {target})"),
    )
    .await;

    let (shown, history) = shown_and_history(&client, &db).await;
    let (first, last) = (shown[0], *shown.last().unwrap());
    let mut once = shown.clone();
    once.sort_unstable();
    once.dedup();
    eprintln!(
        "the page lost 2 replays: {} rows shown from {first} to {last}, {} distinct, {} in the history",
        shown.len(),
        once.len(),
        history.len()
    );
    assert_eq!(once.len(), shown.len(), "a row shown twice");
    assert_eq!(shown, history, "every update once, in order");
    let duplicates = js(
        &client,
        "const ids = [...document.getElementById('live-feed').shadowRoot.querySelectorAll('#feed li')].map((li) => li.dataset.id); \
         return ids.length - new Set(ids).size",
    )
    .await;
    assert_eq!(duplicates, 0, "the feed shows a row twice");
    client.close().await.unwrap();
}

#[tokio::test]
async fn the_indicator_says_delayed_and_why_when_the_server_cannot_read_new_history() {
    let db = TestDb::new();
    let topic = unique("catlog-delayed");
    // The pipeline reaches PostgreSQL through a proxy the test can freeze.
    let proxy = Proxy::tcp(db.server_port());
    let via = db.url_via(proxy.port());
    let (_app, url) = start_all(
        &topic,
        &db,
        &[
            ("DATABASE_URL", via.as_str()),
            ("DB_TIMEOUT", "3s"),
            ("PRODUCER_INTERVAL_MS", "250"),
        ],
    )
    .await;
    let (_driver, client) = open_browser().await;
    client.goto(&url).await.unwrap();
    wait_js(
        &client,
        "the page to be live",
        "return document.getElementById('status').dataset.state === 'connected'",
    )
    .await;

    proxy.freeze();
    wait_js(
        &client,
        "the indicator to say delayed, with the server's reason",
        "const s = document.getElementById('status'); \
         return s.dataset.state === 'delayed' && s.textContent.startsWith('Delayed — ') \
           && s.textContent.includes('PostgreSQL')",
    )
    .await;
    let said = js(&client, "return document.getElementById('status').textContent").await;
    std::fs::write(
        screenshot_path("live-page-delayed.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    proxy.thaw();
    wait_js(
        &client,
        "the indicator to say Live again",
        "const s = document.getElementById('status'); \
         return s.dataset.state === 'connected' && s.textContent === 'Live'",
    )
    .await;
    eprintln!("while PostgreSQL was frozen the page said: {said}");
    client.close().await.unwrap();
}
