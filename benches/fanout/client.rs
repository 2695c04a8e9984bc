//! The load client: N WebSocket connections to `serve` that count, in shared
//! counters, what arrives; read each `update`'s id and event timestamp in
//! place; and record the end-to-end latency and when each update reached its
//! first and last client.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Loopback source addresses the clients connect from (127.0.0.2 …): each
/// has its own ephemeral port range towards the one server address.
pub(crate) const SOURCES: u8 = 8;
/// One connection attempt (TCP + WebSocket handshake) gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The latency histogram's resolution: the event timestamp has milliseconds.
const BUCKET_US: u64 = 1_000;
/// Latencies above this (in buckets, i.e. ms) share the last bucket.
const BUCKETS: usize = 120_000;
/// Every this many updates, a client also parses one fully to check the
/// targeted extraction.
const CHECK_EVERY: u64 = 1_000;
/// Ring slots of the per-update arrival record; the ids of one window must
/// span fewer.
pub(crate) const ARRIVAL_SLOTS: usize = 1 << 16;

/// Where the run is; clients count only what arrives while `MEASURING`.
pub(crate) const MEASURING: u8 = 1;
pub(crate) const DONE: u8 = 2;

/// What all clients observed. Plain counters: on two cores a lock-free
/// increment is cheaper than per-client state merged later.
#[derive(Default)]
pub(crate) struct Load {
    /// 0 while warming up (the default), then `MEASURING`, then `DONE`.
    pub(crate) phase: AtomicU8,
    pub(crate) connected: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    /// Clients that received their first snapshot.
    pub(crate) snapshotted: AtomicUsize,
    /// Connections that ended after they were established.
    pub(crate) lost: AtomicUsize,
    /// Updates received in any phase.
    pub(crate) updates: AtomicU64,
    /// Updates received in the window.
    pub(crate) delivered: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) extra_snapshots: AtomicU64,
    /// Updates whose id was not above the previous one on the same connection.
    pub(crate) out_of_order: AtomicU64,
    /// Messages the targeted extraction could not read (then parsed fully).
    pub(crate) fallbacks: AtomicU64,
    pub(crate) unreadable: AtomicU64,
    pub(crate) checked: AtomicU64,
    pub(crate) mismatches: AtomicU64,
    pub(crate) latency: Histogram,
    pub(crate) arrivals: Arrivals,
    pub(crate) errors: Mutex<BTreeMap<String, usize>>,
}

impl Load {
    /// Whether each of `n` clients has connected or failed.
    pub(crate) fn all_tried(&self, n: usize) -> bool {
        self.connected.load(Relaxed) + self.failed.load(Relaxed) >= n
    }

    fn error(&self, text: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(text).or_default() += 1;
    }

    fn on_text(&self, text: &str, state: &mut ClientState) {
        // The clock first: everything after is the client's own cost.
        let now_us = Utc::now().timestamp_micros();
        let measuring = self.phase.load(Relaxed) == MEASURING;
        match message_type(text).as_deref() {
            Some("update") => {
                let Some((id, stamp_us)) = self.read_update(text, state) else {
                    self.unreadable.fetch_add(1, Relaxed);
                    return;
                };
                if id <= state.last_id {
                    self.out_of_order.fetch_add(1, Relaxed);
                }
                state.last_id = state.last_id.max(id);
                if self.phase.load(Relaxed) >= MEASURING {
                    self.arrivals.record(id, now_us);
                }
                self.updates.fetch_add(1, Relaxed);
                if measuring {
                    self.delivered.fetch_add(1, Relaxed);
                    self.latency.record(now_us - stamp_us);
                }
            }
            Some("snapshot") => {
                if state.snapshotted {
                    if measuring {
                        self.extra_snapshots.fetch_add(1, Relaxed);
                    }
                } else {
                    state.snapshotted = true;
                    self.snapshotted.fetch_add(1, Relaxed);
                }
            }
            Some("resync") if measuring => {
                self.resyncs.fetch_add(1, Relaxed);
            }
            Some(_) => {}
            None => {
                self.unreadable.fetch_add(1, Relaxed);
            }
        }
    }

    /// (id, event timestamp in µs) of an `update`, by targeted extraction;
    /// every [`CHECK_EVERY`]th one is also parsed fully and compared.
    fn read_update(&self, text: &str, state: &mut ClientState) -> Option<(i64, i64)> {
        state.updates += 1;
        let Some(fast) = extract_update(text) else {
            self.fallbacks.fetch_add(1, Relaxed);
            return parse_update(text);
        };
        if state.updates % CHECK_EVERY == 1 {
            self.checked.fetch_add(1, Relaxed);
            if parse_update(text) != Some(fast) {
                self.mismatches.fetch_add(1, Relaxed);
            }
        }
        Some(fast)
    }
}

#[derive(Default)]
struct ClientState {
    snapshotted: bool,
    last_id: i64,
    updates: u64,
}

