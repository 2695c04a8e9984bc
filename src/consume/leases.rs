//! Sharing partitions between the `consume` processes of one group, with no
//! coordinator of our own: PostgreSQL session-level advisory locks.
//!
//! Every process holds one *member* lock (a slot number) and one lock per
//! partition it reads. Each round it counts the members holding a slot, takes
//! free partitions up to its fair share (partitions ÷ members, rounded up) and
//! gives back any above it. A process that dies loses its connection and with
//! it every lock, so the others take its partitions over in the next round.
//!
//! A process that is frozen or cut off keeps its connection open, and
//! PostgreSQL would hold its locks for hours. So the lease session asks the
//! server to end it after `CONSUMER_SESSION_TIMEOUT` of silence
//! (`idle_session_timeout`; a live member speaks every [`ROUND`]), like
//! Kafka's own `session.timeout.ms`: the others take its partitions within
//! that time plus one round. Every round is bounded by `DB_TIMEOUT`, and a
//! round that does not finish gives every partition up at once.
//!
//! Leases decide who *reads* a partition; correctness does not depend on
//! them: batches are idempotent (see [`crate::store::batch`]), so a brief
//! overlap while a partition changes hands duplicates nothing. And each
//! batch is *fenced* by the lease it was read under ([`Fence`]): a member
//! that wakes from a freeze finds its batch refused for the partitions it
//! lost, and says so.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ConsumeError;
use crate::db::{Database, DbError, Session};
use crate::kafka::Broker;
use crate::retry::Backoff;
use crate::store::Fence;

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

/// Where the lease protocol publishes what it holds.
pub struct Holding {
    /// The partitions this process owns.
    pub owned: watch::Sender<BTreeSet<i32>>,
    /// The lease batches are fenced by; `None` while no session holds one.
    pub fence: watch::Sender<Option<Fence>>,
}

/// Runs the lease protocol until `shutdown`, publishing the partitions this
/// process owns on `holding`. Database trouble empties the set and retries.
pub async fn run(
    db: Database,
    kafka: Broker,
    group: String,
    topic: String,
    session_timeout: Duration,
    holding: Holding,
    shutdown: CancellationToken,
) {
    let keys = Keys::new(&group, &topic);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    while !shutdown.is_cancelled() {
        let result = match db.session().await {
            Ok(session) => {
                let lease = Lease {
                    session: &session,
                    keys,
                    limit: db.timeout(),
                };
                lease
                    .hold(&kafka, &topic, session_timeout, &holding, &shutdown)
                    .await
            }
            Err(e) => Err(e.into()),
        };
        holding.fence.send_replace(None);
        if !holding.owned.borrow().is_empty() {
            tracing::warn!(
                group,
                "stopped reading every partition until the leases are held again"
            );
        }
        holding.owned.send_replace(BTreeSet::new());
        if let Err(error) = result {
            tracing::warn!(%error, group, "partition leases lost; retrying");
            backoff.wait(&shutdown).await;
        } else {
            backoff.reset();
        }
    }
}

/// One lease session.
struct Lease<'a> {
    session: &'a Session,
    keys: Keys,
    /// `DB_TIMEOUT`, for each query.
    limit: Duration,
}

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1, $2)";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1, $2)";

impl Lease<'_> {
    /// One bounded query's single value.
    async fn one<T>(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<T, ConsumeError>
    where
        T: for<'r> tokio_postgres::types::FromSql<'r>,
    {
        let query = async { Ok::<_, DbError>(self.session.client.query_one(sql, params).await?) };
        let row = crate::db::bounded(self.limit, "a lease query", query).await?;
        Ok(row.try_get(0).map_err(DbError::from)?)
    }

    /// Tells the server to end this session after `timeout` of silence, so a
    /// frozen process's locks come free; the backend's pid, for the fence.
    async fn start(&self, timeout: Duration) -> Result<i32, ConsumeError> {
        let ms = timeout.as_millis().to_string();
        let set = async {
            Ok::<_, DbError>(
                self.session
                    .client
                    .query_one("SELECT set_config('idle_session_timeout', $1, false)", &[&ms])
                    .await?,
            )
        };
        match crate::db::bounded(self.limit, "a lease query", set).await {
            Ok(_) => {}
            Err(DbError::Query(e)) if e.as_db_error().is_some() => tracing::warn!(
                error = %crate::db::error_text(&e),
                "PostgreSQL cannot end a silent session (idle_session_timeout needs version 14): \
                 a frozen consumer's partitions stay held until TCP notices"
            ),
            Err(e) => return Err(e.into()),
        }
        self.one("SELECT pg_backend_pid()", &[]).await
    }

    /// One session's worth of rounds; returns when the session fails or on shutdown.
    async fn hold(
        &self,
        kafka: &Broker,
        topic: &str,
        session_timeout: Duration,
        holding: &Holding,
        shutdown: &CancellationToken,
    ) -> Result<(), ConsumeError> {
        let keys = self.keys;
        let pid = self.start(session_timeout).await?;
        let mut slot = None;
        for s in 0..SLOTS {
            if self.one::<bool>(TRY_LOCK, &[&keys.members, &s]).await? {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or(ConsumeError::NoSlot)?;
        tracing::debug!(slot, pid, "joined consumer group");
        holding.fence.send_replace(Some(Fence {
            key: keys.partitions,
            pid,
        }));

        let mut mine = BTreeSet::new();
        let mut partitions: Vec<i32> = Vec::new();
        let mut unlisted = crate::retry::Streak::new("cannot list partitions; keeping the last known");
        loop {
            match kafka.partitions(topic).await {
                Ok(Some(found)) => {
                    partitions = found;
                    unlisted.ended("listing partitions again");
                }
                Ok(None) => tracing::warn!(topic, "topic does not exist yet; waiting for it"),
                Err(error) => unlisted.failed(&error.to_string()),
            }
            let members: i64 = self.one(COUNT_MEMBERS, &[&i64::from(keys.members)]).await?;
            let fair = partitions.len().div_ceil(members.max(1) as usize);

            // Partitions the topic no longer has, then any above our share.
            let vanished: Vec<i32> = mine.iter().copied().filter(|p| !partitions.contains(p)).collect();
            for p in vanished {
                self.one::<bool>(UNLOCK, &[&keys.partitions, &p]).await?;
                mine.remove(&p);
                tracing::info!(partition = p, "partition is gone from the topic; released it");
            }
            while mine.len() > fair {
                let Some(&p) = mine.iter().next_back() else {
                    break;
                };
                self.one::<bool>(UNLOCK, &[&keys.partitions, &p]).await?;
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
                if self.one::<bool>(TRY_LOCK, &[&keys.partitions, &p]).await? {
                    tracing::info!(partition = p, members, "acquired partition");
                    mine.insert(p);
                }
            }
            holding.owned.send_if_modified(|current| {
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
}
