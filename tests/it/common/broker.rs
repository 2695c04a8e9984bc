//! A broker of the test's own, for tests that break it: a tansu process
//! (memory storage, so a restart is a new, empty cluster) behind a small
//! TCP proxy. The broker advertises the proxy's address, so every client
//! connection, bootstrap or not, passes through the proxy, and the test can
//! cut them all and let them through again.
//!
//! The tansu binary comes from `CATLOG_TEST_TANSU` (set by `scripts/test`),
//! `tansu` on `PATH`, or the copy `scripts/test` installs.

use std::collections::HashSet;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream as TokioStream};
use tokio::sync::watch;

use super::{Proc, free_port, port_answers, which};

fn tansu() -> PathBuf {
    if let Some(path) = std::env::var_os("CATLOG_TEST_TANSU") {
        return PathBuf::from(path);
    }
    let on_path = which("tansu");
    let cached = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/catlog-live/bin/tansu"))
        .filter(|p| p.is_file());
    on_path.or(cached).unwrap_or_else(|| {
        panic!(
            "no tansu binary for a broker of the test's own: run the tests with scripts/test \
             (it installs one), or set CATLOG_TEST_TANSU=/path/to/tansu"
        )
    })
}

/// A tansu broker of the test's own behind a proxy; stopped when dropped.
pub struct OwnBroker {
    /// What clients use (`KAFKA_BROKER`): the proxy's address.
    pub addr: String,
    /// The proxy in front of the broker.
    pub proxy: Proxy,
    port: u16,
    process: Option<Proc>,
}

impl OwnBroker {
    /// Starts a new, empty broker.
    pub fn start() -> Self {
        let port = free_port();
        let proxy = Proxy::kafka(port);
        let mut broker = Self {
            addr: proxy.addr.clone(),
            proxy,
            port,
            process: None,
        };
        broker.start_again();
        broker
    }

    /// SIGKILL: the broker and everything it held are gone.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_hard();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while port_answers(self.port) {
            assert!(
                Instant::now() < deadline,
                "the broker's port stays open after kill"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the broker again, empty, on the same address (killing it first if it runs).
    pub fn start_again(&mut self) {
        self.kill();
        self.process = Some(tansu_on(self.port, &self.addr));
    }
}

/// A new, empty tansu on 127.0.0.1:`port` telling clients to connect to
/// `advertised` (a proxy or front end in front of it), once it listens.
pub fn tansu_on(port: u16, advertised: &str) -> Proc {
    let mut cmd = Command::new(tansu());
    cmd.args([
        "broker",
        "--storage-engine",
        "memory://tansu/",
        "--listener-url",
        &format!("tcp://127.0.0.1:{port}"),
        "--advertised-listener-url",
        &format!("tcp://{advertised}"),
    ])
    .stdin(Stdio::null());
    let process = Proc::spawn(cmd, "tansu");
    process.wait_for_port(port, Duration::from_secs(20));
    process
}

/// A TCP proxy on its own thread: it forwards connections to a server (the
/// broker, or PostgreSQL), and can cut every connection (open and new), let
/// them through again, or *freeze* them: keep every connection open, accept
/// new ones, and forward nothing until [`Proxy::thaw`] — what a peer in a
/// stop-the-world pause, a firewall that drops a flow without a reset, or a
/// network partition looks like. On thaw what was held is forwarded, as TCP
/// does once a partition heals.
///
/// In front of a broker ([`Proxy::kafka`]) it reads the Kafka requests it
/// forwards, so it can also refuse chosen APIs (say, the group
/// coordinator's) while passing the rest; [`Proxy::tcp`] forwards bytes.
pub struct Proxy {
    pub addr: String,
    state: Arc<ProxyState>,
    _stop: watch::Sender<()>,
}

struct ProxyState {
    cut: AtomicBool,
    /// Bumped on every cut: connections of an older generation close.
    generation: watch::Sender<u64>,
    /// Nothing is forwarded while this is true.
    frozen: watch::Sender<bool>,
    /// Request API keys that close the connection that sends them.
    blocked: Mutex<HashSet<i16>>,
    /// Freeze right after forwarding a request that holds these bytes.
    freeze_after: Mutex<Option<Vec<u8>>>,
    /// Kafka client ids (`KAFKA_CLIENT_ID`) whose connections are frozen.
    frozen_clients: watch::Sender<HashSet<String>>,
    /// Close a connection whose request holds these bytes once this many
    /// bytes of its answer went through, for so many connections.
    close_after: Mutex<Option<(Vec<u8>, i64, usize)>>,
    /// Connections closed that way.
    closed_after: AtomicUsize,
    /// Whether the traffic is Kafka requests (read one by one).
    kafka: bool,
}

impl ProxyState {
    /// Returns at once unless frozen; else when thawed.
    async fn thawed(&self) {
        let mut frozen = self.frozen.subscribe();
        let _ = frozen.wait_for(|f| !f).await;
    }

