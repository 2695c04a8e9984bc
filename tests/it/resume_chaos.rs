//! Resume under fire: clients that reconnect to whichever server answers,
//! resuming with `/ws?lastId=` of the last update they applied, while the
//! servers and the consumers are killed (SIGKILL) and started again. The
//! real binary runs as child processes on the real broker and a database
//! of the test's own; at the end each client's ledger is compared with the
//! history, and what was published with what was stored.

use crate::common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Proc, TestDb, TestTopic, broker, catlog, event_id, free_port, log_records, port_answers, wait_until,
};
use futures::StreamExt;
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

#[derive(Debug, Clone, Copy)]
enum Kill {
    Serve(usize),
    Consume(usize),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_resuming_through_killed_servers_and_consumers_miss_nothing_and_see_nothing_twice() {
    let db = TestDb::migrated().await;
    let topic = TestTopic::new(4).await;
    let ports = Arc::new(vec![free_port(), free_port()]);
    let mut servers: Vec<Proc> = ports.iter().map(|p| serve(&topic.name, &db, *p)).collect();
    let mut consumers = [consume(&topic.name, &db), consume(&topic.name, &db)];
    let mut producer = Proc::spawn(
        catlog(&["produce", "--rate", "80", "--seed", "23"], &topic.name, &db.url),
        "produce",
    );
    for (port, server) in ports.iter().zip(&servers) {
        answers(*port, "serve", || server.output()).await;
    }
    wait_until(WAIT, "events flowing", || async {
        db.count("SELECT count(*) FROM popularity_events").await >= 50
    })
    .await;

    let stop = CancellationToken::new();
    let ledgers: Vec<Arc<Mutex<Ledger>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = ledgers
        .iter()
        .enumerate()
        .map(|(i, l)| tokio::spawn(client(i, Arc::clone(&ports), Arc::clone(l), stop.clone())))
        .collect();
    wait_until(WAIT, "every client to be live", || async {
        ledgers.iter().all(|l| l.lock().unwrap().applied.is_some())
    })
    .await;

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
            Kill::Serve(i) => {
                servers[i].kill_hard();
                tokio::time::sleep(Duration::from_millis(500)).await;
                servers[i] = serve(&topic.name, &db, ports[i]);
                answers(ports[i], "serve again", || servers[i].output()).await;
            }
            Kill::Consume(i) => {
                consumers[i].kill_hard();
                tokio::time::sleep(Duration::from_millis(500)).await;
                consumers[i] = consume(&topic.name, &db);
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The stored side: every published event once, nothing else.
    assert_eq!(producer.terminate().code(), Some(0), "{}", producer.output());
    let published: HashSet<Uuid> = log_records(&broker(), &topic.name)
        .await
        .iter()
        .map(|(_, _, r)| event_id(r))
        .collect();
    assert_all_stored_once(&db, &published, &consumers[0], WAIT).await;
    let stored = db.count("SELECT count(*) FROM popularity_events").await;
    assert_eq!(stored, published.len() as i64, "nothing else stored");

    // The client side: each one up to the newest row.
    let history: Vec<i64> = db
        .connect()
        .await
        .query("SELECT id FROM popularity_events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let newest = history.last().copied().unwrap_or_default();
    wait_until(WAIT, "every client to reach the newest row", || async {
        ledgers.iter().all(|l| l.lock().unwrap().applied >= Some(newest))
    })
    .await;
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }

    let mut total = Figures::default();
    let (mut connections, mut replayed) = (0, 0);
    for (i, ledger) in ledgers.iter().enumerate() {
        let ledger = ledger.lock().unwrap();
        let f = figures(&ledger, &history);
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
    eprintln!(
        "resume chaos: {CLIENTS} clients, {} kills ({} serve, {} consume), {} events published and {stored} \
         stored (0 lost, 0 duplicated); {} updates checked against the history: {} missing, {} duplicated, \
         {} out of order, {} resyncs; {connections} connections, {replayed} updates replayed on resume",
        kills.len(),
        kills.iter().filter(|k| matches!(k, Kill::Serve(_))).count(),
        kills.iter().filter(|k| matches!(k, Kill::Consume(_))).count(),
        published.len(),
        total.checked,
        total.missing,
        total.duplicated,
        total.out_of_order,
        total.resyncs,
    );
    assert_eq!(
        (total.missing, total.duplicated, total.out_of_order, total.resyncs),
        (0, 0, 0, 0),
        "missing, duplicated, out of order, resyncs"
    );
    assert!(replayed > 0, "the kills made clients resume with a replay");
}
