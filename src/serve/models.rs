//! The JSON both halves of the server speak: the messages of the live feed
//! (both ways) and the views of stored rows they carry, which the REST API
//! answers with too (its own page bodies are in [`super::http::handlers`]).
//! The store's rows know nothing of JSON; the shapes here are the contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use chrono::SecondsFormat;

use crate::store::StoredEvent;
use crate::store::history::{Current, Point};

/// One history row on the wire: `{"id":1042,"eventId":"0193…","event":{…}}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    /// The history row's id: increasing, and the resume point.
    pub id: i64,
    /// The record's `catlog-event-id`; `null` for a record without one.
    #[serde(serialize_with = "uuid_text")]
    pub event_id: Option<uuid::Uuid>,
    /// The event exactly as on Kafka.
    pub event: Event,
}

impl From<StoredEvent> for Update {
    fn from(row: StoredEvent) -> Self {
        Self {
            id: row.id,
            event_id: row.event_id,
            event: row.event,
        }
    }
}

/// An optional uuid as its hyphenated text, or `null`.
fn uuid_text<S: serde::Serializer>(id: &Option<uuid::Uuid>, serializer: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => serializer.collect_str(id),
        None => serializer.serialize_none(),
    }
}

/// One place of the trending list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrendingItem {
    pub rank: i32,
    pub mal_id: i32,
    pub title: String,
    pub score: Option<f64>,
    pub members: Option<i64>,
    /// Recent activity with time decay (see `trending`).
    pub momentum: f64,
    /// Rank in the previous ranking; `None` for a new entry.
    pub previous_rank: Option<i32>,
}

/// Server and pipeline figures.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Open WebSocket connections to this process.
    pub connections: usize,
    /// Anime followed by at least one client of this process.
    pub rooms: usize,
    /// History rows committed in the last minute.
    pub events_last_minute: u64,
    /// Per partition: records of the broker's log the group has not stored
    /// (for a partition on a new log, every record of the new log).
    pub lag: BTreeMap<String, i64>,
    /// Partitions whose stored position belongs to an older log: the
    /// broker's log is new (topic created again, broker storage lost), and
    /// a running consumer starts it again within seconds.
    pub new_logs: BTreeMap<String, NewLogSeen>,
    /// Per partition, how many times its log has started again.
    pub log_resets: BTreeMap<String, i32>,
    /// Partitions with records waiting and no commit for a while.
    pub stalled: BTreeMap<String, StallSeen>,
    /// Why the data this server shows is behind, when it is: it cannot
    /// read new history, or the consumers have stalled. `null` when not.
    pub delayed: Option<Delayed>,
    /// When these figures were measured (RFC 3339).
    pub as_of: Option<String>,
    /// How old they are, in seconds, as this message leaves.
    pub age_seconds: Option<f64>,
    /// When the lag was last measured (RFC 3339); `null` while unknown.
    pub lag_as_of: Option<String>,
    pub uptime_seconds: u64,
}

/// A stalled partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StallSeen {
    pub waiting: i64,
    pub no_commit_for_seconds: u64,
}

/// Why the data is behind, in words, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delayed {
    pub reason: String,
    /// RFC 3339.
    pub since: String,
}

/// A partition seen on a new log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewLogSeen {
    /// The stored next offset, of the old log.
    pub stored_offset: i64,
    /// Where the new log ends.
    pub log_end: i64,
}

/// An anime's current state and recent history, newest first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnimeDetail {
    pub mal_id: i32,
    pub current: AnimeState,
    pub history: Vec<HistoryPoint>,
}

impl AnimeDetail {
    /// The detail of one anime from its stored state and history.
    pub fn new(current: Current, history: Vec<Point>) -> Self {
        Self {
            mal_id: current.mal_id,
            current: current.into(),
            history: history.into_iter().map(HistoryPoint::from).collect(),
        }
    }
}

/// One anime's current state.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnimeState {
    pub mal_id: i32,
    pub title: String,
    pub current_score: Option<String>,
    pub live_members: Option<i64>,
    pub trending_rank: Option<i32>,
    pub popularity_change: String,
    pub last_event_type: String,
    pub last_update: chrono::DateTime<chrono::Utc>,
    pub event_count: i64,
}

impl From<Current> for AnimeState {
    fn from(row: Current) -> Self {
        Self {
            mal_id: row.mal_id,
            title: row.title,
            current_score: row.current_score,
            live_members: row.live_members,
            trending_rank: row.trending_rank,
            popularity_change: row.popularity_change,
            last_event_type: row.last_event_type,
            last_update: row.last_update,
            event_count: row.event_count,
        }
    }
}

