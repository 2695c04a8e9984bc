//! One WebSocket connection: a snapshot first (or, for `/ws?lastId=N`, a
//! replay of what the client missed), then every broadcast, rooms, resume,
//! heartbeats. Broadcasts come through the hub's bounded channel, so this
//! client falling behind costs nobody else anything.
//!
//! Within one connection update ids only rise: the connection remembers the
//! highest id it sent and never sends one at or below it. A replay comes
//! from the PostgreSQL history, not from this server's memory, so any
//! server resumes any client, even one whose follower has not read that far
//! yet: the connection subscribes to the broadcasts first, replays from the
//! history, and the broadcasts the replay already covered are skipped.
//!
//! Cheap at ten thousand connections: frames come encoded once by the hub
//! ([`Frame`]); what is ready is written as one burst, with one vectored
//! write straight to the socket (tungstenite only reads, and answers the
//! client's pings), so no per-connection buffer grows to hold a snapshot; a
//! write that completes at once (the usual case) arms no timer, and only
//! one that has to wait races a deadline (a client that stops reading is
//! dropped); sends are counted here and published to the metrics now and
//! then; pings and the server's stop come through the same broadcasts
//! ([`heartbeat`]), so a connection waits on two things only: the hub and
//! its socket.
//!
//! A connection opened with a signed token holds until the token expires:
//! the client sends a fresh one in band (`{"type":"token"}`) before then,
//! or the connection is closed with [`tokens::EXPIRED_CLOSE_CODE`].

use std::collections::HashSet;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures::{SinkExt, StreamExt};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use super::frame::Frame;
use super::hub::{Broadcast, ClientSlot, Hub};
use super::socket::{Socket, write_frames};
use crate::serve::access::{Access, Grant};
use crate::serve::models::{AnimeDetail, ClientMessage, ServerMessage, Update};
use crate::serve::tokens;
use crate::store::history;

/// Largest client message accepted, in bytes (larger ones get an `error`).
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
/// How long a resume waits for the history to reach an id it does not
/// hold yet (a client from a server a moment ahead) before `resync`.
const RESUME_WAIT: Duration = Duration::from_secs(5);
/// Time between two looks at the history while waiting.
const RESUME_POLL: Duration = Duration::from_millis(100);
/// Time between server pings.
const PING_EVERY: Duration = Duration::from_secs(15);
/// A peer silent for this long (no pong, no message) is dead.
const DEAD_AFTER: Duration = Duration::from_secs(45);
/// A write that takes longer means the client stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Rooms one connection may follow.
const MAX_ROOMS: usize = 32;
/// Most frames written in one burst.
const MAX_BURST: usize = 64;
/// Sends counted locally before they are published to the metrics.
const PUBLISH_EVERY: u64 = 256;

/// How a connection starts.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// `?lastId=`: the last update the client has; replay after it.
    pub resume: Option<i64>,
    /// `RESUME_MAX_UPDATES`.
    pub resume_max_updates: i64,
    /// What the handshake's token granted.
    pub grant: Grant,
}

struct Peer {
    socket: Socket,
    hub: Arc<Hub>,
    pool: Pool,
    rooms: HashSet<i32>,
    /// Highest update id sent; no update at or below it is sent again.
    last_sent: i64,
    /// Every update from this id up to `last_sent` went out on this
    /// connection (in a snapshot or one by one).
    sent_from: i64,
    /// Most updates one resume replays.
    resume_max: i64,
    /// Frames waiting for the next burst.
    out: Vec<Frame>,
    /// Messages written and not yet counted in the metrics.
    unpublished: u64,
    /// The client pinged: tungstenite owes it a pong, which must be out
    /// before a frame of ours starts.
    owes_pong: bool,
    /// When the client last sent anything (a pong, a message).
    heard: Instant,
    /// Set when a broadcast ends the connection (the server stops, or the
    /// client went silent): close once the loop sees it.
    closing: Option<Closed>,
    /// Checks in-band tokens.
    access: Arc<Access>,
    /// When the connection's token runs out (`None`: never).
    expires: Option<tokio::time::Instant>,
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The client closed it, or its socket failed.
    ByClient,
    /// A write did not complete within [`SEND_TIMEOUT`].
    StoppedReading,
    /// Nothing heard from the client for [`DEAD_AFTER`].
    Silent,
    /// The connection's token expired unrefreshed.
    TokenExpired,
    /// The server is stopping.
    ServerStopping,
}

