//! Sharing partitions between the `consume` processes of one group, with no
//! coordinator of our own: PostgreSQL session-level advisory locks.
//!
//! Every process holds one *member* lock (a slot number) and one lock per
//! partition it reads. Each round it counts the members holding a slot, takes
//! free partitions up to its fair share (partitions ÷ members, rounded up) and
//! gives back any above it. A process that dies loses its connection and with
//! it every lock, so the others take its partitions over in the next round.
//!
//! Leases decide who *reads* a partition; correctness does not depend on
//! them: batches are idempotent (see [`crate::store::batch`]), so a brief
//! overlap while a partition changes hands duplicates nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ConsumeError;
use crate::db::{Database, Session};
use crate::kafka;
use crate::retry::Backoff;

/// Time between two rounds of the lease protocol.
pub const ROUND: Duration = Duration::from_secs(2);
/// Member slots per group (more than anyone will run).
const SLOTS: i32 = 1024;

/// The two advisory-lock key spaces of one group on one topic.
#[derive(Debug, Clone, Copy)]
struct Keys {
    members: i32,
    partitions: i32,
}

impl Keys {
    fn new(group: &str, topic: &str) -> Self {
        let hash = |space: &str| {
            let text = format!("catlog-live/{space}/{group}/{topic}");
            (murmur2::murmur2(text.as_bytes(), murmur2::KAFKA_SEED) & 0x7fff_ffff) as i32
        };
        Self {
            members: hash("members"),
            partitions: hash("partitions"),
        }
    }
}

const COUNT_MEMBERS: &str = "SELECT count(*) FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
       AND classid = $1::int8::oid \
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// Runs the lease protocol until `shutdown`, publishing the partitions this
/// process owns on `owned`. Database trouble empties the set and retries.
pub async fn run(
    db: Database,
    kafka: Arc<Client>,
    group: String,
    topic: String,
    owned: watch::Sender<BTreeSet<i32>>,
    shutdown: CancellationToken,
) {
    let keys = Keys::new(&group, &topic);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        let result = match db.session().await {
            Ok(session) => hold(&session, keys, &kafka, &topic, &owned, &shutdown).await,
            Err(e) => Err(e.into()),
        };
        owned.send_replace(BTreeSet::new());
        if let Err(error) = result {
            tracing::warn!(%error, group, "partition leases lost; retrying");
            backoff.wait(&shutdown).await;
        }
    }
}

/// One session's worth of rounds; returns when the session fails or on shutdown.
async fn hold(
    session: &Session,
    keys: Keys,
    kafka: &Client,
    topic: &str,
    owned: &watch::Sender<BTreeSet<i32>>,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let db = &session.client;
    let try_lock = "SELECT pg_try_advisory_lock($1, $2)";
    let unlock = "SELECT pg_advisory_unlock($1, $2)";
    let mut slot = None;
    for s in 0..SLOTS {
        let row = db.query_one(try_lock, &[&keys.members, &s]).await?;
        if row.get::<_, bool>(0) {
            slot = Some(s);
            break;
        }
    }
    let slot = slot.ok_or(ConsumeError::NoSlot)?;
    tracing::debug!(slot, "joined consumer group");

    let mut mine = BTreeSet::new();
    let mut partitions: Vec<i32> = Vec::new();
    loop {
        match kafka::partitions(kafka, topic).await {
            Ok(Some(found)) => partitions = found,
            Ok(None) => tracing::warn!(topic, "topic does not exist yet; waiting for it"),
            Err(error) => tracing::warn!(%error, "cannot list partitions; keeping the last known"),
        }
        let members: i64 = db
            .query_one(COUNT_MEMBERS, &[&i64::from(keys.members)])
            .await?
            .get(0);
        let fair = partitions.len().div_ceil(members.max(1) as usize);

        while mine.len() > fair {
            let Some(&p) = mine.iter().next_back() else {
                break;
            };
            db.query_one(unlock, &[&keys.partitions, &p]).await?;
            mine.remove(&p);
            tracing::info!(partition = p, members, "released partition to another consumer");
        }
        // Start looking at a different place per slot, so that members
        // starting together do not all race for partition 0.
        let start = slot as usize % partitions.len().max(1);
        let candidates = partitions.iter().cycle().skip(start).take(partitions.len());
        for &p in candidates {
            if mine.len() >= fair {
                break;
            }
            if mine.contains(&p) {
                continue;
            }
            let row = db.query_one(try_lock, &[&keys.partitions, &p]).await?;
            if row.get::<_, bool>(0) {
                tracing::info!(partition = p, members, "acquired partition");
                mine.insert(p);
            }
        }
        // Partitions the topic no longer has.
        mine.retain(|p| partitions.contains(p));
        owned.send_if_modified(|current| {
            let changed = *current != mine;
            current.clone_from(&mine);
            changed
        });

        tokio::select! {
            _ = tokio::time::sleep(ROUND) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
