//! The command line. Every option is a flag and an environment variable; the
//! doc comments below are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// The real-time popularity pipeline of CatLog, an anime catalog:
/// produce → Kafka → consume → PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "catlog-live", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Simulate anime popularity events and publish them to the Kafka topic
    /// (created if missing).
    Produce(ProduceArgs),
    /// Read the topic and write PostgreSQL exactly once (current state,
    /// history, offsets and dead letters in one transaction per batch).
    Consume(ConsumeArgs),
    /// Serve the live page, the WebSocket feed, the REST API, health and metrics.
    Serve(ServeArgs),
    /// Run produce, consume and serve together in one process (a demo:
    /// one event a second by default); prints the page's URL.
    All(AllArgs),
    /// Apply the SQL migrations and exit (the other commands also migrate at start).
    Migrate(DbArgs),
    /// Check broker, topic, database, migrations, tables, consumer lag and the
    /// newest event; one line each, exit code 1 on any FAIL.
    Doctor(DoctorArgs),
    /// Print a signed, short-lived token (JWT) for the page, the API and the
    /// WebSocket, for tests and operators.
    Token(TokenArgs),
}

/// Where the broker and the topic are.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(
        long = "kafka-broker",
        env = "KAFKA_BROKER",
        default_value = "localhost:9092",
        value_name = "HOST:PORT,..."
    )]
    pub brokers: String,

    /// Topic the events travel on.
    #[arg(
        long = "kafka-topic",
        env = "KAFKA_TOPIC",
        default_value = "anime-popularity",
        value_name = "NAME"
    )]
    pub topic: String,

    /// SASL mechanism for the brokers [default: no SASL].
    #[arg(long = "kafka-sasl-mechanism", env = "KAFKA_SASL_MECHANISM", value_enum)]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name (with KAFKA_SASL_MECHANISM).
    #[arg(
        long = "kafka-sasl-username",
        env = "KAFKA_SASL_USERNAME",
        value_name = "NAME"
    )]
    pub sasl_username: Option<String>,

    /// SASL password (with KAFKA_SASL_MECHANISM).
    #[arg(
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub sasl_password: Option<String>,

    /// Connect to the brokers over TLS (the public web roots are trusted).
    #[arg(long = "kafka-tls", env = "KAFKA_TLS", default_value_t = false, action = clap::ArgAction::Set,
          value_name = "BOOL")]
    pub tls: bool,

    /// PEM file of extra CA certificates to trust for Kafka TLS.
    #[arg(long = "kafka-tls-ca-file", env = "KAFKA_TLS_CA_FILE", value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// PEM certificate (chain) this client presents to brokers that ask for
    /// one (mutual TLS; with KAFKA_TLS_KEY_FILE).
    #[arg(
        long = "kafka-tls-cert-file",
        env = "KAFKA_TLS_CERT_FILE",
        value_name = "FILE"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of KAFKA_TLS_CERT_FILE.
    #[arg(long = "kafka-tls-key-file", env = "KAFKA_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// Longest wait for the broker to answer one request (`500ms`, `10s`, `1m`;
    /// a bare number is seconds); a fetch may wait CONSUMER_FETCH_WAIT_MS
    /// more. A request that goes unanswered is retried over new connections.
    #[arg(long = "kafka-request-timeout", env = "KAFKA_REQUEST_TIMEOUT", default_value = "10s",
          value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// The name this process gives the broker (its logs, quotas and
    /// metrics tell clients apart by it).
    #[arg(
        long = "kafka-client-id",
        env = "KAFKA_CLIENT_ID",
        default_value = "catlog-live",
        value_name = "NAME"
    )]
    pub client_id: String,

    /// Replicas of each partition of a topic `produce` creates [default:
    /// the broker's own default (`default.replication.factor`)].
    #[arg(long = "kafka-replication-factor", env = "KAFKA_REPLICATION_FACTOR", value_name = "N",
          value_parser = clap::value_parser!(i16).range(1..))]
    pub replication_factor: Option<i16>,
}