impl Closed {
    /// The close frame this end sends for it: the documented code and
    /// reason for an expired token, a plain close otherwise.
    fn frame(self) -> Option<CloseFrame> {
        (self == Self::TokenExpired).then(|| CloseFrame {
            code: CloseCode::from(tokens::EXPIRED_CLOSE_CODE),
            reason: tokens::EXPIRED_CLOSE_REASON.into(),
        })
    }
}

impl Peer {
    /// Queues `frame` for the next burst.
    fn send(&mut self, frame: Frame) {
        self.out.push(frame);
    }

    fn send_json(&mut self, message: ServerMessage) {
        self.send(Frame::json(&message));
    }

    /// Queues the snapshot; later updates up to its id are skipped.
    fn snapshot(&mut self) {
        let (covers, frame) = self.hub.snapshot();
        self.sent_from = *covers.start();
        self.last_sent = self.last_sent.max(*covers.end());
        self.send(frame);
    }

    /// Queues what a broadcast means for this client.
    fn on_broadcast(&mut self, broadcast: &Broadcast) {
        match broadcast {
            Broadcast::Update { id, frame } if *id > self.last_sent => {
                self.last_sent = *id;
                self.send(frame.clone());
            }
            Broadcast::Update { .. } => {}
            Broadcast::Anime { mal_id, frame } if self.rooms.contains(mal_id) => self.send(frame.clone()),
            Broadcast::Anime { .. } => {}
            Broadcast::Trending(frame) | Broadcast::Stats(frame) => self.send(frame.clone()),
            Broadcast::Batch(all) => all.iter().for_each(|b| self.on_broadcast(b)),
            Broadcast::Heartbeat if self.heard.elapsed() > DEAD_AFTER => {
                tracing::info!("client silent for {}s; closing", DEAD_AFTER.as_secs());
                self.closing = Some(Closed::Silent);
            }
            Broadcast::Heartbeat => {
                self.publish_counts();
                self.send(Frame::ping());
            }
            Broadcast::Closing => self.closing = Some(Closed::ServerStopping),
        }
    }

    /// A client too slow for the broadcasts: the latest state instead of the
    /// backlog it missed.
    fn coalesce(&mut self, missed: u64) {
        self.hub.counters.coalesced.increment(missed);
        self.out.clear();
        self.resync(&format!("fell {missed} messages behind"));
    }

    /// Writes the queued frames in one burst; a client that does not take
    /// them within [`SEND_TIMEOUT`] is closed.
    async fn write_out(&mut self) -> Result<(), Closed> {
        if self.out.is_empty() {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.out);
        let count = frames.len() as u64;
        let socket = &mut self.socket;
        let owes_pong = std::mem::take(&mut self.owes_pong);
        let burst = async move {
            if owes_pong {
                // The pong tungstenite holds goes out whole first.
                socket.flush().await.map_err(std::io::Error::other)?;
            }
            write_frames(socket.get_mut(), &frames).await
        };
        let done = {
            let mut burst = pin!(burst);
            // Most bursts complete at once; only one that waits gets a deadline.
            match futures::poll!(burst.as_mut()) {
                Poll::Ready(done) => Some(done),
                Poll::Pending => tokio::time::timeout(SEND_TIMEOUT, burst).await.ok(),
            }
        };
        match done {
            Some(Ok(())) => {
                self.unpublished += count;
                if self.unpublished >= PUBLISH_EVERY {
                    self.publish_counts();
                }
                Ok(())
            }
            Some(Err(_)) => Err(Closed::ByClient),
            None => {
                tracing::info!("client stopped reading; closing its connection");
                self.hub.counters.dropped.increment(1);
                Err(Closed::StoppedReading)
            }
        }
    }

