//! Following the database, not another process: `serve` learns of new
//! history rows from PostgreSQL `LISTEN/NOTIFY` (sent by `consume` after each
//! commit), with a periodic poll as safety net, and reads what is new by id.
//! History ids become visible in commit order (see [`crate::store`]), so
//! "rows after the last id seen" never skips a row.
//!
//! The feed is one of three tasks, so that one stuck query stops one thing
//! and says so: the [`Follower`] here (new rows, rooms, the ranking),
//! [`super::figures`] (stats) and [`crate::lag::watch`] (the lag).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::frame::Frame;
use super::hub::{Broadcast, Hub};
use super::trending::{HALF_LIFE, Momentum};
use crate::db::Database;
use crate::retry::Backoff;
use crate::serve::models::{AnimeDetail, ServerMessage, Update};
use crate::store::{NOTIFY_CHANNEL, StoreError, history};

/// Rows read per query while catching up.
const PAGE: i64 = 1000;
/// The safety-net poll, for a lost notification or connection.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// A changed ranking is announced at most this often (the changes of one
/// second go out together).
const TRENDING_GAP: Duration = Duration::from_secs(1);

/// What the follower needs to know.
#[derive(Debug, Clone)]
pub struct FollowSettings {
    pub group: String,
    pub topic: String,
    pub broadcast_every: Duration,
    /// `CONSUMER_STALLED_AFTER`.
    pub stalled_after: Duration,
}

/// When [`Follower::rank`] tells the clients.
#[derive(Debug, Clone, Copy)]
enum Announce {
    /// Whatever changed (the periodic repeat).
    Always,
    /// Only a changed ranking, and not within `gap` of the last announcement.
    IfChanged { gap: Duration },
}

/// Reads new history into the hub and keeps trending current.
pub struct Follower {
    settings: FollowSettings,
    pool: Pool,
    hub: Arc<Hub>,
    momentum: Momentum,
    last_id: i64,
    /// The ranking changed since it was last announced.
    ranking_changed: bool,
    /// When the ranking was last announced.
    announced_at: Instant,
}

impl Follower {
    /// Loads the recent past into the hub, so the first page and snapshot are full.
    pub async fn start(settings: FollowSettings, pool: Pool, hub: Arc<Hub>) -> Result<Self, StoreError> {
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
        hub.set_trending(items);
        for row in &recent {
            hub.count_events(row.ingested_at.timestamp(), 1);
        }
        hub.feed_read();
        Ok(Self {
            settings,
            pool,
            hub,
            momentum,
            last_id,
            ranking_changed: false,
            announced_at: Instant::now(),
        })
    }

    /// Follows until `shutdown`.
    pub async fn run(mut self, db: Database, shutdown: CancellationToken) {
        let (wake_tx, mut wake) = tokio::sync::mpsc::channel(1);
        let _listener = AbortOnDropHandle::new(tokio::spawn(listen(db, wake_tx, shutdown.clone())));
        let mut poll = tokio::time::interval(POLL_EVERY);
        let mut announce = tokio::time::interval(self.settings.broadcast_every);
        let mut changes = tokio::time::interval(TRENDING_GAP);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = wake.recv() => self.catch_up().await,
                _ = poll.tick() => self.catch_up().await,
                _ = announce.tick() => {
                    let trending = self.rank(Announce::Always);
                    self.hub.send_all(trending.into_iter().collect());
                }
                // A change no catch-up has carried (while events flow, the
                // next catch-up takes it in the same write as its updates).
                _ = changes.tick() => {
                    let trending = self.rank(Announce::IfChanged { gap: TRENDING_GAP * 2 });
                    self.hub.send_all(trending.into_iter().collect());
                }
            }
        }
    }

    /// Ranks now; the broadcast of the ranking when `announce` says so.
    fn rank(&mut self, announce: Announce) -> Option<Broadcast> {
        let (items, reordered) = self.momentum.rank(Utc::now());
        self.ranking_changed |= reordered;
        let now = match announce {
            Announce::Always => true,
            Announce::IfChanged { gap } => self.ranking_changed && self.announced_at.elapsed() >= gap,
        };
        if !now {
            self.hub.set_trending(items);
            return None;
        }
        self.ranking_changed = false;
        self.announced_at = Instant::now();
        Some(self.hub.announce_trending(items))
    }

    /// Reads every row after the last one seen and broadcasts it, with the
    /// ranking when it changed, as one batch.
    async fn catch_up(&mut self) {
        let mut changed = BTreeSet::new();
        let mut batch = Vec::new();
        loop {
            let rows = match history::rows_after(&self.pool, self.last_id, PAGE).await {
                Ok(rows) => {
                    self.hub.feed_read();
                    rows
                }
                Err(error) => {
                    self.hub.feed_failed(error.to_string());
                    break;
                }
            };
            let full_page = rows.len() as i64 == PAGE;
            for row in rows {
                self.momentum.observe(&row.event, row.ingested_at);
                self.hub.count_events(row.ingested_at.timestamp(), 1);
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
        batch.extend(self.rank(Announce::IfChanged { gap: TRENDING_GAP }));
        self.hub.send_all(batch);
        for mal_id in changed.into_iter().filter(|id| self.hub.has_room(*id)) {
            match history::anime(&self.pool, mal_id).await {
                Ok(Some((current, history))) => {
                    let frame = Frame::json(&ServerMessage::Anime(AnimeDetail::new(current, history)));
                    self.hub.send(Broadcast::Anime { mal_id, frame });
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(mal_id, %error, "cannot read anime for its room"),
            }
        }
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
