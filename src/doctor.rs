//! `doctor`: one line per check with PASS, WARN or FAIL and what to do.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::error::SqlState;

use crate::config::{DbArgs, GroupArgs, KafkaArgs};
use crate::db::{Database, DbError, Session, error_text};
use crate::kafka::{self, Broker};
use crate::lag::{self, LogEnds, PartitionLag};
use crate::store::{partitions, schema};

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        })
    }
}

/// One check.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about a WARN or FAIL.
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}  {:<10} {}", self.verdict, self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, " — {fix}")?;
        }
        Ok(())
    }
}

/// Lag above which the consumers count as behind.
const LAG_WARN: i64 = 10_000;
/// Newest event older than this: is anything producing?
const STALE_AFTER: Duration = Duration::from_secs(10 * 60);

/// Runs every check, in order; a check that depends on a failed one says so.
pub async fn run(kafka_args: &KafkaArgs, db_args: &DbArgs, group: &GroupArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let (broker, client) = broker(kafka_args).await;
    checks.push(broker);
    let (topic, partitions) = topic(client.as_ref(), &kafka_args.topic).await;
    checks.push(topic);

    let (database, session) = database(db_args).await;
    checks.push(database);
    let Some((db, session)) = session else {
        return checks;
    };
    checks.push(migrations(&db).await);
    let tables = tables(&session.client).await;
    let tables_ok = tables.verdict == Verdict::Pass;
    checks.push(tables);
    if !tables_ok {
        return checks;
    }
    checks.push(
        lag(
            client.as_ref(),
            partitions.as_deref(),
            &session.client,
            &group.group_id,
            &kafka_args.topic,
            group.stalled_after,
        )
        .await,
    );
    checks.push(freshness(&session.client).await);
    checks.push(history_size(&session.client).await);
    checks
}

/// How big the history is, and how far back it goes.
async fn history_size(db: &tokio_postgres::Client) -> Check {
    match partitions::size_on(db).await {
        Ok(size) => {
            let back = match size.oldest {
                Some(at) => format!(
                    "; the oldest row was stored {} ago",
                    human((Utc::now() - at).to_std().unwrap_or_default())
                ),
                None => String::new(),
            };
            Check::pass(
                "history",
                format!("about {} rows, {} on disk{back}", size.rows, bytes(size.bytes)),
            )
        }
        Err(e) => Check::warn(
            "history",
            format!("size unknown: {e}"),
            "is the database answering?",
        ),
    }
}

/// `1234567890` as `1.2 GB`.
fn bytes(n: i64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n => format!("{:.0} kB", n / 1e3),
    }
}

/// Whether the broker answers, and which API versions it speaks.
async fn broker(args: &KafkaArgs) -> (Check, Option<Broker>) {
    match Broker::connect(args).await {
        Ok(client) => {
            let versions = match args.broker_list().first() {
                Some(first) if !args.tls => match kafka::api_versions(first).await {
                    Ok(v) => describe_versions(&v),
                    Err(e) => format!("API versions unknown: {e}"),
                },
                _ => "API versions not probed over TLS".to_owned(),
            };
            let check = Check::pass("broker", format!("{} answers; {versions}", args.brokers));
            (check, Some(client))
        }
        // The error already says what to do.
        Err(e) => (
            Check {
                fix: None,
                ..Check::fail("broker", e.to_string(), "")
            },
            None,
        ),
    }
}

/// Whether the topic exists, and its partitions.
async fn topic(client: Option<&Broker>, topic: &str) -> (Check, Option<Vec<i32>>) {
    let Some(client) = client else {
        return (
            Check::fail("topic", "not checked: no broker", "fix the broker first"),
            None,
        );
    };
    match client.partitions(topic).await {
        Ok(Some(p)) => (
            Check::pass("topic", format!("{topic:?} has {} partitions", p.len())),
            Some(p),
        ),
        Ok(None) => (
            Check::fail(
                "topic",
                format!("{topic:?} does not exist"),
                "start `catlog-live produce` (it creates the topic) or fix KAFKA_TOPIC",
            ),
            None,
        ),
        Err(e) => (
            Check::fail("topic", e.to_string(), "check the broker's logs"),
            None,
        ),
    }
}

/// Whether the database answers; a session to it when it does.
async fn database(args: &DbArgs) -> (Check, Option<(Database, Session)>) {
    let db = match args.database_url.parse::<Database>() {
        Ok(db) => db.with_timeout(args.timeout),
        Err(e) => return (Check::fail("database", e.to_string(), "fix DATABASE_URL"), None),
    };
    match db.session().await {
        Ok(session) => {
            let version = schema::server_version(&session.client).await.unwrap_or_default();
            let check = Check::pass(
                "database",
                format!("{} answers (PostgreSQL {version})", db.target()),
            );
            (check, Some((db, session)))
        }
        Err(DbError::Query(e)) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => (
            Check::fail(
                "database",
                format!("database {:?} does not exist", db.name()),
                "run `catlog-live migrate` (it creates the database)",
            ),
            None,
        ),
        Err(DbError::Query(e)) => (
            Check::fail(
                "database",
                format!("cannot connect to {}: {}", db.target(), error_text(&e)),
                "start PostgreSQL or fix DATABASE_URL",
            ),
            None,
        ),
        Err(e) => (Check::fail("database", e.to_string(), "fix DATABASE_URL"), None),
    }
}

