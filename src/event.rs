//! The wire format of one popularity event, and the one place that decides
//! whether a Kafka record value is a valid event.
//!
//! The format is the original CatLog streaming design's, so existing producers
//! and consumers interoperate:
//!
//! ```json
//! {"malId":1,"title":"Cowboy Bebop","eventType":"SCORE_UPDATE","currentScore":"8.75","popularityChange":"+0.05","timestamp":"2025-08-14T18:30:00.000Z"}
//! ```
//!
//! Readers accept numbers where the samples show strings and ignore unknown
//! fields; [`Event`]'s `Serialize` writes the sample form exactly.
//!
//! Beside the value, a record may carry a unique event id in the header
//! [`EVENT_ID_HEADER`]: `produce` stamps every record with one, so a publish
//! retried after a lost acknowledgement (a second record, same id) is
//! recognised downstream and counted once. Records of other producers may
//! have no id; they are taken as they are.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The record header carrying an event's unique id (a UUID, as text).
pub const EVENT_ID_HEADER: &str = "catlog-event-id";

/// Largest record value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest title accepted, in characters.
pub const MAX_TITLE_CHARS: usize = 300;

/// The three kinds of popularity event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    /// The anime's score changed (`currentScore`).
    ScoreUpdate,
    /// The anime's member count changed (`liveMembers`).
    MemberUpdate,
    /// The anime moved in the trending list (`trendingRank`).
    TrendingChange,
}

impl EventType {
    /// All event types, in wire order.
    pub const ALL: [EventType; 3] = [Self::ScoreUpdate, Self::MemberUpdate, Self::TrendingChange];

    /// The wire name, e.g. `SCORE_UPDATE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScoreUpdate => "SCORE_UPDATE",
            Self::MemberUpdate => "MEMBER_UPDATE",
            Self::TrendingChange => "TRENDING_CHANGE",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A score from 0.00 to 10.00, held exactly in hundredths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Score(u16);

impl Score {
    /// The highest score, 10.00.
    pub const MAX: Score = Score(1000);

    /// A score from hundredths (875 is 8.75); `None` above 10.00.
    pub fn from_hundredths(hundredths: u16) -> Option<Self> {
        (hundredths <= Self::MAX.0).then_some(Self(hundredths))
    }

    /// The score in hundredths.
    pub fn hundredths(self) -> u16 {
        self.0
    }

    /// The score as a float, for arithmetic and charts.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// What an event says about its anime: one measure per event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// `SCORE_UPDATE`: the new score.
    Score(Score),
    /// `MEMBER_UPDATE`: the new member count.
    Members(i64),
    /// `TRENDING_CHANGE`: the new trending rank (1 is the top).
    Rank(i32),
}

impl Measure {
    /// The event type that carries this measure.
    pub fn event_type(self) -> EventType {
        match self {
            Self::Score(_) => EventType::ScoreUpdate,
            Self::Members(_) => EventType::MemberUpdate,
            Self::Rank(_) => EventType::TrendingChange,
        }
    }
}

/// A valid popularity event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// MyAnimeList id, ≥ 1.
    pub mal_id: i32,
    /// Title, 1–300 characters.
    pub title: String,
    /// The new value this event reports.
    pub measure: Measure,
    /// Signed decimal text, always with its sign (`+0.05`, `-1.2`).
    pub popularity_change: String,
    /// When the change happened.
    pub timestamp: DateTime<Utc>,
}

/// Why a record value is not a valid event: the dead letter's `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("empty record value")]
    Empty,
    #[error("record value is {0} bytes, over the {MAX_VALUE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("record value is not valid UTF-8 (bad byte at position {0})")]
    NotUtf8(usize),
    #[error("record value is not valid JSON: {0}")]
    Json(String),
    #[error("record value is JSON but not an object")]
    NotObject,
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("field `{field}` {problem}")]
    Field { field: &'static str, problem: String },
    #[error("header `{EVENT_ID_HEADER}` must be a UUID, not {0:?}")]
    EventId(String),
}

