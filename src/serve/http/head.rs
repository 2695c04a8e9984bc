//! Every request head, read and checked before hyper and warp see it.
//!
//! hyper answers a head it cannot parse (or one over its limits) itself,
//! with an empty body, and warp 0.4 panics on a request target that has no
//! path (`GET example.com:80`, `CONNECT host:22`). So the connection's bytes
//! pass through [`Guarded`] first: it finds the end of each request head,
//! parses it with `httparse` (the parser hyper uses, with hyper's
//! strictness), and checks the target, the limits and the body framing. A
//! head that fails is never handed on: in its place the server reads a
//! request of our own that carries the refusal ([`REFUSAL_HEADER`], signed
//! with a secret of this process, `Connection: close`), which the routes
//! answer with the JSON error (`{"error": …}`: 400, 405, 413, 414 or 431).
//! So the refusal comes in order after the answers to the requests before
//! it, and the connection closes. A head that passes is handed to hyper
//! unchanged, then its body (by `Content-Length`); after an `Upgrade`
//! request the bytes pass as they come (the WebSocket).

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, ready};

use base64::Engine;

use crate::metrics::names;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Limits on a request head; more gets a JSON error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most header fields (`HTTP_MAX_HEADERS`): more gets 431.
    pub max_headers: usize,
    /// Most bytes of header fields (`HTTP_MAX_HEADER_BYTES`): more gets 431.
    pub max_header_bytes: usize,
    /// Longest request target, path and query (`HTTP_MAX_URL_BYTES`): longer gets 414.
    pub max_url_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_headers: 100,
            max_header_bytes: 16 * 1024,
            max_url_bytes: 8 * 1024,
        }
    }
}

/// Most bytes of a request body (no route takes one): more gets 413.
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// Bytes read from the socket at a time while heads are checked.
const READ_CHUNK: usize = 4096;

/// The header of the request that stands in for a refused one.
pub const REFUSAL_HEADER: &str = "x-catlog-refusal";

/// This process's secret in [`REFUSAL_HEADER`], so a client cannot send one.
static SECRET: LazyLock<String> = LazyLock::new(|| format!("{:032x}", rand::random::<u128>()));

/// The refusal a [`REFUSAL_HEADER`] value carries, if it is one of ours.
pub fn refusal_in(value: &str) -> Option<Refusal> {
    let mut parts = value.split(' ');
    let (secret, status, message) = (parts.next()?, parts.next()?, parts.next()?);
    if secret != SECRET.as_str() {
        return None;
    }
    let message = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(message)
        .ok()?;
    Some(Refusal {
        status: status.parse().ok()?,
        message: String::from_utf8(message).ok()?,
    })
}

/// Why a head is refused: the status and what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// The request the server reads in place of the refused one (a path no
    /// route but the refusal's answers).
    fn stand_in(&self) -> Vec<u8> {
        let message = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&self.message);
        format!(
            "GET /.refused HTTP/1.1\r\nhost: refused\r\nconnection: close\r\n{REFUSAL_HEADER}: {} {} {message}\r\n\r\n",
            SECRET.as_str(),
            self.status
        )
        .into_bytes()
    }
}

/// What a checked head says of the bytes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed {
    /// Bytes of the head, as the parser counts them.
    pub length: usize,
    /// Body bytes that follow the head.
    pub body: u64,
    /// The client asks to switch protocols: the rest is not HTTP/1.
    pub upgrade: bool,
}

/// Checks the request head at the start of `head` (through its blank line).
pub fn check(head: &[u8], limits: &HeadLimits) -> Result<Passed, Refusal> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut request = httparse::Request::new(&mut fields);
    let parsed = match request.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(Refusal::new(400, "the request head is incomplete")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                format!(
                    "more than {} header fields (HTTP_MAX_HEADERS)",
                    limits.max_headers
                ),
            ));
        }
        Err(error) => {
            return Err(Refusal::new(
                400,
                format!("malformed request head ({error}): this server speaks HTTP/1.1"),
            ));
        }
    };
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    if target.len() > limits.max_url_bytes {
        return Err(Refusal::new(
            414,
            format!(
                "the request target is {} bytes, over the {}-byte limit (HTTP_MAX_URL_BYTES)",
                target.len(),
                limits.max_url_bytes
            ),
        ));
    }
    let header_bytes: usize = request
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(Refusal::new(
            431,
            format!(
                "the request headers are {header_bytes} bytes, over the {}-byte limit (HTTP_MAX_HEADER_BYTES)",
                limits.max_header_bytes
            ),
        ));
    }
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Refusal::new(
            405,
            "CONNECT is not served: this server answers GET and HEAD",
        ));
    }
    if !has_path(target) {
        return Err(Refusal::new(
            400,
            format!("the request target {target:?} is not a path: ask for one such as /api/live/stats"),
        ));
    }
    let headers = &*request.headers;
    let named = |name: &'static str| headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
    if named(REFUSAL_HEADER).next().is_some() {
        return Err(Refusal::new(
            400,
            format!("{REFUSAL_HEADER} is not a header a client sends"),
        ));
    }
    if named("transfer-encoding").next().is_some() {
        return Err(Refusal::new(
            400,
            "Transfer-Encoding is not accepted: no route here takes a request body",
        ));
    }
    let mut body = None;
    for field in named("content-length") {
        let length = std::str::from_utf8(field.value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Refusal::new(400, "Content-Length must be a number of bytes"))?;
        if body.is_some_and(|b| b != length) {
            return Err(Refusal::new(400, "two different Content-Length fields"));
        }
        body = Some(length);
    }
    let body = body.unwrap_or(0);
    if body > MAX_BODY_BYTES {
        return Err(Refusal::new(
            413,
            format!("a request body of {body} bytes: no route here takes one over {MAX_BODY_BYTES}"),
        ));
    }
    Ok(Passed {
        length: parsed,
        body,
        upgrade: named("upgrade").next().is_some(),
    })
}

