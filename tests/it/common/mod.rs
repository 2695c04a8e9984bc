//! Shared helpers for the integration tests: the real broker, a fresh
//! PostgreSQL database per test, a fresh topic per test, and the real binary.
//!
//! The broker address comes from `CATLOG_TEST_BROKER` (set by `scripts/test`,
//! which starts one) and PostgreSQL from `CATLOG_TEST_DATABASE_URL`. A missing
//! service fails the test with a message saying how to start it.

pub mod broker;
pub mod kafkajs;
pub mod mtls;
pub mod sasl;
pub mod stack;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client as PgClient, NoTls};

/// A raw record: key and value, either possibly absent.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The broker the tests use.
pub fn broker() -> String {
    let addr = std::env::var("CATLOG_TEST_BROKER").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let reachable = addr
        .parse()
        .ok()
        .and_then(|sock| TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok())
        .is_some();
    assert!(
        reachable,
        "no Kafka broker answers at {addr}: run the tests with scripts/test (it starts one), \
         or start a broker and set CATLOG_TEST_BROKER=host:port"
    );
    addr
}

/// The PostgreSQL server the tests create their databases in.
pub fn admin_url() -> String {
    std::env::var("CATLOG_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[path = "../../support/ports.rs"]
mod ports;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    ports::free_port().unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub fn port_answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A program on `PATH` (or in /usr/bin, where Debian installs it).
pub fn which(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/bin").join(name)).filter(|p| p.is_file()))
}

/// A unique name with a prefix, for topics, databases and groups.
pub fn unique(prefix: &str) -> String {
    let n: u32 = rand::rng().random();
    format!("{prefix}_{}_{n:08x}", std::process::id())
}

/// One test's own database, dropped when the value is.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A name and URL for a database that does not exist yet (the binary
    /// creates it, as it would for a user).
    pub fn new() -> Self {
        let name = unique("catlog_test");
        let admin = admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Creates it and applies the migrations through the library.
    pub async fn migrated() -> Self {
        let db = Self::new();
        let parsed: catlog_live::db::Database = db.url.parse().unwrap();
        parsed
            .ensure_exists()
            .await
            .unwrap_or_else(|e| panic!("{e}; start PostgreSQL or set CATLOG_TEST_DATABASE_URL"));
        catlog_live::db::migrate(&parsed).await.unwrap();
        db
    }

    /// A connection to it.
    pub async fn connect(&self) -> PgClient {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot connect to {}: {e}; start PostgreSQL or set CATLOG_TEST_DATABASE_URL",
                    self.url
                )
            });
        tokio::spawn(conn);
        client
    }

    /// Its URL with the server at 127.0.0.1:`port` instead (a proxy in front of it).
    pub fn url_via(&self, port: u16) -> String {
        let mut url = url::Url::parse(&self.url).unwrap_or_else(|e| panic!("{}: {e}", self.url));
        url.set_host(Some("127.0.0.1")).unwrap_or_else(|e| panic!("{e}"));
        url.set_port(Some(port))
            .unwrap_or_else(|()| panic!("no port in {}", self.url));
        url.to_string()
    }

    /// The PostgreSQL server's port.
    pub fn server_port(&self) -> u16 {
        url::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or(5432)
    }

    /// The first column of the first row of `sql` as i64. Nothing stored
    /// yet reads as 0: no database yet, no migrations yet, no row, or NULL
    /// (`max` of nothing). Any other failure panics with the query, so a
    /// wrong query fails the test instead of reading as 0.
    pub async fn count(&self, sql: &str) -> i64 {
        let (client, conn) = match tokio_postgres::connect(&self.url, NoTls).await {
            Ok(connected) => connected,
            Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => return 0,
            Err(e) => panic!("cannot connect to {} for {sql:?}: {e}", self.url),
        };
        let driver = tokio::spawn(conn);
        let n = match client.query_opt(sql, &[]).await {
            Ok(row) => row.and_then(|r| r.get::<_, Option<i64>>(0)).unwrap_or(0),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) && !migrated(&client).await => 0,
            Err(e) => panic!("{sql:?} failed: {}", catlog_live::db::error_text(&e)),
        };
        drop(client);
        let _ = driver.await;
        n
    }
}

/// Whether every migration in `migrations/` is applied on `client`'s
/// database (while one runs, its tables may not be there yet).
async fn migrated(client: &PgClient) -> bool {
    let expected = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .map(|dir| {
            dir.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
            })
            .count()
        })
        .unwrap_or_else(|e| panic!("cannot list migrations/: {e}")) as i64;
    // No history table yet: nothing applied.
    let applied = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0);
    applied >= expected
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = admin_url();
        let name = self.name.clone();
        // Async work in Drop: on a thread of its own with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&admin, NoTls).await.ok()?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// A topic of the test's own on the real broker.
pub struct TestTopic {
    pub name: String,
    pub partitions: i32,
    pub client: Arc<Client>,
}

impl TestTopic {
    /// Creates a fresh topic with `partitions` partitions.
    pub async fn new(partitions: i32) -> Self {
        Self::on(&broker(), partitions).await
    }

    /// Creates a fresh topic on the broker at `broker`.
    pub async fn on(broker: &str, partitions: i32) -> Self {
        let client = ClientBuilder::new(vec![broker.to_owned()])
            .build()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the broker at {broker}: {e}"));
        let name = unique("catlog-topic");
        client
            .controller_client()
            .unwrap()
            .create_topic(&name, partitions, 1, 5_000)
            .await
            .unwrap();
        Self {
            name,
            partitions,
            client: Arc::new(client),
        }
    }

