//! History benchmark: what every query the product runs costs as the history
//! grows. Builds a history of N realistic rows (Zipf over the catalog with the
//! simulator's exponent, spread over 30 days, time-ordered event ids, the
//! least popular title with an anime panel's worth of events (200) in its
//! first hours and none after, and the same 1,000 rows in its last five
//! minutes at every size) in a database of its own, and a small one
//! (10,000 rows) beside it, then times
//! on both, in the same run: each route's query, the follower's start, a
//! resume of 1,000, `doctor`, ingest of 100,000 events through `consume`
//! against a plain COPY of the same rows, once into an empty table of a
//! partition's shape and once into the history itself as it stands (five
//! times, each of a topic of its own: the median ratios), one retention
//! sweep (keeping 8 days less than the history holds) and the next.
//!
//! ```text
//! scripts/bench history --rows 1000000
//! scripts/bench history --rows 30000000 --keep     # keep the databases
//! ```
//!
//! Needs a broker (`KAFKA_BROKER`) and PostgreSQL (`CATLOG_TEST_DATABASE_URL`),
//! as `scripts/bench` provides.

use std::time::{Duration, Instant};

use catlog_live::catalog::Catalog;
use catlog_live::config::{Cli, Command};
use catlog_live::db::Database;
use catlog_live::event::new_event_id;
use catlog_live::store::{history, retention};
use catlog_live::{doctor, kafka};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[path = "support/events.rs"]
mod events;
use events::{PARTITIONS, Published, consume, copy, publish, shape};

/// Days the built history spans (retention then keeps one day less).
const DAYS: i64 = 30;
/// Rows inserted per statement while building.
const CHUNK: i64 = 1_000_000;
/// The simulator's Zipf exponent.
const ZIPF: f64 = 1.2;
/// Timed runs of each query (the median is shown), after one warm-up: most
/// take a fraction of a millisecond, and seven (as before) let a moment's
/// noise on a shared machine pass for a difference between the sizes.
const RUNS: usize = 51;
/// Ingests timed, each of its own topic's events against COPYs of the
/// same rows (the median ratios are shown): one run of 100,000 events takes
/// about a second, and either side moves by 10 % from one run to the next.
const INGESTS: usize = 5;

/// One row of history per `g`, as the consumer would have written it.
const FILL: &str = r#"
INSERT INTO popularity_events (topic, partition, log_epoch, "offset", event_id, mal_id, title, event_type,
                               current_score, live_members, trending_rank, popularity_change,
                               event_time, ingested_at)
SELECT 'bench-history', (g % 3)::int4, 0, g / 3,
       (lpad(to_hex((extract(epoch FROM t) * 1000)::int8), 12, '0') || '7' || substr(h, 1, 3)
        || '8' || substr(h, 4, 15))::uuid,
       ($7::int4[])[q], ($8::text[])[q],
       (ARRAY['SCORE_UPDATE', 'MEMBER_UPDATE', 'TRENDING_CHANGE'])[1 + g % 3],
       CASE WHEN g % 3 = 0 THEN round((5 + 4.5 * r)::numeric, 2) END,
       CASE WHEN g % 3 = 1 THEN 100000 + (r * 3000000)::int8 END,
       CASE WHEN g % 3 = 2 THEN 1 + (r * 99)::int4 END,
       round((r - 0.5)::numeric, 2),
       t, t + interval '40 milliseconds'
FROM generate_series($1::int8, $2::int8) AS g,
     LATERAL (SELECT $5::timestamptz + (g / $3::float8) * $6::float8 * interval '1 second' AS t,
                     md5(g::text) AS h,
                     random() AS r,
                     least(floor(power(1 - random() * (1 - power(($4::int4 + 1)::float8, 1 - $9::float8)),
                                       1 / (1 - $9::float8)))::int4, $4::int4) AS k) AS x,
     -- The least popular title has $11 events, one every $10 rows from the
     -- start (its first hours), and is quiet after them: the long tail a
     -- visitor clicks, with the same events at every size, so that its
     -- reads return as much from a small history as from a large one.
     LATERAL (SELECT CASE WHEN g % $10::int8 = 0 AND g / $10::int8 < $11::int8 THEN $4::int4
                          WHEN k = $4::int4 THEN k - 1
                          ELSE k END AS q) AS quiet
"#;

/// Rows the history gains in the last minutes before it is measured (one
/// every 300 ms), as on a live site: what the trending window reads.
const LIVE_ROWS: i64 = 1_000;

