use std::collections::HashMap;

use super::*;
use crate::event::EventType;

fn run(seed: u64, n: usize) -> Vec<Event> {
    let catalog = Catalog::builtin().unwrap();
    let mut sim = Simulator::new(&catalog, Some(seed));
    let now = DateTime::from_timestamp(1_755_196_200, 0).unwrap();
    (0..n).map(|_| sim.next_event(now)).collect()
}

#[test]
fn same_seed_same_sequence() {
    assert!(run(7, 500) == run(7, 500));
    assert!(run(7, 500) != run(8, 500));
}

#[test]
fn every_event_is_valid_on_the_wire() {
    for event in run(1, 5000) {
        let parsed = Event::from_bytes(&event.to_bytes()).unwrap();
        assert_eq!(
            parsed,
            Event {
                timestamp: parsed.timestamp,
                ..event
            }
        );
    }
}

#[test]
fn all_three_types_appear() {
    let events = run(3, 1000);
    for t in EventType::ALL {
        assert!(events.iter().any(|e| e.event_type() == t), "{t}");
    }
}

#[test]
fn change_matches_the_state_it_describes() {
    let mut last_score: HashMap<i32, i64> = HashMap::new();
    let mut last_members: HashMap<i32, i64> = HashMap::new();
    let catalog = Catalog::builtin().unwrap();
    for a in catalog.anime() {
        last_score.insert(a.mal_id, (a.score * 100.0).round() as i64);
        last_members.insert(a.mal_id, a.members);
    }
    for e in run(11, 20_000) {
        let change: f64 = e.popularity_change.parse().unwrap();
        match e.measure {
            Measure::Score(s) => {
                let old = last_score.insert(e.mal_id, i64::from(s.hundredths())).unwrap();
                assert_eq!((change * 100.0).round() as i64, i64::from(s.hundredths()) - old);
            }
            Measure::Members(m) => {
                let old = last_members.insert(e.mal_id, m).unwrap();
                assert!(m > old, "members only grow");
                assert_eq!((change * 1000.0).round() as i64, m - old);
            }
            Measure::Rank(r) => assert!((1..=TRENDING_SIZE as i32).contains(&r)),
        }
    }
}

#[test]
fn scores_revert_towards_the_catalog_score() {
    let events = run(5, 50_000);
    let bebop: Vec<f64> = events
        .iter()
        .filter(|e| e.mal_id == 1)
        .filter_map(|e| match e.measure {
            Measure::Score(s) => Some(s.as_f64()),
            _ => None,
        })
        .collect();
    assert!(bebop.len() > 10);
    assert!(bebop.iter().all(|s| (7.0..=10.0).contains(s)), "{bebop:?}");
}

/// Events per title over `events`, most first.
fn busiest(events: &[Event]) -> Vec<(i32, usize)> {
    let mut counts: HashMap<i32, usize> = HashMap::new();
    for e in events {
        *counts.entry(e.mal_id).or_default() += 1;
    }
    let mut counts: Vec<(i32, usize)> = counts.into_iter().collect();
    counts.sort_by_key(|&(id, n)| (std::cmp::Reverse(n), id));
    counts
}

#[test]
fn attention_is_heavy_tailed_and_reaches_the_whole_catalog() {
    let titles = Catalog::builtin().unwrap().anime().len();
    let events = run(21, 100_000);
    let counts = busiest(&events);
    let share = |n: usize| counts.iter().take(n).map(|&(_, c)| c).sum::<usize>() as f64 / events.len() as f64;
    let seen = counts.len() as f64 / titles as f64;
    eprintln!(
        "top title {:.1} %, top 10 % of titles {:.1} %, titles seen {:.1} %",
        100.0 * share(1),
        100.0 * share(titles / 10),
        100.0 * seen
    );
    assert!(share(titles / 10) > 0.5, "the top tenth gets most events");
    assert!(share(1) < 0.3, "no title swallows the stream");
    assert!(seen > 0.95, "the long tail still moves");
}

#[test]
fn every_title_can_be_picked() {
    let sim = Simulator::new(&Catalog::builtin().unwrap(), Some(1));
    assert!(sim.anime.iter().all(|a| a.popularity > 0.0));
    let last = sim.cumulative.last().copied().unwrap();
    assert!((last - sim.anime.iter().map(|a| a.popularity).sum::<f64>()).abs() < 1e-9);
}

/// The page's chart of a followed title draws a score and a members line.
/// Over 1,000 seeds, 98 % of first minutes give the busiest title two or
/// more of each (about nine such events in all, on average).
#[test]
fn the_busiest_title_has_a_chart_within_a_minute() {
    // At `all`'s one event a second, a minute is 60 events.
    let mut charted = 0;
    for seed in 0..20 {
        let events = run(seed, 60);
        let (busiest, _) = busiest(&events)[0];
        let of = |t: EventType| {
            events
                .iter()
                .filter(|e| e.mal_id == busiest && e.event_type() == t)
                .count()
        };
        let (scores, members) = (of(EventType::ScoreUpdate), of(EventType::MemberUpdate));
        eprintln!("seed {seed}: malId {busiest}: {scores} score and {members} member events");
        charted += usize::from(scores >= 2 && members >= 2);
    }
    assert!(charted >= 19, "{charted} of 20 runs");
}

