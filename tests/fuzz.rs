//! Fuzzing on stable Rust, for a bounded time: inputs grown by mutation
//! from the corpus in `fuzz/corpus/<target>/` (the hostile cases found so
//! far, and good inputs), fed to what reads network input — the request
//! head check and the connection that applies it, the WebSocket client
//! message parser, the event validator. A panic is a failure that names the
//! input and saves it under `target/fuzz-crashes/`.
//!
//! ```sh
//! cargo test --test fuzz -- --nocapture                                   # CI: a few seconds per target
//! CATLOG_FUZZ_SECONDS=600 cargo test --release --test fuzz -- --nocapture  # a long run
//! ```

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use catlog_live::serve::http::head::{Guarded, HeadLimits, check};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes that matter to the parsers, spliced in by the mutator.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b":",
    b" ",
    b"\t",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"GET ",
    b"HEAD ",
    b"CONNECT ",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"x-catlog-refusal: ",
    b"\0",
    b"\x7f",
    b"\xff",
    b"/",
    b"*",
    b"http://",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\u0000",
    b"-1",
    b"99999999999999999999",
    b"1e308",
    b"null",
    b"\"type\":",
    b"\"malId\":",
    b"\"lastId\":",
    b"\"subscribe\"",
    b"\"resume\"",
    b"\"currentScore\":",
    b"\"eventType\":",
];

fn seconds() -> f64 {
    std::env::var("CATLOG_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no corpus at {}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(!inputs.is_empty(), "an empty corpus at {}", dir.display());
    inputs.sort();
    inputs
}

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..rng.random_range(1..=8) {
        let len = input.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..=len);
                input.insert(i, rng.random());
            }
            2 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                input.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 256));
                let copy = input[a..b].to_vec();
                let at = rng.random_range(0..=input.len());
                input.splice(at..at, copy);
            }
            4 | 5 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                let at = rng.random_range(0..=len);
                input.splice(at..at, token.iter().copied());
            }
            _ => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                if !other.is_empty() {
                    let a = rng.random_range(0..other.len());
                    let at = rng.random_range(0..=len);
                    input.splice(at..at, other[a..].iter().copied());
                }
            }
        }
    }
    input.truncate(256 * 1024);
}

/// Runs `target` on mutated inputs for the configured time; fails on a panic.
fn fuzz(name: &str, target: impl Fn(&[u8])) {
    let corpus = corpus(name);
    let seed = rand::random::<u64>();
    let mut rng = StdRng::seed_from_u64(seed);
    let budget = Duration::from_secs_f64(seconds());
    let started = Instant::now();
    let mut runs = 0u64;
    // Every corpus entry as it is, then mutations.
    let mut queue: Vec<Vec<u8>> = corpus.clone();
    while !queue.is_empty() || started.elapsed() < budget {
        let input = queue.pop().unwrap_or_else(|| {
            let mut input = corpus[rng.random_range(0..corpus.len())].clone();
            mutate(&mut rng, &mut input, &corpus);
            input
        });
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/fuzz-crashes")
                .join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("crash-{seed}-{runs}"));
            std::fs::write(&path, &input).unwrap();
            panic!(
                "{name}: a panic on {:?} (saved as {}; add it to fuzz/corpus/{name}/ once fixed)",
                String::from_utf8_lossy(&input[..input.len().min(200)]),
                path.display()
            );
        }
        runs += 1;
    }
    eprintln!(
        "fuzz {name}: {runs} runs in {:.1} s ({:.0}/s), seed {seed}, corpus {}, no panic",
        started.elapsed().as_secs_f64(),
        runs as f64 / started.elapsed().as_secs_f64(),
        corpus.len()
    );
}

/// A client that sends `input` in chunks of the given sizes, then closes;
/// what the server writes is dropped.
struct Client {
    input: Vec<u8>,
    at: usize,
    chunks: Vec<usize>,
}

impl AsyncRead for Client {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let chunk = this.chunks.pop().unwrap_or(usize::MAX);
        let n = chunk.min(out.remaining()).min(this.input.len() - this.at);
        out.put_slice(&this.input[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn fuzz_request_heads() {
    let limits = HeadLimits::default();
    fuzz("head", |input| {
        let _ = check(input, &limits);
        // The connection, fed in uneven chunks, read in small bites as the server would.
        let sizes: Vec<usize> = input.iter().take(16).map(|b| 1 + usize::from(*b) % 700).collect();
        let client = Client {
            input: input.to_vec(),
            at: 0,
            chunks: sizes,
        };
        let mut guarded = Guarded::new(client, limits);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 512];
        let mut seen = 0usize;
        loop {
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut guarded).poll_read(&mut cx, &mut read) {
                Poll::Ready(Ok(())) if !read.filled().is_empty() => seen += read.filled().len(),
                // The end, or a refusal's stand-in was read (nothing more comes).
                _ => break,
            }
            assert!(seen <= input.len() + 4096, "more out than in");
        }
    });
}

#[test]
fn fuzz_client_messages() {
    fuzz("client_message", |input| {
        let _ = serde_json::from_slice::<catlog_live::serve::models::ClientMessage>(input);
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = serde_json::from_str::<catlog_live::serve::models::ClientMessage>(text);
        }
    });
}

#[test]
fn fuzz_events() {
    fuzz("event", |input| {
        let _ = catlog_live::event::Event::from_bytes(input);
    });
}