/// One row of an anime's history, in short form.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPoint {
    pub id: i64,
    pub event_type: String,
    pub current_score: Option<String>,
    pub live_members: Option<i64>,
    pub trending_rank: Option<i32>,
    pub popularity_change: String,
    /// The event's own time, RFC 3339 to the millisecond.
    pub timestamp: String,
}

impl From<Point> for HistoryPoint {
    fn from(row: Point) -> Self {
        Self {
            id: row.id,
            event_type: row.event_type,
            current_score: row.current_score,
            live_members: row.live_members,
            trending_rank: row.trending_rank,
            popularity_change: row.popularity_change,
            timestamp: row.event_time.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

/// Server → client.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", rename_all_fields = "camelCase")]
pub enum ServerMessage {
    Snapshot {
        last_id: i64,
        trending: Vec<TrendingItem>,
        updates: Vec<ServerMessage>,
    },
    Update(Update),
    Trending {
        items: Vec<TrendingItem>,
    },
    Stats(Stats),
    Anime(AnimeDetail),
    /// The end of a replay: every update after `last_id` up to here was sent.
    Resumed {
        last_id: i64,
        replayed: u64,
    },
    Resync {
        reason: String,
    },
    /// The answer to a signed token (at connect, and to each in-band
    /// `token`): whether it was taken, for how long the connection now
    /// holds (`null`: no end), and why not.
    Token {
        accepted: bool,
        expires_in_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Error {
        error: String,
    },
}

impl ServerMessage {
    /// The message as one JSON text.
    pub fn to_json(&self) -> String {
        // Plain data: serialising it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An `error` message.
    pub fn error(text: impl Into<String>) -> Self {
        Self::Error { error: text.into() }
    }
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", rename_all_fields = "camelCase")]
pub enum ClientMessage {
    Subscribe {
        mal_id: i64,
    },
    Unsubscribe {
        mal_id: i64,
    },
    Resume {
        last_id: i64,
    },
    /// A fresh token for this connection, before the one it has expires.
    Token {
        token: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse() {
        let sub: ClientMessage = serde_json::from_str(r#"{"type":"subscribe","malId":5114}"#).unwrap();
        assert_eq!(sub, ClientMessage::Subscribe { mal_id: 5114 });
        let resume: ClientMessage = serde_json::from_str(r#"{"type":"resume","lastId":1042}"#).unwrap();
        assert_eq!(resume, ClientMessage::Resume { last_id: 1042 });
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance"}"#).is_err());
        let token: ClientMessage = serde_json::from_str(r#"{"type":"token","token":"a.b.c"}"#).unwrap();
        assert_eq!(
            token,
            ClientMessage::Token {
                token: "a.b.c".into()
            }
        );
    }

    #[test]
    fn server_messages_have_the_contract_shapes() {
        let resync = ServerMessage::Resync { reason: "gap".into() }.to_json();
        assert_eq!(resync, r#"{"type":"resync","reason":"gap"}"#);
        let snapshot = ServerMessage::Snapshot {
            last_id: 7,
            trending: vec![],
            updates: vec![],
        }
        .to_json();
        assert_eq!(
            snapshot,
            r#"{"type":"snapshot","lastId":7,"trending":[],"updates":[]}"#
        );
        let resumed = ServerMessage::Resumed {
            last_id: 1042,
            replayed: 17,
        }
        .to_json();
        assert_eq!(resumed, r#"{"type":"resumed","lastId":1042,"replayed":17}"#);
        let update = ServerMessage::Update(Update {
            id: 7,
            event_id: uuid::Uuid::try_parse("0193a8f2-7c1e-7d3a-9f00-0123456789ab").ok(),
            event: Event::from_bytes(
                br#"{"malId":1,"title":"Cowboy Bebop","eventType":"SCORE_UPDATE","currentScore":"8.75","popularityChange":"+0.05","timestamp":"2025-08-14T18:30:00.000Z"}"#,
            )
            .unwrap(),
        })
        .to_json();
        assert!(
            update.starts_with(r#"{"type":"update","id":7,"eventId":"0193a8f2-7c1e-7d3a-9f00-0123456789ab","event":{"malId":1,"#),
            "{update}"
        );
        let token = ServerMessage::Token {
            accepted: true,
            expires_in_ms: Some(60_000),
            reason: None,
        }
        .to_json();
        assert_eq!(token, r#"{"type":"token","accepted":true,"expiresInMs":60000}"#);
        let stats = ServerMessage::Stats(Stats::default()).to_json();
        assert!(
            stats.starts_with(r#"{"type":"stats","connections":0,"rooms":0,"eventsLastMinute":0"#),
            "{stats}"
        );
    }
}