    fn publish_counts(&mut self) {
        self.hub
            .counters
            .sent
            .increment(std::mem::take(&mut self.unpublished));
    }

    /// Answers one frame from the client (into the outgoing queue).
    async fn on_frame(&mut self, frame: Message) -> Result<(), Closed> {
        let text = match &frame {
            Message::Close(_) => return Err(Closed::ByClient),
            Message::Ping(_) => {
                self.owes_pong = true;
                return Ok(());
            }
            Message::Pong(_) | Message::Frame(_) => return Ok(()),
            Message::Binary(_) => {
                self.send_json(ServerMessage::error(
                    "binary messages are not supported; send JSON text",
                ));
                return Ok(());
            }
            Message::Text(text) => text.as_str(),
        };
        if text.len() > MAX_CLIENT_MESSAGE {
            let error = format!(
                "message of {} bytes is over the {MAX_CLIENT_MESSAGE}-byte limit",
                text.len()
            );
            self.send_json(ServerMessage::error(error));
            return Ok(());
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
            Ok(ClientMessage::Token { token }) => {
                self.refresh(&token);
                Ok(())
            }
            Err(e) => {
                let error = format!(
                    "cannot read that message ({e}); expected {{\"type\":\"subscribe\"|\"unsubscribe\",\"malId\":N}}, {{\"type\":\"resume\",\"lastId\":N}} or {{\"type\":\"token\",\"token\":\"…\"}}"
                );
                self.send_json(ServerMessage::error(error));
                Ok(())
            }
        }
    }

    /// Takes what the connection's credentials grant: an end, or none.
    fn grant(&mut self, grant: Grant) {
        match grant {
            Grant::Open => self.expires = None,
            Grant::Until(until) => {
                let left = until.remaining();
                self.expires = Some(tokio::time::Instant::now() + left);
                self.send_json(ServerMessage::Token {
                    accepted: true,
                    expires_in_ms: Some(left.as_millis() as u64),
                    reason: None,
                });
            }
        }
    }

    /// An in-band token: a new end for this connection, or, refused, the
    /// old end stays and the client is told why.
    fn refresh(&mut self, token: &str) {
        match self.access.check(Some(token)) {
            // The static token (or none needed): no end.
            Ok(Grant::Open) => {
                self.expires = None;
                self.send_json(ServerMessage::Token {
                    accepted: true,
                    expires_in_ms: None,
                    reason: None,
                });
            }
            Ok(grant) => self.grant(grant),
            Err(denied) => {
                let left = self.expires.map(|at| {
                    at.saturating_duration_since(tokio::time::Instant::now())
                        .as_millis() as u64
                });
                self.send_json(ServerMessage::Token {
                    accepted: false,
                    expires_in_ms: left,
                    reason: Some(denied.to_string()),
                });
            }
        }
    }

    async fn subscribe(&mut self, mal_id: i64) -> Result<(), Closed> {
        let Some(id) = i32::try_from(mal_id).ok().filter(|id| *id >= 1) else {
            self.send_json(ServerMessage::error("malId must be a whole number ≥ 1"));
            return Ok(());
        };
        if !self.rooms.contains(&id) && self.rooms.len() >= MAX_ROOMS {
            self.send_json(ServerMessage::error(format!(
                "at most {MAX_ROOMS} rooms per connection"
            )));
            return Ok(());
        }
        match history::anime(&self.pool, id).await {
            Ok(Some((current, history))) => {
                if self.rooms.insert(id) {
                    self.hub.join_room(id);
                }
                self.send_json(ServerMessage::Anime(AnimeDetail::new(current, history)));
            }
            Ok(None) => {
                self.send_json(ServerMessage::error(format!(
                    "no anime with malId {id} has been seen"
                )));
            }
            Err(error) => {
                tracing::warn!(%error, mal_id = id, "cannot read anime for a subscription");
                self.send_json(ServerMessage::error("the database is unavailable; try again"));
            }
        }
        Ok(())
    }

