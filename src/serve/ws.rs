//! One WebSocket connection: a snapshot first, then every broadcast, rooms,
//! resume, heartbeats. The socket is split into a sink written by this task
//! and a stream read in the same loop; broadcasts come through the hub's
//! bounded channel, so this client falling behind costs nobody else anything.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures::{SinkExt, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use warp::ws::{Message, WebSocket};

use super::hub::{Broadcast, Hub};
use super::models::{AnimeDetail, Update};
use super::models::{ClientMessage, ServerMessage};
use crate::store::history;

/// Largest client message accepted, in bytes (larger ones get an `error`).
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
/// Most updates a `resume` replays; a larger gap gets `resync`.
pub const MAX_RESUME: i64 = 1000;
/// Time between server pings.
const PING_EVERY: Duration = Duration::from_secs(15);
/// A peer silent for this long (no pong, no message) is dead.
const DEAD_AFTER: Duration = Duration::from_secs(45);
/// A send that takes longer means the client stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Rooms one connection may follow.
const MAX_ROOMS: usize = 32;

type Sink = futures::stream::SplitSink<WebSocket, Message>;

struct Peer {
    sink: Sink,
    hub: Arc<Hub>,
    pool: Pool,
    rooms: HashSet<i32>,
    /// Highest update id sent; older broadcasts are skipped.
    last_sent: i64,
}

/// Why a connection ends.
struct Closed;

impl Peer {
    async fn send(&mut self, message: Message) -> Result<(), Closed> {
        match tokio::time::timeout(SEND_TIMEOUT, self.sink.send(message)).await {
            Ok(Ok(())) => {
                metrics::counter!("catlog_ws_messages_sent_total").increment(1);
                Ok(())
            }
            Ok(Err(_)) => Err(Closed),
            Err(_) => {
                tracing::info!("client stopped reading; closing its connection");
                metrics::counter!("catlog_ws_messages_dropped_total").increment(1);
                Err(Closed)
            }
        }
    }

    async fn send_json(&mut self, message: ServerMessage) -> Result<(), Closed> {
        self.send(Message::text(message.to_json())).await
    }

    async fn snapshot(&mut self) -> Result<(), Closed> {
        let (last_id, message) = self.hub.snapshot();
        self.last_sent = last_id;
        self.send(message).await
    }

    async fn on_broadcast(&mut self, broadcast: Broadcast) -> Result<(), Closed> {
        match broadcast {
            Broadcast::Update { id, message } if id > self.last_sent => {
                self.last_sent = id;
                self.send(message).await
            }
            Broadcast::Update { .. } => Ok(()),
            Broadcast::Anime { mal_id, message } if self.rooms.contains(&mal_id) => self.send(message).await,
            Broadcast::Anime { .. } => Ok(()),
            Broadcast::Trending(message) | Broadcast::Stats(message) => self.send(message).await,
        }
    }

    async fn on_frame(&mut self, frame: Message) -> Result<(), Closed> {
        if frame.is_close() {
            return Err(Closed);
        }
        if frame.is_ping() || frame.is_pong() {
            return Ok(());
        }
        let Ok(text) = frame.to_str() else {
            return self
                .send_json(ServerMessage::error(
                    "binary messages are not supported; send JSON text",
                ))
                .await;
        };
        if text.len() > MAX_CLIENT_MESSAGE {
            let error = format!(
                "message of {} bytes is over the {MAX_CLIENT_MESSAGE}-byte limit",
                text.len()
            );
            return self.send_json(ServerMessage::error(error)).await;
        }
        match serde_json::from_str::<ClientMessage>(text) {
            Ok(ClientMessage::Subscribe { mal_id }) => self.subscribe(mal_id).await,
            Ok(ClientMessage::Unsubscribe { mal_id }) => {
                if let Ok(id) = i32::try_from(mal_id)
                    && self.rooms.remove(&id)
                {
                    self.hub.leave_room(id);
                }
                Ok(())
            }
            Ok(ClientMessage::Resume { last_id }) => self.resume(last_id).await,
            Err(e) => {
                let error = format!(
                    "cannot read that message ({e}); expected {{\"type\":\"subscribe\"|\"unsubscribe\",\"malId\":N}} or {{\"type\":\"resume\",\"lastId\":N}}"
                );
                self.send_json(ServerMessage::error(error)).await
            }
        }
    }