    /// The same for a connection of Kafka client `id` (once known).
    async fn thawed_for(&self, id: &OnceLock<String>) {
        self.thawed().await;
        let mut frozen = self.frozen_clients.subscribe();
        let _ = frozen
            .wait_for(|clients| id.get().is_none_or(|id| !clients.contains(id)))
            .await;
    }
}

impl Proxy {
    /// A proxy in front of a Kafka broker on `upstream`.
    pub fn kafka(upstream: u16) -> Self {
        Self::start(upstream, true)
    }

    /// A proxy of bytes in front of any server on `upstream` (PostgreSQL).
    pub fn tcp(upstream: u16) -> Self {
        Self::start(upstream, false)
    }

    fn start(upstream: u16, kafka: bool) -> Self {
        let (listener, addr) = listen();
        let state = Arc::new(ProxyState {
            cut: AtomicBool::new(false),
            generation: watch::channel(0).0,
            frozen: watch::channel(false).0,
            blocked: Mutex::new(HashSet::new()),
            freeze_after: Mutex::new(None),
            frozen_clients: watch::channel(HashSet::new()).0,
            close_after: Mutex::new(None),
            closed_after: AtomicUsize::new(0),
            kafka,
        });
        let shared = Arc::clone(&state);
        let stop = accept_on_thread(listener, move |client| {
            if shared.cut.load(Ordering::SeqCst) {
                drop(client);
            } else {
                tokio::spawn(forward(client, upstream, Arc::clone(&shared)));
            }
        });
        Self {
            addr,
            state,
            _stop: stop,
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("proxy address {} has no port", self.addr))
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Holds every connection, open and new, open while forwarding nothing,
    /// until [`Proxy::thaw`].
    pub fn freeze(&self) {
        self.state.frozen.send_replace(true);
    }

    /// Forwards until a client sends bytes holding `pattern` (say, a query's
    /// text): that request goes through, then the proxy freezes — so the
    /// freeze falls at a chosen point of a conversation, such as inside a
    /// transaction that holds a lock.
    pub fn freeze_after(&self, pattern: &[u8]) {
        *self.state.freeze_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(pattern.to_vec());
    }

    /// The next `times` connections whose request holds `pattern` are
    /// closed once `bytes` bytes of the answer went through: a connection
    /// lost in the middle of what the server sends (say, a replay).
    pub fn close_answers_after(&self, pattern: &[u8], bytes: i64, times: usize) {
        *self.state.close_after.lock().unwrap_or_else(|p| p.into_inner()) =
            (times > 0).then(|| (pattern.to_vec(), bytes, times));
    }

    /// Connections closed by [`Proxy::close_answers_after`] so far.
    pub fn closed_answers(&self) -> usize {
        self.state.closed_after.load(Ordering::SeqCst)
    }

    /// Whether the proxy is frozen.
    pub fn is_frozen(&self) -> bool {
        *self.state.frozen.borrow()
    }

    /// Freezes only the connections of one Kafka client, by the client id
    /// its requests carry (`KAFKA_CLIENT_ID`): the other processes behind
    /// the same proxy go on. [`Proxy::thaw`] ends it.
    pub fn freeze_client(&self, client_id: &str) {
        assert!(self.state.kafka, "only a Kafka proxy knows client ids");
        self.state.frozen_clients.send_modify(|c| {
            c.insert(client_id.to_owned());
        });
    }

    /// Forwards again, starting with what was held.
    pub fn thaw(&self) {
        self.state.frozen_clients.send_modify(HashSet::clear);
        self.state.frozen.send_replace(false);
    }

    /// From now on, a connection that sends a request with one of these API
    /// keys is closed before the request reaches the broker (say, the group
    /// coordinator's: FindCoordinator 10, OffsetCommit 8); other requests
    /// pass. An empty list lets everything through again.
    pub fn block_apis(&self, keys: &[i16]) {
        let mut blocked = self.state.blocked.lock().unwrap_or_else(|p| p.into_inner());
        blocked.clear();
        blocked.extend(keys);
    }
}

/// A listener on a free loopback port, ready for [`accept_on_thread`], and its address.
pub fn listen() -> (StdListener, String) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .to_string();
    listener.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
    (listener, addr)
}

/// Accepts on `listener` in a runtime of its own thread (so a test's own
/// runtime stopping or blocking does not stop it), handing each connection
/// to `on_accept` (which may `tokio::spawn`), until the returned sender is
/// dropped.
pub fn accept_on_thread(
    listener: StdListener,
    on_accept: impl Fn(TokioStream) + Send + 'static,
) -> watch::Sender<()> {
    let (stop, mut stopped) = watch::channel(());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("test server runtime: {e}"));
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    accepted = listener.accept() => {
                        if let Ok((client, _)) = accepted {
                            on_accept(client);
                        }
                    }
                }
            }
        });
    });
    stop
}

