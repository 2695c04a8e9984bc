//! The environment a run works in: the broker, the database server and the
//! binary under test; the fresh topic and database of each run; the child
//! processes of that binary and their cleanup; waiting until one is ready.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use tokio_util::task::AbortOnDropHandle;

/// Partitions of the fresh topic (the producer's default).
const PARTITIONS: i32 = 3;

pub(crate) struct Env {
    pub(crate) broker: String,
    admin_url: String,
    pub(crate) bin: PathBuf,
}

impl Env {
    pub(crate) fn from_environment(bin: Option<&Path>) -> anyhow::Result<Self> {
        let bin = match bin {
            Some(bin) => bin.to_path_buf(),
            None => default_binary()?,
        };
        if !bin.is_file() {
            bail!(
                "no binary at {}; run `cargo build --release` first or pass --bin PATH",
                bin.display()
            );
        }
        Ok(Self {
            broker: std::env::var("KAFKA_BROKER").unwrap_or_else(|_| "127.0.0.1:9092".into()),
            admin_url: std::env::var("CATLOG_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            bin,
        })
    }

    /// The URL of database `name` on the admin URL's server.
    fn database_url(&self, name: &str) -> String {
        let (base, query) = match self.admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let server = base.rsplit_once('/').map(|(server, _)| server).unwrap_or(base);
        format!("{server}/{name}{query}")
    }

    async fn admin(&self) -> anyhow::Result<(tokio_postgres::Client, AbortOnDropHandle<()>)> {
        connect_db(&self.admin_url).await
    }
}

/// The release binary beside this bench executable (target/release/deps/fanout-… →
/// target/release/catlog-live), whatever the target directory is.
fn default_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench executable has no target directory")?;
    Ok(release.join("catlog-live"))
}

pub(crate) async fn connect_db(url: &str) -> anyhow::Result<(tokio_postgres::Client, AbortOnDropHandle<()>)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url} (CATLOG_TEST_DATABASE_URL)"))?;
    let task = AbortOnDropHandle::new(tokio::spawn(async move {
        let _ = connection.await;
    }));
    Ok((client, task))
}

/// A topic and a database of this run, removed at the end.
pub(crate) struct Fresh {
    pub(crate) topic: String,
    db_name: String,
    pub(crate) db_url: String,
}

impl Fresh {
    pub(crate) fn new(env: &Env, label: &str) -> Self {
        let suffix = format!("{}_{}_{label}", std::process::id(), Utc::now().timestamp_millis());
        let db_name = format!("catlog_bench_{suffix}");
        Self {
            topic: format!("catlog-bench-{}", suffix.replace('_', "-")),
            db_url: env.database_url(&db_name),
            db_name,
        }
    }

    pub(crate) async fn create(&self, env: &Env) -> anyhow::Result<()> {
        let kafka = catlog_live::kafka::connect(&catlog_live::config::KafkaArgs::plain(
            env.broker.clone(),
            self.topic.clone(),
        ))
        .await?;
        catlog_live::kafka::ensure_topic(&kafka, &self.topic, PARTITIONS, None).await?;
        let (admin, _connection) = env.admin().await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{}\"", self.db_name))
            .await
            .with_context(|| format!("creating database {}", self.db_name))?;
        Ok(())
    }

    /// Best effort: a leftover is reported, not fatal.
    pub(crate) async fn remove(&self, env: &Env) {
        let dropped = async {
            let (admin, _connection) = env.admin().await?;
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.db_name
                ))
                .await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(20), dropped).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop database {}: {error:#}", self.db_name),
            Err(_) => eprintln!("could not drop database {} within 20 s", self.db_name),
        }
        let deleted = async {
            let kafka = catlog_live::kafka::connect(&catlog_live::config::KafkaArgs::plain(
                env.broker.clone(),
                self.topic.clone(),
            ))
            .await?;
            kafka
                .controller_client()?
                .delete_topic(&self.topic, 5_000)
                .await?;
            anyhow::Ok(())
        };
        if let Ok(Err(error)) = tokio::time::timeout(Duration::from_secs(10), deleted).await {
            eprintln!("could not delete topic {}: {error:#}", self.topic);
        }
    }
}

// ---- child processes ---------------------------------------------------------