    async fn subscribe(&mut self, mal_id: i64) -> Result<(), Closed> {
        let Some(id) = i32::try_from(mal_id).ok().filter(|id| *id >= 1) else {
            return self
                .send_json(ServerMessage::error("malId must be a whole number ≥ 1"))
                .await;
        };
        if !self.rooms.contains(&id) && self.rooms.len() >= MAX_ROOMS {
            return self
                .send_json(ServerMessage::error(format!(
                    "at most {MAX_ROOMS} rooms per connection"
                )))
                .await;
        }
        match history::anime(&self.pool, id).await {
            Ok(Some((current, history))) => {
                if self.rooms.insert(id) {
                    self.hub.join_room(id);
                }
                let detail = AnimeDetail {
                    mal_id: id,
                    current,
                    history,
                };
                self.send_json(ServerMessage::Anime(detail)).await
            }
            Ok(None) => {
                self.send_json(ServerMessage::error(format!(
                    "no anime with malId {id} has been seen"
                )))
                .await
            }
            Err(error) => {
                tracing::warn!(%error, mal_id = id, "cannot read anime for a subscription");
                self.send_json(ServerMessage::error("the database is unavailable; try again"))
                    .await
            }
        }
    }

    /// Replays every update after `last_id`, or answers `resync` and a fresh snapshot.
    async fn resume(&mut self, last_id: i64) -> Result<(), Closed> {
        let newest = self.hub.last_id();
        if last_id > newest || last_id < 0 {
            return self.resync("that id is not one this server has handed out").await;
        }
        if newest - last_id > MAX_RESUME {
            return self
                .resync(&format!("more than {MAX_RESUME} updates were missed"))
                .await;
        }
        match history::rows_after(&self.pool, last_id, MAX_RESUME + 1).await {
            Ok(rows) if rows.len() as i64 > MAX_RESUME => {
                self.resync(&format!("more than {MAX_RESUME} updates were missed"))
                    .await
            }
            Ok(rows) => {
                for row in rows {
                    self.last_sent = self.last_sent.max(row.id);
                    self.send_json(ServerMessage::Update(Update::from(row))).await?;
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read history for a resume");
                self.resync("the history is unavailable right now").await
            }
        }
    }

    async fn resync(&mut self, reason: &str) -> Result<(), Closed> {
        metrics::counter!("catlog_ws_resyncs_total").increment(1);
        self.send_json(ServerMessage::Resync {
            reason: reason.to_owned(),
        })
        .await?;
        self.snapshot().await
    }
}

/// Serves one connection until the client leaves, dies, or `shutdown`.
pub async fn run(socket: WebSocket, hub: Arc<Hub>, pool: Pool, shutdown: CancellationToken) {
    let guard_hub = Arc::clone(&hub);
    let _counted = guard_hub.connect();
    let (sink, mut stream) = socket.split();
    // Subscribe before the snapshot, so nothing falls between the two.
    let mut broadcasts = hub.subscribe();
    let mut peer = Peer {
        sink,
        hub,
        pool,
        rooms: HashSet::new(),
        last_sent: 0,
    };
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut heard = Instant::now();

    let mut result = peer.snapshot().await;
    if result.is_ok() {
        let stats = ServerMessage::Stats(peer.hub.stats());
        result = peer.send_json(stats).await;
    }
    while result.is_ok() {
        result = tokio::select! {
            _ = shutdown.cancelled() => Err(Closed),
            received = broadcasts.recv() => match received {
                Ok(broadcast) => peer.on_broadcast(broadcast).await,
                Err(RecvError::Lagged(missed)) => {
                    // Latest state instead of a backlog.
                    metrics::counter!("catlog_ws_messages_coalesced_total").increment(missed);
                    peer.resync(&format!("fell {missed} messages behind")).await
                }
                Err(RecvError::Closed) => Err(Closed),
            },
            frame = stream.next() => match frame {
                Some(Ok(frame)) => {
                    heard = Instant::now();
                    peer.on_frame(frame).await
                }
                _ => Err(Closed),
            },
            _ = ping.tick() => {
                if heard.elapsed() > DEAD_AFTER {
                    tracing::info!("client silent for {}s; closing", DEAD_AFTER.as_secs());
                    Err(Closed)
                } else {
                    peer.send(Message::ping(Vec::new())).await
                }
            }
        };
    }
    for mal_id in peer.rooms.drain() {
        peer.hub.leave_room(mal_id);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), peer.sink.send(Message::close())).await;
}