/// A new event id: a UUIDv7, random but ordered by time, so the history's
/// index on it grows at one end.
pub fn new_event_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// The event id a record's headers carry; `None` when there is none.
pub fn event_id(headers: &BTreeMap<String, Vec<u8>>) -> Result<Option<uuid::Uuid>, Invalid> {
    let Some(value) = headers.get(EVENT_ID_HEADER) else {
        return Ok(None);
    };
    let shown = || {
        let text = String::from_utf8_lossy(value);
        text.chars().take(64).collect::<String>()
    };
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| uuid::Uuid::try_parse(text.trim()).ok())
        .map(Some)
        .ok_or_else(|| Invalid::EventId(shown()))
}

fn bad(field: &'static str, problem: impl Into<String>) -> Invalid {
    Invalid::Field {
        field,
        problem: problem.into(),
    }
}

impl Event {
    /// The event type, from the measure.
    pub fn event_type(&self) -> EventType {
        self.measure.event_type()
    }

    /// Parses and validates a Kafka record value.
    pub fn from_bytes(value: &[u8]) -> Result<Event, Invalid> {
        if value.is_empty() {
            return Err(Invalid::Empty);
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(Invalid::TooLarge(value.len()));
        }
        let text = std::str::from_utf8(value).map_err(|e| Invalid::NotUtf8(e.valid_up_to()))?;
        if text.trim().is_empty() {
            return Err(Invalid::Empty);
        }
        let json: Value = serde_json::from_str(text).map_err(|e| Invalid::Json(e.to_string()))?;
        match json {
            Value::Object(map) => Self::from_object(&map),
            _ => Err(Invalid::NotObject),
        }
    }

    /// Validates an already parsed JSON object.
    pub fn from_object(map: &Map<String, Value>) -> Result<Event, Invalid> {
        let field = |name: &'static str| map.get(name).filter(|v| !v.is_null());
        let required = |name: &'static str| field(name).ok_or(Invalid::Missing(name));

        let mal_id = required("malId")?
            .as_i64()
            .filter(|id| (1..=i64::from(i32::MAX)).contains(id))
            .ok_or_else(|| bad("malId", format!("must be a whole number from 1 to {}", i32::MAX)))?
            as i32;

        let title = required("title")?
            .as_str()
            .ok_or_else(|| bad("title", "must be a string"))?;
        let chars = title.chars().count();
        if title.trim().is_empty() || chars > MAX_TITLE_CHARS {
            return Err(bad(
                "title",
                format!("must be 1 to {MAX_TITLE_CHARS} characters, not blank (got {chars})"),
            ));
        }
        if title.contains('\0') {
            return Err(bad("title", "must not contain a NUL character"));
        }

        let type_name = required("eventType")?
            .as_str()
            .ok_or_else(|| bad("eventType", "must be a string"))?;
        let event_type = EventType::parse(type_name).ok_or_else(|| {
            bad(
                "eventType",
                format!("must be SCORE_UPDATE, MEMBER_UPDATE or TRENDING_CHANGE, not {type_name:?}"),
            )
        })?;

        let measure = match event_type {
            EventType::ScoreUpdate => Measure::Score(parse_score(required("currentScore")?)?),
            EventType::MemberUpdate => Measure::Members(
                required("liveMembers")?
                    .as_i64()
                    .filter(|m| *m >= 0)
                    .ok_or_else(|| bad("liveMembers", "must be a whole number ≥ 0"))?,
            ),
            EventType::TrendingChange => Measure::Rank(
                required("trendingRank")?
                    .as_i64()
                    .filter(|r| (1..=i64::from(i32::MAX)).contains(r))
                    .ok_or_else(|| bad("trendingRank", "must be a whole number ≥ 1"))? as i32,
            ),
        };

        let popularity_change = parse_change(required("popularityChange")?)?;

        let stamp = required("timestamp")?
            .as_str()
            .ok_or_else(|| bad("timestamp", "must be an RFC 3339 string"))?;
        let timestamp = DateTime::parse_from_rfc3339(stamp)
            .map_err(|e| bad("timestamp", format!("is not RFC 3339 ({e}): {stamp:?}")))?
            .with_timezone(&Utc);
        if !(1..=9999).contains(&timestamp.year()) {
            return Err(bad("timestamp", "must be within years 1 to 9999"));
        }

        Ok(Event {
            mal_id,
            title: title.to_owned(),
            measure,
            popularity_change,
            timestamp,
        })
    }