/// Whether every migration is applied.
async fn migrations(db: &Database) -> Check {
    match crate::db::pending(db).await {
        Ok(p) if p.is_empty() => Check::pass("migrations", "all applied"),
        Ok(p) => Check::fail(
            "migrations",
            format!("{} pending: {}", p.len(), p.join(", ")),
            "run `catlog-live migrate`",
        ),
        Err(e) => Check::fail("migrations", e.to_string(), "run `catlog-live migrate`"),
    }
}

/// Whether the tables are there.
async fn tables(db: &tokio_postgres::Client) -> Check {
    match schema::missing_tables(db).await {
        Ok(missing) if missing.is_empty() => Check::pass("tables", schema::TABLES.join(", ")),
        Ok(missing) => Check::fail(
            "tables",
            format!("missing: {}", missing.join(", ")),
            "run `catlog-live migrate`",
        ),
        Err(e) => Check::fail("tables", error_text(&e), "run `catlog-live migrate`"),
    }
}

/// How fresh the newest stored event is.
async fn freshness(db: &tokio_postgres::Client) -> Check {
    let newest: Option<DateTime<Utc>> = partitions::newest_on(db).await.ok().flatten();
    match newest {
        None => Check::warn(
            "freshness",
            "no events stored yet",
            "start `produce` and `consume`",
        ),
        Some(at) => {
            let age = (Utc::now() - at).to_std().unwrap_or_default();
            let text = format!("newest event stored {} ago", human(age));
            if age > STALE_AFTER {
                Check::warn("freshness", text, "is a producer running, and a consumer?")
            } else {
                Check::pass("freshness", text)
            }
        }
    }
}

/// Time between the two looks at a partition that may be stalled.
const STALL_RECHECK: Duration = Duration::from_secs(2);

/// The group's lag per partition; a stalled partition or a new log is a
/// failure with the fix.
async fn lag(
    client: Option<&Broker>,
    partitions: Option<&[i32]>,
    db: &tokio_postgres::Client,
    group: &str,
    topic: &str,
    stalled_after: Duration,
) -> Check {
    let (Some(client), Some(partitions)) = (client, partitions) else {
        return Check::warn(
            "lag",
            "unknown: no broker or no topic",
            "fix the broker and topic first",
        );
    };
    let mut ends = LogEnds::default();
    let mut lag = match lag::measure(client, &mut ends, db, group, topic, partitions).await {
        Ok(lag) => lag,
        Err(e) => return Check::fail("lag", e.to_string(), "run `catlog-live migrate`"),
    };
    // A stall is a stall only if it is still there a moment later (a record
    // that just arrived on a partition idle for an hour looks the same).
    if !lag.stall_candidates(stalled_after).is_empty() {
        tokio::time::sleep(STALL_RECHECK).await;
        if let Ok(mut again) = lag::measure(client, &mut ends, db, group, topic, partitions).await {
            lag::confirm(&mut again, Some(&lag), stalled_after);
            lag = again;
        }
    }
    let parts: Vec<String> = lag
        .per_partition
        .iter()
        .map(|(p, lag)| match lag {
            PartitionLag::Behind(n) => format!("{p}={n}"),
            PartitionLag::NewLog { stored, log_end, .. } => {
                format!("{p}=NEW-LOG(stored {stored}, log end {log_end})")
            }
            PartitionLag::Unknown(_) => format!("{p}=?"),
        })
        .collect();
    let worst = lag.worst();
    let detail = format!("group {group:?}, per partition {}", parts.join(" "));
    let new_logs: Vec<String> = lag
        .new_logs()
        .map(|(p, lag)| match lag {
            PartitionLag::NewLog { why, .. } => format!("partition {p}: {why}"),
            _ => format!("partition {p}"),
        })
        .collect();
    if !lag.stalls.is_empty() {
        Check::fail(
            "lag",
            format!("{detail}; {}", lag::describe_stalls(&lag.stalls)),
            "look at the consumers' logs (a warning names what timed out) and their \
             catlog_consumer_stalled metric; check PostgreSQL (pg_stat_activity: a session \
             \"idle in transaction\" or waiting on a lock) and the broker",
        )
    } else if !new_logs.is_empty() {
        Check::fail(
            "lag",
            format!("{detail}; the broker's log is new ({})", new_logs.join("; ")),
            "the topic was created again or the broker lost its storage, so the stored offsets \
             belong to an older log; a running `catlog-live consume` starts these partitions again \
             (CONSUMER_START_FROM) within seconds — start one if none runs",
        )
    } else if !lag.committed && worst > 0 {
        Check::warn(
            "lag",
            detail,
            "no consumer of this group has committed yet: start `catlog-live consume`",
        )
    } else if worst > LAG_WARN {
        Check::warn(
            "lag",
            detail,
            "consumers are behind: add `consume` processes or partitions",
        )
    } else {
        Check::pass("lag", detail)
    }
}

fn describe_versions(versions: &kafka::ApiVersions) -> String {
    let name = |key: i16| match key {
        0 => Some("Produce"),
        1 => Some("Fetch"),
        2 => Some("ListOffsets"),
        3 => Some("Metadata"),
        19 => Some("CreateTopics"),
        _ => None,
    };
    let known: Vec<String> = versions
        .iter()
        .filter_map(|(key, min, max)| name(*key).map(|n| format!("{n} v{min}–{max}")))
        .collect();
    format!("{} APIs ({})", versions.len(), known.join(", "))
}

fn human(age: Duration) -> String {
    match age.as_secs() {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}
