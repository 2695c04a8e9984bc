//! The pipeline's consume and serve stages running in this test process on
//! the real broker and a database of the test's own, with the server on port 0.

use std::net::SocketAddr;
use std::time::Duration;

use catlog_live::config::StartFrom;
use catlog_live::consume::{self, ConsumerSettings};
use catlog_live::db::Database;
use catlog_live::serve::{self, FollowSettings};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{TestDb, TestTopic, broker};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running consumer and server, stopped when dropped.
pub struct Stack {
    pub addr: SocketAddr,
    pub topic: TestTopic,
    pub db: TestDb,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    /// Starts consume and serve on a fresh topic and database.
    pub async fn start(partitions: i32, broadcast_every: Duration) -> Self {
        Self::start_with(partitions, broadcast_every, serve::Access::default()).await
    }

    /// The same, with access settings for the server.
    pub async fn start_with(partitions: i32, broadcast_every: Duration, access: serve::Access) -> Self {
        let topic = TestTopic::new(partitions).await;
        let db = TestDb::migrated().await;
        let database: Database = db.url.parse().unwrap();
        let pool = database.pool(8).unwrap();
        let kafka_args = catlog_live::config::KafkaArgs::plain(broker(), topic.name.clone());
        let kafka = catlog_live::kafka::connect(&kafka_args).await.unwrap();
        let reader = catlog_live::kafka::connect_reader(&kafka_args).await.unwrap();
        let shutdown = CancellationToken::new();
        let consumer = consume::run(
            ConsumerSettings {
                group: "catlog-live".into(),
                topic: topic.name.clone(),
                start_from: StartFrom::Earliest,
                batch_size: 500,
                fetch_wait_ms: 20,
            },
            database.clone(),
            pool.clone(),
            reader,
            shutdown.clone(),
        );
        let listener = serve::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = FollowSettings {
            group: "catlog-live".into(),
            topic: topic.name.clone(),
            broadcast_every,
        };
        let server = serve::run(
            settings,
            access,
            database,
            pool,
            Some(kafka),
            listener,
            shutdown.clone(),
        );
        let tasks = vec![
            tokio::spawn(consumer),
            tokio::spawn(async move {
                server.await.unwrap();
            }),
        ];
        Self {
            addr,
            topic,
            db,
            shutdown,
            tasks,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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
                let page = reqwest::get(self.url("/"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap_or_default();
                page.matches(r#"<li class="update "#).count() >= n.min(50)
            },
        )
        .await;
    }

    /// Stops both stages.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("stages stop within 10 s")
                .unwrap();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
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
