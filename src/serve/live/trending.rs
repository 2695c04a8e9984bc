//! The trending list: anime ranked by momentum, recent activity with time decay.
//!
//! Every event adds a weight to its anime's momentum; momentum halves every
//! [`HALF_LIFE`] (by the time rows were committed, so every `serve` process
//! reading the same history ranks alike):
//!
//! ```text
//! momentum(a, now) = Σ over a's events e of  weight(e) · 2^(−(now − committed(e)) / HALF_LIFE)
//!
//! weight(e) = 1                                   every event is attention
//!           + clamp(2 · Δscore, −0.1, 0.1)                  SCORE_UPDATE (+0.05 → +0.1)
//!           + clamp(thousands of new members / 10, 0, 0.1)  MEMBER_UPDATE (+0.8 → +0.08)
//!           + clamp(places climbed / 50, −0.1, 0.1)         TRENDING_CHANGE (+3 → +0.06)
//! ```
//!
//! Every event counts between 0.9 and 1.1: the list follows where attention
//! is (how often a title changes, recently), and which way it changes only
//! breaks ties; no single event puts a title on top. The top [`SIZE`] by momentum (ties: more
//! members first) make the list. Movement is measured against a fixed
//! window, not the last recomputation (a fraction of a second earlier, so
//! an arrow would flash and be gone): each item carries its rank in the
//! ranking of [`MOVEMENT_WINDOW`] ago (kept every [`SAMPLE_EVERY`]; for a
//! server up for less, the earliest ranking it made), and no rank there
//! means a new entry.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::event::{Event, Measure};
use crate::serve::models::TrendingItem;

/// Time for momentum to halve.
pub const HALF_LIFE: Duration = Duration::from_secs(10 * 60);
/// Places in the list.
pub const SIZE: usize = 20;
/// Movement is measured against the ranking this long ago.
pub const MOVEMENT_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How often a ranking is kept to measure movement against.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Entry {
    title: String,
    score: Option<f64>,
    members: Option<i64>,
    momentum: f64,
    as_of: DateTime<Utc>,
}

impl Entry {
    /// Momentum at `at` (never earlier than `as_of`).
    fn momentum_at(&self, at: DateTime<Utc>) -> f64 {
        self.momentum * decay(at - self.as_of)
    }
}

fn decay(age: chrono::TimeDelta) -> f64 {
    let seconds = age.as_seconds_f64().max(0.0);
    0.5_f64.powf(seconds / HALF_LIFE.as_secs_f64())
}

/// The weight one event adds to its anime's momentum.
pub fn weight(event: &Event) -> f64 {
    let change: f64 = event.popularity_change.parse().unwrap_or(0.0);
    1.0 + match event.measure {
        Measure::Score(_) => (2.0 * change).clamp(-0.1, 0.1),
        Measure::Members(_) => (change / 10.0).clamp(0.0, 0.1),
        Measure::Rank(_) => (change / 50.0).clamp(-0.1, 0.1),
    }
}

/// Momentum per anime, the last ranking made from it, and the rankings of
/// the last [`MOVEMENT_WINDOW`].
#[derive(Debug, Default)]
pub struct Momentum {
    anime: HashMap<i32, Entry>,
    ranking: Vec<i32>,
    /// Rankings (malIds in order) and when they were made, oldest first.
    samples: VecDeque<(DateTime<Utc>, Vec<i32>)>,
}

impl Momentum {
    /// Remembers an anime's title, score and members without adding momentum.
    pub fn know(
        &mut self,
        mal_id: i32,
        title: String,
        score: Option<f64>,
        members: Option<i64>,
        now: DateTime<Utc>,
    ) {
        let entry = self.anime.entry(mal_id).or_insert_with(|| Entry {
            title: title.clone(),
            score: None,
            members: None,
            momentum: 0.0,
            as_of: now,
        });
        entry.title = title;
        entry.score = score.or(entry.score);
        entry.members = members.or(entry.members);
    }

    /// Adds one event committed at `at`.
    pub fn observe(&mut self, event: &Event, at: DateTime<Utc>) {
        let entry = self.anime.entry(event.mal_id).or_insert_with(|| Entry {
            title: event.title.clone(),
            score: None,
            members: None,
            momentum: 0.0,
            as_of: at,
        });
        entry.title.clone_from(&event.title);
        match event.measure {
            Measure::Score(s) => entry.score = Some(s.as_f64()),
            Measure::Members(m) => entry.members = Some(m),
            Measure::Rank(_) => {}
        }
        let w = weight(event);
        if at >= entry.as_of {
            entry.momentum = (entry.momentum_at(at) + w).max(0.0);
            entry.as_of = at;
        } else {
            // A row committed before the last one seen: its weight has decayed since.
            entry.momentum = (entry.momentum + w * decay(entry.as_of - at)).max(0.0);
        }
    }

    /// The ranking movement is measured against at `now`: the oldest kept
    /// within the window that listed anything.
    fn reference(&mut self, now: DateTime<Utc>) -> Option<&Vec<i32>> {
        let window = chrono::TimeDelta::from_std(MOVEMENT_WINDOW).unwrap_or(chrono::TimeDelta::MAX);
        while self.samples.len() > 1 && self.samples.front().is_some_and(|(at, _)| *at < now - window) {
            self.samples.pop_front();
        }
        self.samples
            .iter()
            .map(|(_, order)| order)
            .find(|order| !order.is_empty())
    }