/// SASL mechanisms for Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl KafkaArgs {
    /// Plain settings (no SASL, no TLS) for `brokers` and `topic`.
    pub fn plain(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            request_timeout: DEFAULT_KAFKA_REQUEST_TIMEOUT,
            client_id: "catlog-live".to_owned(),
            replication_factor: None,
        }
    }

    /// The bootstrap brokers as a list.
    pub fn broker_list(&self) -> Vec<String> {
        self.brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// `KAFKA_REQUEST_TIMEOUT` when none is given.
pub const DEFAULT_KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `DATABASE_URL` when none is given.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/catlog";
/// `CONSUMER_GROUP_ID` when none is given.
pub const DEFAULT_GROUP_ID: &str = "catlog-live";

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL; the database is created if missing and the user may.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Longest one PostgreSQL query, lock wait, pool checkout or session
    /// start may take (`250ms`, `10s`, `1m`; a bare number is seconds). The
    /// server is told the same (statement, lock and idle-in-transaction
    /// timeouts), so a client that went silent loses its locks this fast.
    #[arg(long = "db-timeout", env = "DB_TIMEOUT", default_value = "10s", value_name = "DURATION",
          value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A duration: `250ms`, `10s`, `2m`, or a bare number of seconds; more than
/// zero, at most a day.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (say 500ms, 10s or 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (use ms, s or m)")),
    };
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("{text:?} must be more than 0 and at most a day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Options of `produce`.
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub producer: ProducerOptions,
}

/// How the simulator runs.
#[derive(Debug, Clone, Args)]
pub struct ProducerOptions {
    /// Partitions when the topic is created.
    #[arg(long = "kafka-partitions", env = "KAFKA_PARTITIONS", default_value_t = 3, value_name = "N",
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,

    /// Pause between simulated events, in milliseconds [default: 60000; 1000 for `all`].
    #[arg(long = "interval-ms", env = "PRODUCER_INTERVAL_MS", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub interval_ms: Option<u64>,

    /// Events per second, for load runs; overrides the interval.
    #[arg(long = "rate", env = "PRODUCER_RATE", value_name = "EVENTS_PER_SEC", value_parser = positive_rate)]
    pub rate: Option<f64>,

    /// Stop after this many events (all acknowledged by the broker) [default: run forever].
    #[arg(long = "max-events", env = "PRODUCER_MAX_EVENTS", value_name = "N")]
    pub max_events: Option<u64>,

    /// Random seed for a repeatable run [default: random].
    #[arg(long = "seed", env = "PRODUCER_SEED", value_name = "N")]
    pub seed: Option<u64>,

    /// Your own catalog instead of the built-in one: a .csv or .json file
    /// (see docs/operations.md for the columns).
    #[arg(long = "catalog", env = "PRODUCER_CATALOG", value_name = "FILE")]
    pub catalog: Option<PathBuf>,
}

impl ProducerOptions {
    /// How events are paced, with `default_interval` when no interval was given.
    pub fn pace(&self, default_interval: Duration) -> Pace {
        match (self.rate, self.interval_ms) {
            (Some(rate), _) => Pace::Rate(rate),
            (None, Some(ms)) => Pace::Interval(Duration::from_millis(ms)),
            (None, None) => Pace::Interval(default_interval),
        }
    }
}

/// How fast the simulator emits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// One event, then this pause.
    Interval(Duration),
    /// This many events per second, batched per partition.
    Rate(f64),
}

/// Where a group with no stored offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartFrom {
    /// The earliest record the broker still holds.
    Earliest,
    /// Only records published from now on.
    Latest,
}

/// The consumer group.
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Names whose offsets these are; consumers with the same group share the partitions.
    #[arg(
        long = "group-id",
        env = "CONSUMER_GROUP_ID",
        default_value = DEFAULT_GROUP_ID,
        value_name = "NAME"
    )]
    pub group_id: String,

    /// A partition with records waiting and no commit for this long reads as
    /// stalled (metrics, a warning, `doctor` FAIL, stats, the page).
    // The default is the session timeout's, so a member that froze has been
    // replaced by the time a partition reads as stalled, unless no live
    // member is left.
    #[arg(long = "stalled-after", env = "CONSUMER_STALLED_AFTER", default_value = "30s",
          value_name = "DURATION", value_parser = parse_duration)]
    pub stalled_after: Duration,
}

/// How the consumer runs.
#[derive(Debug, Clone, Args)]
pub struct ConsumerOptions {
    /// Where a group with no stored offset starts.
    #[arg(long = "start-from", env = "CONSUMER_START_FROM", value_enum, default_value_t = StartFrom::Earliest)]
    pub start_from: StartFrom,

    /// Most records written in one transaction.
    #[arg(long = "batch-size", env = "CONSUMER_BATCH_SIZE", default_value_t = 5000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Longest the broker may hold a fetch open while no record is there,
    /// in milliseconds (a broker that holds every fetch this long adds up to
    /// this much delay to each event).
    #[arg(long = "fetch-wait-ms", env = "CONSUMER_FETCH_WAIT_MS", default_value_t = 10, value_name = "MS",
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub fetch_wait_ms: i32,

