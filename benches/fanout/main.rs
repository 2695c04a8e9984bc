//! Fan-out benchmark: what one `serve` costs per WebSocket client, measured on
//! the real pipeline. `consume`, `serve` and `produce` run as separate
//! processes of the release binary on a fresh topic and a fresh database;
//! this process is the load: N WebSocket clients that time every `update`
//! from the event's own timestamp (set by the producer) to its arrival, so the
//! latency is end to end: produce → Kafka → consume → PostgreSQL → NOTIFY →
//! serve → socket → client. CPU and memory come from `/proc`, for `serve` and
//! for everything else that shares the cores, because on a small box the load
//! client competes with the server it measures. Then the same clients are fed
//! by the plainest server there is ([`floor`]), the baseline `serve`'s CPU
//! per message is printed against.
//!
//! `idle` measures the other end: how fast `catlog-live all` becomes ready
//! and how much memory it holds doing nothing.
//!
//! ```text
//! scripts/bench fanout --clients 10000 --rate 10 [--seconds 30] [--warmup 5]
//!                      [--connect-concurrency 100] [--bin PATH]
//! scripts/bench idle [--seconds 10] [--bin PATH]
//! ```
//!
//! Needs a broker (`KAFKA_BROKER`, default 127.0.0.1:9092) and PostgreSQL
//! (`CATLOG_TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/postgres);
//! `scripts/bench` starts a broker and builds the release binary first.
//! Nothing here asserts a timing: it reports.

