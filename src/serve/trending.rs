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
//!           + 20 · max(Δscore, 0) + 10 · min(Δscore, 0)   SCORE_UPDATE (+0.05 → +1)
//!           + 2 · thousands of new members                MEMBER_UPDATE (+0.8 → +1.6)
//!           + 0.5 · places climbed + (51 − rank) / 10     TRENDING_CHANGE, ranks 1–50
//! ```
//!
//! Momentum never goes below zero. The top [`SIZE`] by momentum (ties: more
//! members first) make the list; each item carries its rank in the previous
//! ranking, so the page shows movement.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::models::TrendingItem;
use crate::event::{Event, Measure};

/// Time for momentum to halve.
pub const HALF_LIFE: Duration = Duration::from_secs(10 * 60);
/// Places in the list.
pub const SIZE: usize = 20;

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
        Measure::Score(_) => 20.0 * change.max(0.0) + 10.0 * change.min(0.0),
        Measure::Members(_) => 2.0 * change.max(0.0),
        Measure::Rank(rank) => 0.5 * change + f64::from((51 - rank).max(0)) / 10.0,
    }
}

/// Momentum per anime and the last ranking made from it.
#[derive(Debug, Default)]
pub struct Momentum {
    anime: HashMap<i32, Entry>,
    ranking: Vec<i32>,
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
        let items: Vec<TrendingItem> = scored
            .iter()
            .enumerate()
            .map(|(place, (id, momentum, e))| TrendingItem {
                rank: place as i32 + 1,
                mal_id: *id,
                title: e.title.clone(),
                score: e.score.map(|s| (s * 100.0).round() / 100.0),
                members: e.members,
                momentum: (momentum * 10.0).round() / 10.0,
                previous_rank: self.ranking.iter().position(|p| p == id).map(|p| p as i32 + 1),
            })
            .collect();
        let order: Vec<i32> = items.iter().map(|i| i.mal_id).collect();
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
        assert_eq!(items[0].previous_rank, None);

        // An hour later, fresh activity on 2 outweighs 1's old burst.
        let later = t0 + chrono::TimeDelta::hours(1);
        m.observe(&event(2, Measure::Rank(3), "+4"), later);
        let (items, changed) = m.rank(later);
        assert!(changed);
        assert_eq!(items[0].mal_id, 2);
        assert_eq!(items[0].previous_rank, Some(2));
        assert_eq!(items[1].previous_rank, Some(1));
        assert!(
            items[1].momentum < 0.5,
            "six half-lives later: {}",
            items[1].momentum
        );

        let (_, changed) = m.rank(later);
        assert!(!changed, "same order, no change");
    }

    #[test]
    fn falling_scores_weigh_less_but_never_below_zero() {
        let down = weight(&event(
            1,
            Measure::Score(Score::from_hundredths(800).unwrap()),
            "-0.50",
        ));
        assert!(down < 0.0);
        let mut m = Momentum::default();
        m.observe(
            &event(1, Measure::Score(Score::from_hundredths(800).unwrap()), "-0.50"),
            Utc::now(),
        );
        assert!(m.rank(Utc::now()).0.is_empty());
    }
}
