//! The hub: what every connection of this process shares. New rows come in
//! through [`super::follow`]; each broadcast is encoded once into a
//! [`Frame`] whose clones share the same bytes, and what one catch-up
//! brings goes out as one [`Broadcast::Batch`]: one wake-up and one write
//! per client.
//!
//! Slow clients never slow the others: the broadcast channel is bounded
//! ([`CHANNEL_CAPACITY`]), sending never waits, and a client that falls more
//! than that far behind is told so (`Lagged`) and gets a fresh snapshot
//! instead of the backlog (see [`super::ws`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

use super::frame::Frame;
use crate::metrics::names;
use crate::serve::models::{ServerMessage, Stats, TrendingItem, Update};

/// Messages buffered per client before it counts as lagging.
pub const CHANNEL_CAPACITY: usize = 1024;
/// Updates kept in memory for snapshots and the page.
pub const RECENT: usize = 50;

/// One broadcast, encoded once.
#[derive(Debug, Clone)]
pub enum Broadcast {
    /// A new history row.
    Update { id: i64, frame: Frame },
    /// A new ranking or a periodic repeat.
    Trending(Frame),
    /// Periodic figures.
    Stats(Frame),
    /// One anime changed: for the clients following it.
    Anime { mal_id: i32, frame: Frame },
    /// Several at once, in order.
    Batch(Arc<[Broadcast]>),
    /// Time to ping every client (and to drop the silent ones).
    Heartbeat,
    /// The server is stopping: every connection closes.
    Closing,
}

#[derive(Debug, Default)]
struct Shared {
    recent: VecDeque<Update>,
    last_id: i64,
    trending: Vec<TrendingItem>,
    stats: Stats,
    /// When the figures in `stats` were made.
    stats_at: Option<Instant>,
    feed: Feed,
    /// Rows committed per second (unix seconds), for "events in the last minute".
    per_second: VecDeque<(i64, u64)>,
}

/// Whether this server can read new history.
#[derive(Debug, Default, Clone)]
struct Feed {
    /// The last read of new history that answered.
    read_at: Option<Instant>,
    /// Since when reads fail, and the last failure.
    failing: Option<(Instant, chrono::DateTime<chrono::Utc>, String)>,
}

/// A read of new history that has not answered for this long means the
/// server cannot follow the history (reads run every two seconds and take
/// milliseconds).
pub const FEED_STUCK_AFTER: Duration = Duration::from_secs(10);

/// Counters the connections add to, looked up once (a lookup per message
/// would cost more than the message).
pub struct Counters {
    pub sent: Counter,
    pub dropped: Counter,
    pub coalesced: Counter,
    pub resyncs: Counter,
    pub updates: Counter,
    pub refused: Counter,
}

impl Counters {
    fn new() -> Self {
        Self {
            sent: metrics::counter!(names::WS_MESSAGES_SENT_TOTAL),
            dropped: metrics::counter!(names::WS_MESSAGES_DROPPED_TOTAL),
            coalesced: metrics::counter!(names::WS_MESSAGES_COALESCED_TOTAL),
            resyncs: metrics::counter!(names::WS_RESYNCS_TOTAL),
            updates: metrics::counter!(names::WS_UPDATES_BROADCAST_TOTAL),
            refused: metrics::counter!(names::WS_CONNECTIONS_REFUSED_TOTAL),
        }
    }
}

/// State shared by the follower, the connections and the REST handlers.
pub struct Hub {
    tx: broadcast::Sender<Broadcast>,
    shared: RwLock<Shared>,
    rooms: Mutex<HashMap<i32, usize>>,
    /// The client budget (`MAX_CONNECTIONS`): one permit per connected
    /// client, returned when its [`ClientSlot`] drops.
    permits: Arc<Semaphore>,
    /// How many permits there are.
    max_clients: usize,
    /// `catlog_ws_clients`.
    clients_gauge: Gauge,
    started: Instant,
    pub counters: Counters,
}

