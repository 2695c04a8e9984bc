//! Fan-out benchmark: what one `serve` costs per WebSocket client, measured on
//! the real pipeline. `consume`, `serve` and `produce` run as separate
//! processes of the release binary on a fresh topic and a fresh database;
//! this process is the load: N WebSocket clients that time every `update`
//! from the event's own timestamp (set by the producer) to its arrival, so the
//! latency is end to end: produce → Kafka → consume → PostgreSQL → NOTIFY →
//! serve → socket → client. CPU and memory come from `/proc`, for `serve` and
//! for everything else that shares the cores, because on a small box the load
//! client competes with the server it measures.
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

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use catlog_live::shutdown::OwnedTask;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Partitions of the fresh topic (the producer's default).
const PARTITIONS: i32 = 3;
/// Loopback source addresses the clients connect from (127.0.0.2 …): each
/// has its own ephemeral port range towards the one server address.
const SOURCES: u8 = 8;
/// One connection attempt (TCP + WebSocket handshake) gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The latency histogram's resolution: the event timestamp has milliseconds.
const BUCKET_US: u64 = 1_000;
/// Latencies above this (in buckets, i.e. ms) share the last bucket.
const BUCKETS: usize = 120_000;
/// Every this many updates, a client also parses one fully to check the
/// targeted extraction.
const CHECK_EVERY: u64 = 1_000;
/// Ring slots of the per-update arrival record; the ids of one window must
/// span fewer.
const ARRIVAL_SLOTS: usize = 1 << 16;
/// Distinct connection errors printed.
const ERRORS_SHOWN: usize = 5;

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
    let mode = Mode::parse(std::env::args().skip(1))?;
    let (soft_before, limit) = raise_open_files().context("raising the open-file limit")?;
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
                     [--connect-concurrency C] [--bin PATH]\n       idle [--seconds S] [--bin PATH]";

impl Mode {
    fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut args = args.filter(|a| a != "--bench").peekable();
        let idle = args.peek().is_some_and(|a| a == "idle");
        if args.peek().is_some_and(|a| a == "idle" || a == "fanout") {
            args.next();
        }
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
                "--bin" => fanout.bin = Some(PathBuf::from(value()?)),
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        if fanout.clients == 0 || fanout.concurrency == 0 || fanout.seconds == 0 || fanout.rate <= 0.0 {
            bail!("--clients, --connect-concurrency, --seconds and --rate must be above 0");
        }
        Ok(if idle {
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
        }
    }
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> anyhow::Result<T> {
    text.parse()
        .map_err(|_| anyhow::anyhow!("{flag} {text:?} is not a number\n{USAGE}"))
}

// ---- the environment: broker, database server, binary ----------------------

struct Env {
    broker: String,
    admin_url: String,
    bin: PathBuf,
}

impl Env {
    fn from_environment(bin: Option<&Path>) -> anyhow::Result<Self> {
        let bin = match bin {
            Some(bin) => bin.to_path_buf(),
            None => default_binary()?,
        };
        if !bin.is_file() {
            bail!(
                "no binary at {}; run `cargo build --release` first or pass --bin PATH",
                bin.display()
            );
        }
        Ok(Self {
            broker: std::env::var("KAFKA_BROKER").unwrap_or_else(|_| "127.0.0.1:9092".into()),
            admin_url: std::env::var("CATLOG_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            bin,
        })
    }

    /// The URL of database `name` on the admin URL's server.
    fn database_url(&self, name: &str) -> String {
        let (base, query) = match self.admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let server = base.rsplit_once('/').map(|(server, _)| server).unwrap_or(base);
        format!("{server}/{name}{query}")
    }

    async fn admin(&self) -> anyhow::Result<(tokio_postgres::Client, OwnedTask<()>)> {
        connect_db(&self.admin_url).await
    }
}

/// The release binary beside this bench executable (target/release/deps/fanout-… →
/// target/release/catlog-live), whatever the target directory is.
fn default_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench executable has no target directory")?;
    Ok(release.join("catlog-live"))
}

async fn connect_db(url: &str) -> anyhow::Result<(tokio_postgres::Client, OwnedTask<()>)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url} (CATLOG_TEST_DATABASE_URL)"))?;
    let task = OwnedTask::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// A topic and a database of this run, removed at the end.
struct Fresh {
    topic: String,
    db_name: String,
    db_url: String,
}

impl Fresh {
    fn new(env: &Env, label: &str) -> Self {
        let suffix = format!("{}_{}_{label}", std::process::id(), Utc::now().timestamp_millis());
        let db_name = format!("catlog_bench_{suffix}");
        Self {
            topic: format!("catlog-bench-{}", suffix.replace('_', "-")),
            db_url: env.database_url(&db_name),
            db_name,
        }
    }

    async fn create(&self, env: &Env) -> anyhow::Result<()> {
        let kafka = catlog_live::kafka::connect(&catlog_live::config::KafkaArgs::plain(
            env.broker.clone(),
            self.topic.clone(),
        ))
        .await?;
        catlog_live::kafka::ensure_topic(&kafka, &self.topic, PARTITIONS).await?;
        let (admin, _connection) = env.admin().await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{}\"", self.db_name))
            .await
            .with_context(|| format!("creating database {}", self.db_name))?;
        Ok(())
    }

    /// Best effort: a leftover is reported, not fatal.
    async fn remove(&self, env: &Env) {
        let dropped = async {
            let (admin, _connection) = env.admin().await?;
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.db_name
                ))
                .await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(20), dropped).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop database {}: {error:#}", self.db_name),
            Err(_) => eprintln!("could not drop database {} within 20 s", self.db_name),
        }
        let deleted = async {
            let kafka = catlog_live::kafka::connect(&catlog_live::config::KafkaArgs::plain(
                env.broker.clone(),
                self.topic.clone(),
            ))
            .await?;
            kafka
                .controller_client()?
                .delete_topic(&self.topic, 5_000)
                .await?;
            anyhow::Ok(())
        };
        if let Ok(Err(error)) = tokio::time::timeout(Duration::from_secs(10), deleted).await {
            eprintln!("could not delete topic {}: {error:#}", self.topic);
        }
    }
}