    /// A consumer frozen or cut off from PostgreSQL for this long loses its
    /// partitions to the others (PostgreSQL ends its silent lease session),
    /// like Kafka's `session.timeout.ms`; a partition with records waiting
    /// and no commit for this long is reported as stalled.
    #[arg(long = "consumer-session-timeout", env = "CONSUMER_SESSION_TIMEOUT", default_value = "30s",
          value_name = "DURATION", value_parser = parse_duration)]
    pub session_timeout: Duration,

    /// Keep only this many days of history, by event time, in whole weeks
    /// (a week goes once all of it is older; current state and dead letters
    /// stay) [default: keep all].
    #[arg(long = "history-retention-days", env = "HISTORY_RETENTION_DAYS", value_name = "DAYS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_days: Option<u32>,

    /// Serve this consumer's Prometheus metrics at http://ADDR/metrics
    /// [default: none; `serve` and `all` have /metrics anyway].
    #[arg(long = "metrics-addr", env = "METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// Also commit the group's offsets to Kafka's group coordinator (about
    /// once a second, as a standalone consumer), so Kafka UI,
    /// kafka-consumer-groups.sh and lag exporters see the group. PostgreSQL
    /// stays the source of truth: a consumer always starts from the offsets
    /// stored there, and a failing mirror is logged and retried without
    /// slowing ingestion.
    #[arg(long = "kafka-offset-mirror", env = "KAFKA_OFFSET_MIRROR", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub offset_mirror: bool,
}

/// Options of `consume`.
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub group: GroupArgs,

    #[command(flatten)]
    pub consumer: ConsumerOptions,
}

/// How the web server runs.
#[derive(Debug, Clone, Args)]
pub struct ServerOptions {
    /// HTTP and WebSocket address.
    #[arg(
        long = "listen-addr",
        env = "LISTEN_ADDR",
        default_value = "127.0.0.1:3001",
        value_name = "HOST:PORT"
    )]
    pub listen_addr: SocketAddr,

    /// Period of the trending and stats broadcast to every client, in milliseconds.
    #[arg(long = "broadcast-interval-ms", env = "BROADCAST_INTERVAL_MS", default_value_t = 30_000,
          value_name = "MS", value_parser = clap::value_parser!(u64).range(100..))]
    pub broadcast_interval_ms: u64,

    /// Most WebSocket clients one server holds; one more gets 503 while
    /// those connected carry on.
    #[arg(long = "max-connections", env = "MAX_CONNECTIONS", default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Most header fields in one request; more gets a JSON 431.
    #[arg(long = "http-max-headers", env = "HTTP_MAX_HEADERS", default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(8..=10_000))]
    pub http_max_headers: u32,

    /// Most bytes of header fields in one request; more gets a JSON 431.
    #[arg(long = "http-max-header-bytes", env = "HTTP_MAX_HEADER_BYTES", default_value_t = 16 * 1024,
          value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    pub http_max_header_bytes: u32,

    /// Longest request target (path and query); longer gets a JSON 414.
    #[arg(long = "http-max-url-bytes", env = "HTTP_MAX_URL_BYTES", default_value_t = 8 * 1024,
          value_name = "BYTES", value_parser = clap::value_parser!(u32).range(256..=1024 * 1024))]
    pub http_max_url_bytes: u32,

    /// A client that sends no complete request head in this time is
    /// disconnected (slow or unfinished requests).
    #[arg(long = "http-head-timeout", env = "HTTP_HEAD_TIMEOUT", default_value = "10s",
          value_name = "DURATION", value_parser = parse_duration)]
    pub http_head_timeout: Duration,

    /// Most updates one resume replays (`/ws?lastId=N` or the `resume`
    /// message); a larger gap gets `resync` and a fresh snapshot.
    #[arg(long = "resume-max-updates", env = "RESUME_MAX_UPDATES", default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub resume_max_updates: u32,

    /// When set, the page, /api/* and /ws require this token (header
    /// `Authorization: Bearer <token>` or query `?token=<token>`); /healthz,
    /// /readyz and /metrics stay open [default: no token].
    #[arg(
        long = "api-token",
        env = "LIVE_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,

    /// Comma-separated origins allowed to open the WebSocket and call the API
    /// cross-origin (`*` for any) [default: no Origin check, no CORS].
    #[arg(long = "allowed-origins", env = "ALLOWED_ORIGINS", value_name = "ORIGINS")]
    pub allowed_origins: Option<String>,

    /// Shared secret that signed tokens (JWT, HS256, `exp` required) are
    /// checked with; they are accepted wherever the API token is, next to
    /// it (mint one with `catlog-live token`) [default: no signed tokens].
    #[arg(
        long = "jwt-secret",
        env = "LIVE_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// PEM file of the public key (RSA or P-256 EC) that signed tokens
    /// (RS256 or ES256, `exp` required) are checked with [default: none].
    #[arg(
        long = "jwt-public-key-file",
        env = "LIVE_JWT_PUBLIC_KEY_FILE",
        value_name = "FILE"
    )]
    pub jwt_public_key_file: Option<PathBuf>,
}

