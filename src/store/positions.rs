//! Where each group stands on each partition (`consumer_offsets`): the
//! next offset to read, which log of the partition it belongs to (the log
//! epoch), and the record just before it. `consume` reads and moves these;
//! `serve` and `doctor` read them for lag.
//!
//! A stored offset only means something in the log it was read from: when
//! a partition's log starts again (topic created again, broker storage
//! lost), [`start_new_log`] moves the position to the next epoch, and the
//! move is kept in `log_resets`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Transaction};

use crate::kafka::RecordMark;

/// Where a group stands on one partition: the next offset to read, in which
/// log, and the record just before it (to recognise that log again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub next_offset: i64,
    pub log_epoch: i32,
    /// The record at `next_offset - 1`; `None` when not known.
    pub last: Option<RecordMark>,
}

/// Every stored position of a group on a topic.
pub(super) const LOAD_POSITIONS: &str = "SELECT partition, next_offset, log_epoch, last_record_time, last_event_id \
     FROM consumer_offsets WHERE group_id = $1 AND topic = $2";

/// The group's stored position on every partition of `topic` it has one for.
pub async fn positions(
    db: &impl GenericClient,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, Position>, tokio_postgres::Error> {
    Ok(from_rows(&db.query(LOAD_POSITIONS, &[&group, &topic]).await?))
}

/// The same on a connection of `pool`, the checkout and the query each
/// bounded by `DB_TIMEOUT`.
pub async fn stored(
    pool: &deadpool_postgres::Pool,
    group: &str,
    topic: &str,
) -> super::Result<BTreeMap<i32, Position>> {
    let db = super::checkout(pool).await?;
    Ok(from_rows(&db.query(LOAD_POSITIONS, &[&group, &topic]).await?))
}

/// Positions by partition, from rows of [`LOAD_POSITIONS`].
pub(super) fn from_rows(rows: &[tokio_postgres::Row]) -> BTreeMap<i32, Position> {
    rows.iter()
        .map(|r| {
            let last = r.get::<_, Option<DateTime<Utc>>>(3).map(|time| RecordMark {
                time,
                event_id: r.get(4),
            });
            (
                r.get(0),
                Position {
                    next_offset: r.get(1),
                    log_epoch: r.get(2),
                    last,
                },
            )
        })
        .collect()
}

/// How long since each stored position of a group on a topic last moved.
pub async fn since_moved(
    db: &impl GenericClient,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, std::time::Duration>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT partition, greatest(extract(epoch FROM now() - updated_at), 0)::float8 \
             FROM consumer_offsets WHERE group_id = $1 AND topic = $2",
            &[&group, &topic],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), std::time::Duration::from_secs_f64(r.get(1))))
        .collect())
}

/// A partition found on a new log, and where reading starts in it.
#[derive(Debug, Clone)]
pub struct NewLog {
    pub partition: i32,
    /// The position stored for the old log.
    pub stored: Position,
    /// The new log's end when it was found.
    pub log_end: i64,
    /// The first offset to read in the new log.
    pub restart_at: i64,
    /// Why the log counts as new.
    pub why: String,
}

impl NewLog {
    /// The position reading starts from in the new log.
    pub fn position(&self) -> Position {
        Position {
            next_offset: self.restart_at,
            log_epoch: self.stored.log_epoch + 1,
            last: None,
        }
    }
}

const START_NEW_LOG: &str = "UPDATE consumer_offsets \
     SET log_epoch = log_epoch + 1, next_offset = $5, last_record_time = NULL, last_event_id = NULL, \
         updated_at = now() \
     WHERE group_id = $1 AND topic = $2 AND partition = $3 AND log_epoch = $4";

const RECORD_LOG_RESET: &str = "INSERT INTO log_resets \
     (group_id, topic, partition, log_epoch, stored_offset, log_end, restart_at, reason) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Moves `group`'s position on a partition to a new log (inside `tx`, not
/// committed here). `false` when the stored position is no longer the one
/// the new log was found against (another consumer moved it first).
pub async fn start_new_log(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    new_log: &NewLog,
) -> Result<bool, tokio_postgres::Error> {
    super::lock_commit_order(tx).await?;
    let next = new_log.position();
    let moved = tx
        .execute(
            START_NEW_LOG,
            &[
                &group,
                &topic,
                &new_log.partition,
                &new_log.stored.log_epoch,
                &next.next_offset,
            ],
        )
        .await?;
    if moved == 0 {
        return Ok(false);
    }
    tx.execute(
        RECORD_LOG_RESET,
        &[
            &group,
            &topic,
            &new_log.partition,
            &next.log_epoch,
            &new_log.stored.next_offset,
            &new_log.log_end,
            &next.next_offset,
            &new_log.why,
        ],
    )
    .await?;
    Ok(true)
}
