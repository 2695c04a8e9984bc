//! Believable popularity dynamics, one event at a time.
//!
//! **Who an event is about.** Attention on a real anime site is heavy-tailed:
//! a handful of titles carry most of the talk, the long tail is quiet, and
//! the head changes when something happens. So a title's chance of the next
//! event is its *popularity* plus its *buzz*:
//!
//! * Popularity is Zipf over the catalog's member ranking, `1 / rank^1.2`:
//!   the most-followed title draws about one event in seven and the top
//!   tenth of the catalog about seven in ten. The rank, not the member count
//!   itself, because the counts of a catalog of well-known titles span only
//!   a factor of a hundred, far flatter than attention, and because a rank
//!   means the same in any user's catalog. Every title keeps a weight above
//!   zero, so the tail still moves now and then.
//! * Buzz is what keeps the head from freezing. Now and then a title gets a
//!   burst, as much attention as one of the ten most popular titles: half of
//!   the bursts are a new episode, so they go to the catalog's newest titles,
//!   the other half a meme or an announcement, so anything may get one. Buzz
//!   halves in about 700 events (some ten minutes at one event a second),
//!   and the title sinks back to where its popularity puts it.
//!
//! Activity itself does not feed back into attention: with a Zipf head that
//! feedback lets the biggest title swallow every event.
//!
//! **What an event says.** A title's attention shows up as both ratings and
//! list additions, so its score and member events mostly take turns
//! (independent draws often give the busiest title five score events and no
//! member event in a minute, and a followed title's chart needs both lines).
//!
//! * **Score**: a bounded, mean-reverting walk around the catalog score
//!   (0–10, two decimals), nudged upwards while a title is buzzing.
//!   `popularityChange` is the change in points (`+0.05`).
//! * **Members** only grow, in proportion to the audience a title already
//!   has and faster while it is buzzing; a step is small, since popular
//!   titles already get many more steps. `popularityChange` is the number of
//!   new members in thousands (`+0.8` is 800 members).
//! * **Trending ranks** come from momentum: every event adds to its anime's
//!   momentum and momentum decays, so the ranking is of the titles being
//!   talked about now, and a burst climbs it. A `TRENDING_CHANGE` reports a
//!   title whose rank in the momentum ranking moved since its rank was last
//!   reported; `popularityChange` is the places it climbed (`+3`) or fell
//!   (`-2`). Which of the movers is reported is drawn by attention, like any
//!   other event. Reporting the biggest jump instead mostly reports the
//!   bottom of the list, where momenta are small and one event moves a
//!   title twenty places, and `serve` counts places climbed as momentum of
//!   its own.
//!
//! **Cost.** Load runs call [`Simulator::next_event`] a hundred thousand
//! times a second or more. Momentum and buzz decay through one shared factor
//! per kind (folded back into the values once in a long while), a pick is a
//! binary search over running sums of popularity plus a walk over the few
//! buzzing titles, and only a `TRENDING_CHANGE` looks at every title (a
//! partial selection of the top [`TRENDING_SIZE`], linear in the catalog).
//!
//! All randomness comes from one seeded generator, so a seed repeats a run.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::catalog::Catalog;
use crate::event::{Event, Measure, Score};

/// How many places the trending list has.
pub const TRENDING_SIZE: usize = 50;
/// Zipf exponent of popularity over the member ranking.
const ZIPF_EXPONENT: f64 = 1.2;
/// Momentum kept per event (the rest decays away).
const MOMENTUM_DECAY: f64 = 0.998;
/// Momentum a score or members event adds, on average.
const MEAN_MOMENTUM_STEP: f64 = 2.0;
/// Buzz kept per event: half of a burst is gone after about 700 events.
const BUZZ_DECAY: f64 = 0.999;
/// Buzz below this (about the popularity of the 500th title) is over.
const BUZZ_FLOOR: f64 = 0.001;
/// Chance per event that some title gets a burst of attention.
const BURST_CHANCE: f64 = 0.004;
/// A burst is as much attention as one of this many most popular titles.
const BURST_PEERS: u32 = 10;
/// Share of bursts that are a new episode, and so go to a recent title.
const NEW_EPISODE_SHARE: f64 = 0.5;
/// Titles from the catalog's newest this many years count as recent.
const RECENT_YEARS: i32 = 3;
/// Bursts already under way at the start, so a run opens mid-season.
const INITIAL_BURSTS: usize = 3;
/// Share of events that are a `TRENDING_CHANGE`.
const TRENDING_SHARE: f64 = 0.15;
/// Chance that a title's next score-or-members event is the other kind.
const TAKE_TURNS: f64 = 0.85;
/// Below this, a decay factor is folded back into the values it scales.
const RESCALE_BELOW: f64 = 1e-100;