async fn forward(client: TokioStream, upstream: u16, state: Arc<ProxyState>) {
    let mut generation = state.generation.subscribe();
    generation.borrow_and_update();
    // A frozen network connects nowhere either: the client's connection
    // stays open and unanswered.
    state.thawed().await;
    let Ok(server) = TokioStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Kafka: the client id of the connection's first request.
    let id = OnceLock::new();
    // Bytes of the answer still let through, when this connection is to be
    // closed in the middle of it (-1: not).
    let budget = AtomicI64::new(-1);
    let requests = async {
        let _: Option<()> = async {
            if !state.kafka {
                return pipe(
                    &mut client_read,
                    &mut server_write,
                    &state,
                    &id,
                    Side::Requests(&budget),
                )
                .await;
            }
            // Kafka requests: a 4-byte size, then the body, whose first two
            // bytes are the API key.
            loop {
                let size = client_read.read_i32().await.ok()?;
                let mut body = vec![0; usize::try_from(size).ok()?];
                client_read.read_exact(&mut body).await.ok()?;
                let key = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
                if state
                    .blocked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&key)
                {
                    return None;
                }
                if id.get().is_none() {
                    // The header: key, version, correlation id, then the client id.
                    let len = i16::from_be_bytes([*body.get(8)?, *body.get(9)?]);
                    let name = body.get(10..10 + usize::try_from(len).unwrap_or(0))?;
                    let _ = id.set(String::from_utf8_lossy(name).into_owned());
                }
                state.thawed_for(&id).await;
                server_write.write_all(&size.to_be_bytes()).await.ok()?;
                server_write.write_all(&body).await.ok()?;
            }
        }
        .await;
    };
    let responses = pipe(
        &mut server_read,
        &mut client_write,
        &state,
        &id,
        Side::Answers(&budget),
    );
    tokio::select! {
        _ = requests => {}
        _ = responses => {}
        _ = generation.changed() => {}
    }
}

/// Which way a [`pipe`] copies, with the connection's answer budget
/// (bytes of the answer still let through; -1 for no limit).
#[derive(Clone, Copy)]
enum Side<'a> {
    Requests(&'a AtomicI64),
    Answers(&'a AtomicI64),
}

/// Copies `from` into `to`, holding each chunk while the proxy is frozen.
async fn pipe(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    state: &ProxyState,
    id: &OnceLock<String>,
    side: Side<'_>,
) -> Option<()> {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = from.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        state.thawed_for(id).await;
        let chunk = &buffer[..n];
        match side {
            Side::Answers(budget) => {
                let left = budget.load(Ordering::SeqCst);
                if left < 0 {
                    to.write_all(chunk).await.ok()?;
                    continue;
                }
                let through = chunk.len().min(usize::try_from(left).unwrap_or(0));
                to.write_all(&chunk[..through]).await.ok()?;
                let left = left - through as i64;
                budget.store(left, Ordering::SeqCst);
                if left == 0 {
                    state.closed_after.fetch_add(1, Ordering::SeqCst);
                    return None;
                }
            }
            Side::Requests(budget) => {
                to.write_all(chunk).await.ok()?;
                let holds = |p: &[u8]| chunk.windows(p.len()).any(|w| w == p);
                let mut armed = state.freeze_after.lock().unwrap_or_else(|p| p.into_inner());
                if armed.as_deref().is_some_and(holds) {
                    *armed = None;
                    state.frozen.send_replace(true);
                }
                let mut close = state.close_after.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((pattern, bytes, times)) = close.as_mut()
                    && holds(pattern)
                {
                    budget.store(*bytes, Ordering::SeqCst);
                    *times -= 1;
                    if *times == 0 {
                        *close = None;
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_frozen_proxy_holds_connections_open_and_forwards_on_thaw() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = Proxy::tcp(upstream);
    let mut open = TokioStream::connect(&proxy.addr).await.unwrap();
    let mut buf = [0u8; 5];
    open.write_all(b"hello").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");

    proxy.freeze();
    open.write_all(b"again").await.unwrap();
    let mut new = TokioStream::connect(&proxy.addr).await.unwrap();
    new.write_all(b"fresh").await.unwrap();
    let held = tokio::time::timeout(Duration::from_millis(500), open.read_exact(&mut buf)).await;
    assert!(held.is_err(), "a frozen proxy forwarded bytes");
    let held = tokio::time::timeout(Duration::from_millis(200), new.read_exact(&mut buf)).await;
    assert!(held.is_err(), "a frozen proxy let a new connection through");

    proxy.thaw();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");
    new.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"fresh");
    assert_eq!(
        proxy.port(),
        proxy.addr.rsplit(':').next().unwrap().parse::<u16>().unwrap()
    );
}