mod client;
mod env;
mod floor;
#[path = "../../tests/support/ports.rs"]
mod ports;
mod procfs;
mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::client::{DONE, Load, MEASURING, SOURCES, spawn_clients};
use crate::env::{Cleanup, Env, Fresh, connect_db, wait_ready};
use crate::ports::free_port;
use crate::procfs::{CpuReading, cores, cpu_seconds, load_average, raise_open_files, status_kib};
use crate::report::{Report, drained, fan_out, stored_latency};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fanout bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let (soft_before, limit) = raise_open_files().context("raising the open-file limit")?;
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if let [mode, rest @ ..] = &args[..]
        && mode == floor::WRITER
    {
        return floor::writer(rest).await;
    }
    let mode = Mode::parse(args.into_iter())?;
    let env = Env::from_environment(mode.bin())?;
    println!(
        "open-file limit of this process: {limit} (was {soft_before}); children inherit it; binary {}",
        env.bin.display()
    );
    // Children and databases live outside the measured future, so that a
    // failure or a signal still stops and drops them.
    let mut cleanup = Cleanup::default();
    let outcome = tokio::select! {
        outcome = async {
            match &mode {
                Mode::Fanout(options) => fanout(options, &env, limit, &mut cleanup).await,
                Mode::Idle(options) => idle(options, &env, &mut cleanup).await,
                Mode::Replay(options) => replay(options, &env, &mut cleanup).await,
            }
        } => outcome,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    cleanup.finish(&env, outcome.is_ok()).await;
    outcome
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

// ---- options ----------------------------------------------------------------

enum Mode {
    Fanout(FanoutOptions),
    Idle(IdleOptions),
    Replay(ReplayOptions),
}

struct ReplayOptions {
    updates: i64,
    bin: Option<PathBuf>,
}

struct FanoutOptions {
    clients: usize,
    rate: f64,
    seconds: u64,
    warmup: u64,
    concurrency: usize,
    bin: Option<PathBuf>,
}

struct IdleOptions {
    seconds: u64,
    bin: Option<PathBuf>,
}

const USAGE: &str = "usage: fanout [--clients N] [--rate R] [--seconds S] [--warmup S] \
                     [--connect-concurrency C] [--bin PATH]\n       idle [--seconds S] [--bin PATH]\n       \
                     replay [--updates N] [--bin PATH]";

impl Mode {
    fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut args = args.filter(|a| a != "--bench").peekable();
        let idle = args.peek().is_some_and(|a| a == "idle");
        let replay = args.peek().is_some_and(|a| a == "replay");
        if args
            .peek()
            .is_some_and(|a| a == "idle" || a == "fanout" || a == "replay")
        {
            args.next();
        }
        let mut updates = 10_000;
        let mut fanout = FanoutOptions {
            clients: 1_000,
            rate: 10.0,
            seconds: 30,
            warmup: 5,
            concurrency: 100,
            bin: None,
        };
        let mut idle_seconds = 10;
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--clients" => fanout.clients = number(&flag, &value()?)?,
                "--rate" => fanout.rate = number(&flag, &value()?)?,
                "--seconds" => {
                    let seconds = number(&flag, &value()?)?;
                    fanout.seconds = seconds;
                    idle_seconds = seconds;
                }
                "--warmup" => fanout.warmup = number(&flag, &value()?)?,
                "--connect-concurrency" => fanout.concurrency = number(&flag, &value()?)?,
                "--updates" => updates = number(&flag, &value()?)?,
                "--bin" => fanout.bin = Some(PathBuf::from(value()?)),
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        if fanout.clients == 0 || fanout.concurrency == 0 || fanout.seconds == 0 || fanout.rate <= 0.0 {
            bail!("--clients, --connect-concurrency, --seconds and --rate must be above 0");
        }
        if !(100..=99_000).contains(&updates) {
            bail!("--updates must be from 100 to 99000");
        }
        Ok(if replay {
            Mode::Replay(ReplayOptions {
                updates,
                bin: fanout.bin,
            })
        } else if idle {
            Mode::Idle(IdleOptions {
                seconds: idle_seconds,
                bin: fanout.bin,
            })
        } else {
            Mode::Fanout(fanout)
        })
    }

    fn bin(&self) -> Option<&Path> {
        match self {
            Mode::Fanout(o) => o.bin.as_deref(),
            Mode::Idle(o) => o.bin.as_deref(),
            Mode::Replay(o) => o.bin.as_deref(),
        }
    }
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> anyhow::Result<T> {
    text.parse()
        .map_err(|_| anyhow::anyhow!("{flag} {text:?} is not a number\n{USAGE}"))
}

// ---- fanout ------------------------------------------------------------------

async fn fanout(o: &FanoutOptions, env: &Env, limit: u64, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    println!(
        "fanout: {} clients from {SOURCES} loopback addresses (127.0.0.2-{}), connect concurrency {}, \
         producer {} events/s, window {} s after {} s warm-up; {} cores; load average {}",
        o.clients,
        1 + SOURCES,
        o.concurrency,
        o.rate,
        o.seconds,
        o.warmup,
        cores(),
        load_average()
    );
    if (o.clients as u64) + 64 > limit {
        println!(
            "warning: {} clients need more than the open-file limit {limit}",
            o.clients
        );
    }
    cleanup.fresh.push(Fresh::new(env, "fanout"));
    let fresh = cleanup.fresh.last().context("no fresh topic and database")?;
    fresh.create(env).await?;
    let (topic, db_url) = (fresh.topic.clone(), fresh.db_url.clone());
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let common = |extra: &[(&'static str, String)]| {
        let mut vars = vec![
            ("KAFKA_BROKER", env.broker.clone()),
            ("KAFKA_TOPIC", topic.clone()),
            ("DATABASE_URL", db_url.clone()),
        ];
        vars.extend_from_slice(extra);
        vars
    };
    let consume = cleanup.spawn(env, "consume", &common(&[]))?;
    let serve = cleanup.spawn(
        env,
        "serve",
        &common(&[
            ("LISTEN_ADDR", addr.to_string()),
            ("MAX_CONNECTIONS", o.clients.max(1).to_string()),
        ]),
    )?;
    let ready = wait_ready(cleanup, addr, Duration::from_secs(120)).await?;
    eprintln!("serve ready on {addr} after {:.2} s", ready.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let serve_who = serve.to_string();
    let rss_before = status_kib(&serve_who, "VmRSS:").unwrap_or_default();
    let (db, _db_connection) = connect_db(&db_url).await?;

    // Connect.
    let load = Arc::new(Load::default());
    let started = Instant::now();
    let clients = spawn_clients(o.clients, addr, &load, o.concurrency);
    let mut shown = Instant::now();
    while !load.all_tried(o.clients) {
        if shown.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "connecting: {} connected, {} failed after {:.0} s",
                load.connected.load(Relaxed),
                load.failed.load(Relaxed),
                started.elapsed().as_secs_f64()
            );
            shown = Instant::now();
        }
        cleanup.check_alive()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = load.connected.load(Relaxed);
    eprintln!(
        "{connected} connected, {} failed in {connect_secs:.1} s",
        load.failed.load(Relaxed)
    );
    // Every connected client has its snapshot, then a moment of quiet.
    let settle = Instant::now();
    while load.snapshotted.load(Relaxed) < connected && settle.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snapshot_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = status_kib(&serve_who, "VmRSS:").unwrap_or_default();

    // Events, warm-up, window.
    let produce = cleanup.spawn(
        env,
        "produce",
        &common(&[
            ("PRODUCER_RATE", o.rate.to_string()),
            ("PRODUCER_SEED", "1".into()),
        ]),
    )?;
    let first = Instant::now();
    while load.updates.load(Relaxed) == 0 {
        cleanup.check_alive()?;
        if first.elapsed() > Duration::from_secs(60) {
            bail!("no update reached any client within 60 s of starting the producer");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_update = first.elapsed().as_secs_f64();
    eprintln!(
        "first update after {first_update:.2} s; warming up {} s",
        o.warmup
    );
    tokio::time::sleep(Duration::from_secs(o.warmup)).await;

    let newest = "SELECT count(*), coalesce(max(id), 0) FROM popularity_events";
    let start = db.query_one(newest, &[]).await?;
    let cpu_start = CpuReading::now(serve, consume, produce);
    let window = Instant::now();
    load.phase.store(MEASURING, Relaxed);
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    load.phase.store(DONE, Relaxed);
    let secs = window.elapsed().as_secs_f64();
    let cpu_end = CpuReading::now(serve, consume, produce);
    let end = db.query_one(newest, &[]).await?;
    let rss_end = status_kib(&serve_who, "VmRSS:").unwrap_or_default();
    let hwm = status_kib(&serve_who, "VmHWM:").unwrap_or_default();
    let load_end = load_average();
    cleanup.check_alive()?;
    let stored = stored_latency(&db, start.get(1), end.get(1)).await?;
    // No new events; the window's last updates still reach their last clients.
    let closed = Instant::now();
    cleanup.stop("produce", Duration::from_secs(10)).await;
    let drain = drained(&load, closed).await;
    let fanned = fan_out(&db, &load.arrivals, connected, start.get(1), end.get(1)).await?;
    // Clients leave before the server stops, as browsers would.
    drop(clients);

    let report = Report {
        clients: o.clients,
        rate: o.rate,
        connected,
        failed: load.failed.load(Relaxed),
        connect_secs,
        snapshot_secs,
        first_update,
        secs,
        updates: (end.get::<_, i64>(0) - start.get::<_, i64>(0)).max(0) as u64,
        stored,
        fanned,
        drain,
        cpu_start,
        cpu_end,
        rss_before,
        rss_connected,
        rss_end,
        hwm,
        load_end,
    };
    report.print(&load);

    // The floor, with the same clients and frames, once serve's clients are gone.
    let floor = floor::floor(o.clients, o.rate, FLOOR_SECONDS, o.concurrency).await?;
    floor.print(report.us_per_message(&load));
    Ok(())
}

/// How long the floor writes.
const FLOOR_SECONDS: u64 = 10;

// ---- idle --------------------------------------------------------------------

async fn idle(o: &IdleOptions, env: &Env, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    println!(
        "idle: `catlog-live all`, default settings, a fresh topic and database per case; \
         load average {}",
        load_average()
    );
    let mut rows = Vec::new();
    for (label, events) in [("no events", false), ("1 event/s", true)] {
        // `all` creates its topic and database itself: that is part of its start.
        let fresh = Fresh::new(env, if events { "busy" } else { "idle" });
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut vars = vec![
            ("KAFKA_BROKER", env.broker.clone()),
            ("KAFKA_TOPIC", fresh.topic.clone()),
            ("DATABASE_URL", fresh.db_url.clone()),
            ("LISTEN_ADDR", addr.to_string()),
        ];
        if !events {
            // The producer stops at once; consume and serve run on.
            vars.push(("PRODUCER_MAX_EVENTS", "0".into()));
        }
        let db_url = fresh.db_url.clone();
        cleanup.fresh.push(fresh);
        let pid = cleanup.spawn(env, "all", &vars)?;
        let who = pid.to_string();
        let ready = wait_ready(cleanup, addr, Duration::from_secs(120)).await?;
        let rss_ready = status_kib(&who, "VmRSS:").unwrap_or_default();
        let cpu_ready = cpu_seconds(&who).unwrap_or_default();
        tokio::time::sleep(Duration::from_secs(o.seconds)).await;
        cleanup.check_alive()?;
        let rss = status_kib(&who, "VmRSS:").unwrap_or_default();
        let hwm = status_kib(&who, "VmHWM:").unwrap_or_default();
        let cpu = cpu_seconds(&who).unwrap_or_default() - cpu_ready;
        let history: i64 = match connect_db(&db_url).await {
            Ok((db, _connection)) => db
                .query_one("SELECT count(*) FROM popularity_events", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or(-1),
            Err(_) => -1,
        };
        println!(
            "{label:<10} ready (GET /readyz 200) {:.2} s after spawn; RSS {rss_ready} KiB at ready, \
             {rss} KiB after {} s (peak {hwm} KiB); CPU {:.1} % of a core over those {} s; {history} history rows",
            ready.as_secs_f64(),
            o.seconds,
            100.0 * cpu / o.seconds as f64,
            o.seconds
        );
        rows.push(format!(
            "| {label} | {:.2} | {rss_ready} | {rss} | {hwm} | {:.1} |",
            ready.as_secs_f64(),
            100.0 * cpu / o.seconds as f64
        ));
        cleanup.stop("all", Duration::from_secs(15)).await;
        if let Some(fresh) = cleanup.fresh.pop() {
            fresh.remove(env).await;
        }
    }
    println!("load average  {} (at the end)", load_average());
    println!();
    println!(
        "| all, {} s | ready s | RSS KiB at ready | RSS KiB after | peak KiB | CPU % |",
        o.seconds
    );
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

// ---- replay --------------------------------------------------------------------

/// One client connecting to `addr`: with `last_id`, until `resumed` (the
/// updates replayed); without, until its `snapshot`. Time taken and updates.
async fn connect_once(addr: SocketAddr, last_id: Option<i64>) -> anyhow::Result<(Duration, u64)> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let url = match last_id {
        Some(id) => format!("ws://{addr}/ws?lastId={id}"),
        None => format!("ws://{addr}/ws"),
    };
    let started = std::time::Instant::now();
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
    let mut updates = 0u64;
    let mut last = last_id.unwrap_or(0);
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .context("no answer for 60 s")?
            .context("closed")??;
        let Message::Text(text) = message else { continue };
        let value: serde_json::Value = serde_json::from_str(&text)?;
        match value["type"].as_str() {
            Some("update") => {
                let id = value["id"].as_i64().unwrap_or_default();
                anyhow::ensure!(id > last, "update {id} after {last}: not in order");
                last = id;
                updates += 1;
            }
            Some("resumed") if last_id.is_some() => return Ok((started.elapsed(), updates)),
            Some("snapshot") if last_id.is_none() => return Ok((started.elapsed(), updates)),
            Some("resync") => bail!("resync: {text}"),
            _ => {}
        }
    }
}

/// Replay: `all` fills a history, then one client at a time connects with
/// `?lastId=` N updates back, against a fresh connect (a snapshot) and a
/// short replay in the same run: time to `resumed`, and the server's CPU.
async fn replay(o: &ReplayOptions, env: &Env, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    // CPU time is read in clock ticks (10 ms): the mean over many connects.
    const REPEATS: usize = 20;
    let total = o.updates + 200;
    println!(
        "replay: `catlog-live all` fills {total} history rows, then one client at a time, {REPEATS} times each; \
         {} cores; load average {}",
        cores(),
        load_average()
    );
    let fresh = Fresh::new(env, "replay");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let vars = vec![
        ("KAFKA_BROKER", env.broker.clone()),
        ("KAFKA_TOPIC", fresh.topic.clone()),
        ("DATABASE_URL", fresh.db_url.clone()),
        ("LISTEN_ADDR", addr.to_string()),
        ("PRODUCER_RATE", "3000".into()),
        ("PRODUCER_MAX_EVENTS", total.to_string()),
        ("RESUME_MAX_UPDATES", (o.updates + 100).to_string()),
    ];
    let db_url = fresh.db_url.clone();
    cleanup.fresh.push(fresh);
    let pid = cleanup.spawn(env, "all", &vars)?;
    let who = pid.to_string();
    wait_ready(cleanup, addr, Duration::from_secs(120)).await?;
    let (db, _connection) = connect_db(&db_url).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let newest: i64 = loop {
        let row = db
            .query_one(
                "SELECT count(*), coalesce(max(id), 0) FROM popularity_events",
                &[],
            )
            .await?;
        if row.get::<_, i64>(0) >= total {
            break row.get(1);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the history did not fill in 5 minutes"
        );
        cleanup.check_alive()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Let the server's follower settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cases: [(String, Option<i64>); 3] = [
        ("fresh connect (snapshot)".into(), None),
        ("replay 100".into(), Some(newest - 100)),
        (format!("replay {}", o.updates), Some(newest - o.updates)),
    ];
    println!();
    println!("| connect | updates | median ms | slowest ms | server CPU ms (mean) | µs CPU per update |");
    println!("|---|---|---|---|---|---|");
    for (label, last_id) in cases {
        let mut times = Vec::new();
        let mut cpus = Vec::new();
        let mut updates = 0;
        for _ in 0..REPEATS {
            let before = cpu_seconds(&who).unwrap_or_default();
            let (took, n) = connect_once(addr, last_id).await?;
            // The server's share of a socket's end is small; let it finish.
            tokio::time::sleep(Duration::from_millis(200)).await;
            cpus.push(cpu_seconds(&who).unwrap_or_default() - before);
            times.push(took);
            updates = n;
        }
        times.sort();
        let cpu_ms = 1000.0 * cpus.iter().sum::<f64>() / REPEATS as f64;
        println!(
            "| {label} | {updates} | {:.1} | {:.1} | {cpu_ms:.1} | {} |",
            times[REPEATS / 2].as_secs_f64() * 1000.0,
            times[REPEATS - 1].as_secs_f64() * 1000.0,
            if updates > 0 {
                format!("{:.1}", 1000.0 * cpu_ms / updates as f64)
            } else {
                "—".into()
            }
        );
    }
    println!(
        "(CPU is the whole `all` process, whose producer has stopped: the consumer and the server idle otherwise)"
    );
    cleanup.stop("all", Duration::from_secs(15)).await;
    Ok(())
}