/// One title as the simulator moves it.
#[derive(Debug, Clone)]
struct Simulated {
    mal_id: i32,
    title: String,
    /// Where the score reverts to (the catalog score), in hundredths.
    mean_score: f64,
    score: Score,
    members: i64,
    /// Recent activity, divided by [`Simulator::momentum_scale`].
    momentum: f64,
    /// Attention from the member ranking alone; 1 for the most-followed title.
    popularity: f64,
    /// Whether the next score-or-members event is a score update.
    score_next: bool,
    /// Rank last published in a `TRENDING_CHANGE`, while in the top.
    published_rank: Option<i32>,
}

/// The simulator: per-anime state and the random generator.
pub struct Simulator {
    rng: StdRng,
    anime: Vec<Simulated>,
    /// Running sums of `popularity`, in `anime` order, to pick by binary search.
    cumulative: Vec<f64>,
    /// Titles with buzz: index into `anime` and buzz divided by `buzz_scale`.
    buzzing: Vec<(usize, f64)>,
    /// What every stored buzz is multiplied by (decay without touching each).
    buzz_scale: f64,
    /// What every stored momentum is multiplied by.
    momentum_scale: f64,
    /// Indexes of the catalog's newest titles, where new episodes come from.
    recent: Vec<usize>,
    /// Indexes with a `published_rank`.
    published: Vec<usize>,
    /// Reused for the momentum ranking.
    order: Vec<usize>,
}

impl Simulator {
    /// Starts from `catalog`; `seed` makes the sequence repeatable.
    pub fn new(catalog: &Catalog, seed: Option<u64>) -> Self {
        let mut rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let source = catalog.anime();
        let mut by_members: Vec<usize> = (0..source.len()).collect();
        by_members.sort_by_key(|&i| std::cmp::Reverse(source[i].members));
        let mut popularity = vec![0.0; source.len()];
        for (place, &i) in by_members.iter().enumerate() {
            popularity[i] = zipf(place + 1);
        }
        let anime: Vec<Simulated> = source
            .iter()
            .zip(&popularity)
            .map(|(a, &popularity)| {
                let hundredths = (a.score * 100.0).round().clamp(0.0, 1000.0) as u16;
                Simulated {
                    mal_id: a.mal_id,
                    title: a.title.clone(),
                    mean_score: f64::from(hundredths),
                    score: Score::from_hundredths(hundredths).unwrap_or(Score::MAX),
                    members: a.members.max(0),
                    momentum: 0.0,
                    popularity,
                    score_next: rng.random_bool(0.5),
                    published_rank: None,
                }
            })
            .collect();
        let cumulative = anime
            .iter()
            .scan(0.0, |sum, a| {
                *sum += a.popularity;
                Some(*sum)
            })
            .collect();
        let newest = source.iter().filter_map(|a| a.year).max();
        let recent = source
            .iter()
            .enumerate()
            .filter(|(_, a)| matches!((a.year, newest), (Some(y), Some(n)) if y > n - RECENT_YEARS))
            .map(|(i, _)| i)
            .collect();
        let mut simulator = Self {
            rng,
            anime,
            cumulative,
            buzzing: Vec::new(),
            buzz_scale: 1.0,
            momentum_scale: 1.0,
            recent,
            published: Vec::new(),
            order: Vec::with_capacity(source.len()),
        };
        for _ in 0..INITIAL_BURSTS {
            simulator.burst();
        }
        // Start from the momentum attention would have built by now, and its
        // ranking as published, so the first moves are moves, not warm-up.
        let total: f64 = (0..simulator.anime.len()).map(|i| simulator.attention(i)).sum();
        for i in 0..simulator.anime.len() {
            let events_per_event = (1.0 - TRENDING_SHARE) * simulator.attention(i) / total;
            simulator.anime[i].momentum = events_per_event * MEAN_MOMENTUM_STEP / (1.0 - MOMENTUM_DECAY);
        }
        simulator.published = simulator.ranking();
        for (place, &i) in simulator.published.iter().enumerate() {
            simulator.anime[i].published_rank = Some(place as i32 + 1);
        }
        simulator
    }

