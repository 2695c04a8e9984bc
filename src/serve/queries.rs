//! What `serve` reads from PostgreSQL, as named queries with parameters.

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::{GenericClient, Pool};
use serde_json::{Map, Value};
use tokio_postgres::Row;

use super::models::{AnimeDetail, Current, HistoryEntry, Update};
use crate::event::Event;

/// Errors reading the database.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
}

type Result<T, E = QueryError> = std::result::Result<T, E>;

/// A history row as `serve` uses it.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub id: i64,
    pub event: Event,
    /// When the row was committed (the clock trending decays by).
    pub ingested_at: DateTime<Utc>,
}

impl HistoryRow {
    /// The wire form.
    pub fn update(&self) -> Update {
        Update {
            id: self.id,
            event: self.event.clone(),
        }
    }
}

const HISTORY_COLUMNS: &str = "id, mal_id, title, event_type, current_score::text, live_members, \
     trending_rank, popularity_change::text, event_time, ingested_at";

/// A numeric column's text with its sign, as the wire format writes it.
fn signed(text: &str) -> String {
    if text.starts_with('-') {
        text.to_owned()
    } else {
        format!("+{text}")
    }
}

fn history_row(row: &Row) -> Option<HistoryRow> {
    let time: DateTime<Utc> = row.get(8);
    let mut map = Map::new();
    map.insert("malId".into(), Value::from(row.get::<_, i32>(1)));
    map.insert("title".into(), Value::from(row.get::<_, String>(2)));
    map.insert("eventType".into(), Value::from(row.get::<_, String>(3)));
    map.insert("currentScore".into(), row.get::<_, Option<String>>(4).into());
    map.insert("liveMembers".into(), row.get::<_, Option<i64>>(5).into());
    map.insert("trendingRank".into(), row.get::<_, Option<i32>>(6).into());
    map.insert(
        "popularityChange".into(),
        Value::from(signed(&row.get::<_, String>(7))),
    );
    map.insert(
        "timestamp".into(),
        Value::from(time.to_rfc3339_opts(SecondsFormat::Millis, true)),
    );
    let id: i64 = row.get(0);
    match Event::from_object(&map) {
        Ok(event) => Some(HistoryRow {
            id,
            event,
            ingested_at: row.get(9),
        }),
        Err(error) => {
            tracing::warn!(id, %error, "history row does not form a valid event; skipped");
            None
        }
    }
}

/// History rows after `id`, oldest first, at most `limit`.
pub async fn rows_after(pool: &Pool, id: i64, limit: i64) -> Result<Vec<HistoryRow>> {
    let db = pool.get().await?;
    let sql = format!("SELECT {HISTORY_COLUMNS} FROM popularity_events WHERE id > $1 ORDER BY id LIMIT $2");
    let rows = db.query(&sql, &[&id, &limit]).await?;
    Ok(rows.iter().filter_map(history_row).collect())
}

/// The newest history rows, newest first, optionally of one anime and before an id.
pub async fn latest(
    pool: &Pool,
    limit: i64,
    mal_id: Option<i32>,
    before: Option<i64>,
) -> Result<Vec<HistoryRow>> {
    let db = pool.get().await?;
    let sql = format!(
        "SELECT {HISTORY_COLUMNS} FROM popularity_events \
         WHERE ($2::int4 IS NULL OR mal_id = $2) AND ($3::int8 IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $1"
    );
    let rows = db.query(&sql, &[&limit, &mal_id, &before]).await?;
    Ok(rows.iter().filter_map(history_row).collect())
}

/// History committed in the last `seconds`, newest first, at most `limit` rows.
pub async fn recent(pool: &Pool, seconds: f64, limit: i64) -> Result<Vec<HistoryRow>> {
    let db = pool.get().await?;
    let sql = format!(
        "SELECT {HISTORY_COLUMNS} FROM popularity_events \
         WHERE ingested_at > now() - make_interval(secs => $1) ORDER BY id DESC LIMIT $2"
    );
    let rows = db.query(&sql, &[&seconds, &limit]).await?;
    Ok(rows.iter().filter_map(history_row).collect())
}

/// The highest history id (0 when there is none).
pub async fn last_id(pool: &Pool) -> Result<i64> {
    let db = pool.get().await?;
    let row = db
        .query_one("SELECT coalesce(max(id), 0) FROM popularity_events", &[])
        .await?;
    Ok(row.get(0))
}

/// Score and members of every anime the database knows, for the trending list.
pub async fn known_anime(pool: &Pool) -> Result<Vec<(i32, String, Option<f64>, Option<i64>)>> {
    let db = pool.get().await?;
    let rows = db
        .query(
            "SELECT mal_id, title, current_score::float8, live_members FROM live_popularity",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// How many rows of history to send with an anime.
pub const ANIME_HISTORY: i64 = 200;

/// One anime's current state and recent history; `None` if it was never seen.
pub async fn anime(pool: &Pool, mal_id: i32) -> Result<Option<AnimeDetail>> {
    let db = pool.get().await?;
    let current = db
        .query_opt(
            "SELECT mal_id, title, current_score::text, live_members, trending_rank, popularity_change::text, \
                    last_event_type, last_update, event_count \
             FROM live_popularity WHERE mal_id = $1",
            &[&mal_id],
        )
        .await?;
    let Some(c) = current else { return Ok(None) };
    let current = Current {
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
            "SELECT id, event_type, current_score::text, live_members, trending_rank, popularity_change::text, event_time \
             FROM popularity_events WHERE mal_id = $1 ORDER BY id DESC LIMIT $2",
            &[&mal_id, &ANIME_HISTORY],
        )
        .await?
        .iter()
        .map(|r| HistoryEntry {
            id: r.get(0),
            event_type: r.get(1),
            current_score: r.get(2),
            live_members: r.get(3),
            trending_rank: r.get(4),
            popularity_change: signed(&r.get::<_, String>(5)),
            timestamp: r
                .get::<_, DateTime<Utc>>(6)
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        })
        .collect();
    Ok(Some(AnimeDetail {
        mal_id,
        current,
        history,
    }))
}

/// Whether the database answers.
pub async fn ping(pool: &Pool) -> Result<()> {
    pool.get().await?.query_one("SELECT 1", &[]).await?;
    Ok(())
}