#[test]
fn a_burst_lifts_a_tail_title_into_the_head_for_a_while() {
    let catalog = Catalog::builtin().unwrap();
    let mut sim = Simulator::new(&catalog, Some(4));
    let now = DateTime::from_timestamp(1_755_196_200, 0).unwrap();
    let tail = (0..sim.anime.len())
        .min_by(|&x, &y| sim.anime[x].popularity.total_cmp(&sim.anime[y].popularity))
        .unwrap();
    let place = |sim: &Simulator| {
        (0..sim.anime.len())
            .filter(|&i| sim.attention(i) > sim.attention(tail))
            .count()
            + 1
    };
    assert_eq!(place(&sim), sim.anime.len(), "the least popular title");
    // Even the smallest burst lifts it into the head.
    sim.add_buzz(tail, zipf(BURST_PEERS as usize));
    assert!(
        place(&sim) <= 20,
        "a burst is attention of the head: {}",
        place(&sim)
    );
    // Then a big one: as much attention as the third most popular title.
    sim.add_buzz(tail, zipf(3));
    let id = sim.anime[tail].mal_id;
    let during: usize = (0..1_000).filter(|_| sim.next_event(now).mal_id == id).count();
    for _ in 0..6_000 {
        sim.next_event(now);
    }
    let after: usize = (0..1_000).filter(|_| sim.next_event(now).mal_id == id).count();
    eprintln!("a burst on the last title: {during} events in the first 1000, {after} in 7000..8000");
    assert!(during >= 10, "{during}");
    assert!(after <= 3, "{after}");
    assert_eq!(sim.buzz(tail), 0.0, "the burst is over");
}

#[test]
fn trending_changes_concern_titles_being_talked_about() {
    // Talked about: three or more score or member events in the last
    // 600 events (ten minutes at one event a second).
    let events = run(9, 20_000);
    let mut seen: HashMap<i32, Vec<usize>> = HashMap::new();
    let (mut talked_about, mut changes) = (0, 0);
    for (n, e) in events.iter().enumerate() {
        let times = seen.entry(e.mal_id).or_default();
        if e.event_type() == EventType::TrendingChange {
            changes += 1;
            let recent = times.len() - times.partition_point(|&m| m + 600 < n);
            talked_about += usize::from(recent >= 3);
        } else {
            times.push(n);
        }
    }
    eprintln!("{talked_about} of {changes} trending changes about a title being talked about");
    assert!(talked_about as f64 > 0.7 * changes as f64, "mostly");
}

#[test]
fn a_tiny_catalog_without_years_runs() {
    let file = std::env::temp_dir().join(format!("catlog-tiny-{}.csv", std::process::id()));
    std::fs::write(&file, "malId,title,score,members\n1,A,7,10\n2,B,8,0\n").unwrap();
    let catalog = Catalog::load(&file).unwrap();
    std::fs::remove_file(&file).ok();
    let mut sim = Simulator::new(&catalog, Some(1));
    let now = DateTime::from_timestamp(1_755_196_200, 0).unwrap();
    for _ in 0..2_000 {
        let event = sim.next_event(now);
        assert!(Event::from_bytes(&event.to_bytes()).is_ok());
        if let Measure::Rank(r) = event.measure {
            assert!((1..=2).contains(&r));
        }
    }
}

#[test]
fn folding_the_decay_into_the_values_changes_nothing() {
    let catalog = Catalog::builtin().unwrap();
    let now = DateTime::from_timestamp(1_755_196_200, 0).unwrap();
    let mut plain = Simulator::new(&catalog, Some(2));
    let mut folded = Simulator::new(&catalog, Some(2));
    for _ in 0..1_000 {
        assert!(plain.next_event(now) == folded.next_event(now));
    }
    // The same values, stored against scales just above the fold, which
    // the next few hundred events cross.
    let momentum = folded.momentum_scale / (RESCALE_BELOW * 1.5);
    for a in &mut folded.anime {
        a.momentum *= momentum;
    }
    folded.momentum_scale /= momentum;
    let buzz = folded.buzz_scale / (RESCALE_BELOW * 1.5);
    for (_, b) in &mut folded.buzzing {
        *b *= buzz;
    }
    folded.buzz_scale /= buzz;
    for _ in 0..5_000 {
        assert!(plain.next_event(now) == folded.next_event(now));
    }
    assert!(folded.momentum_scale > RESCALE_BELOW * 1.5, "momentum was folded");
    assert!(folded.buzz_scale > RESCALE_BELOW * 1.5, "buzz was folded");
}

/// A timing, not a check: `cargo test --release --lib next_event_rate -- --ignored --nocapture`.
#[test]
#[ignore = "a timing to run by hand"]
fn next_event_rate() {
    let catalog = Catalog::builtin().unwrap();
    let mut sim = Simulator::new(&catalog, Some(1));
    let now = DateTime::from_timestamp(1_755_196_200, 0).unwrap();
    let n = 1_000_000;
    let started = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(sim.next_event(now));
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "next_event: {n} events in {secs:.2} s, {:.0} events/s",
        n as f64 / secs
    );
}

#[test]
fn thousands_are_exact() {
    assert_eq!(in_thousands(800), "+0.8");
    assert_eq!(in_thousands(37), "+0.037");
    assert_eq!(in_thousands(1250), "+1.25");
    assert_eq!(in_thousands(2000), "+2");
}