/// Whether a request target has a path: origin form (`/…`), asterisk form
/// (`*`), or absolute form with a path after the authority.
fn has_path(target: &str) -> bool {
    if target.starts_with('/') || target == "*" {
        return true;
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return false;
    };
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "http" | "https" | "ws" | "wss"
    ) && rest.contains('/')
}

/// Where the head ends (the index after its blank line), if it has.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = bytes[at..].iter().position(|&b| b == b'\n') {
        let line_end = at + i;
        // A blank line: "\n\n" or "\n\r\n", skipping the blank lines that
        // may come before a request.
        let next = &bytes[line_end + 1..];
        let blank = if next.starts_with(b"\n") {
            Some(line_end + 2)
        } else if next.starts_with(b"\r\n") {
            Some(line_end + 3)
        } else {
            None
        };
        if let Some(end) = blank
            && bytes[..line_end].iter().any(|b| !b.is_ascii_whitespace())
        {
            return Some(end);
        }
        at = line_end + 1;
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the next request head.
    Head,
    /// Passing this many body bytes.
    Body(u64),
    /// After an upgrade: everything passes.
    Through,
    /// A head was refused: nothing more is read.
    Refused,
}

/// A connection whose request heads are checked before the server reads
/// them (see the module's documentation).
pub struct Guarded<S> {
    inner: S,
    limits: HeadLimits,
    state: State,
    /// Read from the socket, not yet checked.
    incoming: Vec<u8>,
    /// Checked, for the server to read.
    ready: Vec<u8>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, limits: HeadLimits) -> Self {
        Self {
            inner,
            limits,
            state: State::Head,
            incoming: Vec::new(),
            ready: Vec::new(),
        }
    }

    /// Most bytes a head may take before its end is seen.
    fn head_limit(&self) -> usize {
        self.limits.max_url_bytes + self.limits.max_header_bytes + 1024
    }

    /// Moves what `incoming` holds into `ready` as far as the checks allow.
    fn advance(&mut self) {
        loop {
            match self.state {
                State::Head => {
                    let Some(end) = head_end(&self.incoming) else {
                        if self.incoming.len() > self.head_limit() {
                            // Still in the request line: the target is too long.
                            let refusal = if self.incoming.contains(&b'\n') {
                                Refusal::new(
                                    431,
                                    format!(
                                        "the request head is over {} bytes (HTTP_MAX_HEADER_BYTES)",
                                        self.head_limit()
                                    ),
                                )
                            } else {
                                Refusal::new(
                                    414,
                                    format!(
                                        "the request target is over the {}-byte limit (HTTP_MAX_URL_BYTES)",
                                        self.limits.max_url_bytes
                                    ),
                                )
                            };
                            self.refuse(refusal);
                        }
                        return;
                    };
                    match check(&self.incoming[..end], &self.limits) {
                        Ok(passed) => {
                            // What the server will take as this head, not
                            // less: the next check starts right after it.
                            self.ready.extend(self.incoming.drain(..passed.length.min(end)));
                            self.state = if passed.upgrade {
                                State::Through
                            } else if passed.body > 0 {
                                State::Body(passed.body)
                            } else {
                                State::Head
                            };
                        }
                        Err(refusal) => {
                            self.refuse(refusal);
                            return;
                        }
                    }
                }
                State::Body(left) => {
                    let n = (left.min(self.incoming.len() as u64)) as usize;
                    self.ready.extend(self.incoming.drain(..n));
                    if n as u64 == left {
                        self.state = State::Head;
                    } else {
                        self.state = State::Body(left - n as u64);
                        return;
                    }
                }
                State::Through => {
                    self.ready.append(&mut self.incoming);
                    // A WebSocket lives long: keep no buffer for it.
                    self.incoming = Vec::new();
                    return;
                }
                State::Refused => {
                    self.incoming.clear();
                    return;
                }
            }
        }
    }

    fn refuse(&mut self, refusal: Refusal) {
        tracing::debug!(
            status = refusal.status,
            reason = refusal.message,
            "refused a request head"
        );
        metrics::counter!(names::HTTP_REQUESTS_REFUSED_TOTAL, "status" => refusal.status.to_string())
            .increment(1);
        self.state = State::Refused;
        self.incoming = Vec::new();
        self.ready.extend(refusal.stand_in());
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(out.remaining());
                out.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                if this.ready.is_empty() && this.state == State::Through {
                    this.ready = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                // After the stand-in (`Connection: close`) nothing more
                // comes: not even the end of the stream, which would make
                // the server drop the connection before it answers.
                State::Refused => return Poll::Pending,
                State::Through => return Pin::new(&mut this.inner).poll_read(cx, out),
                State::Head | State::Body(_) => {}
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                // The client closed; an unfinished head goes nowhere.
                return Poll::Ready(Ok(()));
            }
            this.incoming.extend_from_slice(buf.filled());
            this.advance();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &str) -> Result<Passed, u16> {
        check(head.as_bytes(), &HeadLimits::default()).map_err(|r| r.status)
    }

    #[test]
    fn good_heads_pass_with_their_body_and_upgrade() {
        let passed = |head: &str, body, upgrade| {
            Ok(Passed {
                length: head.len(),
                body,
                upgrade,
            })
        };
        let get = "GET /api/live/stats HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(status(get), passed(get, 0, false));
        let absolute = "GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(status(absolute), passed(absolute, 0, false));
        let post = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(status(post), passed(post, 5, false));
        let ws = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(status(ws), passed(ws, 0, true));
        assert!(status("OPTIONS * HTTP/1.1\r\n\r\n").is_ok());
    }

    #[test]
    fn targets_without_a_path_are_refused_not_handed_on() {
        assert_eq!(status("GET example.com:80 HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status("CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(status("GET http://example.com HTTP/1.1\r\n\r\n"), Err(400));
    }

    #[test]
    fn malformed_and_oversized_heads_get_their_status() {
        assert_eq!(status("GET / HTTP/1.1x\r\n\r\n"), Err(400));
        assert_eq!(status("GET / HTTP/2.0\r\n\r\n"), Err(400));
        assert_eq!(status("GET /\r\n\r\n"), Err(400));
        assert_eq!(status("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), Err(400));
        assert_eq!(status("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"), Err(400));
        assert_eq!(status("GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n"), Err(400));
        assert_eq!(
            status("GET / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(400)
        );
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Err(431));
        let big = "a".repeat(17 * 1024);
        assert_eq!(status(&format!("GET / HTTP/1.1\r\nX: {big}\r\n\r\n")), Err(431));
        let long = "a".repeat(9 * 1024);
        assert_eq!(status(&format!("GET /{long} HTTP/1.1\r\n\r\n")), Err(414));
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"),
            Err(413)
        );
    }

    #[test]
    fn the_end_of_a_head_is_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nA: b\n\nrest"), Some(21));
        assert_eq!(head_end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(22));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn a_refusal_travels_in_its_stand_in_and_only_ours_is_believed() {
        let refusal = Refusal::new(431, "too big: \"quoted\" and ünïcode");
        let stand_in = String::from_utf8(refusal.stand_in()).unwrap();
        assert_eq!(
            check(stand_in.as_bytes(), &HeadLimits::default()).map_err(|r| r.status),
            Err(400),
            "a client cannot send the stand-in itself"
        );
        let value = stand_in
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{REFUSAL_HEADER}: ")))
            .unwrap();
        assert_eq!(refusal_in(value), Some(refusal));
        assert_eq!(refusal_in("0000 431 dGVzdA"), None);
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_refused_head_reads_as_its_stand_in() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut guarded = Guarded::new(server, HeadLimits::default());
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET example.com:80 HTTP/1.1\r\n\r\nmore")
            .await
            .unwrap();
        drop(client);
        let mut seen = vec![0; 4096];
        let mut n = 0;
        while let Ok(Ok(read)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            guarded.read(&mut seen[n..]),
        )
        .await
        {
            n += read;
        }
        let seen = String::from_utf8(seen[..n].to_vec()).unwrap();
        assert!(
            seen.starts_with(
                "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /.refused HTTP/1.1\r\nhost: refused\r\n"
            ),
            "{seen}"
        );
        assert!(!seen.contains("example.com") && !seen.contains("more"), "{seen}");
    }
}
