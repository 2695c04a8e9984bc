//! Following the database, not another process: `serve` learns of new
//! history rows from PostgreSQL `LISTEN/NOTIFY` (sent by `consume` after each
//! commit), with a periodic poll as safety net, and reads what is new by id.
//! History ids become visible in commit order (see [`crate::store`]), so
//! "rows after the last id seen" never skips a row.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use rskafka::client::Client;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::frame::Frame;
use super::hub::{Broadcast, Hub};
use super::models::{AnimeDetail, NewLogSeen, ServerMessage, Stats, Update};
use super::trending::{HALF_LIFE, Momentum};
use crate::db::Database;
use crate::kafka;
use crate::retry::Backoff;
use crate::store::{self, Lag, LagError, LogEnds, NOTIFY_CHANNEL, PartitionLag, StoreError, history};

/// Rows read per query while catching up.
const PAGE: i64 = 1000;
/// The safety-net poll, for a lost notification or connection.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// How often figures (stats, lag) are refreshed and broadcast.
pub const STATS_EVERY: Duration = Duration::from_secs(5);
/// A changed ranking is announced at most this often (the changes of one
/// second go out together).
const TRENDING_GAP: Duration = Duration::from_secs(1);

/// What the follower needs to know.
#[derive(Debug, Clone)]
pub struct FollowSettings {
    pub group: String,
    pub topic: String,
    pub broadcast_every: Duration,
}

/// Reads new history into the hub and keeps trending and stats current.
pub struct Follower {
    settings: FollowSettings,
    pool: Pool,
    kafka: Option<Arc<Client>>,
    hub: Arc<Hub>,
    momentum: Momentum,
    last_id: i64,
    /// Rows committed per second (unix seconds), for "events in the last minute".
    per_second: VecDeque<(i64, u64)>,
    log_ends: LogEnds,
    /// The ranking changed since it was last announced.
    ranking_changed: bool,
    /// When the ranking was last announced.
    announced_at: Instant,
}

impl Follower {
    /// Loads the recent past into the hub, so the first page and snapshot are full.
    pub async fn start(
        settings: FollowSettings,
        pool: Pool,
        kafka: Option<Arc<Client>>,
        hub: Arc<Hub>,
    ) -> Result<Self, StoreError> {
        let now = Utc::now();
        let mut momentum = Momentum::default();
        for anime in history::known_anime(&pool).await? {
            momentum.know(anime.mal_id, anime.title, anime.score, anime.members, now);
        }
        let window = HALF_LIFE.as_secs_f64() * 6.0;
        let recent = history::recent(&pool, window, 20_000).await?;
        for row in recent.iter().rev() {
            momentum.observe(&row.event, row.ingested_at);
        }
        let last_id = history::last_id(&pool).await?;
        let latest = history::latest(&pool, super::hub::RECENT as i64, None, None).await?;
        hub.prime(latest.into_iter().map(Update::from).collect(), last_id);
        let (items, _) = momentum.rank(now);
        let _ = hub.set_trending(items, false);
        let mut follower = Self {
            settings,
            pool,
            kafka,
            hub,
            momentum,
            last_id,
            per_second: VecDeque::new(),
            log_ends: LogEnds::default(),
            ranking_changed: false,
            announced_at: Instant::now(),
        };
        for row in &recent {
            follower.count(row.ingested_at.timestamp());
        }
        Ok(follower)
    }