impl Hub {
    /// An empty hub that takes at most `max_clients` WebSocket clients.
    pub fn new(max_clients: usize) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        let max_clients = max_clients.min(Semaphore::MAX_PERMITS);
        Self {
            tx,
            shared: RwLock::default(),
            rooms: Mutex::default(),
            permits: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            clients_gauge: metrics::gauge!(names::WS_CLIENTS),
            started: Instant::now(),
            counters: Counters::new(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Shared> {
        self.shared
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Shared> {
        self.shared
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver of every broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Broadcast> {
        self.tx.subscribe()
    }

    /// Sends to every client; never waits.
    pub fn send(&self, broadcast: Broadcast) {
        // No receivers is fine: nobody is connected.
        let _ = self.tx.send(broadcast);
    }

    /// Sends `broadcasts` in order, as one batch when there are several.
    pub fn send_all(&self, mut broadcasts: Vec<Broadcast>) {
        match broadcasts.len() {
            0 => {}
            1 => self.send(broadcasts.remove(0)),
            _ => self.send(Broadcast::Batch(broadcasts.into())),
        }
    }

    /// Records a new update; the broadcast that announces it.
    pub fn record_update(&self, update: Update) -> Broadcast {
        let id = update.id;
        let frame = Frame::json(&ServerMessage::Update(update.clone()));
        {
            let mut shared = self.write();
            shared.last_id = shared.last_id.max(id);
            shared.recent.push_front(update);
            shared.recent.truncate(RECENT);
        }
        self.counters.updates.increment(1);
        Broadcast::Update { id, frame }
    }

    /// Fills the recent updates (newest first) and the last id at start.
    pub fn prime(&self, recent: Vec<Update>, last_id: i64) {
        let mut shared = self.write();
        shared.recent = recent.into_iter().take(RECENT).collect();
        shared.last_id = last_id;
    }

    /// Replaces the ranking without a word to the clients (the page and
    /// the next snapshot carry it).
    pub fn set_trending(&self, items: Vec<TrendingItem>) {
        self.write().trending = items;
    }

    /// Replaces the ranking; the broadcast that announces it.
    pub fn announce_trending(&self, items: Vec<TrendingItem>) -> Broadcast {
        let frame = Frame::json(&ServerMessage::Trending { items: items.clone() });
        self.set_trending(items);
        Broadcast::Trending(frame)
    }

    /// Replaces the figures and broadcasts them.
    pub fn set_stats(&self, stats: Stats) {
        {
            let mut shared = self.write();
            shared.stats = stats;
            shared.stats_at = Some(Instant::now());
        }
        let frame = Frame::json(&ServerMessage::Stats(self.stats()));
        self.send(Broadcast::Stats(frame));
    }

    /// The latest figures, with this process's live counts and their age.
    pub fn stats(&self) -> Stats {
        let (mut stats, at) = {
            let shared = self.read();
            (shared.stats.clone(), shared.stats_at)
        };
        stats.connections = self.connections();
        stats.rooms = self.rooms();
        stats.uptime_seconds = self.started.elapsed().as_secs();
        stats.age_seconds = at.map(|at| (at.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        stats
    }

    /// A read of new history answered.
    pub fn feed_read(&self) {
        let mut shared = self.write();
        shared.feed.read_at = Some(Instant::now());
        if let Some((since, _, _)) = shared.feed.failing.take() {
            tracing::info!(
                "reading new history again after {:.1}s",
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// A read of new history failed with `error`.
    pub fn feed_failed(&self, error: String) {
        let mut shared = self.write();
        match &mut shared.feed.failing {
            Some((_, _, last)) => *last = error,
            None => {
                tracing::warn!(%error, "cannot read new history; retrying (clients get what they missed once it answers)");
                shared.feed.failing = Some((Instant::now(), chrono::Utc::now(), error));
            }
        }
    }

    /// Why this server cannot read new history, and since when (RFC 3339);
    /// `None` when it can.
    pub fn feed_trouble(&self) -> Option<(String, String)> {
        let feed = self.read().feed.clone();
        if let Some((_, since, error)) = feed.failing {
            return Some((
                format!("this server cannot read new history from PostgreSQL: {error}"),
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ));
        }
        let quiet = feed.read_at.map(|at| at.elapsed())?;
        (quiet > FEED_STUCK_AFTER).then(|| {
            let since = chrono::Utc::now() - chrono::Duration::from_std(quiet).unwrap_or_default();
            (
                format!(
                    "this server's read of new history has had no answer from PostgreSQL for {} s",
                    quiet.as_secs()
                ),
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
        })
    }

    /// Counts `n` rows committed in unix second `second`.
    pub fn count_events(&self, second: i64, n: u64) {
        let mut shared = self.write();
        match shared.per_second.back_mut() {
            Some((s, count)) if *s == second => *count += n,
            _ => shared.per_second.push_back((second, n)),
        }
    }

    /// Rows committed in the minute before `now` (unix seconds); older counts are forgotten.
    pub fn events_last_minute(&self, now: i64) -> u64 {
        let mut shared = self.write();
        while shared.per_second.front().is_some_and(|(s, _)| *s <= now - 60) {
            shared.per_second.pop_front();
        }
        shared.per_second.iter().map(|(_, n)| n).sum()
    }

    /// The current ranking.
    pub fn trending(&self) -> Vec<TrendingItem> {
        self.read().trending.clone()
    }

    /// The highest history id this process has seen.
    pub fn last_id(&self) -> i64 {
        self.read().last_id
    }

    /// The newest updates (newest first) and the id they cover up to, read
    /// together: a page that shows them resumes after that id.
    pub fn recent_and_last_id(&self) -> (Vec<Update>, i64) {
        let shared = self.read();
        (shared.recent.iter().cloned().collect(), shared.last_id)
    }

    /// The first message of a connection without a resume point, and the
    /// ids its updates cover: from the oldest it holds up to its `lastId`
    /// (the recent updates are the newest rows, without a gap).
    pub fn snapshot(&self) -> (std::ops::RangeInclusive<i64>, Frame) {
        let shared = self.read();
        let message = ServerMessage::Snapshot {
            last_id: shared.last_id,
            trending: shared.trending.clone(),
            updates: shared.recent.iter().cloned().map(ServerMessage::Update).collect(),
        };
        let oldest = shared.recent.back().map_or(shared.last_id + 1, |u| u.id);
        (oldest..=shared.last_id, Frame::json(&message))
    }

    /// A client follows an anime.
    pub fn join_room(&self, mal_id: i32) {
        *self.lock_rooms().entry(mal_id).or_default() += 1;
    }

    /// A client stops following an anime.
    pub fn leave_room(&self, mal_id: i32) {
        let mut rooms = self.lock_rooms();
        if let Some(n) = rooms.get_mut(&mal_id) {
            *n -= 1;
            if *n == 0 {
                rooms.remove(&mal_id);
            }
        }
    }

    /// Whether any client of this process follows `mal_id`.
    pub fn has_room(&self, mal_id: i32) -> bool {
        self.lock_rooms().contains_key(&mal_id)
    }

    /// Anime followed by at least one client.
    pub fn rooms(&self) -> usize {
        self.lock_rooms().len()
    }

    fn lock_rooms(&self) -> std::sync::MutexGuard<'_, HashMap<i32, usize>> {
        self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for one more client, held for as long as the slot lives;
    /// `None` (counted as refused) when all `max_clients` are taken.
    pub fn try_connect(&self) -> Option<ClientSlot> {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                self.clients_gauge.increment(1.0);
                Some(ClientSlot {
                    _permit: permit,
                    gauge: self.clients_gauge.clone(),
                })
            }
            Err(_) => {
                self.counters.refused.increment(1);
                None
            }
        }
    }

    /// Most clients at once (`MAX_CONNECTIONS`).
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// Connected clients.
    pub fn connections(&self) -> usize {
        self.max_clients - self.permits.available_permits()
    }
}

/// One connected client's place in the budget; dropping it returns the
/// permit to the semaphore.
pub struct ClientSlot {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}
