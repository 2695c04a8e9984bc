//! One batch, one transaction: history rows, the newest-wins current state,
//! dead letters and the next offsets commit together or not at all.
//!
//! Writing a batch twice is harmless: history and dead letters are unique on
//! (topic, partition, offset); a batch that meets a stored record is written
//! again in [`Mode::SkipStored`], where only the rows actually inserted move
//! the current state and the event counts; offsets only move forward. A transaction-level
//! advisory lock makes history ids follow commit order, so a reader of "rows
//! after id N" never misses a late commit.

use std::collections::BTreeMap;

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::types::ToSql;

use crate::event::{Event, EventType, Measure, Score};

/// Advisory lock taken by every batch transaction ("catlog-commit").
pub const COMMIT_ORDER_LOCK: i64 = 0x6361_746c_6f67_636f;
/// Channel `NOTIFY`'d after each batch with new history rows.
pub const NOTIFY_CHANNEL: &str = "catlog_live_events";

/// A valid event and where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub partition: i32,
    pub offset: i64,
    pub event: Event,
    /// The record value as received, kept in case the database refuses the row.
    pub raw: Vec<u8>,
}

/// A record that is not a valid event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub reason: String,
}

/// What one transaction writes.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub rows: Vec<Row>,
    pub dead_letters: Vec<DeadLetter>,
    /// Next offset to read, per partition.
    pub next_offsets: BTreeMap<i32, i64>,
}

impl Batch {
    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.rows.len() + self.dead_letters.len()
    }

    /// Whether the batch has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a committed batch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// History rows inserted (fewer than the batch's rows on a replay).
    pub events: u64,
    /// Dead letters inserted.
    pub dead_letters: u64,
    /// Highest history id inserted.
    pub last_id: Option<i64>,
}

/// The insert of a batch's history rows, from arrays.
macro_rules! insert_events {
    () => {
        r#"
INSERT INTO popularity_events (topic, partition, "offset", mal_id, title, event_type,
                               current_score, live_members, trending_rank, popularity_change, event_time)
SELECT $1, partition, "offset", mal_id, title, event_type,
       current_score::numeric, live_members, trending_rank, popularity_change::numeric, event_time
FROM unnest($2::int4[], $3::int8[], $4::int4[], $5::text[], $6::text[],
            $7::text[], $8::int8[], $9::int4[], $10::text[], $11::timestamptz[])
    AS t(partition, "offset", mal_id, title, event_type,
         current_score, live_members, trending_rank, popularity_change, event_time)
"#
    };
}

/// History rows of a batch none of whose records is in the table yet.
const INSERT_EVENTS: &str = insert_events!();

/// The same, skipping records already stored; says which were inserted.
const INSERT_EVENTS_SKIPPING_STORED: &str = concat!(
    insert_events!(),
    r#"ON CONFLICT (topic, partition, "offset") DO NOTHING
RETURNING partition, "offset"
"#
);

/// The current state: each measure only moves to a value at least as new as
/// the one it shows; every event counts.
const UPSERT_LIVE: &str = r#"
INSERT INTO live_popularity AS lp (mal_id, title, current_score, score_updated_at,
                                   live_members, members_updated_at, trending_rank, rank_updated_at,
                                   popularity_change, last_event_type, last_update, event_count)
SELECT mal_id, title, current_score::numeric, score_updated_at, live_members, members_updated_at,
       trending_rank, rank_updated_at, popularity_change::numeric, last_event_type, last_update, event_count
FROM unnest($1::int4[], $2::text[], $3::text[], $4::timestamptz[], $5::int8[], $6::timestamptz[],
            $7::int4[], $8::timestamptz[], $9::text[], $10::text[], $11::timestamptz[], $12::int8[])
    AS t(mal_id, title, current_score, score_updated_at, live_members, members_updated_at,
         trending_rank, rank_updated_at, popularity_change, last_event_type, last_update, event_count)
ON CONFLICT (mal_id) DO UPDATE SET
    current_score = CASE WHEN EXCLUDED.score_updated_at >= lp.score_updated_at
                           OR lp.score_updated_at IS NULL
                         THEN coalesce(EXCLUDED.current_score, lp.current_score)
                         ELSE lp.current_score END,
    score_updated_at = greatest(lp.score_updated_at, EXCLUDED.score_updated_at),
    live_members = CASE WHEN EXCLUDED.members_updated_at >= lp.members_updated_at
                          OR lp.members_updated_at IS NULL
                        THEN coalesce(EXCLUDED.live_members, lp.live_members)
                        ELSE lp.live_members END,
    members_updated_at = greatest(lp.members_updated_at, EXCLUDED.members_updated_at),
    trending_rank = CASE WHEN EXCLUDED.rank_updated_at >= lp.rank_updated_at
                           OR lp.rank_updated_at IS NULL
                         THEN coalesce(EXCLUDED.trending_rank, lp.trending_rank)
                         ELSE lp.trending_rank END,
    rank_updated_at = greatest(lp.rank_updated_at, EXCLUDED.rank_updated_at),
    title = CASE WHEN EXCLUDED.last_update >= lp.last_update THEN EXCLUDED.title ELSE lp.title END,
    popularity_change = CASE WHEN EXCLUDED.last_update >= lp.last_update
                             THEN EXCLUDED.popularity_change ELSE lp.popularity_change END,
    last_event_type = CASE WHEN EXCLUDED.last_update >= lp.last_update
                           THEN EXCLUDED.last_event_type ELSE lp.last_event_type END,
    last_update = greatest(lp.last_update, EXCLUDED.last_update),
    event_count = lp.event_count + EXCLUDED.event_count,
    updated_at = now()
