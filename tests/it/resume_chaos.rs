//! Resume under fire: clients that reconnect to whichever server answers
//! (directly, or through HAProxy), resuming with `/ws?lastId=` of the last
//! update they applied, while the servers and the consumers are killed
//! (SIGKILL) and started again. The real binary runs as child processes on
//! the real broker and a database of the test's own; at the end each
//! client's ledger is compared with the history, and what was published
//! with what was stored.

use crate::common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Proc, TestDb, TestTopic, broker, catlog, event_id, free_port, log_records, port_answers, unique,
    wait_until, which,
};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::faults::assert_all_stored_once;

const CLIENTS: usize = 12;
const WAIT: Duration = Duration::from_secs(60);

/// Short limits, so a killed consumer's partitions move within seconds.
fn with_limits(mut cmd: Command) -> Command {
    cmd.env("CONSUMER_SESSION_TIMEOUT", "6s")
        .env("DB_TIMEOUT", "3s")
        .env("KAFKA_OFFSET_MIRROR", "false");
    cmd
}

/// What one client got, as it came.
#[derive(Debug, Default)]
struct Ledger {
    /// Every update id received, in order, repeats included.
    ids: Vec<i64>,
    /// The snapshot of its first connection: the ledger starts after it.
    start: Option<i64>,
    /// The last update applied: the resume point.
    applied: Option<i64>,
    resyncs: usize,
    connections: usize,
    replayed: u64,
}

/// One client: connects to the servers in turn until one answers, resumes
/// after the last update it applied, records everything, and now and then
/// leaves for up to a second and a half.
async fn client(first: usize, ports: Arc<Vec<u16>>, ledger: Arc<Mutex<Ledger>>, stop: CancellationToken) {
    let mut next = first;
    while !stop.is_cancelled() {
        let port = ports[next % ports.len()];
        next += 1;
        let applied = ledger.lock().unwrap().applied;
        let path = applied.map_or_else(|| "/ws".to_owned(), |id| format!("/ws?lastId={id}"));
        let url = format!("ws://127.0.0.1:{port}{path}");
        let connecting = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&url));
        let Ok(Ok((mut ws, _))) = connecting.await else {
            tokio::time::sleep(Duration::from_millis(rand::random_range(20..200))).await;
            continue;
        };
        ledger.lock().unwrap().connections += 1;
        let mut awaiting_reset = applied.is_none();
        // Now and then a client leaves of its own accord (a phone going
        // into a tunnel) and comes back a moment later.
        let mut leave_after = rand::random_range(30..300);
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return,
                frame = ws.next() => frame,
            };
            let Some(Ok(frame)) = frame else { break };
            let Message::Text(text) = frame else { continue };
            let message: serde_json::Value = serde_json::from_str(&text).unwrap();
            {
                let mut l = ledger.lock().unwrap();
                match message["type"].as_str() {
                    Some("update") => {
                        let id = message["id"].as_i64().unwrap();
                        l.ids.push(id);
                        if !awaiting_reset && l.applied.is_none_or(|a| id > a) {
                            l.applied = Some(id);
                        }
                        leave_after -= 1;
                    }
                    Some("snapshot") if awaiting_reset => {
                        let id = message["lastId"].as_i64().unwrap();
                        l.start.get_or_insert(id);
                        l.applied = Some(id);
                        awaiting_reset = false;
                    }
                    Some("resync") => {
                        l.resyncs += 1;
                        awaiting_reset = true;
                    }
                    Some("resumed") => l.replayed += message["replayed"].as_u64().unwrap(),
                    _ => {}
                }
            }
            if leave_after == 0 {
                let _ = ws.close(None).await;
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..1500))).await;
                break;
            }
        }
    }
}

/// Figures of one ledger against the history (ids, oldest first).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Figures {
    checked: usize,
    missing: usize,
    duplicated: usize,
    out_of_order: usize,
    resyncs: usize,
}

fn figures(ledger: &Ledger, history: &[i64]) -> Figures {
    let start = ledger.start.unwrap_or(0);
    let expected: Vec<i64> = history.iter().copied().filter(|id| *id > start).collect();
    let mut seen = HashSet::new();
    let mut duplicated = 0;
    let mut out_of_order = 0;
    let mut highest = start;
    for id in &ledger.ids {
        if !seen.insert(*id) {
            duplicated += 1;
        }
        if *id <= highest {
            out_of_order += 1;
        }
        highest = highest.max(*id);
    }
    Figures {
        checked: expected.len(),
        missing: expected.iter().filter(|id| !seen.contains(id)).count(),
        duplicated,
        out_of_order,
        resyncs: ledger.resyncs,
    }
}