    /// Answers a resume from `last_id`: the updates after it (and after
    /// any this connection sent) from the history, oldest first, then
    /// `resumed`; or `resync` and a fresh snapshot when the gap cannot be
    /// replayed.
    async fn resume(&mut self, last_id: i64) -> Result<(), Closed> {
        match self.replay(last_id).await? {
            Ok(replayed) => self.send_json(ServerMessage::Resumed { last_id, replayed }),
            Err(reason) => self.resync(&reason),
        }
        Ok(())
    }

    /// Sends every update after `last_id` the history holds and this
    /// connection has not sent, oldest first; how many, or why it cannot.
    async fn replay(&mut self, last_id: i64) -> Result<Result<u64, String>, Closed> {
        if last_id < 0 {
            return Ok(Err("lastId must be a whole number ≥ 0".into()));
        }
        let (oldest, newest) = match history_reaching(&self.pool, last_id).await {
            Ok(bounds) => bounds,
            Err(error) => {
                tracing::warn!(%error, "cannot read history for a resume");
                return Ok(Err("the history is unavailable right now".into()));
            }
        };
        if last_id > newest {
            return Ok(Err(format!(
                "that id was never handed out (the newest is {newest})"
            )));
        }
        // History is deleted oldest first: the row after `last_id` gone
        // means some of what the client missed is gone.
        if last_id > 0 && last_id + 1 < oldest {
            return Ok(Err(format!(
                "the history no longer holds the updates after {last_id} (it starts at {oldest})"
            )));
        }
        // The gap is the client's (after `last_id`); what is sent is only
        // what this connection has not sent yet.
        let max = self.resume_max;
        let rows = match history::rows_after(&self.pool, last_id, max + 1).await {
            Ok(rows) if rows.len() as i64 > max => {
                return Ok(Err(format!("more than {max} updates were missed")));
            }
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "cannot read history for a resume");
                return Ok(Err("the history is unavailable right now".into()));
            }
        };
        // What the client missed before what this connection sent cannot
        // be sent without going back: start again instead.
        if last_id < self.last_sent && rows.first().is_some_and(|row| row.id < self.sent_from) {
            return Ok(Err(format!(
                "the updates after {last_id} are older than this connection's snapshot"
            )));
        }
        if self.last_sent == 0 {
            self.sent_from = last_id + 1;
        }
        // The client has everything up to `last_id`: a broadcast of it (from
        // a follower behind the history) is not sent either.
        self.last_sent = self.last_sent.max(last_id);
        let mut replayed = 0;
        for row in rows {
            if row.id <= self.last_sent {
                continue;
            }
            self.last_sent = row.id;
            replayed += 1;
            self.send_json(ServerMessage::Update(Update::from(row)));
            if self.out.len() >= MAX_BURST {
                self.write_out().await?;
            }
        }
        Ok(Ok(replayed))
    }

    /// `resync`, then a fresh snapshot (into the outgoing queue).
    fn resync(&mut self, reason: &str) {
        self.hub.counters.resyncs.increment(1);
        self.send_json(ServerMessage::Resync {
            reason: reason.to_owned(),
        });
        self.snapshot();
    }
}

/// The history's oldest and newest ids, once the newest reaches
/// `last_id` or [`RESUME_WAIT`] has passed: a client coming from a
/// server a moment ahead of what this one has read.
async fn history_reaching(pool: &Pool, last_id: i64) -> Result<(i64, i64), crate::store::StoreError> {
    let deadline = tokio::time::Instant::now() + RESUME_WAIT;
    loop {
        let (oldest, newest) = history::bounds(pool).await?;
        if newest >= last_id || tokio::time::Instant::now() >= deadline {
            return Ok((oldest, newest));
        }
        tokio::time::sleep(RESUME_POLL).await;
    }
}