"#;

const INSERT_DEAD_LETTERS: &str = r#"
INSERT INTO dead_letters (topic, partition, "offset", record_key, payload, reason)
SELECT $1, partition, "offset", record_key, payload, reason
FROM unnest($2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::text[])
    AS t(partition, "offset", record_key, payload, reason)
ON CONFLICT (topic, partition, "offset") DO NOTHING
"#;

const SAVE_OFFSETS: &str = r#"
INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
SELECT $1, $2, partition, next_offset
FROM unnest($3::int4[], $4::int8[]) AS t(partition, next_offset)
ON CONFLICT (group_id, topic, partition) DO UPDATE
    SET next_offset = greatest(consumer_offsets.next_offset, EXCLUDED.next_offset),
        updated_at = now()
"#;

/// The stored next offset of one partition, if the group has one.
pub const LOAD_OFFSET: &str =
    "SELECT next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3";

/// How a batch treats records that may already be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain inserts: the usual case, a unique violation aborts the transaction.
    Fresh,
    /// Skips records already stored (a replay, or a partition changing
    /// hands): only the rows actually inserted move the current state.
    SkipStored,
}

/// Writes `batch` for `group` reading `topic` inside `tx` (not committed here).
pub async fn write(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    batch: &Batch,
    mode: Mode,
) -> Result<Written, tokio_postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COMMIT_ORDER_LOCK])
        .await?;
    let mut written = Written::default();

    if !batch.rows.is_empty() {
        let inserted = insert_events(tx, topic, &batch.rows, mode).await?;
        written.events = inserted.len() as u64;
        if !inserted.is_empty() {
            written.last_id = tx
                .query_one(
                    "SELECT currval(pg_get_serial_sequence('popularity_events', 'id'))",
                    &[],
                )
                .await?
                .get(0);
            upsert_live(tx, &inserted).await?;
        }
    }

    if !batch.dead_letters.is_empty() {
        let dead = &batch.dead_letters;
        let partitions: Vec<i32> = dead.iter().map(|d| d.partition).collect();
        let offsets: Vec<i64> = dead.iter().map(|d| d.offset).collect();
        let keys: Vec<Option<&[u8]>> = dead.iter().map(|d| d.key.as_deref()).collect();
        let payloads: Vec<Option<&[u8]>> = dead.iter().map(|d| d.payload.as_deref()).collect();
        let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
        let statement = tx.prepare_cached(INSERT_DEAD_LETTERS).await?;
        written.dead_letters = tx
            .execute(
                &statement,
                &[&topic, &partitions, &offsets, &keys, &payloads, &reasons],
            )
            .await?;
    }

    if !batch.next_offsets.is_empty() {
        let partitions: Vec<i32> = batch.next_offsets.keys().copied().collect();
        let offsets: Vec<i64> = batch.next_offsets.values().copied().collect();
        let statement = tx.prepare_cached(SAVE_OFFSETS).await?;
        tx.execute(&statement, &[&group, &topic, &partitions, &offsets])
            .await?;
    }

    if written.events > 0 || written.dead_letters > 0 {
        let payload = written.last_id.unwrap_or_default().to_string();
        tx.execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload])
            .await?;
    }
    Ok(written)
}