    /// The next event, stamped `now`.
    pub fn next_event(&mut self, now: DateTime<Utc>) -> Event {
        self.decay();
        if self.rng.random_bool(BURST_CHANCE) {
            self.burst();
        }
        let (index, measure, change) = if self.rng.random_bool(TRENDING_SHARE) {
            self.trending_change()
        } else {
            let i = self.pick();
            let a = &mut self.anime[i];
            let score = a.score_next;
            a.score_next ^= self.rng.random_bool(TAKE_TURNS);
            let (measure, change) = if score {
                self.score_update(i)
            } else {
                self.member_update(i)
            };
            (i, measure, change)
        };
        let a = &self.anime[index];
        Event {
            mal_id: a.mal_id,
            title: a.title.clone(),
            measure,
            popularity_change: change,
            timestamp: now,
        }
    }

    /// One event's worth of decay of momentum and buzz; faded buzz is dropped.
    fn decay(&mut self) {
        self.momentum_scale *= MOMENTUM_DECAY;
        if self.momentum_scale < RESCALE_BELOW {
            for a in &mut self.anime {
                a.momentum *= self.momentum_scale;
            }
            self.momentum_scale = 1.0;
        }
        self.buzz_scale *= BUZZ_DECAY;
        if self.buzz_scale < RESCALE_BELOW {
            for (_, buzz) in &mut self.buzzing {
                *buzz *= self.buzz_scale;
            }
            self.buzz_scale = 1.0;
        }
        let floor = BUZZ_FLOOR / self.buzz_scale;
        self.buzzing.retain(|&(_, buzz)| buzz >= floor);
    }

    /// A new episode of a recent title, or a meme about any title.
    fn burst(&mut self) {
        let recent = match self.recent.choose(&mut self.rng) {
            Some(&i) if self.rng.random_bool(NEW_EPISODE_SHARE) => Some(i),
            _ => None,
        };
        let lucky = recent.unwrap_or_else(|| self.rng.random_range(0..self.anime.len()));
        let size = zipf(self.rng.random_range(1..=BURST_PEERS) as usize);
        self.add_buzz(lucky, size);
    }

    fn add_buzz(&mut self, i: usize, buzz: f64) {
        let stored = buzz / self.buzz_scale;
        match self.buzzing.iter_mut().find(|(j, _)| *j == i) {
            Some((_, b)) => *b += stored,
            None => self.buzzing.push((i, stored)),
        }
    }

    /// The buzz of `anime[i]` now (0 when it has none).
    fn buzz(&self, i: usize) -> f64 {
        self.buzzing
            .iter()
            .find(|(j, _)| *j == i)
            .map_or(0.0, |(_, b)| b * self.buzz_scale)
    }

    /// Popularity plus buzz: how likely `anime[i]` is to be the next event's.
    fn attention(&self, i: usize) -> f64 {
        self.anime[i].popularity + self.buzz(i)
    }

    fn add_momentum(&mut self, i: usize, momentum: f64) {
        self.anime[i].momentum += momentum / self.momentum_scale;
    }

    /// An anime, in proportion to its popularity plus its buzz.
    fn pick(&mut self) -> usize {
        let popular = self.cumulative.last().copied().unwrap_or(0.0);
        let buzz: f64 = self.buzzing.iter().map(|(_, b)| b).sum::<f64>() * self.buzz_scale;
        let mut target = self
            .rng
            .random_range(0.0..(popular + buzz).max(f64::MIN_POSITIVE));
        let last = self.anime.len() - 1;
        if target < popular {
            return self.cumulative.partition_point(|&sum| sum <= target).min(last);
        }
        target -= popular;
        for &(i, b) in &self.buzzing {
            target -= b * self.buzz_scale;
            if target < 0.0 {
                return i;
            }
        }
        self.buzzing.last().map_or(last, |&(i, _)| i)
    }

    /// The momentum ranking: more momentum first, then more popular, then file order.
    fn rank_order(&self, x: usize, y: usize) -> Ordering {
        let (a, b) = (&self.anime[x], &self.anime[y]);
        b.momentum
            .total_cmp(&a.momentum)
            .then(b.popularity.total_cmp(&a.popularity))
            .then(x.cmp(&y))
    }

