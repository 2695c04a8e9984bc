//! `consume`: the topic into PostgreSQL, exactly once.
//!
//! ```text
//!  leases ──(owned partitions)──► one reader per partition ──► bounded queue ──► writer
//!                                  (rskafka fetch, from the        (capacity       (one transaction
//!                                   stored position, validate)      QUEUE_DEPTH)    per batch)
//! ```
//!
//! * [`leases`] decides which partitions this process reads.
//! * [`fetch`] reads one partition from the group's stored position, after
//!   checking that the broker's log is the one that position was read from
//!   (a new log starts again, under a new log epoch), and turns each record
//!   into a history row or a dead letter; a full queue pauses it.
//! * [`writer`] drains the queue into batches and commits them with the
//!   positions (through [`crate::store`]), the next batch sent while one
//!   commits.
//! * [`mirror`] copies the positions the writer stored to Kafka's group
//!   coordinator, for operators' tools; PostgreSQL stays the truth, and
//!   the writer never waits for it.

pub mod fetch;
pub mod leases;
pub mod mirror;
pub mod writer;

use std::collections::{BTreeSet, HashMap};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::StartFrom;
use crate::db::{Database, DbError};
use crate::kafka::group::GroupClient;
use crate::kafka::{Broker, KafkaError};
use crate::store::StoreError;

/// Fetched chunks waiting for the writer; a full queue pauses the readers.
const QUEUE_DEPTH: usize = 16;

/// What a `consume` process needs to know.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group: String,
    pub topic: String,
    pub start_from: StartFrom,
    pub batch_size: usize,
    /// How long the broker may hold a fetch open waiting for records, in ms.
    pub fetch_wait_ms: i32,
    /// `CONSUMER_SESSION_TIMEOUT`: silence after which a member loses its
    /// partitions, and no commit with records waiting reads as stalled.
    pub session_timeout: std::time::Duration,
    /// `CONSUMER_STALLED_AFTER`.
    pub stalled_after: std::time::Duration,
}

/// Why a step of the consumer failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("every member slot of this group is taken")]
    NoSlot,
}

impl From<tokio_postgres::Error> for ConsumeError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Store(error.into())
    }
}

impl From<deadpool_postgres::PoolError> for ConsumeError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Store(error.into())
    }
}

/// Consumes until `shutdown`: the current batch is committed or rolled back
/// whole before this returns. With a `mirror` client, the stored offsets
/// are also committed to Kafka (see [`mirror`]).
pub async fn run(
    settings: ConsumerSettings,
    db: Database,
    pool: Pool,
    kafka: Broker,
    mirror: Option<GroupClient>,
    shutdown: CancellationToken,
) {
    let (owned_tx, owned_rx) = watch::channel(BTreeSet::new());
    let (fence_tx, fence_rx) = watch::channel(None);
    let (stored_tx, stored_rx) = watch::channel(mirror::Stored::default());
    let stop_leases = CancellationToken::new();
    let leases = AbortOnDropHandle::new(tokio::spawn(leases::run(
        db,
        kafka.clone(),
        settings.group.clone(),
        settings.topic.clone(),
        settings.session_timeout,
        leases::Holding {
            owned: owned_tx,
            fence: fence_tx,
        },
        stop_leases.clone(),
    )));

    let lag = measure_lag(&settings, &kafka, &pool, &shutdown);

    let (queue_tx, queue_rx) = mpsc::channel(QUEUE_DEPTH);
    let (restart_tx, restart_rx) = mpsc::channel(QUEUE_DEPTH);
    let writer = AbortOnDropHandle::new(tokio::spawn(writer::run(
        settings.clone(),
        writer::Sink {
            pool: pool.clone(),
            fence: fence_rx,
        },
        queue_rx,
        restart_tx,
        stored_tx,
        shutdown.clone(),
    )));
    let stop_mirror = CancellationToken::new();
    let mirror = mirror.map(|client| {
        AbortOnDropHandle::new(tokio::spawn(mirror::run(
            client,
            settings.clone(),
            pool.clone(),
            stored_rx,
            owned_rx.clone(),
            stop_mirror.clone(),
        )))
    });

    let readers = Readers {
        settings: settings.clone(),
        pool: pool.clone(),
        kafka: kafka.clone(),
        queue: queue_tx,
    };
    readers.follow(owned_rx, restart_rx, &shutdown).await;
    let _ = writer.await;
    // The mirror's last round copies the last batch's offsets, while the
    // partitions are still ours.
    stop_mirror.cancel();
    if let Some(mirror) = mirror {
        let _ = mirror.await;
    }
    // Partitions are released only once the last batch is settled.
    stop_leases.cancel();
    let _ = leases.await;
    drop(lag);
    tracing::info!("consumer stopped");
}

/// The lag, measured on its own schedule (it grows while a fetch hangs),
/// for the consumer's metrics.
fn measure_lag(
    settings: &ConsumerSettings,
    kafka: &Broker,
    pool: &Pool,
    shutdown: &CancellationToken,
) -> AbortOnDropHandle<()> {
    let (lag_tx, _) = watch::channel(None);
    let source = crate::lag::Source {
        kafka: kafka.clone(),
        pool: pool.clone(),
        group: settings.group.clone(),
        topic: settings.topic.clone(),
        stalled_after: settings.stalled_after,
    };
    AbortOnDropHandle::new(tokio::spawn(crate::lag::watch(source, lag_tx, shutdown.clone())))
}

/// One reader per partition this process holds, into the writer's queue.
struct Readers {
    settings: ConsumerSettings,
    pool: Pool,
    kafka: Broker,
    queue: mpsc::Sender<fetch::Work>,
}

impl Readers {
    /// Keeps a reader on each partition in `owned` (started when one is
    /// won, dropped when one is lost) until `shutdown`; a reader that read
    /// from an older log than the stored one is started again. Returns with
    /// every reader dropped, the queue closed behind them.
    async fn follow(
        self,
        mut owned: watch::Receiver<BTreeSet<i32>>,
        mut restart: mpsc::Receiver<i32>,
        shutdown: &CancellationToken,
    ) {
        let mut readers: HashMap<i32, AbortOnDropHandle<()>> = HashMap::new();
        loop {
            let now = owned.borrow_and_update().clone();
            readers.retain(|p, _| now.contains(p));
            for &p in &now {
                readers.entry(p).or_insert_with(|| self.spawn(p));
            }
            tokio::select! {
                changed = owned.changed() => if changed.is_err() { break },
                Some(stale) = restart.recv() => {
                    tracing::info!(partition = stale, "position moved to a newer log elsewhere; restarting the partition's reader");
                    readers.remove(&stale);
                }
                _ = shutdown.cancelled() => break,
            }
        }
    }

    fn spawn(&self, partition: i32) -> AbortOnDropHandle<()> {
        AbortOnDropHandle::new(tokio::spawn(fetch::run(
            self.settings.clone(),
            self.pool.clone(),
            self.kafka.clone(),
            partition,
            self.queue.clone(),
        )))
    }
}