/// Inserts the history rows; returns those actually inserted.
async fn insert_events<'a>(
    tx: &Transaction<'_>,
    topic: &str,
    rows: &'a [Row],
    mode: Mode,
) -> Result<Vec<&'a Row>, tokio_postgres::Error> {
    let partitions: Vec<i32> = rows.iter().map(|r| r.partition).collect();
    let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
    let mal_ids: Vec<i32> = rows.iter().map(|r| r.event.mal_id).collect();
    let titles: Vec<&str> = rows.iter().map(|r| r.event.title.as_str()).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.event.event_type().as_str()).collect();
    let mut scores: Vec<Option<String>> = Vec::with_capacity(rows.len());
    let mut members: Vec<Option<i64>> = Vec::with_capacity(rows.len());
    let mut ranks: Vec<Option<i32>> = Vec::with_capacity(rows.len());
    for r in rows {
        let (s, m, k) = match r.event.measure {
            Measure::Score(s) => (Some(s.to_string()), None, None),
            Measure::Members(m) => (None, Some(m), None),
            Measure::Rank(k) => (None, None, Some(k)),
        };
        scores.push(s);
        members.push(m);
        ranks.push(k);
    }
    let changes: Vec<&str> = rows.iter().map(|r| r.event.popularity_change.as_str()).collect();
    let times: Vec<_> = rows.iter().map(|r| r.event.timestamp).collect();
    let params: [&(dyn ToSql + Sync); 11] = [
        &topic,
        &partitions,
        &offsets,
        &mal_ids,
        &titles,
        &types,
        &scores,
        &members,
        &ranks,
        &changes,
        &times,
    ];
    match mode {
        Mode::Fresh => {
            let statement = tx.prepare_cached(INSERT_EVENTS).await?;
            tx.execute(&statement, &params).await?;
            Ok(rows.iter().collect())
        }
        Mode::SkipStored => {
            let statement = tx.prepare_cached(INSERT_EVENTS_SKIPPING_STORED).await?;
            let inserted: HashSet<(i32, i64)> = tx
                .query(&statement, &params)
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            Ok(rows
                .iter()
                .filter(|r| inserted.contains(&(r.partition, r.offset)))
                .collect())
        }
    }
}

/// What a batch changes of one anime's current state.
struct AnimeChange<'a> {
    title: &'a str,
    change: &'a str,
    event_type: EventType,
    last_update: DateTime<Utc>,
    score: Option<(Score, DateTime<Utc>)>,
    members: Option<(i64, DateTime<Utc>)>,
    rank: Option<(i32, DateTime<Utc>)>,
    events: i64,
}

/// Per anime, the newest of each measure among `rows` (a later row wins a tie).
fn aggregate<'a>(rows: &[&'a Row]) -> BTreeMap<i32, AnimeChange<'a>> {
    fn newer<T>(slot: &mut Option<(T, DateTime<Utc>)>, value: T, at: DateTime<Utc>) {
        if slot.as_ref().is_none_or(|(_, seen)| at >= *seen) {
            *slot = Some((value, at));
        }
    }
    let mut changes: BTreeMap<i32, AnimeChange<'a>> = BTreeMap::new();
    for row in rows {
        let e = &row.event;
        let at = e.timestamp;
        let c = changes.entry(e.mal_id).or_insert_with(|| AnimeChange {
            title: &e.title,
            change: &e.popularity_change,
            event_type: e.event_type(),
            last_update: at,
            score: None,
            members: None,
            rank: None,
            events: 0,
        });
        c.events += 1;
        if at >= c.last_update {
            c.title = &e.title;
            c.change = &e.popularity_change;
            c.event_type = e.event_type();
            c.last_update = at;
        }
        match e.measure {
            Measure::Score(s) => newer(&mut c.score, s, at),
            Measure::Members(m) => newer(&mut c.members, m, at),
            Measure::Rank(r) => newer(&mut c.rank, r, at),
        }
    }
    changes
}

async fn upsert_live(tx: &Transaction<'_>, rows: &[&Row]) -> Result<(), tokio_postgres::Error> {
    let changes = aggregate(rows);
    let values: Vec<&AnimeChange> = changes.values().collect();
    let ids: Vec<i32> = changes.keys().copied().collect();
    let titles: Vec<&str> = values.iter().map(|c| c.title).collect();
    let scores: Vec<Option<String>> = values
        .iter()
        .map(|c| c.score.map(|(s, _)| s.to_string()))
        .collect();
    let score_at: Vec<Option<DateTime<Utc>>> = values.iter().map(|c| c.score.map(|(_, t)| t)).collect();
    let members: Vec<Option<i64>> = values.iter().map(|c| c.members.map(|(m, _)| m)).collect();
    let members_at: Vec<Option<DateTime<Utc>>> = values.iter().map(|c| c.members.map(|(_, t)| t)).collect();
    let ranks: Vec<Option<i32>> = values.iter().map(|c| c.rank.map(|(r, _)| r)).collect();
    let rank_at: Vec<Option<DateTime<Utc>>> = values.iter().map(|c| c.rank.map(|(_, t)| t)).collect();
    let changes_text: Vec<&str> = values.iter().map(|c| c.change).collect();
    let types: Vec<&str> = values.iter().map(|c| c.event_type.as_str()).collect();
    let last: Vec<DateTime<Utc>> = values.iter().map(|c| c.last_update).collect();
    let counts: Vec<i64> = values.iter().map(|c| c.events).collect();
    let statement = tx.prepare_cached(UPSERT_LIVE).await?;
    tx.execute(
        &statement,
        &[
            &ids,
            &titles,
            &scores,
            &score_at,
            &members,
            &members_at,
            &ranks,
            &rank_at,
            &changes_text,
            &types,
            &last,
            &counts,
        ],
    )
    .await?;
    Ok(())
}