/// The `type` of a server message: it is serialised first (`{"type":"…"`),
/// so it is read without parsing the rest; anything else is parsed fully.
fn message_type(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    if let Some(rest) = text.strip_prefix(r#"{"type":""#)
        && let Some(end) = rest.find('"')
    {
        return rest.get(..end).map(std::borrow::Cow::Borrowed);
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(std::borrow::Cow::Owned(value.get("type")?.as_str()?.to_owned()))
}

/// `{"type":"update","id":N,"event":{…,"timestamp":"…"}}` read in place. A
/// `"timestamp":"` can only be a key: inside a JSON string its quotes are escaped.
fn extract_update(text: &str) -> Option<(i64, i64)> {
    const ID: &str = r#"{"type":"update","id":"#;
    const STAMP: &str = r#""timestamp":""#;
    let rest = text.strip_prefix(ID)?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let id = rest.get(..digits)?.parse().ok()?;
    let from = text.rfind(STAMP)? + STAMP.len();
    let stamp = text.get(from..)?;
    let stamp = stamp.get(..stamp.find('"')?)?;
    Some((id, DateTime::parse_from_rfc3339(stamp).ok()?.timestamp_micros()))
}

/// The same by a full parse: the fallback, and the check of the extraction.
fn parse_update(text: &str) -> Option<(i64, i64)> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = value.get("id")?.as_i64()?;
    let stamp = value.get("event")?.get("timestamp")?.as_str()?;
    Some((id, DateTime::parse_from_rfc3339(stamp).ok()?.timestamp_micros()))
}

/// Latencies in 1 ms buckets (the timestamp's resolution), with an exact maximum.
pub(crate) struct Histogram {
    buckets: Vec<AtomicU64>,
    pub(crate) max_us: AtomicU64,
    /// Negative latencies (a clock step): counted, recorded as 0.
    pub(crate) negative: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
            negative: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn record(&self, micros: i64) {
        if micros < 0 {
            self.negative.fetch_add(1, Relaxed);
        }
        let micros = micros.max(0) as u64;
        let index = ((micros / BUCKET_US) as usize).min(BUCKETS - 1);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Relaxed);
        }
        self.max_us.fetch_max(micros, Relaxed);
    }

    /// The bucket (ms) holding quantile `q`, or `None` when empty.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        None
    }
}

/// When each update id reached its first and its last client (µs), and how
/// many clients, in a ring indexed by id: how long `serve` takes to hand one
/// update to everyone, and whether everyone got it.
pub(crate) struct Arrivals {
    first: Vec<AtomicI64>,
    last: Vec<AtomicI64>,
    clients: Vec<AtomicU32>,
}

impl Default for Arrivals {
    fn default() -> Self {
        Self {
            first: (0..ARRIVAL_SLOTS).map(|_| AtomicI64::new(i64::MAX)).collect(),
            last: (0..ARRIVAL_SLOTS).map(|_| AtomicI64::new(i64::MIN)).collect(),
            clients: (0..ARRIVAL_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl Arrivals {
    fn slot(id: i64) -> usize {
        id.rem_euclid(ARRIVAL_SLOTS as i64) as usize
    }

    fn record(&self, id: i64, micros: i64) {
        let slot = Self::slot(id);
        if let (Some(first), Some(last), Some(clients)) =
            (self.first.get(slot), self.last.get(slot), self.clients.get(slot))
        {
            first.fetch_min(micros, Relaxed);
            last.fetch_max(micros, Relaxed);
            clients.fetch_add(1, Relaxed);
        }
    }

    /// (first, last) arrival of `id` and the clients it reached, if any.
    pub(crate) fn get(&self, id: i64) -> Option<(i64, i64, u32)> {
        let slot = Self::slot(id);
        let first = self.first.get(slot)?.load(Relaxed);
        let last = self.last.get(slot)?.load(Relaxed);
        let clients = self.clients.get(slot)?.load(Relaxed);
        (first != i64::MAX).then_some((first, last, clients))
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens one connection from `source` to `target`; the error as one line.
async fn connect(source: Ipv4Addr, target: SocketAddr) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // A browser-sized read buffer, not tungstenite's 128 KiB: the client's
    // memory is not what is measured, but it shares the machine.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let url = format!("ws://{target}/ws");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// Starts `n` clients of `target`, at most `concurrency` connecting at once.
pub(crate) fn spawn_clients(
    n: usize,
    target: SocketAddr,
    load: &Arc<Load>,
    concurrency: usize,
) -> JoinSet<()> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut clients = JoinSet::new();
    for index in 0..n {
        clients.spawn(client(index, target, Arc::clone(load), Arc::clone(&permits)));
    }
    clients
}

/// One client: connects (holding a permit of the connect budget), then reads
/// until the connection ends or the task is aborted.
async fn client(index: usize, target: SocketAddr, load: Arc<Load>, permits: Arc<Semaphore>) {
    let source = Ipv4Addr::new(127, 0, 0, 2 + (index % SOURCES as usize) as u8);
    let attempt = {
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect(source, target)).await
    };
    let mut ws = match attempt {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            load.error(error);
            load.failed.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            load.error(format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()));
            load.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    load.connected.fetch_add(1, Relaxed);
    let mut state = ClientState::default();
    let ended = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => load.on_text(text.as_str(), &mut state),
            Some(Ok(Message::Close(frame))) => break format!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {} // pings are answered by the next read
            Some(Err(error)) => break format!("lost: {error}"),
            None => break "lost: end of stream".to_owned(),
        }
    };
    if load.phase.load(Relaxed) != DONE {
        load.lost.fetch_add(1, Relaxed);
        load.error(ended);
    }
}