    /// Indexes of the top [`TRENDING_SIZE`] by momentum, in rank order.
    fn ranking(&mut self) -> Vec<usize> {
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend(0..self.anime.len());
        if order.len() > TRENDING_SIZE {
            order.select_nth_unstable_by(TRENDING_SIZE - 1, |&x, &y| self.rank_order(x, y));
            order.truncate(TRENDING_SIZE);
        }
        order.sort_unstable_by(|&x, &y| self.rank_order(x, y));
        let top = order.clone();
        self.order = order;
        top
    }

    fn score_update(&mut self, i: usize) -> (Measure, String) {
        let noise = self.normal() * 3.0;
        let lift = (self.buzz(i) * 4.0).min(2.0);
        let a = &mut self.anime[i];
        let old = f64::from(a.score.hundredths());
        let mut new = (old + 0.15 * (a.mean_score - old) + noise + lift).round();
        if new == old {
            new += if old >= 1000.0 { -1.0 } else { 1.0 };
        }
        let new = new.clamp(0.0, 1000.0) as u16;
        a.score = Score::from_hundredths(new).unwrap_or(Score::MAX);
        let measure = Measure::Score(a.score);
        let delta = i32::from(new) - old as i32;
        self.add_momentum(i, 1.0 + f64::from(delta.unsigned_abs()) * 0.5);
        let sign = if delta < 0 { '-' } else { '+' };
        let abs = delta.unsigned_abs();
        (measure, format!("{sign}{}.{:02}", abs / 100, abs % 100))
    }

    fn member_update(&mut self, i: usize) -> (Measure, String) {
        let share: f64 = self.rng.random_range(0.000005..0.00005);
        let walk_ins: i64 = self.rng.random_range(1..40);
        let excitement = 1.0 + 2.0 * self.buzz(i);
        let a = &mut self.anime[i];
        let gained = (a.members as f64 * share * excitement) as i64 + walk_ins;
        a.members = a.members.saturating_add(gained);
        let measure = Measure::Members(a.members);
        let relative = gained as f64 / a.members.max(1) as f64;
        self.add_momentum(i, 1.0 + relative * 10_000.0);
        (measure, in_thousands(gained))
    }

    /// A move in the momentum ranking, of a mover drawn by attention.
    fn trending_change(&mut self) -> (usize, Measure, String) {
        let top = self.ranking();
        let outside = top.len() as i32 + 1;
        let movers: Vec<(usize, i32, i32, f64)> = top
            .iter()
            .enumerate()
            .map(|(place, &i)| (i, place as i32 + 1))
            .map(|(i, rank)| (i, rank, self.anime[i].published_rank.unwrap_or(outside)))
            .filter(|(_, rank, old)| rank != old)
            .map(|(i, rank, old)| (i, rank, old, self.attention(i)))
            .collect();
        let total: f64 = movers.iter().map(|m| m.3).sum();
        let mut target = self.rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
        let moved = movers
            .iter()
            .find(|m| {
                target -= m.3;
                target < 0.0
            })
            .or(movers.last())
            .map(|&(i, rank, old, _)| (i, rank, old));
        let (index, rank, old) = match moved {
            Some(m) => m,
            None => {
                let place = self.rng.random_range(0..top.len());
                (top[place], place as i32 + 1, place as i32 + 1)
            }
        };
        // Titles that left the top enter it again from outside.
        let cutoff = top.last().copied().unwrap_or(index);
        for &i in &self.published {
            if self.rank_order(i, cutoff) == Ordering::Greater {
                self.anime[i].published_rank = None;
            }
        }
        let anime = &self.anime;
        self.published.retain(|&i| anime[i].published_rank.is_some());
        if self.anime[index].published_rank.replace(rank).is_none() {
            self.published.push(index);
        }
        self.add_momentum(index, 0.5);
        let climbed = old - rank;
        let sign = if climbed < 0 { '-' } else { '+' };
        (
            index,
            Measure::Rank(rank),
            format!("{sign}{}", climbed.unsigned_abs()),
        )
    }

    /// A roughly normal sample with mean 0 and deviation 1 (Irwin–Hall).
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.rng.random::<f64>()).sum::<f64>() - 6.0
    }
}

/// The Zipf weight of the title at `rank` (1 is the most popular).
fn zipf(rank: usize) -> f64 {
    (rank as f64).powf(-ZIPF_EXPONENT)
}

/// A member count in thousands with up to three decimals: 800 → `+0.8`.
fn in_thousands(gained: i64) -> String {
    let text = format!("{}.{:03}", gained / 1000, gained % 1000);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("+{text}")
}

#[cfg(test)]
mod tests;
