//! Applies `migrations/` (plain SQL, compiled in) in order, recording each in
//! `refinery_schema_history`. An advisory lock makes concurrent starts safe:
//! one process migrates, the others wait and then find nothing to do.

use super::{Database, DbError, Result};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock key held while migrating ("catlog-migrate").
const MIGRATION_LOCK: i64 = 0x6361_746c_6f67_6d69;

/// Applies every migration not yet applied.
pub async fn migrate(db: &Database) -> Result<()> {
    let mut session = db.session().await.map_err(|e| match e {
        DbError::Query(e) => db.unreachable(&e),
        other => other,
    })?;
    let client = &mut session.client;
    // Migrations may build indexes on a large history and wait for one
    // another by design: the per-statement limits do not apply to them.
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = embedded::migrations::runner().run_async(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = report.map_err(|e| DbError::Migrate(e.to_string()))?;
    for applied in report.applied_migrations() {
        tracing::info!(
            version = applied.version(),
            name = applied.name(),
            "applied migration"
        );
    }
    Ok(())
}

/// Names of the migrations not yet applied (all of them on an empty database).
pub async fn pending(db: &Database) -> Result<Vec<String>> {
    let mut session = db.session().await?;
    let runner = embedded::migrations::runner();
    let exists: bool = session
        .client
        .query_one("SELECT to_regclass('refinery_schema_history') IS NOT NULL", &[])
        .await?
        .get(0);
    let applied = if exists {
        runner
            .get_applied_migrations_async(&mut session.client)
            .await
            .map_err(|e| DbError::Migrate(e.to_string()))?
    } else {
        Vec::new()
    };
    Ok(runner
        .get_migrations()
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version() == m.version()))
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect())
}
