//! The PostgreSQL contract between the stages: what `consume` writes and
//! `serve` and `doctor` read, in one place. The stages meet only here.
//!
//! * [`batch`] — one batch, one transaction: history rows, current state,
//!   dead letters and positions (written by `consume`).
//! * [`positions`] — where each group stands on each partition, in which
//!   log, and the move to a new log.
//! * [`history`] — history rows and current state read back as events and
//!   anime (for `serve`); both directions of event ↔ columns live here and
//!   in [`batch`].
//! * [`partitions`] — the history's weekly partitions, made ahead of time,
//!   and its size.
//! * [`retention`] — removing old history, a whole week at a time.
//! * [`upkeep`] — both, and the history's size as metrics, once a minute.
//! * [`schema`] — what `doctor` asks the database about itself.
//!
//! Two names tie writers and readers together: every transaction that
//! writes positions takes [`COMMIT_ORDER_LOCK`] first (so history ids become
//! visible in commit order, and "rows after id N" never skips a late row),
//! and a batch with new rows sends a notification on [`NOTIFY_CHANNEL`].

pub mod batch;
pub mod history;
pub mod partitions;
pub mod positions;
pub mod retention;
pub mod schema;
pub mod upkeep;

pub use batch::{Batch, CommitError, DeadLetter, Fence, Mode, Row, Written};
pub use history::StoredEvent;
pub use positions::{NewLog, Position};

/// Advisory lock taken by every transaction that writes positions ("catlog-commit").
pub const COMMIT_ORDER_LOCK: i64 = 0x6361_746c_6f67_636f;
/// Channel `NOTIFY`'d after each batch with new history rows (the payload is empty).
pub const NOTIFY_CHANNEL: &str = "catlog_live_events";

/// Errors reading or writing the store outside a batch.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database query failed: {}", crate::db::error_text(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

impl crate::db::AsTimeout for StoreError {
    fn is_timeout(&self) -> bool {
        matches!(self, Self::Db(e) if e.is_timeout())
    }
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A pooled connection whose every query waits at most the pool's timeout
/// (`DB_TIMEOUT`); one that timed out, or whose query was abandoned (the
/// caller's own deadline), leaves the pool when dropped, since its answer
/// may still be on the way.
pub struct Bounded {
    db: Option<deadpool_postgres::Object>,
    limit: std::time::Duration,
    /// The connection may still owe an answer: do not reuse it.
    timed_out: std::sync::atomic::AtomicBool,
}

/// Checks a connection out of `pool` (bounded by the pool's wait timeout).
pub async fn checkout(pool: &deadpool_postgres::Pool) -> Result<Bounded> {
    let limit = pool.timeouts().wait.unwrap_or(crate::db::DEFAULT_TIMEOUT);
    let db = crate::db::bounded(limit, "a pool checkout", async {
        Ok::<_, StoreError>(pool.get().await?)
    })
    .await?;
    Ok(Bounded {
        db: Some(db),
        limit,
        timed_out: Default::default(),
    })
}

impl Bounded {
    /// The connection itself, for work the bounded queries cannot wrap (a
    /// transaction held across statements and its commit, bounded by the
    /// caller): from here it counts as abandoned, and leaves the pool when
    /// dropped, until [`Bounded::answered`] says the work ended with the
    /// database's answer.
    pub fn held(&mut self) -> &mut deadpool_postgres::Object {
        self.timed_out.store(true, std::sync::atomic::Ordering::Relaxed);
        self.db
            .as_mut()
            .unwrap_or_else(|| unreachable!("a connection used after drop"))
    }

    /// The work on [`Bounded::held`] ended with an answer: the connection
    /// goes back to the pool when dropped.
    pub fn answered(&self) {
        self.timed_out.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// The bound on one piece of work (`DB_TIMEOUT`, as the pool has it),
    /// for work on [`Bounded::held`].
    pub fn limit(&self) -> std::time::Duration {
        self.limit
    }

    /// `work` on the connection itself (a transaction and its commit, say)
    /// as one piece of work, bounded by [`Bounded::limit`]: the connection
    /// goes back to the pool afterwards unless the work timed out.
    pub async fn within<T>(
        &mut self,
        what: &'static str,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T>,
    ) -> Result<T> {
        let limit = self.limit;
        let result = crate::db::bounded(limit, what, work(self.held())).await;
        if !result.as_ref().is_err_and(crate::db::AsTimeout::is_timeout) {
            self.answered();
        }
        result
    }

    fn client(&self) -> &deadpool_postgres::Object {
        // Only `Drop` takes it.
        self.db
            .as_ref()
            .unwrap_or_else(|| unreachable!("a connection used after drop"))
    }

    async fn run<T>(
        &self,
        what: &'static str,
        work: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        use std::sync::atomic::Ordering;
        // Set while a query waits: dropped then, the connection is abandoned mid-query.
        self.timed_out.store(true, Ordering::Relaxed);
        let result = crate::db::bounded(self.limit, what, async { Ok::<_, StoreError>(work.await?) }).await;
        self.timed_out.store(false, Ordering::Relaxed);
        if result.as_ref().is_err_and(crate::db::AsTimeout::is_timeout) {
            self.timed_out.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// `sql` prepared once per connection and kept, bounded: for statements
    /// run often. On the server's connections it is also planned once
    /// ([`crate::db::Database::reading_pool`]): planning one of them costs
    /// more than running it.
    pub async fn prepared(&self, sql: &str) -> Result<tokio_postgres::Statement> {
        self.run("a prepare", self.client().prepare_cached(sql)).await
    }

    /// `query`, bounded.
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>>
    where
        T: ?Sized + tokio_postgres::ToStatement,
    {
        self.run("a query", self.client().query(statement, params)).await
    }

    /// `query_one`, bounded.
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row>
    where
        T: ?Sized + tokio_postgres::ToStatement,
    {
        self.run("a query", self.client().query_one(statement, params))
            .await
    }

    /// `query_opt`, bounded.
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>>
    where
        T: ?Sized + tokio_postgres::ToStatement,
    {
        self.run("a query", self.client().query_opt(statement, params))
            .await
    }

    /// `execute`, bounded.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64>
    where
        T: ?Sized + tokio_postgres::ToStatement,
    {
        self.run("a statement", self.client().execute(statement, params))
            .await
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        if self.timed_out.load(std::sync::atomic::Ordering::Relaxed)
            && let Some(db) = self.db.take()
        {
            drop(deadpool_postgres::Object::take(db));
        }
    }
}

/// Takes [`COMMIT_ORDER_LOCK`] for the rest of `tx`.
async fn lock_commit_order(tx: &tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COMMIT_ORDER_LOCK])
        .await?;
    Ok(())
}

/// Whether the database answers a query.
pub async fn ping(pool: &deadpool_postgres::Pool) -> Result<()> {
    checkout(pool).await?.query_one("SELECT 1", &[]).await?;
    Ok(())
}