/// Those rows: copies of the newest built ones, now.
const LIVE_TAIL: &str = r#"
INSERT INTO popularity_events (topic, partition, log_epoch, "offset", event_id, mal_id, title, event_type,
                               current_score, live_members, trending_rank, popularity_change,
                               event_time, ingested_at)
SELECT 'bench-history-live', 0, 0, g, gen_random_uuid(), e.mal_id, e.title, e.event_type,
       e.current_score, e.live_members, e.trending_rank, e.popularity_change,
       now() - ($1 - g) * interval '300 milliseconds', now() - ($1 - g) * interval '300 milliseconds'
FROM generate_series(1::int8, $1::int8) AS g,
     LATERAL (SELECT * FROM popularity_events
              WHERE id = (SELECT max(id) FROM popularity_events WHERE topic = 'bench-history') - g) AS e
"#;

/// The current state the built history leaves.
const FILL_CURRENT: &str = r#"
INSERT INTO live_popularity (mal_id, title, current_score, score_updated_at, live_members, members_updated_at,
                             trending_rank, rank_updated_at, popularity_change, last_event_type, last_update,
                             event_count)
SELECT c.mal_id, l.title, s.current_score, s.event_time, m.live_members, m.event_time,
       r.trending_rank, r.event_time, l.popularity_change, l.event_type, l.event_time, c.n
FROM (SELECT mal_id, count(*) AS n FROM popularity_events GROUP BY mal_id) AS c
CROSS JOIN LATERAL (SELECT * FROM popularity_events e WHERE e.mal_id = c.mal_id
                    ORDER BY e.mal_id, e.id DESC LIMIT 1) AS l
LEFT JOIN LATERAL (SELECT * FROM popularity_events e WHERE e.mal_id = c.mal_id
                   AND e.event_type = 'SCORE_UPDATE' ORDER BY e.mal_id, e.id DESC LIMIT 1) AS s ON true
LEFT JOIN LATERAL (SELECT * FROM popularity_events e WHERE e.mal_id = c.mal_id
                   AND e.event_type = 'MEMBER_UPDATE' ORDER BY e.mal_id, e.id DESC LIMIT 1) AS m ON true
LEFT JOIN LATERAL (SELECT * FROM popularity_events e WHERE e.mal_id = c.mal_id
                   AND e.event_type = 'TRENDING_CHANGE' ORDER BY e.mal_id, e.id DESC LIMIT 1) AS r ON true
"#;

/// Heap and index bytes of the history, every partition counted.
const SIZES: &str = "SELECT sum(pg_table_size(relid))::int8, sum(pg_indexes_size(relid))::int8 \
     FROM (SELECT relid FROM pg_partition_tree('popularity_events') \
           UNION SELECT 'popularity_events'::regclass) AS t";

struct Args {
    rows: i64,
    small: i64,
    ingest: usize,
    keep: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        rows: 1_000_000,
        small: 10_000,
        ingest: 100_000,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> anyhow::Result<i64> {
            it.next()
                .and_then(|n| n.replace('_', "").parse().ok())
                .ok_or_else(|| anyhow::anyhow!("{name} needs a number"))
        };
        match arg.as_str() {
            "--rows" => out.rows = number("--rows")?,
            "--small" => out.small = number("--small")?,
            "--ingest" => out.ingest = number("--ingest")? as usize,
            "--keep" => out.keep = true,
            "--bench" => {}
            other => {
                anyhow::bail!("unknown argument {other}; use --rows N [--small N] [--ingest N] [--keep]")
            }
        }
    }
    Ok(out)
}

/// A topic's events, published for the ingest, kept for the COPY.
struct Feed {
    topic: String,
    published: Vec<Published>,
}

/// One database of the run and what was measured on it.
struct Run {
    rows: i64,
    url: String,
    figures: Vec<(String, String)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let broker = std::env::var("KAFKA_BROKER").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let admin = std::env::var("CATLOG_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let suffix = format!("{}_{}", std::process::id(), chrono::Utc::now().timestamp());
    let topic = format!("catlog-bench-history-{suffix}");
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin)
        .to_owned();

