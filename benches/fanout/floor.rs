//! The floor under `serve`, measured in the same run: the same load client
//! and update frames of the same shape, sent by the plainest server there
//! is — one thread writing each frame to every socket with a blocking
//! write, no runtime, no tasks, no channel, no reading. What that thread
//! spends per message is what the kernel asks on this machine for one
//! write to one loopback socket (and, since loopback delivers in the
//! sender's context, for the client's receive): a server that makes one
//! write per message per client does not go below it here.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use catlog_live::event::{Event, Measure};
use catlog_live::serve::live::frame::Frame;
use catlog_live::serve::models::{ServerMessage, Update};
use chrono::Utc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::task::AbortOnDropHandle;

use crate::client::{DONE, Load, MEASURING, spawn_clients};

/// What the floor measured.
pub(crate) struct Floor {
    /// Clients connected (of those asked for).
    pub(crate) clients: usize,
    pub(crate) secs: f64,
    /// Frames written (clients × rounds).
    pub(crate) written: u64,
    /// CPU time of the writing thread.
    pub(crate) cpu_secs: f64,
    pub(crate) load: Arc<Load>,
}

impl Floor {
    pub(crate) fn us_per_message(&self) -> f64 {
        1e6 * self.cpu_secs / self.written.max(1) as f64
    }

    pub(crate) fn print(&self, serve_us: f64) {
        let quantile = |q| {
            self.load
                .latency
                .quantile_ms(q)
                .map_or_else(|| "-".to_owned(), |ms| ms.to_string())
        };
        let floor = self.us_per_message();
        let failed = self.load.failed.load(Relaxed);
        if failed > 0 {
            println!("floor         {failed} clients failed to connect to the floor:");
            let errors = self.load.errors.lock().unwrap_or_else(|p| p.into_inner());
            for (error, n) in errors.iter().take(5) {
                println!("  {n:>6} × {error}");
            }
        }
        println!(
            "floor         the plainest server (one thread, one blocking write per message, no runtime) \
             to the same {} clients for {:.0} s: {} messages, {:.2} µs of its CPU per message; \
             latency from its stamp p50 {} ms, p99 {} ms; serve's {serve_us:.2} µs is {:.2} × the floor, \
             {:.2} µs above it",
            self.clients,
            self.secs,
            self.written,
            floor,
            quantile(0.50),
            quantile(0.99),
            serve_us / floor,
            serve_us - floor
        );
    }
}

/// The CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if done != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Answers one WebSocket upgrade on `stream`, by hand; the stream, made
/// blocking, for the writing thread.
async fn accept(mut stream: tokio::net::TcpStream) -> std::io::Result<TcpStream> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let key = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .ok_or_else(|| std::io::Error::other("no Sec-WebSocket-Key"))?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    stream.set_nodelay(true)?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// An `update` as `serve` encodes one (its own message type and frame
/// encoder), stamped now.
fn update(id: u64) -> Frame {
    Frame::json(&ServerMessage::Update(Update {
        id: id as i64,
        event_id: Some(uuid::Uuid::now_v7()),
        event: Event {
            mal_id: 5114,
            title: "Fullmetal Alchemist: Brotherhood".into(),
            measure: Measure::Members(3_412_881),
            popularity_change: "+812".into(),
            timestamp: Utc::now(),
        },
    }))
}

/// The argument that makes this program the floor's writer.
pub(crate) const WRITER: &str = "floor-writer";