// ---- child processes ---------------------------------------------------------

struct Child {
    name: &'static str,
    pid: u32,
    process: tokio::process::Child,
    log: PathBuf,
}

/// Everything this run started or created, undone by [`Cleanup::finish`].
#[derive(Default)]
struct Cleanup {
    children: Vec<Child>,
    fresh: Vec<Fresh>,
    logs: Option<PathBuf>,
}

impl Cleanup {
    fn log_dir(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.logs {
            return Ok(dir.clone());
        }
        let dir = std::env::temp_dir().join(format!("catlog-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        self.logs = Some(dir.clone());
        Ok(dir)
    }

    /// Starts the binary's subcommand `name` with exactly `vars` (plus PATH and HOME) in a
    /// directory of its own, so neither the caller's environment nor a `.env`
    /// changes what is measured.
    fn spawn(&mut self, env: &Env, name: &'static str, vars: &[(&str, String)]) -> anyhow::Result<u32> {
        let dir = self.log_dir()?;
        let log = dir.join(format!("{name}-{}.log", self.children.len()));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = tokio::process::Command::new(&env.bin);
        command
            .arg(name)
            .env_clear()
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        for keep in ["PATH", "HOME"] {
            if let Ok(value) = std::env::var(keep) {
                command.env(keep, value);
            }
        }
        command.env("RUST_LOG", "warn");
        for (key, value) in vars {
            command.env(key, value);
        }
        // SAFETY: prctl is async-signal-safe and touches nothing of ours. The
        // child gets SIGTERM if this process dies without cleaning up (killed).
        // It is spawned from the main future, polled on the main thread, which
        // lives as long as the process: the signal follows the parent thread.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let process = command
            .spawn()
            .with_context(|| format!("starting {} {name}", env.bin.display()))?;
        let pid = process.id().context("the child exited at once")?;
        self.children.push(Child {
            name,
            pid,
            process,
            log,
        });
        Ok(pid)
    }

    /// An error naming the first child that has exited, with its log's end.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if let Ok(Some(status)) = child.process.try_wait() {
                bail!(
                    "{} exited ({status}); its log {}:\n{}",
                    child.name,
                    child.log.display(),
                    tail(&child.log)
                );
            }
        }
        Ok(())
    }

    /// SIGTERM to the child named `name`, then SIGKILL after `grace`; prints how long it took.
    async fn stop(&mut self, name: &str, grace: Duration) {
        let Some(at) = self.children.iter().position(|c| c.name == name) else {
            return;
        };
        let mut child = self.children.remove(at);
        let started = Instant::now();
        if let Ok(pid) = i32::try_from(child.pid) {
            // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so
            // the pid cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(grace, child.process.wait()).await {
            Ok(Ok(status)) => eprintln!(
                "stopped {} in {:.1} s ({status})",
                child.name,
                started.elapsed().as_secs_f64()
            ),
            _ => {
                let _ = child.process.kill().await;
                eprintln!("{} did not stop within {} s; killed", child.name, grace.as_secs());
            }
        }
    }

    /// Stops every child (newest first), removes topics and databases, and the
    /// logs when all went well.
    async fn finish(&mut self, env: &Env, ok: bool) {
        while let Some(name) = self.children.last().map(|c| c.name) {
            self.stop(name, Duration::from_secs(15)).await;
        }
        for fresh in self.fresh.drain(..) {
            fresh.remove(env).await;
        }
        if let Some(dir) = self.logs.take() {
            if ok {
                let _ = std::fs::remove_dir_all(&dir);
            } else {
                eprintln!("child logs kept in {}", dir.display());
            }
        }
    }
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<&str> = text.lines().rev().take(15).collect();
    lines.reverse();
    lines.join("\n")
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `GET /readyz` answers 200, while the children are alive.
async fn wait_ready(cleanup: &mut Cleanup, addr: SocketAddr, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{addr}/readyz");
    loop {
        if let Ok(response) = http.get(&url).send().await
            && response.status() == reqwest::StatusCode::OK
        {
            return Ok(started.elapsed());
        }
        cleanup.check_alive()?;
        if started.elapsed() > within {
            bail!("{url} did not answer 200 within {} s", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- /proc -------------------------------------------------------------------

/// Seconds of CPU (user + system) a process has used; `who` is a pid or "self".
fn cpu_seconds(who: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`).
fn status_kib(who: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.get(key.len()..)?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Busy and total CPU seconds of the whole machine (all cores), from `/proc/stat`.
fn machine_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line.split_whitespace().filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(((total - idle) as f64 / hz, total as f64 / hz))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Raises this process's soft open-file limit to the hard one; returns (before, now).
fn raise_open_files() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let mut target = limit.rlim_max;
    if target == libc::RLIM_INFINITY {
        // "unlimited" is not a valid soft limit for files; the kernel's cap is.
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if target > before {
        limit.rlim_cur = target;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// CPU seconds of the processes that share the cores, read at one instant.
#[derive(Clone, Copy, Default)]
struct CpuReading {
    serve: f64,
    consume: f64,
    produce: f64,
    client: f64,
    machine_busy: f64,
    machine_total: f64,
}

impl CpuReading {
    fn now(serve: u32, consume: u32, produce: u32) -> Self {
        let (machine_busy, machine_total) = machine_seconds().unwrap_or_default();
        Self {
            serve: cpu_seconds(&serve.to_string()).unwrap_or_default(),
            consume: cpu_seconds(&consume.to_string()).unwrap_or_default(),
            produce: cpu_seconds(&produce.to_string()).unwrap_or_default(),
            client: cpu_seconds("self").unwrap_or_default(),
            machine_busy,
            machine_total,
        }
    }
}

// ---- the load client ---------------------------------------------------------

/// Where the run is; clients count only what arrives while `MEASURING`.
const MEASURING: u8 = 1;
const DONE: u8 = 2;

/// What all clients observed. Plain counters: on two cores a lock-free
/// increment is cheaper than per-client state merged later.
#[derive(Default)]
struct Load {
    /// 0 while warming up (the default), then `MEASURING`, then `DONE`.
    phase: AtomicU8,
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Clients that received their first snapshot.
    snapshotted: AtomicUsize,
    /// Connections that ended after they were established.
    lost: AtomicUsize,
    /// Updates received in any phase.
    updates: AtomicU64,
    /// Updates received in the window.
    delivered: AtomicU64,
    resyncs: AtomicU64,
    extra_snapshots: AtomicU64,
    /// Updates whose id was not above the previous one on the same connection.
    out_of_order: AtomicU64,
    /// Messages the targeted extraction could not read (then parsed fully).
    fallbacks: AtomicU64,
    unreadable: AtomicU64,
    checked: AtomicU64,
    mismatches: AtomicU64,
    latency: Histogram,
    arrivals: Arrivals,
    errors: Mutex<BTreeMap<String, usize>>,
}

impl Load {
    fn error(&self, text: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(text).or_default() += 1;
    }

    fn on_text(&self, text: &str, state: &mut ClientState) {
        // The clock first: everything after is the client's own cost.
        let now_us = Utc::now().timestamp_micros();
        let measuring = self.phase.load(Relaxed) == MEASURING;
        match message_type(text).as_deref() {
            Some("update") => {
                let Some((id, stamp_us)) = self.read_update(text, state) else {
                    self.unreadable.fetch_add(1, Relaxed);
                    return;
                };
                if id <= state.last_id {
                    self.out_of_order.fetch_add(1, Relaxed);
                }
                state.last_id = state.last_id.max(id);
                if self.phase.load(Relaxed) >= MEASURING {
                    self.arrivals.record(id, now_us);
                }
                self.updates.fetch_add(1, Relaxed);
                if measuring {
                    self.delivered.fetch_add(1, Relaxed);
                    self.latency.record(now_us - stamp_us);
                }
            }
            Some("snapshot") => {
                if state.snapshotted {
                    if measuring {
                        self.extra_snapshots.fetch_add(1, Relaxed);
                    }
                } else {
                    state.snapshotted = true;
                    self.snapshotted.fetch_add(1, Relaxed);
                }
            }
            Some("resync") if measuring => {
                self.resyncs.fetch_add(1, Relaxed);
            }
            Some(_) => {}
            None => {
                self.unreadable.fetch_add(1, Relaxed);
            }
        }
    }

    /// (id, event timestamp in µs) of an `update`, by targeted extraction;
    /// every [`CHECK_EVERY`]th one is also parsed fully and compared.
    fn read_update(&self, text: &str, state: &mut ClientState) -> Option<(i64, i64)> {
        state.updates += 1;
        let Some(fast) = extract_update(text) else {
            self.fallbacks.fetch_add(1, Relaxed);
            return parse_update(text);
        };
        if state.updates % CHECK_EVERY == 1 {
            self.checked.fetch_add(1, Relaxed);
            if parse_update(text) != Some(fast) {
                self.mismatches.fetch_add(1, Relaxed);
            }
        }
        Some(fast)
    }
}

#[derive(Default)]
struct ClientState {
    snapshotted: bool,
    last_id: i64,
    updates: u64,
}

/// The `type` of a server message: it is serialised first (`{"type":"…"`),
/// so it is read without parsing the rest; anything else is parsed fully.
fn message_type(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    if let Some(rest) = text.strip_prefix(r#"{"type":""#)
        && let Some(end) = rest.find('"')
    {
        return rest.get(..end).map(std::borrow::Cow::Borrowed);
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(std::borrow::Cow::Owned(value.get("type")?.as_str()?.to_owned()))
}

/// `{"type":"update","id":N,"event":{…,"timestamp":"…"}}` read in place. A
/// `"timestamp":"` can only be a key: inside a JSON string its quotes are escaped.
fn extract_update(text: &str) -> Option<(i64, i64)> {
    const ID: &str = r#"{"type":"update","id":"#;
    const STAMP: &str = r#""timestamp":""#;
    let rest = text.strip_prefix(ID)?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let id = rest.get(..digits)?.parse().ok()?;
    let from = text.rfind(STAMP)? + STAMP.len();
    let stamp = text.get(from..)?;
    let stamp = stamp.get(..stamp.find('"')?)?;
    Some((id, DateTime::parse_from_rfc3339(stamp).ok()?.timestamp_micros()))
}

/// The same by a full parse: the fallback, and the check of the extraction.
fn parse_update(text: &str) -> Option<(i64, i64)> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = value.get("id")?.as_i64()?;
    let stamp = value.get("event")?.get("timestamp")?.as_str()?;
    Some((id, DateTime::parse_from_rfc3339(stamp).ok()?.timestamp_micros()))
}

/// Latencies in 1 ms buckets (the timestamp's resolution), with an exact maximum.
struct Histogram {
    buckets: Vec<AtomicU64>,
    max_us: AtomicU64,
    /// Negative latencies (a clock step): counted, recorded as 0.
    negative: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
            negative: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn record(&self, micros: i64) {
        if micros < 0 {
            self.negative.fetch_add(1, Relaxed);
        }
        let micros = micros.max(0) as u64;
        let index = ((micros / BUCKET_US) as usize).min(BUCKETS - 1);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Relaxed);
        }
        self.max_us.fetch_max(micros, Relaxed);
    }

    /// The bucket (ms) holding quantile `q`, or `None` when empty.
    fn quantile_ms(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        None
    }
}

/// When each update id reached its first and its last client (µs), and how
/// many clients, in a ring indexed by id: how long `serve` takes to hand one
/// update to everyone, and whether everyone got it.
struct Arrivals {
    first: Vec<AtomicI64>,
    last: Vec<AtomicI64>,
    clients: Vec<AtomicU32>,
}

impl Default for Arrivals {
    fn default() -> Self {
        Self {
            first: (0..ARRIVAL_SLOTS).map(|_| AtomicI64::new(i64::MAX)).collect(),
            last: (0..ARRIVAL_SLOTS).map(|_| AtomicI64::new(i64::MIN)).collect(),
            clients: (0..ARRIVAL_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl Arrivals {
    fn slot(id: i64) -> usize {
        id.rem_euclid(ARRIVAL_SLOTS as i64) as usize
    }

    fn record(&self, id: i64, micros: i64) {
        let slot = Self::slot(id);
        if let (Some(first), Some(last), Some(clients)) =
            (self.first.get(slot), self.last.get(slot), self.clients.get(slot))
        {
            first.fetch_min(micros, Relaxed);
            last.fetch_max(micros, Relaxed);
            clients.fetch_add(1, Relaxed);
        }
    }

    /// (first, last) arrival of `id` and the clients it reached, if any.
    fn get(&self, id: i64) -> Option<(i64, i64, u32)> {
        let slot = Self::slot(id);
        let first = self.first.get(slot)?.load(Relaxed);
        let last = self.last.get(slot)?.load(Relaxed);
        let clients = self.clients.get(slot)?.load(Relaxed);
        (first != i64::MAX).then_some((first, last, clients))
    }
}

/// p50, p90 and max of `values` (ms), `None` when empty.
fn spread_of(mut values: Vec<f64>) -> [Option<f64>; 3] {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((q * values.len() as f64).ceil() as usize).max(1);
        values.get(rank - 1).copied()
    };
    [at(0.5), at(0.9), values.last().copied()]
}

/// How the updates committed in the window reached the clients.
#[derive(Default)]
struct FanOut {
    /// Updates committed in the window, and how many reached any client.
    ids: usize,
    seen: usize,
    /// Stored (`ingested_at`) → first client: p50, p90, max in ms.
    to_first: [Option<f64>; 3],
    /// First → last client: p50, p90, max in ms.
    spread: [Option<f64>; 3],
    /// Deliveries ÷ (clients × updates), in %.
    reached: f64,
}

/// The window's updates (ids in `(after, up_to]`) as the clients saw them.
async fn fan_out(
    db: &tokio_postgres::Client,
    arrivals: &Arrivals,
    clients: usize,
    after: i64,
    up_to: i64,
) -> anyhow::Result<FanOut> {
    if up_to - after >= ARRIVAL_SLOTS as i64 {
        return Ok(FanOut::default());
    }
    let rows = db
        .query(
            "SELECT id, (extract(epoch FROM ingested_at) * 1000000)::int8 FROM popularity_events \
             WHERE id > $1 AND id <= $2",
            &[&after, &up_to],
        )
        .await?;
    let ids = rows.len();
    let (mut to_first, mut spread, mut deliveries) = (Vec::new(), Vec::new(), 0u64);
    for row in rows {
        let stored: i64 = row.get(1);
        if let Some((first, last, reached)) = arrivals.get(row.get(0)) {
            to_first.push((first - stored) as f64 / 1000.0);
            spread.push((last - first) as f64 / 1000.0);
            deliveries += u64::from(reached);
        }
    }
    Ok(FanOut {
        ids,
        seen: to_first.len(),
        to_first: spread_of(to_first),
        spread: spread_of(spread),
        reached: 100.0 * deliveries as f64 / (clients * ids).max(1) as f64,
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens one connection from `source` to `target`; the error as one line.
async fn connect(source: Ipv4Addr, target: SocketAddr) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::from((source, 0)))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // A browser-sized read buffer, not tungstenite's 128 KiB: the client's
    // memory is not what is measured, but it shares the machine.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let url = format!("ws://{target}/ws");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// One client: connects (holding a permit of the connect budget), then reads
/// until the connection ends or the task is aborted.
async fn client(index: usize, target: SocketAddr, load: Arc<Load>, permits: Arc<Semaphore>) {
    let source = Ipv4Addr::new(127, 0, 0, 2 + (index % SOURCES as usize) as u8);
    let attempt = {
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect(source, target)).await
    };
    let mut ws = match attempt {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            load.error(error);
            load.failed.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            load.error(format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()));
            load.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    load.connected.fetch_add(1, Relaxed);
    let mut state = ClientState::default();
    let ended = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => load.on_text(text.as_str(), &mut state),
            Some(Ok(Message::Close(frame))) => break format!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {} // pings are answered by the next read
            Some(Err(error)) => break format!("lost: {error}"),
            None => break "lost: end of stream".to_owned(),
        }
    };
    if load.phase.load(Relaxed) != DONE {
        load.lost.fetch_add(1, Relaxed);
        load.error(ended);
    }
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
    let permits = Arc::new(Semaphore::new(o.concurrency));
    let mut clients = JoinSet::new();
    let started = Instant::now();
    for index in 0..o.clients {
        clients.spawn(client(index, addr, Arc::clone(&load), Arc::clone(&permits)));
    }
    let mut shown = Instant::now();
    while load.connected.load(Relaxed) + load.failed.load(Relaxed) < o.clients {
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
    Ok(())
}

/// Seconds from `closed` until the last update arrived (none for 1 s), at most 60.
async fn drained(load: &Load, closed: Instant) -> f64 {
    let mut seen = load.updates.load(Relaxed);
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(1) && closed.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = load.updates.load(Relaxed);
        if now != seen {
            (seen, last) = (now, Instant::now());
        }
    }
    last.duration_since(closed).as_secs_f64()
}

/// Where the end-to-end time goes: from the event's timestamp to the start of
/// the consumer's transaction that stored it (`ingested_at` is `now()` there)
/// for the rows with ids in `(after, up_to]`, in ms: p50, p90, p99, max.
async fn stored_latency(
    db: &tokio_postgres::Client,
    after: i64,
    up_to: i64,
) -> anyhow::Result<[Option<f64>; 4]> {
    let row = db
        .query_one(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), \
                    percentile_cont(0.9) WITHIN GROUP (ORDER BY ms), \
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) \
             FROM (SELECT (extract(epoch FROM ingested_at - event_time) * 1000)::float8 AS ms \
                   FROM popularity_events WHERE id > $1 AND id <= $2) AS window_rows",
            &[&after, &up_to],
        )
        .await?;
    Ok([row.get(0), row.get(1), row.get(2), row.get(3)])
}

/// The figures of one run.
struct Report {
    clients: usize,
    rate: f64,
    connected: usize,
    failed: usize,
    connect_secs: f64,
    snapshot_secs: f64,
    first_update: f64,
    secs: f64,
    updates: u64,
    /// p50, p90, p99, max of event timestamp → consumer transaction, in ms.
    stored: [Option<f64>; 4],
    fanned: FanOut,
    /// Seconds after the window until the last update arrived.
    drain: f64,
    cpu_start: CpuReading,
    cpu_end: CpuReading,
    rss_before: u64,
    rss_connected: u64,
    rss_end: u64,
    hwm: u64,
    load_end: String,
}

impl Report {
    fn print(&self, load: &Load) {
        let delivered = load.delivered.load(Relaxed);
        let per_sec = delivered as f64 / self.secs;
        let expected = self.connected as u64 * self.updates;
        let share = if expected == 0 {
            0.0
        } else {
            100.0 * delivered as f64 / expected as f64
        };
        let cpu = |f: fn(&CpuReading) -> f64| f(&self.cpu_end) - f(&self.cpu_start);
        let pct = |seconds: f64| 100.0 * seconds / self.secs;
        let serve_cpu = cpu(|c| c.serve);
        let us_per_msg = if delivered == 0 {
            f64::NAN
        } else {
            1e6 * serve_cpu / delivered as f64
        };
        let kib_per_conn = if self.connected == 0 {
            f64::NAN
        } else {
            self.rss_connected.saturating_sub(self.rss_before) as f64 / self.connected as f64
        };
        let (client, consume, produce) = (cpu(|c| c.client), cpu(|c| c.consume), cpu(|c| c.produce));
        let machine = cpu(|c| c.machine_busy);
        let machine_total = cpu(|c| c.machine_total);
        let others = (machine - serve_cpu - client - consume - produce).max(0.0);
        let quantile = |q| {
            load.latency
                .quantile_ms(q)
                .map_or_else(|| "-".to_owned(), |ms| ms.to_string())
        };
        let max_ms = load.latency.max_us.load(Relaxed) as f64 / 1000.0;
        let (p50, p90, p99) = (quantile(0.50), quantile(0.90), quantile(0.99));

        println!(
            "connections   {} connected, {} failed of {} in {:.1} s (all snapshots after {:.1} s); \
                  {} lost later",
            self.connected,
            self.failed,
            self.clients,
            self.connect_secs,
            self.snapshot_secs,
            load.lost.load(Relaxed)
        );
        let errors = load.errors.lock().unwrap_or_else(|p| p.into_inner());
        for (error, n) in errors.iter().take(ERRORS_SHOWN) {
            println!("  {n:>6} × {error}");
        }
        if errors.len() > ERRORS_SHOWN {
            println!("  … and {} other distinct errors", errors.len() - ERRORS_SHOWN);
        }
        drop(errors);
        println!(
            "window        {:.1} s, first update {:.2} s after the producer started",
            self.secs, self.first_update
        );
        println!(
            "updates       {} committed in the window ({:.1}/s)",
            self.updates,
            self.updates as f64 / self.secs
        );
        println!(
            "delivered     {delivered} messages = {per_sec:.0}/s in the window; share {share:.2} % of \
             clients × updates (messages in the window, whichever update)"
        );
        println!(
            "reached       the window's {} updates reached {:.2} % of clients × updates ({} reached \
             any client), counted until no update came for 1 s: {:.1} s after the window",
            self.fanned.ids, self.fanned.reached, self.fanned.seen, self.drain
        );
        println!(
            "coalesces     {} resync + {} snapshots after the first; {} out-of-order ids; \
                  {} unreadable",
            load.resyncs.load(Relaxed),
            load.extra_snapshots.load(Relaxed),
            load.out_of_order.load(Relaxed),
            load.unreadable.load(Relaxed)
        );
        println!(
            "latency       p50 {p50} ms, p90 {p90} ms, p99 {p99} ms, max {max_ms:.1} ms \
                  (event timestamp → client; 1 ms buckets{})",
            match load.latency.negative.load(Relaxed) {
                0 => String::new(),
                n => format!("; {n} negative, as 0"),
            }
        );
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}"));
        let [s50, s90, s99, smax] = self.stored.map(ms);
        println!(
            "  stored    p50 {s50} ms, p90 {s90} ms, p99 {s99} ms, max {smax} ms: event timestamp → the \
             consumer's transaction (ingested_at): producer, broker, fetch"
        );
        let fanned = &self.fanned;
        let [f50, f90, fmax] = fanned.to_first.map(ms);
        let [d50, d90, dmax] = fanned.spread.map(ms);
        println!(
            "  served    per update: stored → first client p50 {f50} ms, p90 {f90} ms, max {fmax} ms; \
             first → last client (the fan-out) p50 {d50} ms, p90 {d90} ms, max {dmax} ms"
        );
        println!(
            "serve CPU     {:.2} s = {:.0} % of a core; {us_per_msg:.2} µs per delivered message",
            serve_cpu,
            pct(serve_cpu)
        );
        println!(
            "serve memory  RSS {} KiB before clients, {} KiB with them, {} KiB at the end \
                  (peak {} KiB): {kib_per_conn:.1} KiB per connection",
            self.rss_before, self.rss_connected, self.rss_end, self.hwm
        );
        println!(
            "cores         serve {:.0} %, load client {:.0} %, consume {:.0} %, produce {:.0} %, \
                  everything else {:.0} % (of one core; the machine: {:.0} % busy of {} cores)",
            pct(serve_cpu),
            pct(client),
            pct(consume),
            pct(produce),
            pct(others),
            100.0 * machine / machine_total.max(1e-9),
            cores()
        );
        println!(
            "extraction    of {} updates, {} needed a full parse; {} read in place were checked \
                  by a full parse: {} mismatches",
            load.updates.load(Relaxed),
            load.fallbacks.load(Relaxed),
            load.checked.load(Relaxed),
            load.mismatches.load(Relaxed)
        );
        println!("load average  {} (at the end)", self.load_end);
        println!();
        println!(
            "| clients | rate/s | connected/failed | p50 ms | p90 ms | p99 ms | max ms | fan-out p50/max ms | \
             share / reached | coalesces | µs CPU/msg | KiB/conn | serve RSS MiB | serve % | client % | load |"
        );
        println!(
            "| {} | {} | {}/{} | {p50} | {p90} | {p99} | {max_ms:.0} | {d50}/{dmax} | {share:.1} / {:.1} % | {} | \
             {us_per_msg:.2} | {kib_per_conn:.1} | {:.0} | {:.0} | {:.0} | {} |",
            self.clients,
            self.rate,
            self.connected,
            self.failed,
            self.fanned.reached,
            load.resyncs.load(Relaxed) + load.extra_snapshots.load(Relaxed),
            self.rss_end as f64 / 1024.0,
            pct(serve_cpu),
            pct(client),
            self.load_end
        );
    }
}

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