/// Serves one connection (holding its place in the budget, `slot`) until
/// the client leaves, dies, or `shutdown`.
pub async fn run(
    socket: Socket,
    slot: ClientSlot,
    hub: Arc<Hub>,
    pool: Pool,
    access: Arc<Access>,
    start: Start,
    shutdown: CancellationToken,
) {
    // Subscribe before the snapshot or the replay, so nothing falls between
    // them and the broadcasts.
    let mut broadcasts = hub.subscribe();
    let mut peer = Peer {
        socket,
        hub,
        pool,
        rooms: HashSet::new(),
        last_sent: 0,
        sent_from: 0,
        resume_max: start.resume_max_updates,
        out: Vec::new(),
        unpublished: 0,
        owes_pong: false,
        heard: Instant::now(),
        closing: None,
        access,
        expires: None,
    };
    let closed = match peer.open(start).await {
        // Pings and the server's stop come as broadcasts (one timer for the
        // process, not one per connection); a stop that came before this
        // connection subscribed is seen here.
        Ok(()) if shutdown.is_cancelled() => Closed::ServerStopping,
        Ok(()) => peer.follow(&mut broadcasts).await,
        Err(closed) => closed,
    };
    peer.close(closed).await;
    drop(slot);
}

impl Peer {
    /// The connection's first messages: how long its token holds (first, so
    /// the client can plan its refresh), the snapshot or the replay, the
    /// figures.
    async fn open(&mut self, start: Start) -> Result<(), Closed> {
        self.grant(start.grant);
        match start.resume {
            None => self.snapshot(),
            Some(last_id) => {
                self.resume(last_id).await?;
                // The ranking a replay does not carry.
                let items = self.hub.trending();
                self.send_json(ServerMessage::Trending { items });
            }
        }
        let stats = ServerMessage::Stats(self.hub.stats());
        self.send_json(stats);
        self.write_out().await
    }

    /// Broadcasts out and client messages in, until something ends the
    /// connection; why it ended.
    async fn follow(&mut self, broadcasts: &mut broadcast::Receiver<Broadcast>) -> Closed {
        loop {
            let expires = self.expires;
            let step = tokio::select! {
                // In this order, without drawing a random one each time.
                biased;
                received = broadcasts.recv() => match received {
                    Ok(broadcast) => self.on_broadcasts(broadcast, broadcasts).await,
                    Err(RecvError::Lagged(missed)) => {
                        self.coalesce(missed);
                        self.write_out().await
                    }
                    Err(RecvError::Closed) => Err(Closed::ServerStopping),
                },
                frame = self.socket.next() => match frame {
                    Some(Ok(frame)) => {
                        self.heard = Instant::now();
                        match self.on_frame(frame).await {
                            Ok(()) => self.write_out().await,
                            Err(closed) => Err(closed),
                        }
                    }
                    _ => Err(Closed::ByClient),
                },
                () = until(expires) => Err(Closed::TokenExpired),
            };
            if let Err(closed) = step {
                return closed;
            }
            if let Some(closed) = self.closing {
                return closed;
            }
        }
    }

    /// `first` and whatever else is ready, written as one burst.
    async fn on_broadcasts(
        &mut self,
        first: Broadcast,
        broadcasts: &mut broadcast::Receiver<Broadcast>,
    ) -> Result<(), Closed> {
        self.on_broadcast(&first);
        while self.out.len() < MAX_BURST && self.closing.is_none() {
            match broadcasts.try_recv() {
                Ok(broadcast) => self.on_broadcast(&broadcast),
                Err(TryRecvError::Lagged(missed)) => {
                    self.coalesce(missed);
                    break;
                }
                Err(_) => break,
            }
        }
        if self.closing.is_some() {
            return Ok(());
        }
        self.write_out().await
    }

    /// Leaves the rooms, counts what was sent, and says goodbye.
    async fn close(mut self, closed: Closed) {
        self.publish_counts();
        for mal_id in self.rooms.drain() {
            self.hub.leave_room(mal_id);
        }
        if closed == Closed::TokenExpired {
            tracing::info!("a client's token expired unrefreshed; closing its connection");
        }
        tracing::debug!(?closed, "WebSocket connection ends");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.socket.close(closed.frame())).await;
    }
}

/// Waits until `deadline`, or forever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The process's one heartbeat: a ping for every client each
/// [`PING_EVERY`], and [`Broadcast::Closing`] once `shutdown` comes.
pub async fn heartbeat(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ping.tick() => hub.send(Broadcast::Heartbeat),
        }
    }
    hub.send(Broadcast::Closing);
}
