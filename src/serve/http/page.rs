//! The live page, rendered on the server (askama) from the elements any
//! page can embed (their shadow roots as declarative shadow DOM, the markup
//! `static/catlog-live.js` renders too), and its static files, compiled
//! into the binary so it runs from any directory.

use askama::Template;

use crate::event::{EventType, Measure};
use crate::serve::models::{TrendingItem, Update};

/// `static/app.js`.
pub const APP_JS: &str = include_str!("../../../static/app.js");
/// `static/live-client.js`, the WebSocket client `app.js` imports.
pub const LIVE_CLIENT_JS: &str = include_str!("../../../static/live-client.js");
/// `static/catlog-live.js`, the embeddable elements (it imports `live-client.js`).
pub const WIDGET_JS: &str = include_str!("../../../static/catlog-live.js");
/// `static/catlog-live.css`, the elements' styles (inside their shadow roots).
pub const WIDGET_CSS: &str = include_str!("../../../static/catlog-live.css");
/// `static/app.css`.
pub const APP_CSS: &str = include_str!("../../../static/app.css");
/// `static/favicon.svg`, also served as `/favicon.ico`.
pub const FAVICON: &str = include_str!("../../../static/favicon.svg");

/// `templates/index.html`.
#[derive(Template)]
#[template(path = "index.html")]
pub struct IndexPage {
    pub trending: Vec<TrendingView>,
    pub updates: Vec<UpdateView>,
    pub last_id: i64,
    pub token_query: String,
    /// Event type → the word the page shows, as JSON for the script.
    pub type_labels: String,
}

impl IndexPage {
    /// The page with these rows.
    pub fn new(
        trending: Vec<TrendingView>,
        updates: Vec<UpdateView>,
        last_id: i64,
        token_query: String,
    ) -> Self {
        let labels: serde_json::Map<String, serde_json::Value> = EventType::ALL
            .into_iter()
            .map(|t| (t.as_str().to_owned(), type_label(t).into()))
            .collect();
        Self {
            trending,
            updates,
            last_id,
            token_query,
            type_labels: serde_json::Value::Object(labels).to_string(),
        }
    }
}

/// A `popularityChange` with its unit, as the page shows it: score points
/// as they are (`+0.05`), thousands of members as members (`+800 members`,
/// `+1.2k members`), places as places (`+3 places`).
pub fn change_with_unit(measure: Measure, change: &str) -> String {
    let value: f64 = change.parse().unwrap_or(0.0);
    let sign = if change.starts_with('-') { "-" } else { "+" };
    match measure {
        Measure::Score(_) => change.to_owned(),
        Measure::Members(_) => {
            let members = (value.abs() * 1000.0).round();
            if members < 1000.0 {
                format!("{sign}{members} members")
            } else {
                let thousands = format!("{:.1}", members / 1000.0);
                format!("{sign}{}k members", thousands.trim_end_matches(".0"))
            }
        }
        Measure::Rank(_) => {
            let places = value.abs().round();
            let unit = if places == 1.0 { "place" } else { "places" };
            format!("{sign}{places} {unit}")
        }
    }
}

/// The word the page shows for an event type.
pub fn type_label(event_type: EventType) -> &'static str {
    match event_type {
        EventType::ScoreUpdate => "Score",
        EventType::MemberUpdate => "Members",
        EventType::TrendingChange => "Site rank",
    }
}

/// One trending place, formatted.
#[derive(Default)]
pub struct TrendingView {
    pub rank: i32,
    pub mal_id: i32,
    pub title: String,
    pub score_text: String,
    pub members_text: String,
    pub momentum_text: String,
    /// `up`, `down`, `same` or `new`: the arrow is drawn by the stylesheet.
    pub movement_class: &'static str,
    pub movement_text: String,
    pub movement_label: String,
}

/// One update, formatted.
#[derive(Default)]
pub struct UpdateView {
    pub id: i64,
    pub mal_id: i32,
    pub title: String,
    pub event_type: String,
    pub type_label: String,
    pub value_text: String,
    pub change: String,
    /// The change with its unit: `+0.05`, `+800 members`, `+3 places`.
    pub change_text: String,
    pub direction: String,
    pub timestamp: String,
}

/// 3613466 → "3,613,466".
pub fn with_separators(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

impl From<&TrendingItem> for TrendingView {
    fn from(t: &TrendingItem) -> Self {
        let (movement_class, movement_text, movement_label) = match t.previous_rank.map(|p| p - t.rank) {
            None => ("new", "NEW".to_owned(), "New entry".to_owned()),
            Some(0) => ("same", "–".to_owned(), "No change".to_owned()),
            Some(up) if up > 0 => ("up", up.to_string(), format!("Up {up}")),
            Some(down) => ("down", down.abs().to_string(), format!("Down {}", down.abs())),
        };
        Self {
            rank: t.rank,
            mal_id: t.mal_id,
            title: t.title.clone(),
            score_text: t.score.map_or_else(|| "–".into(), |s| format!("{s:.2}")),
            members_text: t.members.map_or_else(|| "–".into(), with_separators),
            momentum_text: format!("{:.1}", t.momentum),
            movement_class,
            movement_text,
            movement_label,
        }
    }
}

impl From<&Update> for UpdateView {
    fn from(u: &Update) -> Self {
        let e = &u.event;
        let value = match e.measure {
            Measure::Score(s) => s.to_string(),
            Measure::Members(m) => with_separators(m),
            Measure::Rank(r) => format!("#{r}"),
        };
        let change = &e.popularity_change;
        let direction = if change.starts_with('-') {
            "down"
        } else if change.parse::<f64>().unwrap_or(0.0) == 0.0 {
            "flat"
        } else {
            "up"
        };
        Self {
            id: u.id,
            mal_id: e.mal_id,
            title: e.title.clone(),
            event_type: e.event_type().as_str().to_owned(),
            type_label: type_label(e.event_type()).to_owned(),
            value_text: value,
            change: change.clone(),
            change_text: change_with_unit(e.measure, change),
            direction: direction.to_owned(),
            timestamp: e.timestamp_text(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(with_separators(0), "0");
        assert_eq!(with_separators(999), "999");
        assert_eq!(with_separators(1000), "1,000");
        assert_eq!(with_separators(3_613_466), "3,613,466");
    }

    #[test]
    fn changes_carry_their_units() {
        let score = Measure::Score(crate::event::Score::MAX);
        assert_eq!(change_with_unit(score, "+0.05"), "+0.05");
        assert_eq!(change_with_unit(Measure::Members(1), "+0.8"), "+800 members");
        assert_eq!(change_with_unit(Measure::Members(1), "+0.115"), "+115 members");
        assert_eq!(change_with_unit(Measure::Members(1), "+12.5"), "+12.5k members");
        assert_eq!(change_with_unit(Measure::Members(1), "+2"), "+2k members");
        assert_eq!(change_with_unit(Measure::Rank(3), "+3"), "+3 places");
        assert_eq!(change_with_unit(Measure::Rank(3), "-1"), "-1 place");
    }

    #[test]
    fn page_escapes_titles() {
        let page = IndexPage::new(
            vec![],
            vec![UpdateView::from(&Update {
                id: 1,
                event_id: None,
                event: crate::event::Event {
                    mal_id: 1,
                    title: "<script>alert(1)</script>".into(),
                    measure: Measure::Rank(3),
                    popularity_change: "+1".into(),
                    timestamp: chrono::Utc::now(),
                },
            })],
            1,
            String::new(),
        );
        let html = page.render().unwrap();
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"));
    }
}