    /// The record value in the sample form.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and integers into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The Kafka record key: the malId as decimal text.
    pub fn key(&self) -> Vec<u8> {
        self.mal_id.to_string().into_bytes()
    }

    /// The timestamp as the samples write it: `2025-08-14T18:30:00.000Z`.
    pub fn timestamp_text(&self) -> String {
        self.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// The sample form, field for field and in the samples' order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    mal_id: i32,
    title: &'a str,
    event_type: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_score: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    live_members: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trending_rank: Option<i32>,
    popularity_change: &'a str,
    timestamp: String,
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (mut score, mut members, mut rank) = (None, None, None);
        match self.measure {
            Measure::Score(s) => score = Some(s.to_string()),
            Measure::Members(m) => members = Some(m),
            Measure::Rank(r) => rank = Some(r),
        }
        Wire {
            mal_id: self.mal_id,
            title: &self.title,
            event_type: self.event_type(),
            current_score: score,
            live_members: members,
            trending_rank: rank,
            popularity_change: &self.popularity_change,
            timestamp: self.timestamp_text(),
        }
        .serialize(serializer)
    }
}

/// Text of a field that may be a string or a number.
fn decimal_text<'a>(field: &'static str, value: &'a Value) -> Result<std::borrow::Cow<'a, str>, Invalid> {
    match value {
        Value::String(s) => Ok(s.trim().into()),
        Value::Number(n) => Ok(n.to_string().into()),
        _ => Err(bad(field, "must be a decimal (string or number)")),
    }
}

/// Splits `[+-]digits[.digits]` into (negative, integer part, fraction part).
fn split_decimal(text: &str) -> Option<(bool, &str, &str)> {
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'+' => (false, &text[1..]),
        b'-' => (true, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let frac_ok = !unsigned.contains('.') || !frac.is_empty();
    (!int.is_empty() && digits(int) && digits(frac) && frac_ok).then_some((negative, int, frac))
}

fn parse_score(value: &Value) -> Result<Score, Invalid> {
    const FIELD: &str = "currentScore";
    let text = decimal_text(FIELD, value)?;
    let out_of_range = || {
        bad(
            FIELD,
            format!("must be from 0.00 to 10.00 with at most two decimals, not {text:?}"),
        )
    };
    let (negative, int, frac) = split_decimal(&text).ok_or_else(out_of_range)?;
    if frac.len() > 2 || int.len() > 2 {
        return Err(out_of_range());
    }
    let whole: u16 = int.parse().map_err(|_| out_of_range())?;
    let cents: u16 = format!("{frac:0<2}").parse().map_err(|_| out_of_range())?;
    let hundredths = whole * 100 + cents;
    if negative && hundredths != 0 {
        return Err(out_of_range());
    }
    Score::from_hundredths(hundredths).ok_or_else(out_of_range)
}

fn parse_change(value: &Value) -> Result<String, Invalid> {
    const FIELD: &str = "popularityChange";
    let text = decimal_text(FIELD, value)?;
    match split_decimal(&text) {
        Some((negative, int, frac)) if int.len() <= 12 && frac.len() <= 6 => {
            let sign = if negative { '-' } else { '+' };
            Ok(if frac.is_empty() {
                format!("{sign}{int}")
            } else {
                format!("{sign}{int}.{frac}")
            })
        }
        _ => Err(bad(
            FIELD,
            format!(
                "must be a signed decimal like \"+0.05\" (at most 12 digits before the point and 6 after), not {text:?}"
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