struct Child {
    name: &'static str,
    pid: u32,
    process: tokio::process::Child,
    log: PathBuf,
}

/// Everything this run started or created, undone by [`Cleanup::finish`].
#[derive(Default)]
pub(crate) struct Cleanup {
    children: Vec<Child>,
    pub(crate) fresh: Vec<Fresh>,
    logs: Option<PathBuf>,
}

impl Cleanup {
    fn log_dir(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.logs {
            return Ok(dir.clone());
        }
        let dir = std::env::temp_dir().join(format!("catlog-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        self.logs = Some(dir.clone());
        Ok(dir)
    }

    /// Starts the binary's subcommand `name` with exactly `vars` (plus PATH and HOME) in a
    /// directory of its own, so neither the caller's environment nor a `.env`
    /// changes what is measured.
    pub(crate) fn spawn(
        &mut self,
        env: &Env,
        name: &'static str,
        vars: &[(&str, String)],
    ) -> anyhow::Result<u32> {
        let dir = self.log_dir()?;
        let log = dir.join(format!("{name}-{}.log", self.children.len()));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = tokio::process::Command::new(&env.bin);
        command
            .arg(name)
            .env_clear()
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        for keep in ["PATH", "HOME"] {
            if let Ok(value) = std::env::var(keep) {
                command.env(keep, value);
            }
        }
        command.env("RUST_LOG", "warn");
        for (key, value) in vars {
            command.env(key, value);
        }
        // SAFETY: prctl is async-signal-safe and touches nothing of ours. The
        // child gets SIGTERM if this process dies without cleaning up (killed).
        // It is spawned from the main future, polled on the main thread, which
        // lives as long as the process: the signal follows the parent thread.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let process = command
            .spawn()
            .with_context(|| format!("starting {} {name}", env.bin.display()))?;
        let pid = process.id().context("the child exited at once")?;
        self.children.push(Child {
            name,
            pid,
            process,
            log,
        });
        Ok(pid)
    }

    /// An error naming the first child that has exited, with its log's end.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if let Ok(Some(status)) = child.process.try_wait() {
                bail!(
                    "{} exited ({status}); its log {}:\n{}",
                    child.name,
                    child.log.display(),
                    tail(&child.log)
                );
            }
        }
        Ok(())
    }

    /// SIGTERM to the child named `name`, then SIGKILL after `grace`; prints how long it took.
    pub(crate) async fn stop(&mut self, name: &str, grace: Duration) {
        let Some(at) = self.children.iter().position(|c| c.name == name) else {
            return;
        };
        let mut child = self.children.remove(at);
        let started = Instant::now();
        if let Ok(pid) = i32::try_from(child.pid) {
            // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so
            // the pid cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(grace, child.process.wait()).await {
            Ok(Ok(status)) => eprintln!(
                "stopped {} in {:.1} s ({status})",
                child.name,
                started.elapsed().as_secs_f64()
            ),
            _ => {
                let _ = child.process.kill().await;
                eprintln!("{} did not stop within {} s; killed", child.name, grace.as_secs());
            }
        }
    }

    /// Stops every child (newest first), removes topics and databases, and the
    /// logs when all went well.
    pub(crate) async fn finish(&mut self, env: &Env, ok: bool) {
        while let Some(name) = self.children.last().map(|c| c.name) {
            self.stop(name, Duration::from_secs(15)).await;
        }
        for fresh in self.fresh.drain(..) {
            fresh.remove(env).await;
        }
        if let Some(dir) = self.logs.take() {
            if ok {
                let _ = std::fs::remove_dir_all(&dir);
            } else {
                eprintln!("child logs kept in {}", dir.display());
            }
        }
    }
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<&str> = text.lines().rev().take(15).collect();
    lines.reverse();
    lines.join("\n")
}

/// Waits until `GET /readyz` answers 200, while the children are alive.
pub(crate) async fn wait_ready(
    cleanup: &mut Cleanup,
    addr: SocketAddr,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{addr}/readyz");
    loop {
        if let Ok(response) = http.get(&url).send().await
            && response.status() == reqwest::StatusCode::OK
        {
            return Ok(started.elapsed());
        }
        cleanup.check_alive()?;
        if started.elapsed() > within {
            bail!("{url} did not answer 200 within {} s", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