    let catalog = Catalog::builtin()?;
    let mut titles: Vec<_> = catalog.anime().to_vec();
    titles.sort_by_key(|a| std::cmp::Reverse(a.members));
    let ids: Vec<i32> = titles.iter().map(|a| a.mal_id).collect();
    let names: Vec<String> = titles.iter().map(|a| a.title.clone()).collect();
    println!(
        "history benchmark: {} rows against {} over {DAYS} days, {} titles (Zipf {ZIPF}), median of {RUNS} runs",
        group(args.rows),
        group(args.small),
        ids.len()
    );

    let client = kafka::connect(&catlog_live::config::KafkaArgs::plain(
        broker.clone(),
        topic.clone(),
    ))
    .await?;
    // The topics ingested; the first is also the one `doctor` looks at.
    let mut feeds = Vec::new();
    for i in 1..=INGESTS {
        let name = if i == 1 {
            topic.clone()
        } else {
            format!("{topic}-{i}")
        };
        kafka::ensure_topic(&client, &name, PARTITIONS, None).await?;
        let published = publish(&client, &name, args.ingest).await?;
        feeds.push(Feed {
            topic: name,
            published,
        });
    }

    let mut runs = Vec::new();
    for (size, label) in [(args.small, "small"), (args.rows, "large")] {
        let name = format!("catlog_bench_history_{label}_{suffix}");
        let url = format!("{base}/{name}");
        runs.push(Run {
            rows: size,
            url,
            figures: Vec::new(),
        });
    }
    // One consume of each topic into a scratch database first, so that the
    // first measured ingest does not pay for a cold broker.
    let scratch = format!("{base}/catlog_bench_history_warmup_{suffix}");
    let warm: Database = scratch.parse()?;
    let warm_session = {
        warm.connect_and_migrate(1).await?;
        warm.session().await?
    };
    for feed in &feeds {
        consume(
            &scratch,
            &broker,
            &feed.topic,
            &warm_session.client,
            feed.published.len(),
        )
        .await?;
    }
    drop(warm_session);
    drop_database(&admin, "catlog_bench_history_warmup", &suffix).await?;

    for run in &mut runs {
        measure(run, &ids, &names, &broker, &feeds).await?;
    }
    print_table(&runs);

    if !args.keep {
        for label in ["small", "large"] {
            drop_database(&admin, &format!("catlog_bench_history_{label}"), &suffix).await?;
        }
    } else {
        for run in &runs {
            println!("kept {}", run.url);
        }
    }
    Ok(())
}

/// Drops the run's database `{prefix}_{suffix}`.
async fn drop_database(admin: &str, prefix: &str, suffix: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{prefix}_{suffix}\" WITH (FORCE)"
        ))
        .await?;
    Ok(())
}

