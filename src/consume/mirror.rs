//! The offset mirror: the group's offsets, copied to Kafka for operators'
//! tools.
//!
//! The group's offsets live in PostgreSQL: they commit in the same
//! transaction as the rows they cover, which is what makes ingestion
//! exactly once, and a consumer starts from them, never from Kafka. But
//! Kafka UI, `kafka-consumer-groups.sh` and every lag exporter ask Kafka's
//! group coordinator, where the group would not exist at all. So this task
//! commits the same next offsets there as well, as a standalone consumer
//! (see [`crate::kafka::group`]): only what changed, at most once a
//! second, only for the partitions this process owns (their other owners
//! mirror the rest). Unchanged offsets are committed again every
//! [`REFRESH`], so Kafka does not expire an idle group's offsets
//! (`offsets.retention.minutes`, 7 days by default).
//!
//! It follows the writer through a `watch` of what each commit stored and
//! never feeds anything back: the writer never waits for it. A broker
//! without consumer groups, or a coordinator that is down, costs a warning
//! (once per streak of failures), a counted failure and a retry with
//! backoff; ingestion carries on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{ConsumeError, ConsumerSettings};
use crate::kafka::group::{GroupClient, GroupError};
use crate::metrics::names;
use crate::retry::Backoff;
use crate::store::positions;

/// How often the mirror looks for new offsets to commit.
pub const MIRROR_EVERY: Duration = Duration::from_secs(1);
/// How often an unchanged offset is committed again.
pub const REFRESH: Duration = Duration::from_secs(3600);
/// Longest pause between attempts while the coordinator fails.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long the last round at shutdown may take.
const LAST_ROUND: Duration = Duration::from_secs(3);

/// The next offsets this process's writer has stored, per partition, each
/// with the number of the write that stored it.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    writes: u64,
    offsets: BTreeMap<i32, (i64, u64)>,
}

impl Stored {
    /// Records one write's stored positions (partition → next offset);
    /// `false` when it stored none.
    pub fn record(&mut self, positions: impl IntoIterator<Item = (i32, i64)>) -> bool {
        let mut positions = positions.into_iter().peekable();
        if positions.peek().is_none() {
            return false;
        }
        self.writes += 1;
        for (partition, offset) in positions {
            self.offsets.insert(partition, (offset, self.writes));
        }
        true
    }
}

/// Mirrors until `stop`, then once more (briefly) for what the writer
/// stored last.
pub(super) async fn run(
    mut client: GroupClient,
    settings: ConsumerSettings,
    pool: Pool,
    stored: watch::Receiver<Stored>,
    owned: watch::Receiver<BTreeSet<i32>>,
    stop: CancellationToken,
) {
    metrics::counter!(names::OFFSET_MIRROR_COMMITS_TOTAL).increment(0);
    metrics::counter!(names::OFFSET_MIRROR_FAILURES_TOTAL).increment(0);
    metrics::gauge!(names::OFFSET_MIRROR_LAST_SUCCESS_TIMESTAMP_SECONDS).set(0.0);
    tracing::info!(group = client.group(), "mirroring the group's offsets to Kafka");

    let mut mirror = Mirror {
        settings,
        pool,
        stored,
        owned,
        plan: Plan::default(),
        failures: 0,
    };
    let mut backoff = Backoff::new(MIRROR_EVERY, MAX_BACKOFF);
    let mut tick = tokio::time::interval(MIRROR_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let ok = tokio::select! {
            ok = mirror.round(&mut client) => ok,
            _ = stop.cancelled() => break,
        };
        if ok {
            backoff.reset();
        } else {
            if !backoff.wait(&stop).await {
                break;
            }
            tick.reset();
        }
    }
    if tokio::time::timeout(LAST_ROUND, mirror.round(&mut client))
        .await
        .is_err()
    {
        tracing::debug!("no time for the offset mirror's last round");
    }
}

/// The mirror's state between rounds.
struct Mirror {
    settings: ConsumerSettings,
    pool: Pool,
    stored: watch::Receiver<Stored>,
    owned: watch::Receiver<BTreeSet<i32>>,
    plan: Plan,
    /// Failed attempts since the last success.
    failures: u64,
}

