//! The pipeline's consume and serve stages, built and run in this test
//! process exactly as `catlog-live` builds them (the same command line, the
//! same [`Pipeline`]), on the real broker and a database of the test's own,
//! with the server on port 0.

use std::net::SocketAddr;
use std::time::Duration;

use catlog_live::config::{Cli, Command};
use catlog_live::pipeline::{Pipeline, Settings};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{TestDb, TestTopic, broker};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The settings `catlog-live all <args>` would run with, on `topic` and
/// `db_url`, with the server on port 0 and without the simulator (the
/// tests publish what they need).
pub fn settings(topic: &str, db_url: &str, broadcast_every: Duration, args: &[&str]) -> Settings {
    let broker = broker();
    let broadcast = broadcast_every.as_millis().to_string();
    let mut line = vec![
        "catlog-live",
        "all",
        "--kafka-broker",
        &broker,
        "--kafka-topic",
        topic,
        "--database-url",
        db_url,
        "--listen-addr",
        "127.0.0.1:0",
        "--broadcast-interval-ms",
        &broadcast,
        "--batch-size",
        "500",
    ];
    line.extend_from_slice(args);
    let cli = Cli::try_parse_from(line).unwrap_or_else(|e| panic!("{e}"));
    let Command::All(all) = cli.command else {
        panic!("not `all`")
    };
    Settings {
        produce: None,
        ..Settings::from(&all)
    }
}

/// A running pipeline (consume and serve, or what `settings` choose),
/// stopped when dropped.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Builds and starts `settings`.
    pub async fn start(settings: Settings) -> Self {
        let pipeline = Pipeline::build(settings).await.unwrap_or_else(|e| panic!("{e}"));
        let addr = pipeline.address().expect("a server");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            pipeline.run(stop).await.unwrap_or_else(|e| panic!("{e}"));
        });
        Self {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops every stage, and waits until they have.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("stages stop within 10 s")
                .unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Consume and serve on a fresh topic and database.
pub struct Stack {
    pub addr: SocketAddr,
    pub topic: TestTopic,
    pub db: TestDb,
    running: Running,
}

impl Stack {
    /// Starts consume and serve on a fresh topic and database.
    pub async fn start(partitions: i32, broadcast_every: Duration) -> Self {
        Self::start_with(partitions, broadcast_every, &[]).await
    }

    /// The same, with more command-line settings (`--api-token`, …).
    pub async fn start_with(partitions: i32, broadcast_every: Duration, args: &[&str]) -> Self {
        let topic = TestTopic::new(partitions).await;
        let db = TestDb::new();
        let running = Running::start(settings(&topic.name, &db.url, broadcast_every, args)).await;
        Self {
            addr: running.addr,
            topic,
            db,
            running,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path`: the body as text.
    pub async fn text(&self, path: &str) -> String {
        let response = reqwest::get(self.url(path)).await.unwrap();
        response.text().await.unwrap_or_default()
    }

    /// GET `path`: status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(self.url(path)).await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// A WebSocket client.
    pub async fn ws(&self) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", self.addr))
            .await
            .unwrap();
        ws
    }

    /// A WebSocket client of `path` (`/ws?lastId=…`).
    pub async fn ws_at(&self, path: &str) -> Ws {
        ws_at(self.addr, path).await
    }

    /// Waits until the server has broadcast history up to `n` rows.
    pub async fn wait_for_history(&self, n: i64) {
        super::wait_until(Duration::from_secs(60), &format!("{n} history rows"), || async {
            self.db.count("SELECT count(*) FROM popularity_events").await >= n
        })
        .await;
    }

    /// Waits until `n` rows are stored and the server itself has them (its
    /// page lists the latest 50 from memory, as its snapshots do).
    pub async fn wait_until_served(&self, n: usize) {
        self.wait_for_history(n as i64).await;
        super::wait_until(
            Duration::from_secs(30),
            &format!("the server to have {n} updates"),
            || async {
                let page = self.text("/").await;
                // Rows of the feed itself, not of the page's empty <template>.
                let feed = page
                    .split_once(r#"id="feed""#)
                    .and_then(|(_, rest)| rest.split_once("</ol>"))
                    .map_or("", |(feed, _)| feed);
                feed.matches(r#"<li class="update "#).count() >= n.min(50)
            },
        )
        .await;
    }

    /// Stops both stages.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// A WebSocket client of `path` on the server at `addr`.
pub async fn ws_at(addr: SocketAddr, path: &str) -> Ws {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    ws
}

/// The next JSON message, skipping pings; panics after `timeout`.
pub async fn next_json(ws: &mut Ws, timeout: Duration) -> Value {
    loop {
        let frame = tokio::time::timeout(timeout, ws.next())
            .await
            .expect("a message in time")
            .expect("the connection stays open")
            .expect("a valid frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// The next message of `kind`, skipping others; panics after `timeout`.
pub async fn next_of(ws: &mut Ws, kind: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = next_json(ws, left).await;
        if message["type"] == kind {
            return message;
        }
    }
}

/// Sends a JSON text frame.
pub async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}