/// Builds one history and times everything on it.
async fn measure(
    run: &mut Run,
    ids: &[i32],
    names: &[String],
    broker: &str,
    feeds: &[Feed],
) -> anyhow::Result<()> {
    let topic = &feeds[0].topic;
    // Building takes long; a query the product runs is still bounded, but
    // loosely, so that a slow one is timed rather than cut off.
    let db: Database = run
        .url
        .parse::<Database>()?
        .with_timeout(Duration::from_secs(120));
    // The upkeep's pool (retention), and the server's, as each builds it.
    let pool = db.connect_and_migrate(2).await?;
    let reads = db.reading_pool(2)?;
    let session = db.session().await?;
    let sql = &session.client;
    sql.batch_execute("SET statement_timeout = 0").await?;

    // Build.
    let started = Instant::now();
    let span = (DAYS * 86_400) as f64;
    // The span ends an hour before the build starts, so that what the
    // trending window finds is the live tail below, the same at every size.
    let start = chrono::Utc::now() - chrono::Duration::days(DAYS) - chrono::Duration::hours(1);
    if sql
        .query_one("SELECT to_regproc('ensure_history_partitions') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0)
    {
        sql.execute(
            "SELECT ensure_history_partitions($1::timestamptz, now() + interval '7 days')",
            &[&start],
        )
        .await?;
    }
    let n = ids.len() as i32;
    // The quiet title's events: a full anime panel's worth, within the
    // first 1 % of the rows where the history allows.
    let quiet_events = history::ANIME_HISTORY;
    let stride = (run.rows / 100 / quiet_events).max(1);
    let mut lo = 0;
    while lo < run.rows {
        let hi = (lo + CHUNK).min(run.rows) - 1;
        sql.execute(
            FILL,
            &[
                &lo,
                &hi,
                &(run.rows as f64),
                &n,
                &start,
                &span,
                &ids,
                &names,
                &ZIPF,
                &stride,
                &quiet_events,
            ],
        )
        .await?;
        lo = hi + 1;
        if run.rows > CHUNK {
            eprintln!("  built {} of {} rows", group(lo), group(run.rows));
        }
    }
    sql.execute(FILL_CURRENT, &[]).await?;
    sql.batch_execute("VACUUM (ANALYZE) popularity_events").await?;
    sql.batch_execute("ANALYZE live_popularity").await?;
    // Write the build out now, so that its checkpoint does not land in the
    // middle of what is measured.
    sql.batch_execute("CHECKPOINT").await?;
    // A live site's last minutes, just before the queries: the same rows at
    // every size.
    sql.execute(LIVE_TAIL, &[&LIVE_ROWS]).await?;
    let built = started.elapsed().as_secs_f64();
    let sizes = sql.query_one(SIZES, &[]).await?;
    let (heap, indexes): (i64, i64) = (sizes.get(0), sizes.get(1));
    run.figures.push(("build (s)".into(), format!("{built:.1}")));
    run.figures.push((
        "heap / indexes".into(),
        format!("{} / {}", bytes(heap), bytes(indexes)),
    ));

    let busiest: i32 = sql
        .query_one(
            "SELECT mal_id FROM live_popularity ORDER BY event_count DESC LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    let quietest: (i32, f64) = sql
        .query_one(
            "SELECT mal_id, extract(epoch FROM now() - last_update)::float8 / 3600 \
             FROM live_popularity ORDER BY last_update LIMIT 1",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    let quiet = quietest.0;
    run.figures.push((
        "quietest title: hours since its last event".into(),
        format!("{:.0}", quietest.1),
    ));

    // The queries.
    let last = history::last_id(&reads).await?;
    let mut timed: Vec<(&str, f64)> = Vec::new();
    timed.push((
        "serve start: trending window",
        median(|| async { history::recent(&reads, 600.0, 20_000).await.map(drop) }).await?,
    ));
    timed.push((
        "serve start: newest id",
        median(|| async { history::last_id(&reads).await.map(drop) }).await?,
    ));
    timed.push((
        "GET /api/events",
        median(|| async { history::latest(&reads, 50, None, None).await.map(drop) }).await?,
    ));
    timed.push((
        "GET /api/events?before= (page 2)",
        median(|| async { history::latest(&reads, 50, None, Some(last - 50)).await.map(drop) }).await?,
    ));
    timed.push((
        "GET /api/events?malId= busiest",
        median(|| async { history::latest(&reads, 50, Some(busiest), None).await.map(drop) }).await?,
    ));
    timed.push((
        "GET /api/events?malId= quietest",
        median(|| async { history::latest(&reads, 50, Some(quiet), None).await.map(drop) }).await?,
    ));
    timed.push((
        "anime panel / WS subscribe, busiest",
        median(|| async { history::anime(&reads, busiest).await.map(drop) }).await?,
    ));
    timed.push((
        "anime panel / WS subscribe, quietest",
        median(|| async { history::anime(&reads, quiet).await.map(drop) }).await?,
    ));
    timed.push((
        "resume 1,000",
        median(|| async { history::rows_after(&reads, last - 1000, 1001).await.map(drop) }).await?,
    ));
    timed.push((
        "resume bounds (resync)",
        median(|| async { history::bounds(&reads).await.map(drop) }).await?,
    ));
    for (name, ms) in timed {
        run.figures.push((format!("{name} (ms)"), format!("{ms:.2}")));
    }

    // Ingest: a plain COPY of a topic's events into an empty table of a
    // history partition's shape; then `consume` of the same events from the
    // broker, and a COPY of the same rows into the history itself (under a
    // topic and event ids of their own), which keeps them as it keeps the
    // ingested ones: these two in turns, so that neither always meets the
    // history 100,000 rows larger than the other. Once per topic.
    let mut rounds = Vec::new();
    for (round, Feed { topic, published }) in feeds.iter().enumerate() {
        sql.batch_execute(&format!(
            "CREATE TABLE copy_baseline (LIKE {} INCLUDING ALL)",
            shape(sql).await?
        ))
        .await?;
        let copy_secs = copy(sql, "copy_baseline", topic, published).await?;
        sql.batch_execute("DROP TABLE copy_baseline").await?;
        let again: Vec<Published> = published
            .iter()
            .map(|(p, o, e, _)| (*p, *o, e.clone(), new_event_id()))
            .collect();
        let copy_topic = format!("{topic}-copy");
        let copy_into_history = || copy(sql, "popularity_events", &copy_topic, &again);
        let (ingest_secs, into_history_secs) = if round % 2 == 0 {
            let ingest = consume(&run.url, broker, topic, sql, published.len()).await?;
            (ingest, copy_into_history().await?)
        } else {
            let into_history = copy_into_history().await?;
            (
                consume(&run.url, broker, topic, sql, published.len()).await?,
                into_history,
            )
        };
        let n = published.len() as f64;
        rounds.push([n / ingest_secs, n / copy_secs, n / into_history_secs]);
    }
    let middle = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let column = |i: usize| rounds.iter().map(|r| r[i]).collect::<Vec<_>>();
    run.figures.push((
        format!("ingest {} events (ev/s)", group(feeds[0].published.len() as i64)),
        format!("{:.0}", middle(column(0))),
    ));
    for (i, into) in [(1, "an empty table"), (2, "the history")] {
        let ratios: Vec<f64> = rounds.iter().map(|r| r[0] / r[i]).collect();
        run.figures.push((
            format!("COPY of the same rows into {into} (rows/s)"),
            format!("{:.0}", middle(column(i))),
        ));
        run.figures.push((
            format!("ingest / that COPY (median of {INGESTS})"),
            format!("{:.2}", middle(ratios.clone())),
        ));
        run.figures.push((
            "  each run".into(),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
        ));
    }

    // doctor, as `catlog-live doctor` runs it.
    let cli = Cli::try_parse_from([
        "catlog-live",
        "doctor",
        "--kafka-broker",
        broker,
        "--kafka-topic",
        topic,
        "--database-url",
        &run.url,
        "--group-id",
        "bench",
    ])?;
    let Command::Doctor(doctor_args) = cli.command else {
        anyhow::bail!("not doctor")
    };
    let doctor_ms = median(|| async {
        doctor::run(&doctor_args.kafka, &doctor_args.db, &doctor_args.group).await;
        Ok::<_, anyhow::Error>(())
    })
    .await?;
    run.figures
        .push(("doctor (ms)".into(), format!("{doctor_ms:.1}")));

    // Retention: keep 8 days less than the history holds (so that at least
    // one whole week goes), then sweep again.
    let shutdown = CancellationToken::new();
    for label in [
        "retention sweep (removes 8 days)",
        "next retention sweep (nothing to do)",
    ] {
        let started = Instant::now();
        let deleted = retention::sweep(&pool, (DAYS - 8) as i32, &shutdown).await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        run.figures.push((format!("{label} (ms)"), format!("{ms:.1}")));
        run.figures
            .push(("  rows it removed".to_string(), group(deleted as i64)));
    }
    let sizes = sql.query_one(SIZES, &[]).await?;
    let (heap, indexes): (i64, i64) = (sizes.get(0), sizes.get(1));
    run.figures.push((
        "heap / indexes after retention".into(),
        format!("{} / {}", bytes(heap), bytes(indexes)),
    ));
    Ok(())
}

/// The median milliseconds of [`RUNS`] calls of `f`, after one warm-up.
async fn median<F, Fut, E>(mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    f().await.map_err(Into::into)?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        f().await.map_err(Into::into)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

fn print_table(runs: &[Run]) {
    let (small, large) = (&runs[0], &runs[1]);
    let width = small.figures.iter().map(|(n, _)| n.len()).max().unwrap_or(10) + 2;
    let cell = runs
        .iter()
        .flat_map(|r| r.figures.iter().map(|(_, v)| v.chars().count() + 2))
        .max()
        .unwrap_or(20)
        .max(20);
    println!();
    println!(
        "{:<width$}{:>cell$}{:>cell$}{:>9}",
        "rows",
        group(small.rows),
        group(large.rows),
        "ratio"
    );
    for ((name, a), (_, b)) in small.figures.iter().zip(&large.figures) {
        let ratio = match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(a), Ok(b)) if a > 0.0 && name.contains("(ms)") => format!("{:.1}×", b / a),
            (Ok(a), Ok(b)) if a > 0.0 && name.contains("(ev/s)") => format!("{:.2}×", b / a),
            _ => String::new(),
        };
        println!("{name:<width$}{a:>cell$}{b:>cell$}{ratio:>9}");
    }
}

/// `1234567` as `1,234,567`.
fn group(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else {
        format!("{:.1} MB", n / 1e6)
    }
}