impl Mirror {
    /// Commits what Kafka lacks, if anything; `false` when that failed.
    async fn round(&mut self, client: &mut GroupClient) -> bool {
        // Copies, so no borrow of a watch is held across a request.
        let owned = self.owned.borrow().clone();
        let stored = self.stored.borrow().clone();
        self.plan.own(&owned, &stored);
        if self.plan.needs_seed() {
            match self.load_positions().await {
                Ok(from_db) => self.plan.seed(&from_db),
                Err(error) => tracing::debug!(%error, "offset mirror cannot read the stored positions yet"),
            }
        }
        let due = self.plan.due(&stored, Instant::now());
        if due.is_empty() {
            return true;
        }
        match client.commit(&self.settings.topic, &due).await {
            Ok(()) => {
                self.plan.mirrored(&due, Instant::now());
                metrics::counter!(names::OFFSET_MIRROR_COMMITS_TOTAL).increment(1);
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                metrics::gauge!(names::OFFSET_MIRROR_LAST_SUCCESS_TIMESTAMP_SECONDS).set(now.as_secs_f64());
                if self.failures > 0 {
                    tracing::info!(
                        failed_attempts = self.failures,
                        partitions = due.len(),
                        "offset mirror caught up"
                    );
                }
                tracing::debug!(offsets = ?due, "offsets mirrored to Kafka");
                self.failures = 0;
                true
            }
            Err(error) => {
                metrics::counter!(names::OFFSET_MIRROR_FAILURES_TOTAL).increment(1);
                self.failed(&error);
                false
            }
        }
    }

    /// Warns on the first failure of a streak only.
    fn failed(&mut self, error: &GroupError) {
        if self.failures == 0 {
            tracing::warn!(
                %error,
                "cannot mirror the group's offsets to Kafka; retrying (ingestion goes on; \
                 KAFKA_OFFSET_MIRROR=false switches the mirror off)"
            );
        } else {
            tracing::debug!(%error, failed_attempts = self.failures + 1, "offset mirror still failing");
        }
        self.failures += 1;
    }

    /// What PostgreSQL holds for the group: partition → next offset.
    async fn load_positions(&self) -> Result<BTreeMap<i32, i64>, ConsumeError> {
        let db = self.pool.get().await?;
        let client: &tokio_postgres::Client = &db;
        let stored = positions::positions(client, &self.settings.group, &self.settings.topic).await?;
        Ok(stored.into_iter().map(|(p, pos)| (p, pos.next_offset)).collect())
    }
}

/// Which offsets Kafka lacks: the policy of the mirror, without I/O.
#[derive(Debug, Default)]
struct Plan {
    /// Per partition this process owns.
    partitions: BTreeMap<i32, Tracked>,
}

#[derive(Debug)]
struct Tracked {
    /// How many writes the writer had made when the partition became ours:
    /// what it stored before (when the partition was last ours) may be
    /// stale now.
    since: u64,
    /// Whether PostgreSQL was asked for the partition's position.
    seeded: bool,
    /// Its position in PostgreSQL when the partition became ours.
    from_db: Option<i64>,
    /// What Kafka holds from us, and since when.
    mirrored: Option<(i64, Instant)>,
}

impl Plan {
    /// Follows the partitions this process owns: forgets those given up,
    /// starts tracking those taken.
    fn own(&mut self, owned: &BTreeSet<i32>, stored: &Stored) {
        self.partitions.retain(|p, _| owned.contains(p));
        for &p in owned {
            self.partitions.entry(p).or_insert(Tracked {
                since: stored.writes,
                seeded: false,
                from_db: None,
                mirrored: None,
            });
        }
    }

    /// Whether a partition waits for its position from PostgreSQL.
    fn needs_seed(&self) -> bool {
        self.partitions.values().any(|t| !t.seeded)
    }

    /// Takes the positions PostgreSQL holds for the partitions waiting for one.
    fn seed(&mut self, from_db: &BTreeMap<i32, i64>) {
        for (p, t) in self.partitions.iter_mut().filter(|(_, t)| !t.seeded) {
            t.seeded = true;
            t.from_db = from_db.get(p).copied();
        }
    }