    /// Follows until `shutdown`.
    pub async fn run(mut self, db: Database, shutdown: CancellationToken) {
        let (wake_tx, mut wake) = tokio::sync::mpsc::channel(1);
        let _listener = AbortOnDropHandle::new(tokio::spawn(listen(db, wake_tx, shutdown.clone())));
        let mut poll = tokio::time::interval(POLL_EVERY);
        let mut announce = tokio::time::interval(self.settings.broadcast_every);
        let mut changes = tokio::time::interval(TRENDING_GAP);
        let mut stats = tokio::time::interval(STATS_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = wake.recv() => self.catch_up().await,
                _ = poll.tick() => self.catch_up().await,
                _ = announce.tick() => {
                    let trending = self.rank(Duration::ZERO, true);
                    self.hub.send_all(trending.into_iter().collect());
                }
                // A change no catch-up has carried (while events flow, the
                // next catch-up takes it in the same write as its updates).
                _ = changes.tick() => {
                    let trending = self.rank(TRENDING_GAP * 2, false);
                    self.hub.send_all(trending.into_iter().collect());
                }
                _ = stats.tick() => self.refresh_stats().await,
            }
        }
    }

    /// Ranks now; the broadcast of the ranking when `always`, or when it
    /// changed and was not announced within `gap`.
    fn rank(&mut self, gap: Duration, always: bool) -> Option<Broadcast> {
        let (items, reordered) = self.momentum.rank(Utc::now());
        self.ranking_changed |= reordered;
        let announce = always || (self.ranking_changed && self.announced_at.elapsed() >= gap);
        if announce {
            self.ranking_changed = false;
            self.announced_at = Instant::now();
        }
        self.hub.set_trending(items, announce)
    }

    /// Reads every row after the last one seen and broadcasts it, with the
    /// ranking when it changed, as one batch.
    async fn catch_up(&mut self) {
        let mut changed = BTreeSet::new();
        let mut batch = Vec::new();
        loop {
            let rows = match history::rows_after(&self.pool, self.last_id, PAGE).await {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(%error, "cannot read new history; will retry");
                    break;
                }
            };
            let full_page = rows.len() as i64 == PAGE;
            for row in rows {
                self.momentum.observe(&row.event, row.ingested_at);
                self.count(row.ingested_at.timestamp());
                changed.insert(row.event.mal_id);
                self.last_id = self.last_id.max(row.id);
                batch.push(self.hub.record_update(Update::from(row)));
            }
            if !full_page {
                break;
            }
            self.hub.send_all(std::mem::take(&mut batch));
        }
        if changed.is_empty() {
            return;
        }
        batch.extend(self.rank(TRENDING_GAP, false));
        self.hub.send_all(batch);
        for mal_id in changed.into_iter().filter(|id| self.hub.has_room(*id)) {
            match history::anime(&self.pool, mal_id).await {
                Ok(Some((current, history))) => {
                    let detail = AnimeDetail {
                        mal_id,
                        current,
                        history,
                    };
                    let frame = Frame::json(&ServerMessage::Anime(detail));
                    self.hub.send(Broadcast::Anime { mal_id, frame });
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(mal_id, %error, "cannot read anime for its room"),
            }
        }
    }

    fn count(&mut self, second: i64) {
        match self.per_second.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.per_second.push_back((second, 1)),
        }
    }

    async fn refresh_stats(&mut self) {
        let now = Utc::now().timestamp();
        while self.per_second.front().is_some_and(|(s, _)| *s <= now - 60) {
            self.per_second.pop_front();
        }
        let lag = match self.lag().await {
            Ok(lag) => lag,
            Err(error) => {
                tracing::debug!(%error, "consumer lag unknown");
                Lag::default()
            }
        };
        let mut waiting = BTreeMap::new();
        let mut new_logs = BTreeMap::new();
        for (partition, value) in &lag.per_partition {
            let label = partition.to_string();
            let Some(n) = value.waiting() else { continue };
            metrics::gauge!("catlog_consumer_lag", "partition" => label.clone()).set(n as f64);
            let new_log = match value {
                PartitionLag::NewLog { stored, log_end, .. } => {
                    new_logs.insert(
                        label.clone(),
                        NewLogSeen {
                            stored_offset: *stored,
                            log_end: *log_end,
                        },
                    );
                    1.0
                }
                _ => 0.0,
            };
            metrics::gauge!("catlog_consumer_new_log", "partition" => label.clone()).set(new_log);
            waiting.insert(label, n);
        }
        for (partition, epoch) in &lag.log_resets {
            metrics::gauge!("catlog_consumer_log_epoch", "partition" => partition.to_string())
                .set(f64::from(*epoch));
        }
        crate::metrics::upkeep();
        self.hub.set_stats(Stats {
            events_last_minute: self.per_second.iter().map(|(_, n)| n).sum(),
            lag: waiting,
            new_logs,
            log_resets: lag
                .log_resets
                .iter()
                .map(|(p, epoch)| (p.to_string(), *epoch))
                .collect(),
            ..self.hub.stats()
        });
    }

    /// The group's lag on every partition of the topic.
    async fn lag(&mut self) -> Result<Lag, LagError> {
        let Some(client) = &self.kafka else {
            return Ok(Lag::default());
        };
        let topic = &self.settings.topic;
        let partitions = kafka::partitions(client, topic).await?.unwrap_or_default();
        let db = self.pool.get().await.map_err(StoreError::from)?;
        let lag = store::lag::measure(
            client,
            &mut self.log_ends,
            &db,
            &self.settings.group,
            topic,
            &partitions,
        )
        .await?;
        Ok(lag)
    }
}

/// Keeps a `LISTEN` connection open, waking the follower on every notification.
async fn listen(db: Database, wake: tokio::sync::mpsc::Sender<()>, shutdown: CancellationToken) {
    let mut backoff = Backoff::standard();
    while !shutdown.is_cancelled() {
        match db.listen(NOTIFY_CHANNEL).await {
            Ok(mut listener) => {
                backoff.reset();
                // Catch up on whatever committed while we were not listening.
                let _ = wake.try_send(());
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        note = listener.notified.recv() => match note {
                            Some(_) => { let _ = wake.try_send(()); }
                            None => break,
                        },
                    }
                }
                tracing::warn!("lost the LISTEN connection; reconnecting (polling meanwhile)");
            }
            Err(error) => tracing::warn!(%error, "cannot LISTEN; polling meanwhile"),
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}
