//! What `doctor` and the readiness check ask the database about itself:
//! the server's version, and whether the tables the pipeline needs are
//! there.

use tokio_postgres::GenericClient;

/// The tables and the view the pipeline needs.
pub const TABLES: [&str; 6] = [
    "live_popularity",
    "popularity_events",
    "consumer_offsets",
    "dead_letters",
    "log_resets",
    "LivePopularity",
];

/// The server's version, as it says it (`15.19 (Debian …)`).
pub async fn server_version(db: &impl GenericClient) -> Result<String, tokio_postgres::Error> {
    Ok(db.query_one("SHOW server_version", &[]).await?.get(0))
}

/// Those of [`TABLES`] that the current schema lacks.
pub async fn missing_tables(db: &impl GenericClient) -> Result<Vec<&'static str>, tokio_postgres::Error> {
    let found: Vec<String> = db
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = ANY($1)",
            &[&TABLES.to_vec()],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(TABLES
        .into_iter()
        .filter(|t| !found.iter().any(|f| f == t))
        .collect())
}