fn serve(topic: &str, db: &TestDb, port: u16) -> Proc {
    let mut cmd = with_limits(catlog(&["serve"], topic, &db.url));
    cmd.env("LISTEN_ADDR", format!("127.0.0.1:{port}"));
    Proc::spawn(cmd, "serve")
}

fn consume(topic: &str, db: &TestDb) -> Proc {
    Proc::spawn(with_limits(catlog(&["consume"], topic, &db.url)), "consume")
}

async fn answers(port: u16, what: &str, log: impl Fn() -> String) {
    let started = Instant::now();
    while !port_answers(port) {
        assert!(started.elapsed() < WAIT, "{what} did not start:\n{}", log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The clients of one run and their ledgers.
struct Clients {
    ledgers: Vec<Arc<Mutex<Ledger>>>,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Clients {
    /// [`CLIENTS`] clients of the servers on `ports`, each live once this returns.
    async fn live(ports: Vec<u16>) -> Self {
        let ports = Arc::new(ports);
        let stop = CancellationToken::new();
        let ledgers: Vec<Arc<Mutex<Ledger>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
        let tasks = ledgers
            .iter()
            .enumerate()
            .map(|(i, l)| tokio::spawn(client(i, Arc::clone(&ports), Arc::clone(l), stop.clone())))
            .collect();
        let clients = Self { ledgers, tasks, stop };
        wait_until(WAIT, "every client to be live", || async {
            clients
                .ledgers
                .iter()
                .all(|l| l.lock().unwrap().applied.is_some())
        })
        .await;
        clients
    }

    /// Waits until every client has the newest row of `history`, stops
    /// them, and prints and returns what they got against it.
    async fn finish(self, history: &[i64]) -> (Figures, usize, u64) {
        let newest = history.last().copied().unwrap_or_default();
        wait_until(WAIT, "every client to reach the newest row", || async {
            self.ledgers
                .iter()
                .all(|l| l.lock().unwrap().applied >= Some(newest))
        })
        .await;
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        let mut total = Figures::default();
        let (mut connections, mut replayed) = (0, 0);
        for (i, ledger) in self.ledgers.iter().enumerate() {
            let ledger = ledger.lock().unwrap();
            let f = figures(&ledger, history);
            eprintln!(
                "client {i}: {f:?}, {} connections, {} replayed",
                ledger.connections, ledger.replayed
            );
            total.checked += f.checked;
            total.missing += f.missing;
            total.duplicated += f.duplicated;
            total.out_of_order += f.out_of_order;
            total.resyncs += f.resyncs;
            connections += ledger.connections;
            replayed += ledger.replayed;
        }
        (total, connections, replayed)
    }
}

/// Stops the producer; checks every published event is stored once and
/// nothing else; the number published and the history's ids, oldest first.
async fn stored_once(
    db: &TestDb,
    topic: &TestTopic,
    mut producer: Proc,
    consumer: &Proc,
) -> (usize, Vec<i64>) {
    assert_eq!(producer.terminate().code(), Some(0), "{}", producer.output());
    let published: HashSet<Uuid> = log_records(&broker(), &topic.name)
        .await
        .iter()
        .map(|(_, _, r)| event_id(r))
        .collect();
    assert_all_stored_once(db, &published, consumer, WAIT).await;
    let stored = db.count("SELECT count(*) FROM popularity_events").await;
    assert_eq!(stored, published.len() as i64, "nothing else stored");
    let history = db
        .connect()
        .await
        .query("SELECT id FROM popularity_events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (published.len(), history)
}

fn producer(topic: &TestTopic, db: &TestDb) -> Proc {
    Proc::spawn(
        catlog(&["produce", "--rate", "80", "--seed", "23"], &topic.name, &db.url),
        "produce",
    )
}

async fn events_flowing(db: &TestDb) {
    wait_until(WAIT, "events flowing", || async {
        db.count("SELECT count(*) FROM popularity_events").await >= 50
    })
    .await;
}

/// SIGKILL, a moment's pause, and the same server again on its port.
async fn kill_and_restart_serve(server: &mut Proc, topic: &TestTopic, db: &TestDb, port: u16) {
    server.kill_hard();
    tokio::time::sleep(Duration::from_millis(500)).await;
    *server = serve(&topic.name, db, port);
    answers(port, "serve again", || server.output()).await;
}

/// The figures as a line to quote, and the assertion on them.
fn report(what: &str, kills: &str, published: usize, (total, connections, replayed): (Figures, usize, u64)) {
    eprintln!(
        "{what}: {CLIENTS} clients, {kills}, {published} events published and stored once (0 lost, 0 \
         duplicated); {} updates checked against the history: {} missing, {} duplicated, {} out of order, \
         {} resyncs; {connections} connections, {replayed} updates replayed on resume",
        total.checked, total.missing, total.duplicated, total.out_of_order, total.resyncs,
    );
    assert_eq!(
        (total.missing, total.duplicated, total.out_of_order, total.resyncs),
        (0, 0, 0, 0),
        "missing, duplicated, out of order, resyncs"
    );
    assert!(replayed > 0, "the drops made clients resume with a replay");
}

#[derive(Debug, Clone, Copy)]
enum Kill {
    Serve(usize),
    Consume(usize),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_resuming_through_killed_servers_and_consumers_miss_nothing_and_see_nothing_twice() {
    let db = TestDb::migrated().await;
    let topic = TestTopic::new(4).await;
    let ports = vec![free_port(), free_port()];
    let mut servers: Vec<Proc> = ports.iter().map(|p| serve(&topic.name, &db, *p)).collect();
    let mut consumers = [consume(&topic.name, &db), consume(&topic.name, &db)];
    let producer = producer(&topic, &db);
    for (port, server) in ports.iter().zip(&servers) {
        answers(*port, "serve", || server.output()).await;
    }
    events_flowing(&db).await;
    let clients = Clients::live(ports.clone()).await;

    let kills = [
        Kill::Serve(0),
        Kill::Consume(0),
        Kill::Serve(1),
        Kill::Consume(1),
        Kill::Serve(0),
        Kill::Serve(1),
    ];
    for kill in kills {
        tokio::time::sleep(Duration::from_secs(3)).await;
        match kill {
            Kill::Serve(i) => kill_and_restart_serve(&mut servers[i], &topic, &db, ports[i]).await,
            Kill::Consume(i) => {
                consumers[i].kill_hard();
                tokio::time::sleep(Duration::from_millis(500)).await;
                consumers[i] = consume(&topic.name, &db);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (published, history) = stored_once(&db, &topic, producer, &consumers[0]).await;
    let got = clients.finish(&history).await;
    report("resume chaos", "6 kills (4 serve, 2 consume)", published, got);
}

/// HAProxy, from Debian's package (scripts/test installs it).
fn haproxy_binary() -> std::path::PathBuf {
    which("haproxy")
        .or_else(|| Some(std::path::PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.is_file()))
        .unwrap_or_else(|| panic!("haproxy not found: install Debian's haproxy package (scripts/test does)"))
}

/// `deploy/haproxy.cfg` as it is, on `front` and in front of `servers`.
fn haproxy_config(front: u16, servers: &[u16]) -> std::path::PathBuf {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg");
    let mut text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text = text.replace("127.0.0.1:8080", &format!("127.0.0.1:{front}"));
    for (i, port) in servers.iter().enumerate() {
        text = text.replace(&format!("127.0.0.1:{}", 3001 + i), &format!("127.0.0.1:{port}"));
    }
    let file = std::env::temp_dir().join(format!("{}.cfg", unique("haproxy")));
    std::fs::write(&file, text).unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_through_haproxy_in_front_of_three_killed_servers_miss_nothing_and_see_nothing_twice() {
    let binary = haproxy_binary();
    let db = TestDb::migrated().await;
    let topic = TestTopic::new(4).await;
    let ports = vec![free_port(), free_port(), free_port()];
    let mut servers: Vec<Proc> = ports.iter().map(|p| serve(&topic.name, &db, *p)).collect();
    let consumers = [consume(&topic.name, &db), consume(&topic.name, &db)];
    let producer = producer(&topic, &db);
    for (port, server) in ports.iter().zip(&servers) {
        answers(*port, "serve", || server.output()).await;
    }
    let front = free_port();
    let config = haproxy_config(front, &ports);
    let mut cmd = Command::new(binary);
    cmd.arg("-db").arg("-f").arg(&config);
    let mut haproxy = Proc::spawn(cmd, "haproxy");
    answers(front, "haproxy", || haproxy.output()).await;
    wait_until(WAIT, "haproxy to answer /readyz", || async {
        reqwest::get(format!("http://127.0.0.1:{front}/readyz"))
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;
    events_flowing(&db).await;
    let clients = Clients::live(vec![front]).await;

    let kills = [0, 1, 2, 0, 1, 2];
    for i in kills {
        tokio::time::sleep(Duration::from_secs(3)).await;
        kill_and_restart_serve(&mut servers[i], &topic, &db, ports[i]).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (published, history) = stored_once(&db, &topic, producer, &consumers[0]).await;
    let got = clients.finish(&history).await;
    let _ = std::fs::remove_file(&config);
    report(
        "resume through haproxy",
        "6 serve kills behind one HAProxy",
        published,
        got,
    );
    assert!(
        haproxy.child.try_wait().unwrap().is_none(),
        "haproxy stopped:\n{}",
        haproxy.output()
    );
}