    /// Each owned partition's newest stored offset, where Kafka does not
    /// have it from us yet, or had it for [`REFRESH`].
    fn due(&self, stored: &Stored, now: Instant) -> BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .filter_map(|(&p, t)| {
                let written = stored
                    .offsets
                    .get(&p)
                    .filter(|(_, write)| *write > t.since)
                    .map(|(offset, _)| *offset);
                let target = written.or(t.from_db)?;
                let fresh = t
                    .mirrored
                    .is_some_and(|(offset, at)| offset == target && now.duration_since(at) < REFRESH);
                (!fresh).then_some((p, target))
            })
            .collect()
    }

    /// Kafka holds `offsets` since `at`.
    fn mirrored(&mut self, offsets: &BTreeMap<i32, i64>, at: Instant) {
        for (p, &offset) in offsets {
            if let Some(t) = self.partitions.get_mut(p) {
                t.mirrored = Some((offset, at));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        Instant::now()
    }

    fn owned(partitions: &[i32]) -> BTreeSet<i32> {
        partitions.iter().copied().collect()
    }

    #[test]
    fn mirrors_what_the_writer_stored_once() {
        let mut stored = Stored::default();
        let mut plan = Plan::default();
        plan.own(&owned(&[0, 1]), &stored);
        plan.seed(&BTreeMap::new());
        assert!(plan.due(&stored, now()).is_empty(), "nothing stored, nothing due");

        stored.record([(0, 10), (1, 4)]);
        let due = plan.due(&stored, now());
        assert_eq!(due, [(0, 10), (1, 4)].into());
        plan.mirrored(&due, now());
        assert!(plan.due(&stored, now()).is_empty(), "committed once");

        stored.record([(1, 9)]);
        assert_eq!(plan.due(&stored, now()), [(1, 9)].into(), "only what changed");
    }

    #[test]
    fn a_failed_commit_stays_due_with_the_newest_offset() {
        let mut stored = Stored::default();
        let mut plan = Plan::default();
        plan.own(&owned(&[0]), &stored);
        plan.seed(&BTreeMap::new());
        stored.record([(0, 10)]);
        assert_eq!(plan.due(&stored, now()), [(0, 10)].into());
        // The commit failed: nothing marked. More is stored meanwhile.
        stored.record([(0, 25)]);
        assert_eq!(plan.due(&stored, now()), [(0, 25)].into());
    }

    #[test]
    fn a_partition_taken_starts_from_what_postgres_holds() {
        let stored = Stored::default();
        let mut plan = Plan::default();
        plan.own(&owned(&[0, 1]), &stored);
        assert!(plan.needs_seed());
        plan.seed(&[(0, 42)].into());
        assert!(!plan.needs_seed());
        assert_eq!(
            plan.due(&stored, now()),
            [(0, 42)].into(),
            "partition 1 has no stored offset"
        );
    }

    #[test]
    fn partitions_given_up_are_not_mirrored_and_old_writes_are_not_trusted() {
        let mut stored = Stored::default();
        let mut plan = Plan::default();
        plan.own(&owned(&[0, 1]), &stored);
        plan.seed(&BTreeMap::new());
        stored.record([(0, 10), (1, 10)]);

        // Partition 1 goes to another consumer before it was mirrored.
        plan.own(&owned(&[0]), &stored);
        assert_eq!(plan.due(&stored, now()), [(0, 10)].into());

        // It comes back after the other consumer read on: what this process
        // stored before is old; PostgreSQL has the truth.
        plan.own(&owned(&[0, 1]), &stored);
        assert!(plan.needs_seed());
        plan.seed(&[(0, 10), (1, 70)].into());
        assert_eq!(plan.due(&stored, now()), [(0, 10), (1, 70)].into());

        // And what the writer stores from now on wins.
        stored.record([(1, 75)]);
        assert_eq!(plan.due(&stored, now()), [(0, 10), (1, 75)].into());
    }

    #[test]
    fn a_new_log_moves_the_mirror_back() {
        let mut stored = Stored::default();
        let mut plan = Plan::default();
        plan.own(&owned(&[0]), &stored);
        plan.seed(&BTreeMap::new());
        stored.record([(0, 600)]);
        plan.mirrored(&plan.due(&stored, now()), now());
        // The partition's log started again at 0 and the writer recorded it.
        stored.record([(0, 0)]);
        assert_eq!(plan.due(&stored, now()), [(0, 0)].into());
    }

    #[test]
    fn an_unchanged_offset_is_committed_again_after_a_while() {
        let mut stored = Stored::default();
        let mut plan = Plan::default();
        plan.own(&owned(&[0]), &stored);
        plan.seed(&BTreeMap::new());
        stored.record([(0, 5)]);
        let start = now();
        plan.mirrored(&plan.due(&stored, start), start);
        assert!(plan.due(&stored, start + REFRESH / 2).is_empty());
        assert_eq!(plan.due(&stored, start + REFRESH), [(0, 5)].into());
    }

    #[test]
    fn an_empty_write_is_not_recorded() {
        let mut stored = Stored::default();
        assert!(!stored.record([]));
        assert_eq!(stored.writes, 0);
        assert!(stored.record([(3, 1)]));
    }
}