    /// The ranking at `now`, and whether its order differs from the previous one.
    pub fn rank(&mut self, now: DateTime<Utc>) -> (Vec<TrendingItem>, bool) {
        let mut scored: Vec<(i32, f64, &Entry)> = self
            .anime
            .iter()
            .map(|(&id, e)| (id, e.momentum_at(now.max(e.as_of)), e))
            .filter(|(_, m, _)| *m > 0.01)
            .collect();
        scored.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(b.2.members.unwrap_or(0).cmp(&a.2.members.unwrap_or(0)))
                .then(a.0.cmp(&b.0))
        });
        scored.truncate(SIZE);
        let mut items: Vec<TrendingItem> = scored
            .iter()
            .enumerate()
            .map(|(place, (id, momentum, e))| TrendingItem {
                rank: place as i32 + 1,
                mal_id: *id,
                title: e.title.clone(),
                score: e.score.map(|s| (s * 100.0).round() / 100.0),
                members: e.members,
                momentum: (momentum * 10.0).round() / 10.0,
                previous_rank: None,
            })
            .collect();
        if let Some(then) = self.reference(now) {
            for item in &mut items {
                item.previous_rank = then.iter().position(|p| *p == item.mal_id).map(|p| p as i32 + 1);
            }
        }
        let order: Vec<i32> = items.iter().map(|i| i.mal_id).collect();
        let due = self
            .samples
            .back()
            .is_none_or(|(at, _)| (now - *at).to_std().is_ok_and(|age| age >= SAMPLE_EVERY));
        if due {
            self.samples.push_back((now, order.clone()));
        }
        let changed = order != self.ranking;
        if changed {
            self.ranking = order;
        }
        (items, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Score;

    fn event(mal_id: i32, measure: Measure, change: &str) -> Event {
        Event {
            mal_id,
            title: format!("Anime {mal_id}"),
            measure,
            popularity_change: change.into(),
            timestamp: Utc::now(),
        }
    }

    #[test]
    fn activity_ranks_and_decays() {
        let mut m = Momentum::default();
        let t0 = Utc::now();
        for _ in 0..5 {
            m.observe(&event(1, Measure::Members(1000), "+0.5"), t0);
        }
        m.observe(
            &event(2, Measure::Score(Score::from_hundredths(900).unwrap()), "+0.05"),
            t0,
        );
        let (items, changed) = m.rank(t0);
        assert!(changed);
        assert_eq!(items.iter().map(|i| i.mal_id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            items[0].previous_rank, None,
            "nothing to compare the first ranking with"
        );
        assert_eq!(
            m.rank(t0).0[0].previous_rank,
            Some(1),
            "then the first is the reference"
        );

        // An hour later, fresh activity on 2 outweighs 1's old burst.
        let later = t0 + chrono::TimeDelta::hours(1);
        m.observe(&event(2, Measure::Rank(3), "+4"), later);
        let (items, changed) = m.rank(later);
        assert!(changed);
        assert_eq!(items[0].mal_id, 2);
        assert!(
            items[1].momentum < 0.5,
            "six half-lives later: {}",
            items[1].momentum
        );
        let (_, changed) = m.rank(later);
        assert!(!changed, "same order, no change");
    }

    #[test]
    fn movement_is_measured_against_the_ranking_of_the_window() {
        let mut m = Momentum::default();
        let t0 = Utc::now();
        let members = |n| Measure::Members(n);
        for id in 1..=3 {
            for _ in 0..(4 - id) {
                m.observe(&event(id, members(1000), "+0.1"), t0);
            }
        }
        assert_eq!(
            m.rank(t0).0.iter().map(|i| i.mal_id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // A few minutes of activity on 3 lifts it to the top; the arrows say
        // how far each moved since the ranking of t0, and stay while it is the
        // reference, however often the list is recomputed.
        let mut now = t0;
        for step in 1..=8 {
            now = t0 + chrono::TimeDelta::seconds(30 * step);
            m.observe(&event(3, members(1000), "+0.5"), now);
            m.rank(now);
        }
        let (items, _) = m.rank(now);
        assert_eq!(items[0].mal_id, 3);
        assert_eq!((items[0].rank, items[0].previous_rank), (1, Some(3)), "up 2");
        assert_eq!((items[1].rank, items[1].previous_rank), (2, Some(1)), "down 1");
        let (again, _) = m.rank(now);
        assert_eq!(again[0].previous_rank, Some(3), "the arrow does not flash away");

        // Eleven minutes on, the reference is the ranking of ten minutes ago.
        let later = t0 + chrono::TimeDelta::minutes(11);
        m.observe(&event(4, members(1000), "+9"), later);
        let (items, _) = m.rank(later);
        let new = items.iter().find(|i| i.mal_id == 4).unwrap();
        assert_eq!(new.previous_rank, None, "a new entry");
        let three = items.iter().find(|i| i.mal_id == 3).unwrap();
        assert_eq!(three.previous_rank, Some(1), "already first ten minutes ago");
    }

    #[test]
    fn every_event_counts_about_one() {
        let score = |change: &str| {
            weight(&event(
                1,
                Measure::Score(Score::from_hundredths(800).unwrap()),
                change,
            ))
        };
        assert!(score("-0.50") < score("+0.05"), "a falling score weighs less");
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(score("-0.50"), 0.9), "{}", score("-0.50"));
        assert!(near(score("+3.00"), 1.1));
        let rank = weight(&event(1, Measure::Rank(1), "+49"));
        assert!(near(rank, 1.1), "no single event puts a title on top: {rank}");
        assert!(near(weight(&event(1, Measure::Members(5), "+0.8")), 1.08));
    }
}