/// Connects `clients` load clients to a bare writer (this program again, a
/// process of its own as `serve` is) and has it send them `rate` updates a
/// second for `seconds`.
pub(crate) async fn floor(
    clients: usize,
    rate: f64,
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<Floor> {
    let exe = std::env::current_exe().context("floor: this program's path")?;
    let mut writer = tokio::process::Command::new(exe)
        .args([WRITER, &rate.to_string(), &seconds.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("floor: starting the writer")?;
    let mut input = writer.stdin.take().context("floor: the writer's input")?;
    let mut output = BufReader::new(writer.stdout.take().context("floor: the writer's output")?).lines();
    let listening = output.next_line().await?.unwrap_or_default();
    let addr: SocketAddr = listening
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("floor: the writer said {listening:?}"))?;

    let load = Arc::new(Load::default());
    let tasks = spawn_clients(clients, addr, &load, concurrency);
    let started = Instant::now();
    while !load.all_tried(clients) {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("floor: clients not connected within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = load.connected.load(Relaxed);
    load.phase.store(MEASURING, Relaxed);
    input.write_all(format!("go {connected}\n").as_bytes()).await?;
    let done = output.next_line().await?.unwrap_or_default();
    let figures: Vec<u64> = done
        .strip_prefix("done ")
        .map(|rest| rest.split(' ').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let [written, cpu_ns, elapsed_ns] = figures[..] else {
        bail!("floor: the writer said {done:?}");
    };
    // The last round's frames still reach their clients.
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.phase.store(DONE, Relaxed);
    drop(tasks);
    drop(input);
    let _ = writer.wait().await;
    Ok(Floor {
        clients: connected,
        secs: elapsed_ns as f64 / 1e9,
        written,
        cpu_secs: cpu_ns as f64 / 1e9,
        load,
    })
}

/// The writer process: `floor-writer RATE SECONDS`. Prints `listening ADDR`,
/// takes WebSocket handshakes until the parent says `go N` and N are done,
/// writes, and prints `done WRITTEN CPU_NS ELAPSED_NS`.
pub(crate) async fn writer(args: &[String]) -> anyhow::Result<()> {
    let [rate, seconds] = args else {
        bail!("usage: {WRITER} RATE SECONDS");
    };
    let rate: f64 = rate.parse().context("RATE")?;
    let seconds: f64 = seconds.parse().context("SECONDS")?;
    // tokio's listener: a backlog of 1,024, and handshakes side by side.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let accepting = {
        let accepted = Arc::clone(&accepted);
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut handshakes = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((stream, _)) = listener.accept() => {
                        let accepted = Arc::clone(&accepted);
                        handshakes.spawn(async move {
                            if let Ok(stream) = accept(stream).await {
                                accepted.lock().unwrap_or_else(|p| p.into_inner()).push(stream);
                            }
                        });
                    }
                    Some(_) = handshakes.join_next() => {}
                }
            }
        }))
    };
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let go = input.next_line().await?.unwrap_or_default();
    let expected: usize = go
        .strip_prefix("go ")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("expected `go N`, read {go:?}"))?;
    let waiting = Instant::now();
    while accepted.lock().unwrap_or_else(|p| p.into_inner()).len() < expected {
        if waiting.elapsed() > Duration::from_secs(60) {
            bail!("{expected} clients connected, but fewer handshakes were done here within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(accepting);
    let streams = std::mem::take(&mut *accepted.lock().unwrap_or_else(|p| p.into_inner()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let rounds = (rate * seconds).round().max(1.0) as u64;
    type Written = (Vec<TcpStream>, u64, Duration, Duration);
    let writing = std::thread::spawn(move || -> std::io::Result<Written> {
        let mut streams = streams;
        let cpu = thread_cpu();
        let started = Instant::now();
        let mut written = 0;
        for round in 1..=rounds {
            let frame = update(round);
            for stream in &mut streams {
                stream.write_all(frame.bytes())?;
                written += 1;
            }
            let next = Duration::from_secs_f64(round as f64 / rate);
            if let Some(wait) = next.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let (cpu, elapsed) = (thread_cpu() - cpu, started.elapsed());
        Ok((streams, written, cpu, elapsed))
    });
    let (streams, written, cpu, elapsed) = tokio::task::spawn_blocking(move || writing.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the writing thread panicked"))??;
    println!("done {written} {} {}", cpu.as_nanos(), elapsed.as_nanos());
    // The sockets stay open until the parent is done reading.
    let _ = input.next_line().await;
    drop(streams);
    Ok(())
}
