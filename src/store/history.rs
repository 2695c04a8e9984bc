//! The history and the current state, read back: history rows as events
//! (built straight from the columns [`super::batch`] wrote), and one
//! anime's current state with its recent history. Named queries, with
//! parameters; `serve` is the reader.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::Result;
use crate::event::{Event, EventType, Measure, Score};

/// A history row read back: its id, the event, and when it was committed.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Increasing in commit order: the resume point.
    pub id: i64,
    /// The record's `catlog-event-id`; `None` for a record without one.
    pub event_id: Option<uuid::Uuid>,
    pub event: Event,
    /// When the row was committed (the clock trending decays by).
    pub ingested_at: DateTime<Utc>,
}

/// An anime the current state knows, with what it last reported.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownAnime {
    pub mal_id: i32,
    pub title: String,
    pub score: Option<f64>,
    pub members: Option<i64>,
}

/// One anime's current state (`live_popularity`), as stored.
#[derive(Debug, Clone)]
pub struct Current {
    pub mal_id: i32,
    pub title: String,
    pub current_score: Option<String>,
    pub live_members: Option<i64>,
    pub trending_rank: Option<i32>,
    /// Signed, as the wire format writes it.
    pub popularity_change: String,
    pub last_event_type: String,
    pub last_update: DateTime<Utc>,
    pub event_count: i64,
}

/// One row of an anime's history, in short form.
#[derive(Debug, Clone)]
pub struct Point {
    pub id: i64,
    pub event_type: String,
    pub current_score: Option<String>,
    pub live_members: Option<i64>,
    pub trending_rank: Option<i32>,
    /// Signed, as the wire format writes it.
    pub popularity_change: String,
    pub event_time: DateTime<Utc>,
}

/// The columns [`stored_event`] reads, in its order.
const EVENT_COLUMNS: &str = "id, mal_id, title, event_type, (current_score * 100)::int4, live_members, \
     trending_rank, popularity_change::text, event_time, ingested_at, event_id";

/// The statements read the history with, each answered from an index
/// whatever the history holds (the plan test in `tests/it/plans.rs` runs
/// every one of them against a history that tempts the planner).
///
/// History rows after id `$1`, oldest first, at most `$2`.
pub static ROWS_AFTER: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {EVENT_COLUMNS} FROM popularity_events WHERE id > $1 ORDER BY id LIMIT $2")
});
/// The newest `$1` rows before id `$2`, newest first.
pub static LATEST: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {EVENT_COLUMNS} FROM popularity_events WHERE id < $2 ORDER BY id DESC LIMIT $1")
});
/// The same of anime `$2` only.
pub static LATEST_OF_ANIME: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {EVENT_COLUMNS} FROM popularity_events WHERE {OF_ONE_ANIME}"));
/// Anime `$2`'s newest `$1` rows before id `$3`, in short form.
pub static ANIME_POINTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, event_type, current_score::text, live_members, trending_rank, \
                popularity_change::text, event_time \
         FROM popularity_events WHERE {OF_ONE_ANIME}"
    )
});
/// The oldest and the newest ids.
pub const BOUNDS: &str = "SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM popularity_events";
/// The newest id.
pub const LAST_ID: &str = "SELECT coalesce(max(id), 0) FROM popularity_events";
/// The id of the newest row committed `$1` seconds ago or earlier (0 for
/// none): a walk back by id through the window's rows only.
pub const WINDOW_EDGE: &str = "SELECT coalesce((SELECT id FROM popularity_events \
     WHERE ingested_at <= now() - make_interval(secs => $1) ORDER BY id DESC LIMIT 1), 0)";
/// Rows after id `$1` committed in the last `$2` seconds, newest first, at most `$3`.
pub static WINDOW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {EVENT_COLUMNS} FROM popularity_events \
         WHERE id > $1 AND ingested_at > now() - make_interval(secs => $2) \
         ORDER BY id DESC LIMIT $3"
    )
});

/// A numeric column's text with its sign, as the wire format writes it.
fn signed(text: &str) -> String {
    if text.starts_with('-') {
        text.to_owned()
    } else {
        format!("+{text}")
    }
}

/// The event of a history row (columns as [`EVENT_COLUMNS`]); `None` for a
/// row that cannot be one (the writer never stores such a row).
fn stored_event(row: &Row) -> Option<StoredEvent> {
    let id: i64 = row.get(0);
    let event_type: String = row.get(3);
    let measure = match EventType::parse(&event_type) {
        Some(EventType::ScoreUpdate) => row
            .get::<_, Option<i32>>(4)
            .and_then(|h| u16::try_from(h).ok())
            .and_then(Score::from_hundredths)
            .map(Measure::Score),
        Some(EventType::MemberUpdate) => row.get::<_, Option<i64>>(5).map(Measure::Members),
        Some(EventType::TrendingChange) => row.get::<_, Option<i32>>(6).map(Measure::Rank),
        None => None,
    };
    let Some(measure) = measure else {
        tracing::warn!(id, event_type, "history row without its measure; skipped");
        return None;
    };
    Some(StoredEvent {
        id,
        event_id: row.get(10),
        event: Event {
            mal_id: row.get(1),
            title: row.get(2),
            measure,
            popularity_change: signed(&row.get::<_, String>(7)),
            timestamp: row.get(8),
        },
        ingested_at: row.get(9),
    })
}