/// Options of `token`: what signs, and for how long the token holds.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// How long the token is valid (30s, 10m; at most a day).
    #[arg(long = "ttl", env = "LIVE_JWT_TTL", default_value = "10m", value_name = "DURATION",
          value_parser = parse_duration)]
    pub ttl: Duration,

    /// Shared secret to sign with (HS256); the server's LIVE_JWT_SECRET.
    #[arg(
        long = "jwt-secret",
        env = "LIVE_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// PEM file of a private key (RSA for RS256, P-256 EC for ES256) to sign
    /// with, when there is no secret; the server holds its public key.
    #[arg(
        long = "jwt-private-key-file",
        env = "LIVE_JWT_PRIVATE_KEY_FILE",
        value_name = "FILE"
    )]
    pub jwt_private_key_file: Option<PathBuf>,

    /// The token's `sub` claim, to tell pages apart in logs [default: none].
    #[arg(long = "subject", value_name = "TEXT")]
    pub subject: Option<String>,
}

/// Options of `serve`. The broker is only asked for consumer lag; the group
/// names whose lag is shown.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub group: GroupArgs,

    #[command(flatten)]
    pub server: ServerOptions,
}

/// Options of `doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub group: GroupArgs,
}

/// Options of `all`: those of the three stages.
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub group: GroupArgs,

    #[command(flatten)]
    pub producer: ProducerOptions,

    #[command(flatten)]
    pub consumer: ConsumerOptions,

    #[command(flatten)]
    pub server: ServerOptions,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match f64::from_str(text) {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("must be a number of events per second above 0".into()),
    }
}

/// Parses the command line (and environment); a bad setting becomes one line
/// that names the flag and its environment variable.
pub fn parse() -> Result<Cli, clap::Error> {
    Cli::try_parse()
}

/// One line for a clap error: what was wrong, and the environment variable
/// that can set the same option.
pub fn one_line_error(err: &clap::Error) -> String {
    use clap::error::ContextKind;
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid command line").trim();
    let env = err
        .get(ContextKind::InvalidArg)
        .map(|arg| arg.to_string())
        .and_then(|arg| env_for_flag(&arg));
    match env {
        Some(env) => format!("{first} (set by the flag or by {env}); see --help"),
        None => format!("{first}; see --help"),
    }
}

/// The environment variable of a flag as clap prints it (`--rate <N>`).
fn env_for_flag(printed: &str) -> Option<String> {
    let long = printed.trim_start_matches('-').split([' ', '=']).next()?;
    let cmd = Cli::command();
    cmd.get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_number_names_the_setting() {
        let err = Cli::try_parse_from(["catlog-live", "produce", "--kafka-partitions", "lots"]).unwrap_err();
        let line = one_line_error(&err);
        assert!(line.contains("--kafka-partitions"), "{line}");
        assert!(line.contains("KAFKA_PARTITIONS"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn rate_overrides_interval() {
        let cli =
            Cli::try_parse_from(["catlog-live", "produce", "--interval-ms", "5", "--rate", "100"]).unwrap();
        let Command::Produce(args) = cli.command else {
            panic!("not produce")
        };
        assert_eq!(args.producer.pace(Duration::from_secs(60)), Pace::Rate(100.0));
    }

    #[test]
    fn broker_list_splits_on_commas() {
        let cli = Cli::try_parse_from(["catlog-live", "produce", "--kafka-broker", " a:1, b:2 ,"]).unwrap();
        let Command::Produce(args) = cli.command else {
            panic!("not produce")
        };
        assert_eq!(args.kafka.broker_list(), vec!["a:1", "b:2"]);
    }
}
