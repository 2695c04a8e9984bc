//! A batch as the column arrays its statements take (`unnest` of one array
//! per column): the history rows, the current state each anime moves to
//! (aggregated, newest event wins), the dead letters and the positions.
//! Built in one place for the pipelined and the one-by-one paths.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{DeadLetter, Row};
use crate::event::{EventType, Measure, Score};
use crate::store::positions::Position;

/// History rows as the arrays of [`super::INSERT_EVENTS`].
pub(super) struct EventColumns<'a> {
    partitions: Vec<i32>,
    epochs: Vec<i32>,
    offsets: Vec<i64>,
    ids: Vec<Option<Uuid>>,
    mal_ids: Vec<i32>,
    titles: Vec<&'a str>,
    types: Vec<&'a str>,
    scores: Vec<Option<String>>,
    members: Vec<Option<i64>>,
    ranks: Vec<Option<i32>>,
    changes: Vec<&'a str>,
    times: Vec<DateTime<Utc>>,
}

impl<'a> EventColumns<'a> {
    pub(super) fn of(rows: &'a [Row]) -> Self {
        let mut scores = Vec::with_capacity(rows.len());
        let mut members = Vec::with_capacity(rows.len());
        let mut ranks = Vec::with_capacity(rows.len());
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
        Self {
            partitions: rows.iter().map(|r| r.partition).collect(),
            epochs: rows.iter().map(|r| r.log_epoch).collect(),
            offsets: rows.iter().map(|r| r.offset).collect(),
            ids: rows.iter().map(|r| r.event_id).collect(),
            mal_ids: rows.iter().map(|r| r.event.mal_id).collect(),
            titles: rows.iter().map(|r| r.event.title.as_str()).collect(),
            types: rows.iter().map(|r| r.event.event_type().as_str()).collect(),
            scores,
            members,
            ranks,
            changes: rows.iter().map(|r| r.event.popularity_change.as_str()).collect(),
            times: rows.iter().map(|r| r.event.timestamp).collect(),
        }
    }

    pub(super) fn params<'p>(&'p self, topic: &'p &str) -> [&'p (dyn ToSql + Sync); 13] {
        [
            topic,
            &self.partitions,
            &self.epochs,
            &self.offsets,
            &self.ids,
            &self.mal_ids,
            &self.titles,
            &self.types,
            &self.scores,
            &self.members,
            &self.ranks,
            &self.changes,
            &self.times,
        ]
    }
}

/// Dead letters as the arrays of [`super::INSERT_DEAD_LETTERS`].
pub(super) struct DeadColumns<'a> {
    partitions: Vec<i32>,
    epochs: Vec<i32>,
    offsets: Vec<i64>,
    keys: Vec<Option<&'a [u8]>>,
    payloads: Vec<Option<&'a [u8]>>,
    reasons: Vec<&'a str>,
}

impl<'a> DeadColumns<'a> {
    pub(super) fn of(dead: &'a [DeadLetter]) -> Self {
        Self {
            partitions: dead.iter().map(|d| d.partition).collect(),
            epochs: dead.iter().map(|d| d.log_epoch).collect(),
            offsets: dead.iter().map(|d| d.offset).collect(),
            keys: dead.iter().map(|d| d.key.as_deref()).collect(),
            payloads: dead.iter().map(|d| d.payload.as_deref()).collect(),
            reasons: dead.iter().map(|d| d.reason.as_str()).collect(),
        }
    }

    pub(super) fn params<'p>(&'p self, topic: &'p &str) -> [&'p (dyn ToSql + Sync); 7] {
        [
            topic,
            &self.partitions,
            &self.epochs,
            &self.offsets,
            &self.keys,
            &self.payloads,
            &self.reasons,
        ]
    }
}

/// Positions as the arrays of [`super::SAVE_POSITIONS`].
pub(super) struct PositionColumns {
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    epochs: Vec<i32>,
    times: Vec<Option<DateTime<Utc>>>,
    ids: Vec<Option<Uuid>>,
}

impl PositionColumns {
    pub(super) fn of(positions: &BTreeMap<i32, Position>) -> Self {
        Self {
            partitions: positions.keys().copied().collect(),
            offsets: positions.values().map(|p| p.next_offset).collect(),
            epochs: positions.values().map(|p| p.log_epoch).collect(),
            times: positions.values().map(|p| p.last.map(|m| m.time)).collect(),
            ids: positions
                .values()
                .map(|p| p.last.and_then(|m| m.event_id))
                .collect(),
        }
    }

    pub(super) fn params<'p>(&'p self, group: &'p &str, topic: &'p &str) -> [&'p (dyn ToSql + Sync); 7] {
        [
            group,
            topic,
            &self.partitions,
            &self.offsets,
            &self.epochs,
            &self.times,
            &self.ids,
        ]
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

/// The current state a batch moves, per anime, as the arrays of [`super::UPSERT_LIVE`].
pub(super) struct LiveColumns<'a> {
    ids: Vec<i32>,
    titles: Vec<&'a str>,
    scores: Vec<Option<String>>,
    score_at: Vec<Option<DateTime<Utc>>>,
    members: Vec<Option<i64>>,
    members_at: Vec<Option<DateTime<Utc>>>,
    ranks: Vec<Option<i32>>,
    rank_at: Vec<Option<DateTime<Utc>>>,
    changes: Vec<&'a str>,
    types: Vec<&'a str>,
    last: Vec<DateTime<Utc>>,
    counts: Vec<i64>,
}

impl<'a> LiveColumns<'a> {
    pub(super) fn of(rows: &[&'a Row]) -> Self {
        let changes = aggregate(rows);
        let values: Vec<&AnimeChange> = changes.values().collect();
        Self {
            ids: changes.keys().copied().collect(),
            titles: values.iter().map(|c| c.title).collect(),
            scores: values
                .iter()
                .map(|c| c.score.map(|(s, _)| s.to_string()))
                .collect(),
            score_at: values.iter().map(|c| c.score.map(|(_, t)| t)).collect(),
            members: values.iter().map(|c| c.members.map(|(m, _)| m)).collect(),
            members_at: values.iter().map(|c| c.members.map(|(_, t)| t)).collect(),
            ranks: values.iter().map(|c| c.rank.map(|(r, _)| r)).collect(),
            rank_at: values.iter().map(|c| c.rank.map(|(_, t)| t)).collect(),
            changes: values.iter().map(|c| c.change).collect(),
            types: values.iter().map(|c| c.event_type.as_str()).collect(),
            last: values.iter().map(|c| c.last_update).collect(),
            counts: values.iter().map(|c| c.events).collect(),
        }
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.ids,
            &self.titles,
            &self.scores,
            &self.score_at,
            &self.members,
            &self.members_at,
            &self.ranks,
            &self.rank_at,
            &self.changes,
            &self.types,
            &self.last,
            &self.counts,
        ]
    }
}