/// History rows after `id`, oldest first, at most `limit`.
pub async fn rows_after(pool: &Pool, id: i64, limit: i64) -> Result<Vec<StoredEvent>> {
    let db = super::checkout(pool).await?;
    let rows = db.query(&db.prepared(&ROWS_AFTER).await?, &[&id, &limit]).await?;
    Ok(rows.iter().filter_map(stored_event).collect())
}

/// The newest history rows, newest first, optionally of one anime and before an id.
pub async fn latest(
    pool: &Pool,
    limit: i64,
    mal_id: Option<i32>,
    before: Option<i64>,
) -> Result<Vec<StoredEvent>> {
    let db = super::checkout(pool).await?;
    let before = before.unwrap_or(i64::MAX);
    let rows = match mal_id {
        None => db.query(&db.prepared(&LATEST).await?, &[&limit, &before]).await?,
        Some(mal_id) => {
            db.query(&db.prepared(&LATEST_OF_ANIME).await?, &[&limit, &mal_id, &before])
                .await?
        }
    };
    Ok(rows.iter().filter_map(stored_event).collect())
}

/// One anime's rows before an id, newest first (`$1` rows at most, of
/// `mal_id` `$2`, before id `$3`), in a form only its index can answer.
///
/// Written as `mal_id = $2 ORDER BY id DESC`, the planner may walk the
/// history backwards by id and filter, betting that the title's rows come
/// soon — which for a title quiet for days means reading every row since.
/// Stated as a range on `mal_id` ordered by `(mal_id, id DESC)`, the order
/// is the `(mal_id, id DESC)` index's own and no other index has it, so the
/// plan cannot flip to that walk whatever the statistics say.
const OF_ONE_ANIME: &str = "mal_id >= $2 AND mal_id <= $2 AND id < $3 ORDER BY mal_id, id DESC LIMIT $1";

/// History committed in the last `seconds`, newest first, at most `limit` rows.
///
/// In two steps, so that the second is planned knowing where the window
/// starts: the newest row older than the window (ids follow commit order),
/// then the rows after it. The cost is the window's rows, whatever the
/// history holds.
pub async fn recent(pool: &Pool, seconds: f64, limit: i64) -> Result<Vec<StoredEvent>> {
    let db = super::checkout(pool).await?;
    let edge: i64 = db
        .query_one(&db.prepared(WINDOW_EDGE).await?, &[&seconds])
        .await?
        .get(0);
    let rows = db
        .query(&db.prepared(&WINDOW).await?, &[&edge, &seconds, &limit])
        .await?;
    Ok(rows.iter().filter_map(stored_event).collect())
}

/// The oldest and the newest history ids (both 0 when there is none).
pub async fn bounds(pool: &Pool) -> Result<(i64, i64)> {
    let db = super::checkout(pool).await?;
    let row = db.query_one(&db.prepared(BOUNDS).await?, &[]).await?;
    Ok((row.get(0), row.get(1)))
}

/// The highest history id (0 when there is none).
pub async fn last_id(pool: &Pool) -> Result<i64> {
    let db = super::checkout(pool).await?;
    let row = db.query_one(&db.prepared(LAST_ID).await?, &[]).await?;
    Ok(row.get(0))
}

/// Every anime the current state knows.
pub async fn known_anime(pool: &Pool) -> Result<Vec<KnownAnime>> {
    let db = super::checkout(pool).await?;
    let rows = db
        .query(
            "SELECT mal_id, title, current_score::float8, live_members FROM live_popularity",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| KnownAnime {
            mal_id: r.get(0),
            title: r.get(1),
            score: r.get(2),
            members: r.get(3),
        })
        .collect())
}

/// How many rows of history come with an anime.
pub const ANIME_HISTORY: i64 = 200;

/// One anime's current state and its last [`ANIME_HISTORY`] events, newest
/// first; `None` if it was never seen.
pub async fn anime(pool: &Pool, mal_id: i32) -> Result<Option<(Current, Vec<Point>)>> {
    let db = super::checkout(pool).await?;
    let current = db
        .query_opt(
            "SELECT mal_id, title, current_score::text, live_members, trending_rank, popularity_change::text, \
                    last_event_type, last_update, event_count \
             FROM live_popularity WHERE mal_id = $1",
            &[&mal_id],
        )
        .await?;
    let Some(c) = current else { return Ok(None) };
    let state = Current {
        mal_id: c.get(0),
        title: c.get(1),
        current_score: c.get(2),
        live_members: c.get(3),
        trending_rank: c.get(4),
        popularity_change: signed(&c.get::<_, String>(5)),
        last_event_type: c.get(6),
        last_update: c.get(7),
        event_count: c.get(8),
    };
    let history = db
        .query(
            &db.prepared(&ANIME_POINTS).await?,
            &[&ANIME_HISTORY, &mal_id, &i64::MAX],
        )
        .await?
        .iter()
        .map(|r| Point {
            id: r.get(0),
            event_type: r.get(1),
            current_score: r.get(2),
            live_members: r.get(3),
            trending_rank: r.get(4),
            popularity_change: signed(&r.get::<_, String>(5)),
            event_time: r.get(6),
        })
        .collect();
    Ok(Some((state, history)))
}