    pub async fn partition(&self, p: i32) -> PartitionClient {
        self.client
            .partition_client(&self.name, p, UnknownTopicHandling::Retry)
            .await
            .unwrap()
    }

    /// Publishes raw (key, value) records to one partition, as another program would.
    pub async fn publish_raw(&self, partition: i32, records: Vec<RawRecord>) -> Vec<i64> {
        let records = records
            .into_iter()
            .map(|(key, value)| Record {
                key,
                value,
                headers: BTreeMap::new(),
                timestamp: chrono::Utc::now(),
            })
            .collect();
        self.partition(partition)
            .await
            .produce(records, Compression::NoCompression)
            .await
            .unwrap()
    }

    /// Publishes `n` simulated events (seeded), keyed and partitioned like the producer.
    pub async fn publish_simulated(&self, n: usize, seed: u64) {
        let catalog = catlog_live::catalog::Catalog::builtin().unwrap();
        let mut sim = catlog_live::produce::Simulator::new(&catalog, Some(seed));
        let mut clients = Vec::new();
        for p in 0..self.partitions {
            clients.push(self.partition(p).await);
        }
        let mut left = n;
        while left > 0 {
            let chunk = left.min(2_000);
            let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
            for _ in 0..chunk {
                let event = sim.next_event(chrono::Utc::now());
                let p = catlog_live::kafka::partition_for(&event.key(), self.partitions);
                by_partition
                    .entry(p)
                    .or_default()
                    .push(catlog_live::kafka::record(
                        &event,
                        catlog_live::event::new_event_id(),
                    ));
            }
            for (p, records) in by_partition {
                clients[p as usize]
                    .produce(records, Compression::NoCompression)
                    .await
                    .unwrap();
            }
            left -= chunk;
        }
    }

    /// Every record of every partition: (partition, offset, key, value).
    pub async fn read_all(&self) -> Vec<(i32, i64, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for p in 0..self.partitions {
            let client = self.partition(p).await;
            let end = catlog_live::kafka::end_offset(&client).await.unwrap();
            let mut offset = 0;
            while offset < end {
                let (records, _) = client.fetch_records(offset, 1..4_000_000, 1_000).await.unwrap();
                for r in records {
                    offset = r.offset + 1;
                    out.push((
                        p,
                        r.offset,
                        r.record.key.unwrap_or_default(),
                        r.record.value.unwrap_or_default(),
                    ));
                }
            }
        }
        out
    }
}

/// Every record of every partition of `topic` on the broker at `broker`:
/// (partition, offset, record).
pub async fn log_records(broker: &str, topic: &str) -> Vec<(i32, i64, Record)> {
    let client = ClientBuilder::new(vec![broker.to_owned()])
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the broker at {broker}: {e}"));
    let partitions = client
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions)
        .unwrap_or_default();
    let mut out = Vec::new();
    for p in partitions {
        let partition = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let end = catlog_live::kafka::end_offset(&partition).await.unwrap();
        let mut offset = 0;
        while offset < end {
            let (records, _) = partition
                .fetch_records(offset, 1..4_000_000, 1_000)
                .await
                .unwrap();
            let from = offset;
            for r in records.into_iter().filter(|r| r.offset >= from) {
                offset = r.offset + 1;
                out.push((p, r.offset, r.record));
            }
        }
    }
    out
}

/// The event id a record carries (panics on a record without a valid one).
pub fn event_id(record: &Record) -> uuid::Uuid {
    catlog_live::event::event_id(&record.headers)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("record without a valid event id: {:?}", record.headers))
}

/// The real `catlog-live all` on a free port with `env`; the process and
/// the page's URL (as it prints it: `http://127.0.0.1:PORT/`).
pub async fn start_all(topic: &str, db: &TestDb, env: &[(&str, &str)]) -> (Proc, String) {
    let mut cmd = catlog(&["all"], topic, &db.url);
    cmd.env("LISTEN_ADDR", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let _ = broker();
    let app = Proc::spawn(cmd, "all");
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        if let Some(line) = app
            .output()
            .lines()
            .find(|l| l.starts_with("catlog-live is live at "))
        {
            break line
                .trim_start_matches("catlog-live is live at ")
                .trim()
                .to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "`all` did not print its URL:\n{}",
            app.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (app, url)
}

/// The real `catlog-live` binary as a child process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    name: String,
}

/// A command for the binary with the test's broker, topic and database.
pub fn catlog(args: &[&str], topic: &str, db_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_catlog-live"));
    cmd.args(args)
        .env("KAFKA_BROKER", broker())
        .env("KAFKA_TOPIC", topic)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "info,rskafka=warn")
        .env_remove("RUST_BACKTRACE");
    cmd
}

impl Proc {
    /// Starts `cmd` with its output going to a log file.
    pub fn spawn(mut cmd: Command, name: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique(name)));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Self {
            child,
            log,
            name: name.to_owned(),
        }
    }

    /// Waits until something answers on 127.0.0.1:`port` (the process is
    /// up), failing with its output after `within`.
    pub fn wait_for_port(&self, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        while !port_answers(port) {
            assert!(
                Instant::now() < deadline,
                "{} did not start:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it has logged so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Polls `check` until it returns true, failing with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
