//! `sslmode=require` in DATABASE_URL encrypts every connection: sessions,
//! the pool, LISTEN, and the binary's own.

use crate::common;

use catlog_live::db::Database;
use common::TestDb;

const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test]
async fn sslmode_require_encrypts_the_connection() {
    let db = TestDb::new();
    let url = format!("{}?sslmode=require", db.url);
    let hint = "the test PostgreSQL must accept TLS (ssl = on in postgresql.conf)";

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_catlog-live"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}; {hint}",
        String::from_utf8_lossy(&out.stderr)
    );

    let database: Database = url.parse().unwrap();
    let session = database.session().await.unwrap_or_else(|e| panic!("{e}; {hint}"));
    let ssl: bool = session.client.query_one(SSL_IN_USE, &[]).await.unwrap().get(0);
    assert!(ssl, "a session over TLS");

    let pool = database.pool(1).unwrap();
    let ssl: bool = pool
        .get()
        .await
        .unwrap()
        .query_one(SSL_IN_USE, &[])
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "pooled connections over TLS");

    let plain: Database = db.url.parse().unwrap();
    let ssl: bool = plain
        .session()
        .await
        .unwrap()
        .client
        .query_one(SSL_IN_USE, &[])
        .await
        .unwrap()
        .get(0);
    assert!(!ssl, "no sslmode: no TLS, as before");
}
